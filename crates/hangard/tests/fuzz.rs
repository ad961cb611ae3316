//! Thousands of random and mutated requests to every route: each answer is a success or a
//! coded 4xx (`{code, message, hint}`), never a 5xx, never a dropped connection, and the daemon
//! is still whole afterwards. Deterministic (a seeded generator; `HANGAR_FUZZ_SEED` picks
//! another), and nothing it sends can boot a guest: no tenant it can make owns a pool, and
//! every VM route names VMs that do not exist.

use std::time::Duration;

use hangar_api::client::request;

mod common;
use common::TestDaemon;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SPEC: &str = r#"{"schema_version": 1, "name": "fz1", "machine": {"vcpus": 1, "memory_mib": 128}, "boot": {"image": "minimal", "cmdline": "quiet"}, "disk": [{"name": "d", "size_mib": 8}], "nic": [{"name": "n", "mode": "user", "forward": ["8080:80"]}], "labels": {"a": "b"}}"#;

/// Every route with a well-formed body to start mutating from.
fn seeds() -> Vec<(&'static str, String, String)> {
    let s = |x: &str| x.to_string();
    vec![
        ("GET", s("/v1/health"), s("")),
        ("GET", s("/v1/openapi.json"), s("")),
        ("POST", s("/v1/validate"), s(SPEC)),
        ("POST", s("/v1/plan"), s(SPEC)),
        ("GET", s("/v1/images"), s("")),
        ("GET", s("/v1/vms"), s("")),
        ("POST", s("/v1/vms?wait=true"), s(SPEC)),
        ("GET", s("/v1/vms/nope"), s("")),
        ("DELETE", s("/v1/vms/nope?force=true"), s("")),
        ("POST", s("/v1/vms/nope/start"), s(r#"{"no_wait": true, "timeout_s": 5}"#)),
        ("POST", s("/v1/vms/nope/stop"), s(r#"{"force": false, "timeout_s": 5}"#)),
        ("POST", s("/v1/vms/nope/pause"), s("")),
        ("GET", s("/v1/vms/nope/snapshots"), s("")),
        ("POST", s("/v1/vms/nope/snapshots"), s(r#"{"id": "s1", "sleep": true}"#)),
        ("POST", s("/v1/vms/nope/snapshots/s1/restore"), s("")),
        ("GET", s("/v1/snapshots"), s("")),
        ("DELETE", s("/v1/snapshots/s1"), s("")),
        ("GET", s("/v1/operations?limit=5"), s("")),
        ("POST", s("/v1/operations"), s(r#"{"kind": "start", "vm": "nope", "timeout_s": 1}"#)),
        ("GET", s("/v1/operations/op-1-00000000"), s("")),
        ("GET", s("/v1/events?follow=false&since=0"), s("")),
        ("GET", s("/v1/events/page?since=0&limit=10"), s("")),
        ("GET", s("/metrics"), s("")),
        ("GET", s("/v1/tenants"), s("")),
        ("PUT", s("/v1/tenants/fzt"), s(r#"{"quotas": {"max_vcpus": 4, "max_memory_mib": 512}}"#)),
        ("DELETE", s("/v1/tenants/nobody"), s("")),
        ("GET", s("/v1/pools"), s("")),
        (
            "POST",
            s("/v1/pools"),
            format!(
                r#"{{"id": "fzpool", "tenant": "nobody", "spec": {SPEC}, "desired": {{"running": 1, "warm": 1, "sleeping": 1}}, "policy": {{"min_running_s": 5, "idle_sleep_s": 9, "cold_boot": false}}}}"#
            ),
        ),
        ("GET", s("/v1/pools/nopool"), s("")),
        ("PATCH", s("/v1/pools/nopool"), s(r#"{"desired": {"running": 2}}"#)),
        ("DELETE", s("/v1/pools/nopool"), s("")),
        ("POST", s("/v1/pools/nopool/claim"), s("")),
        ("GET", s("/v1/instances?pool=nopool"), s("")),
        ("DELETE", s("/v1/instances/i-00000000"), s("")),
        ("GET", s("/v1/fleet"), s("")),
        ("GET", s("/v1/tokens"), s("")),
        ("POST", s("/v1/tokens"), s(r#"{"name": "fz", "scope": "tenant:fzt:viewer"}"#)),
        ("DELETE", s("/v1/tokens/tok-nope"), s("")),
        ("GET", s("/v1/host"), s("")),
    ]
}

/// JSON fragments worth putting anywhere.
const NASTY: &[&str] = &[
    "18446744073709551615",
    "-9223372036854775809",
    "1e308",
    "-0",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"\\u0000\"",
    "\"../../etc/shadow\"",
    "\"a;rm -rf /\"",
    "\"🦀\"",
    "\"acme--x\"",
    "{\"a\": 1, \"a\": 2}",
];

fn mutate(rng: &mut Rng, body: &str) -> Vec<u8> {
    let mut b = body.as_bytes().to_vec();
    match rng.below(9) {
        // Flip some bytes.
        0 => {
            for _ in 0..=rng.below(4) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
        }
        // Cut it short.
        1 => b.truncate(rng.below(b.len() + 1)),
        // Replace a value (after a colon) with something nasty.
        2 => {
            let colons: Vec<usize> = body.match_indices(':').map(|(i, _)| i).collect();
            if !colons.is_empty() {
                let at = *rng.pick(&colons) + 1;
                let end = body[at..].find([',', '}']).map_or(body.len(), |e| at + e);
                let mut s = body[..at].to_string();
                let nasty: &str = rng.pick::<&str>(NASTY);
                s.push_str(nasty);
                s.push_str(&body[end..]);
                b = s.into_bytes();
            }
        }
        // Duplicate a key (the first one).
        3 => {
            if let Some(open) = body.find('{') {
                if let Some(end) = body[open..].find(',') {
                    let pair = &body[open + 1..open + end];
                    b = format!("{{{pair},{}", &body[open + 1..]).into_bytes();
                }
            }
        }
        // Nest deeply.
        4 => {
            let depth = 50 + rng.below(2000);
            b = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        }
        // Random bytes.
        5 => b = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        // Something nasty alone.
        6 => b = rng.pick(NASTY).as_bytes().to_vec(),
        // A huge string value.
        7 => b = format!("{{\"name\": \"{}\"}}", "x".repeat(rng.below(100_000))).into_bytes(),
        // As it was.
        _ => {}
    }
    b
}

/// Path segments worth trying in place of a name.
const SEGMENTS: &[&str] = &[
    "nope",
    "%2e%2e",
    "..",
    "a%2Fb",
    "%00",
    "A",
    "-x",
    "x-",
    "acme--x",
    "a;b",
    "%F0%9F%A6%80",
    "i-zzzzzzzz",
    "op-",
    "tok-",
];

fn mutate_path(rng: &mut Rng, path: &str) -> String {
    if rng.below(4) != 0 {
        return path.to_string();
    }
    let parts: Vec<&str> = path.split('/').collect();
    let i = 1 + rng.below(parts.len().saturating_sub(1).max(1));
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| if j == i && j >= 3 { rng.pick(SEGMENTS).to_string() } else { p.to_string() })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn random_and_mutated_requests_get_only_successes_and_coded_4xx() {
    let d = TestDaemon::start();
    let seed = std::env::var("HANGAR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD_0001u64);
    let mut rng = Rng(seed);
    let seeds = seeds();
    let rounds = 60;
    let mut sent = 0;
    for _ in 0..rounds {
        for (method, path, body) in &seeds {
            let path = mutate_path(&mut rng, path);
            let bytes = if body.is_empty() && rng.below(2) == 0 {
                Vec::new()
            } else {
                mutate(&mut rng, if body.is_empty() { "{}" } else { body })
            };
            let r = request(&d.socket(), method, &path, Some(&bytes), Duration::from_secs(60))
                .unwrap_or_else(|e| {
                    panic!(
                        "seed {seed:#x}: {method} {path} with {:?}: no answer: {e}",
                        String::from_utf8_lossy(&bytes)
                    )
                });
            sent += 1;
            let shown = || {
                format!(
                    "seed {seed:#x}: {method} {path} with {:?} -> {} {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]),
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
                )
            };
            assert!(
                (200..300).contains(&r.status) || (400..500).contains(&r.status),
                "{}",
                shown()
            );
            if r.status >= 400 {
                let v: serde_json::Value = serde_json::from_slice(&r.body)
                    .unwrap_or_else(|_| panic!("an uncoded error: {}", shown()));
                for field in ["code", "message", "hint"] {
                    assert!(
                        v[field].as_str().is_some_and(|s| !s.is_empty()),
                        "no {field}: {}",
                        shown()
                    );
                }
            }
        }
    }
    assert_eq!(sent, rounds * seeds.len());
    // Still whole: it answers, and its audit log is intact.
    assert_eq!(d.call("GET", "/v1/health", None).0, 200);
    let report = hangar_audit::verify(&d.home.path().join("audit.log")).unwrap();
    assert!(report.is_intact(), "{:?}", report.failure);
}
