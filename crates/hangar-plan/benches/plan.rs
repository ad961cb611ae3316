//! Control-plane benchmarks: spec text → plan, and its stages.
//!
//! `plan` measures the whole pipeline for a typical spec (parse + validate + canonicalise +
//! plan); the stage benchmarks show where the time goes. Fixed host facts keep it hermetic.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use hangar_plan::{plan, HostFacts};
use hangar_spec::{parse, Format};

const TYPICAL: &str = r#"
schema_version = 1
name = "web-1"
tenant = "acme"
[machine]
vcpus = 2
memory_mib = 512
[boot]
image = "minimal"
cmdline = "loglevel=4"
[[disk]]
name = "root"
source = "images/root.qcow2"
[[disk]]
name = "data"
size_mib = 1024
[[nic]]
name = "net0"
forward = ["8080:80", "8443:443"]
[labels]
app = "web"
tier = "frontend"
"#;

fn facts() -> HostFacts {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/host-facts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn benches(c: &mut Criterion) {
    let facts = facts();
    let base = Path::new("/specs");
    c.bench_function("plan", |b| {
        b.iter(|| {
            let spec = parse(black_box(TYPICAL), Format::Toml, base).unwrap();
            plan(&spec, &facts).unwrap()
        })
    });
    c.bench_function("parse_validate_canonicalize", |b| {
        b.iter(|| parse(black_box(TYPICAL), Format::Toml, base).unwrap())
    });
    let spec = parse(TYPICAL, Format::Toml, base).unwrap();
    c.bench_function("plan_only", |b| b.iter(|| plan(black_box(&spec), &facts).unwrap()));
    c.bench_function("canonicalize_only", |b| {
        b.iter(|| hangar_spec::CanonicalSpec::new(black_box(spec.spec.clone())))
    });
}

criterion_group!(plan_benches, benches);
criterion_main!(plan_benches);
