//! The golden corpus: every valid case's canonical JSON and plan, and every invalid case's
//! error codes and paths, exactly. `HANGAR_BLESS=1 cargo test -p hangar-plan --test corpus`
//! rewrites the expected canonical and plan files (never `expected.errors`, which state intent); review the diff before committing.

mod common;

use common::*;

fn compare_or_bless(path: &std::path::Path, actual: &str, failures: &mut Vec<String>) {
    if bless() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs:\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(_) => failures.push(format!("{} is missing (run with HANGAR_BLESS=1)", path.display())),
    }
}

#[test]
fn valid_cases_match_their_canonical_json_and_plan() {
    let cases = cases(&corpus_dir());
    assert!(cases.len() >= 15, "only {} valid cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        match run(case) {
            Ok((spec, plan)) => {
                compare_or_bless(
                    &case.dir.join("expected.canonical.json"),
                    &format!("{}\n", spec.json),
                    &mut failures,
                );
                compare_or_bless(
                    &case.dir.join("expected.plan.json"),
                    &plan.to_json(),
                    &mut failures,
                );
            }
            Err(errors) => failures.push(format!("{}: expected valid, got {errors:?}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_cases_report_exactly_their_expected_errors() {
    let cases = cases(&corpus_dir().join("invalid"));
    assert!(cases.len() >= 30, "only {} invalid cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let expected_path = case.dir.join("expected.errors");
        let expected: Vec<String> = std::fs::read_to_string(&expected_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        match run(case) {
            Ok(_) => {
                failures.push(format!("{}: expected {expected:?}, but it is valid", case.name))
            }
            Err(mut errors) => {
                // expected.errors files are written by hand and never blessed: they state intent.
                let mut want = expected.clone();
                errors.sort();
                want.sort();
                if errors != want {
                    failures.push(format!("{}: expected {want:?}, got {errors:?}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_valid_spec_fits_the_published_schema_types() {
    for case in cases(&corpus_dir()) {
        let parsed: Result<hangar_spec::schema::SpecFile, String> = match case.format {
            hangar_spec::Format::Toml => toml::from_str(&case.text).map_err(|e| e.to_string()),
            hangar_spec::Format::Json => {
                serde_json::from_str(&case.text).map_err(|e| e.to_string())
            }
        };
        assert!(parsed.is_ok(), "{}: {}", case.name, parsed.unwrap_err());
    }
}

#[test]
fn plans_are_byte_identical_across_runs() {
    for case in cases(&corpus_dir()) {
        let a = run(&case).unwrap().1.to_json();
        let b = run(&case).unwrap().1.to_json();
        assert_eq!(a, b, "{}", case.name);
    }
}
