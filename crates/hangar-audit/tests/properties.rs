//! For random logs and a random single mutation, `verify` reports the damage no later than the
//! mutated line (or, for the very last line, the head anchor shows it).

use hangar_audit::{hash_line, verify_reader, Defect, Entry, Head, GENESIS};
use hangar_core::clock::Timestamp;
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
struct Fields {
    at: u64,
    who: String,
    what: String,
    target: String,
    result: String,
    detail: Option<String>,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        any::<u64>(),
        "(token|local):[a-z0-9]{1,8}",
        "vm\\.(start|stop|rm)",
        "\\PC{1,12}",
        prop_oneof!["ok".prop_map(String::from), "E_[A-Z_]{1,12}"],
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(at, who, what, target, result, detail)| Fields {
            at,
            who,
            what,
            target,
            result,
            detail,
        })
}

/// Builds a chained log: its lines (without newlines).
fn build(entries: &[Fields]) -> Vec<Vec<u8>> {
    let mut prev = GENESIS.to_owned();
    let mut lines = Vec::new();
    for (i, f) in entries.iter().enumerate() {
        let entry = Entry {
            seq: i as u64 + 1,
            at: Timestamp(f.at),
            who: f.who.clone(),
            what: f.what.clone(),
            target: f.target.clone(),
            result: f.result.clone(),
            detail: f.detail.clone(),
            prev,
        };
        let line = entry.to_line().into_bytes();
        prev = hash_line(&line);
        lines.push(line);
    }
    lines
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte of a line (never the newline) with a non-zero mask.
    Flip {
        line: Index,
        offset: Index,
        mask: u8,
    },
    Delete {
        line: Index,
    },
    Swap {
        a: Index,
        b: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<Index>(), 1u8..=255)
            .prop_map(|(line, offset, mask)| { Mutation::Flip { line, offset, mask } }),
        any::<Index>().prop_map(|line| Mutation::Delete { line }),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap { a, b }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_single_mutation_is_reported_at_or_before_the_mutated_line(
        entries in proptest::collection::vec(fields(), 1..12),
        m in mutation(),
    ) {
        let mut lines = build(&entries);
        let n = lines.len();

        let clean = verify_reader(&join(&lines)[..]).unwrap();
        prop_assert!(clean.is_intact(), "{:?}", clean.failure);
        prop_assert_eq!(clean.entries, n as u64);
        let anchor = Head { seq: n as u64, hash: hash_line(&lines[n - 1]) };
        prop_assert_eq!(&clean.head, &anchor);

        // `k`: the 1-based number of the (first) mutated line.
        let k = match &m {
            Mutation::Flip { line, offset, mask } => {
                let i = line.index(n);
                let j = offset.index(lines[i].len());
                lines[i][j] ^= mask;
                i + 1
            }
            Mutation::Delete { line } => {
                let i = line.index(n);
                lines.remove(i);
                i + 1
            }
            Mutation::Swap { a, b } => {
                let (a, b) = (a.index(n), b.index(n));
                prop_assume!(a != b);
                lines.swap(a, b);
                a.min(b) + 1
            }
        } as u64;

        let report = verify_reader(&join(&lines)[..]).unwrap();
        match &report.failure {
            Some(f) => {
                // An edit that leaves its line well-formed can only show at the next line, whose
                // `prev` then names the edited line.
                let at_or_before = f.line <= k
                    || (f.line == k + 1 && f.defect == Defect::PrevMismatch { previous_line: k });
                prop_assert!(at_or_before, "mutated line {}, reported {}", k, f);
                prop_assert_eq!(report.entries, f.line - 1);
            }
            None => {
                // Nothing commits to the last line: only the head anchor can show its change.
                prop_assert_eq!(k, n as u64, "undetected mutation of line {}", k);
                prop_assert_ne!(&report.head, &anchor);
            }
        }
    }

    #[test]
    fn any_built_log_verifies(entries in proptest::collection::vec(fields(), 0..12)) {
        let lines = build(&entries);
        let report = verify_reader(&join(&lines)[..]).unwrap();
        prop_assert!(report.is_intact(), "{:?}", report.failure);
        prop_assert_eq!(report.entries, entries.len() as u64);
    }
}
