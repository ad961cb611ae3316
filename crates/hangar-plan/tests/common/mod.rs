//! Shared corpus plumbing for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use hangar_core::error::Coded;
use hangar_plan::{plan, HostFacts, Plan};
use hangar_spec::{CanonicalSpec, Format};

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// Set HANGAR_BLESS=1 to rewrite expected files from current behaviour (then review the diff).
pub fn bless() -> bool {
    std::env::var_os("HANGAR_BLESS").is_some()
}

pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub spec_path: PathBuf,
    pub text: String,
    pub format: Format,
    pub facts: HostFacts,
}

/// Every case directory under `dir` (those holding a spec.toml or spec.json), sorted.
pub fn cases(dir: &Path) -> Vec<Case> {
    let default_facts = read_facts(&corpus_dir().join("host-facts.json"));
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for case_dir in entries {
        let spec_path =
            ["spec.toml", "spec.json"].iter().map(|f| case_dir.join(f)).find(|p| p.exists());
        let Some(spec_path) = spec_path else { continue };
        let facts_path = case_dir.join("host-facts.json");
        let facts =
            if facts_path.exists() { read_facts(&facts_path) } else { default_facts.clone() };
        let name = case_dir.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&spec_path).unwrap();
        let format = Format::detect(spec_path.file_name().and_then(|n| n.to_str()), &text).unwrap();
        out.push(Case { name, dir: case_dir, spec_path, text, format, facts });
    }
    out
}

fn read_facts(path: &Path) -> HostFacts {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Relative paths in corpus specs resolve against a fixed virtual directory, so expected
/// files are the same in every checkout.
pub fn virtual_base(case: &Case) -> PathBuf {
    PathBuf::from(format!("/corpus/{}", case.name))
}

/// Parses and plans one case: Ok((canonical, plan)) or the `CODE path` lines of its errors.
pub fn run(case: &Case) -> Result<(CanonicalSpec, Plan), Vec<String>> {
    let spec = hangar_spec::parse(&case.text, case.format, &virtual_base(case)).map_err(|e| {
        e.0.iter()
            .map(|d| {
                if d.path.is_empty() {
                    d.code.to_string()
                } else {
                    format!("{} {}", d.code, d.path)
                }
            })
            .collect::<Vec<_>>()
    })?;
    let plan = plan(&spec, &case.facts).map_err(|e| {
        vec![match e.path() {
            Some(p) => format!("{} {p}", e.code()),
            None => e.code().to_string(),
        }]
    })?;
    Ok((spec, plan))
}
