//! Criterion's results (`target/criterion/<bench>/new/estimates.json`), as median nanoseconds.

use std::path::Path;

use serde_json::{json, Value};

use crate::stats::round;

/// Every benchmark criterion has results for: `{name: {median_ns, ci95_ns: [lo, hi]}}`.
pub fn collect(dir: &Path) -> Value {
    let mut out = serde_json::Map::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return json!({ "error": format!("no criterion results in {} (run `cargo bench` first)", dir.display()) });
    };
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let estimates = dir.join(&name).join("new/estimates.json");
        let Some(v) =
            std::fs::read(&estimates).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        let median = &v["median"];
        out.insert(
            name.to_string_lossy().into_owned(),
            json!({
                "median_ns": round(median["point_estimate"].as_f64().unwrap_or(f64::NAN), 1),
                "ci95_ns": [
                    round(median["confidence_interval"]["lower_bound"].as_f64().unwrap_or(f64::NAN), 1),
                    round(median["confidence_interval"]["upper_bound"].as_f64().unwrap_or(f64::NAN), 1),
                ],
            }),
        );
    }
    Value::Object(out)
}
