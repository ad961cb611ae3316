//! Every kind of tampering is reported at the expected first bad line, with a specific reason.

use std::fs;
use std::path::{Path, PathBuf};

use hangar_audit::{hash_line, verify, AuditLog, Defect, Entry, Failure, NewEntry, VerifyReport};
use hangar_core::clock::Timestamp;

/// A log of `n` entries; returns its path and lines (without newlines).
fn log_of(n: u64) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    for i in 1..=n {
        log.append(
            NewEntry::ok(
                Timestamp(1_700_000_000_000 + i),
                "local:root",
                "vm.start",
                format!("vm/vm{i}"),
            )
            .with_detail(format!("attempt {i}")),
        )
        .unwrap();
    }
    let lines = fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
    (dir, path, lines)
}

fn write_lines(path: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(path, text).unwrap();
}

fn failure(report: &VerifyReport) -> &Failure {
    report.failure.as_ref().expect("tampering went undetected")
}

/// Writes `lines` over the log and verifies it: the report and its failure as text.
fn rewritten(path: &Path, lines: &[String]) -> (VerifyReport, String) {
    write_lines(path, lines);
    let report = verify(path).unwrap();
    let found = failure(&report).to_string();
    (report, found)
}

/// Inserts a forged copy of line `at` (0-based) by another user before it, its `prev` correct
/// for its own position: only what follows can give it away.
fn insert_forged(lines: &mut Vec<String>, at: usize) {
    let mut forged = parse(&lines[at]);
    forged.who = "local:eve".into();
    forged.prev = hash_line(lines[at - 1].as_bytes());
    lines.insert(at, forged.to_line());
}

fn parse(line: &str) -> Entry {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    Entry {
        seq: v["seq"].as_u64().unwrap(),
        at: Timestamp(v["at"].as_u64().unwrap()),
        who: v["who"].as_str().unwrap().into(),
        what: v["what"].as_str().unwrap().into(),
        target: v["target"].as_str().unwrap().into(),
        result: v["result"].as_str().unwrap().into(),
        detail: v.get("detail").map(|d| d.as_str().unwrap().into()),
        prev: v["prev"].as_str().unwrap().into(),
    }
}

#[test]
fn entries_read_back_from_lines() {
    let (_d, _path, lines) = log_of(2);
    let e = Entry::from_line(lines[1].as_bytes()).unwrap();
    assert_eq!(e, parse(&lines[1]));
    assert_eq!(e.to_line(), lines[1]);
    assert_eq!(e.prev, hash_line(lines[0].as_bytes()));
    let spaced = lines[1].replacen(':', ": ", 1);
    assert_eq!(Entry::from_line(spaced.as_bytes()), Err(Defect::NotCanonical));
}

#[test]
fn editing_a_field_of_a_middle_line_is_caught_at_the_next_line() {
    let (_d, path, mut lines) = log_of(8);
    lines[3] = lines[3].replace("local:root", "local:eve");
    let (report, found) = rewritten(&path, &lines);
    assert_eq!(found, "line 5: prev hash does not match line 4");
    assert_eq!(failure(&report).defect, Defect::PrevMismatch { previous_line: 4 });
    assert_eq!(report.entries, 4);
}

#[test]
fn editing_the_first_lines_prev_is_caught_on_line_1() {
    let (_d, path, mut lines) = log_of(3);
    lines[0] = lines[0].replace("sha256:0000", "sha256:1000");
    write_lines(&path, &lines);
    let report = verify(&path).unwrap();
    assert_eq!(failure(&report).line, 1);
    assert_eq!(failure(&report).defect, Defect::PrevNotGenesis);
    assert_eq!(report.entries, 0);
}

#[test]
fn reformatting_a_line_is_caught_at_that_line() {
    let (_d, path, mut lines) = log_of(5);
    lines[2] = lines[2].replacen(",", ", ", 1);
    write_lines(&path, &lines);
    let report = verify(&path).unwrap();
    assert_eq!(failure(&report).line, 3);
    assert_eq!(failure(&report).defect, Defect::NotCanonical);
}

#[test]
fn field_problems_are_named() {
    let (_d, path, lines) = log_of(3);
    let cases: [(String, Defect); 6] = [
        (lines[1].replace(r#""who":"local:root","#, ""), Defect::MissingField("who")),
        (
            lines[1].replace(r#""seq":2"#, r#""seq":"2""#),
            Defect::WrongType { field: "seq", expected: "a non-negative integer" },
        ),
        (
            lines[1].replace(r#""detail":"attempt 2""#, r#""detail":null"#),
            Defect::WrongType { field: "detail", expected: "a string" },
        ),
        (
            lines[1].replace(r#"{"seq":2"#, r#"{"admin":true,"seq":2"#),
            Defect::UnknownField("admin".into()),
        ),
        (lines[1].replace('{', "["), Defect::NotJson(String::new())),
        ("[1,2]".into(), Defect::NotObject),
    ];
    for (line, expected) in cases {
        let mut tampered = lines.clone();
        tampered[1] = line;
        write_lines(&path, &tampered);
        let report = verify(&path).unwrap();
        let f = failure(&report);
        assert_eq!(f.line, 2, "{f}");
        match (&f.defect, &expected) {
            (Defect::NotJson(_), Defect::NotJson(_)) => {
                assert!(f.to_string().starts_with("line 2: not valid JSON"), "{f}")
            }
            _ => assert_eq!(f.defect, expected),
        }
    }
}

#[test]
fn deleting_a_middle_line_is_caught_where_it_was() {
    let (_d, path, mut lines) = log_of(8);
    lines.remove(3);
    let (report, found) = rewritten(&path, &lines);
    assert_eq!(found, "line 4: seq 5 where 4 was expected");
    assert_eq!(report.entries, 3);
}

#[test]
fn inserting_a_forged_line_with_a_correct_prev_is_caught_at_the_displaced_line() {
    let (_d, path, mut lines) = log_of(8);
    insert_forged(&mut lines, 3);
    let (report, found) = rewritten(&path, &lines);
    // The forged line itself is indistinguishable; the original line 4, now line 5, is not.
    assert_eq!(found, "line 5: seq 4 where 5 was expected");
    assert_eq!(report.entries, 4);
}

#[test]
fn inserting_a_forged_line_and_renumbering_the_rest_is_caught_by_the_hash() {
    let (_d, path, mut lines) = log_of(8);
    insert_forged(&mut lines, 3);
    for line in lines.iter_mut().skip(4) {
        let mut e = parse(line);
        e.seq += 1;
        *line = e.to_line();
    }
    let (_, found) = rewritten(&path, &lines);
    assert_eq!(found, "line 5: prev hash does not match line 4");
}

#[test]
fn swapping_two_lines_is_caught_at_the_first_of_them() {
    let (_d, path, mut lines) = log_of(8);
    lines.swap(2, 5);
    let (_, found) = rewritten(&path, &lines);
    assert_eq!(found, "line 3: seq 6 where 3 was expected");

    let (_d, path, mut lines) = log_of(8);
    lines.swap(6, 7);
    let (_, found) = rewritten(&path, &lines);
    assert_eq!(found, "line 7: seq 8 where 7 was expected");
}

#[test]
fn truncating_the_last_line_midway_is_caught_at_that_line() {
    let (_d, path, lines) = log_of(8);
    let bytes = fs::read(&path).unwrap();
    let cut = bytes.len() - lines[7].len() / 2;
    fs::write(&path, &bytes[..cut]).unwrap();
    let report = verify(&path).unwrap();
    assert_eq!(failure(&report).line, 8);
    assert_eq!(failure(&report).defect, Defect::Incomplete);
    assert_eq!(report.entries, 7);
    assert_eq!(report.head.hash, hash_line(lines[6].as_bytes()));

    // Only the newline missing: still incomplete.
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(failure(&verify(&path).unwrap()).defect, Defect::Incomplete);
}

#[test]
fn appended_garbage_is_caught_at_its_line() {
    let (_d, path, lines) = log_of(8);
    let mut with_garbage = lines.clone();
    with_garbage.push("this is not an entry".into());
    write_lines(&path, &with_garbage);
    let report = verify(&path).unwrap();
    let f = failure(&report);
    assert_eq!(f.line, 9);
    assert!(f.to_string().starts_with("line 9: not valid JSON"), "{f}");
    assert_eq!(report.entries, 8);

    let mut empty_line = lines.clone();
    empty_line.push(String::new());
    write_lines(&path, &empty_line);
    assert_eq!(failure(&verify(&path).unwrap()).line, 9);

    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 1);
    bytes.extend_from_slice(&[0xff; 100_000]);
    fs::write(&path, &bytes).unwrap();
    let f = verify(&path).unwrap().failure.unwrap();
    assert_eq!(f.line, 9);
    assert!(matches!(f.defect, Defect::TooLong { .. }), "{f}");
}

#[test]
fn tail_deletion_and_last_line_rewrite_need_the_head_anchor() {
    // A chain commits only backwards: these leave a valid chain, but a different head.
    let (_d, path, mut lines) = log_of(5);
    let anchor = verify(&path).unwrap().head;

    lines.pop();
    write_lines(&path, &lines);
    let report = verify(&path).unwrap();
    assert!(report.is_intact());
    assert_eq!(report.entries, 4);
    assert_ne!(report.head, anchor);

    let (_d, path, mut lines) = log_of(5);
    let anchor = verify(&path).unwrap().head;
    lines[4] = lines[4].replace("local:root", "local:eve");
    write_lines(&path, &lines);
    let report = verify(&path).unwrap();
    assert!(report.is_intact());
    assert_eq!(report.head.seq, anchor.seq);
    assert_ne!(report.head.hash, anchor.hash);
}

/// A log of `n` entries written through a signing handle: (dir, log, key, head file, lines).
fn signed_log_of(n: u64) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let key = dir.path().join("audit.key");
    let head = dir.path().join("audit.head");
    let mut log = AuditLog::open_signed(&path, &key, &head).unwrap();
    for i in 1..=n {
        log.append(NewEntry::ok(
            Timestamp(1_700_000_000_000 + i),
            "token:tok-1",
            "vm.delete",
            format!("vm/vm{i}"),
        ))
        .unwrap();
    }
    drop(log);
    let lines = fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
    (dir, path, key, head, lines)
}

/// Rewrites `lines` into a valid chain (what someone without the key can always do).
fn rechain(lines: &[String]) -> Vec<String> {
    let mut prev = hangar_audit::GENESIS.to_string();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let mut e = parse(l);
        e.seq = i as u64 + 1;
        e.prev = prev.clone();
        let line = e.to_line();
        prev = hash_line(line.as_bytes());
        out.push(line);
    }
    out
}

/// Whether the tampered log at `path` is caught, by verification against the signed head and
/// by a writer reopening it.
fn caught(path: &Path, key: &Path, head: &Path) -> bool {
    let signed = hangar_audit::SignedHead::read(head).unwrap().unwrap();
    let (report, check) = hangar_audit::verify_against(path, &signed.head()).unwrap();
    let by_verify = report.failure.is_some() || check != hangar_audit::HeadCheck::Contains;
    let by_writer = AuditLog::open_signed(path, key, head).is_err();
    assert_eq!(by_verify, by_writer, "verification and the writer disagree");
    by_verify
}

#[test]
fn an_untouched_signed_log_verifies_and_reopens() {
    let (_d, path, key, head, _) = signed_log_of(5);
    assert!(!caught(&path, &key, &head));
    // Reopening and appending moves the signed head along.
    let mut log = AuditLog::open_signed(&path, &key, &head).unwrap();
    log.append(NewEntry::ok(Timestamp(1), "local:root", "vm.start", "vm/x")).unwrap();
    let signed = hangar_audit::SignedHead::read(&head).unwrap().unwrap();
    assert_eq!(signed.seq, 6);
    assert!(!caught(&path, &key, &head));
}

#[test]
fn every_kind_of_tampering_with_a_signed_log_is_caught() {
    type Tamper = fn(Vec<String>) -> Vec<String>;
    let cases: [(&str, Tamper); 9] = [
        ("edit the first line", |mut l| {
            l[0] = l[0].replace("token:tok-1", "local:eve");
            l
        }),
        ("edit a middle line", |mut l| {
            l[3] = l[3].replace("vm/vm4", "vm/other");
            l
        }),
        ("edit the last line", |mut l| {
            let last = l.len() - 1;
            l[last] = l[last].replace("vm.delete", "vm.read");
            l
        }),
        ("delete a middle line", |mut l| {
            l.remove(2);
            l
        }),
        ("reorder two lines", |mut l| {
            l.swap(1, 2);
            l
        }),
        ("truncate the tail", |mut l| {
            l.truncate(l.len() - 2);
            l
        }),
        ("edit the last line and recompute the chain", |mut l| {
            let last = l.len() - 1;
            l[last] = l[last].replace("vm.delete", "vm.read");
            rechain(&l)
        }),
        ("delete a middle line and recompute the chain", |mut l| {
            l.remove(2);
            rechain(&l)
        }),
        ("empty the log", |_| vec![]),
    ];
    for (what, tamper) in cases {
        let (_d, path, key, head, lines) = signed_log_of(6);
        write_lines(&path, &tamper(lines));
        assert!(caught(&path, &key, &head), "{what} went undetected");
    }
}

#[test]
fn a_forged_or_deleted_signed_head_is_caught() {
    // Rewrite the tail, then sign a matching head with a key of one's own.
    let (d, path, key, head, mut lines) = signed_log_of(4);
    lines[3] = lines[3].replace("vm/vm4", "vm/vm9");
    write_lines(&path, &lines);
    let eve = hangar_audit::HeadSigner::load_or_create(&d.path().join("eve.key")).unwrap();
    let forged = eve.sign(&verify(&path).unwrap().head, 5);
    forged.write(&head).unwrap();
    let err = AuditLog::open_signed(&path, &key, &head).unwrap_err();
    assert!(err.to_string().contains("not by the trusted key"), "{err}");
    // Deleting the head file does not help either.
    fs::remove_file(&head).unwrap();
    let err = AuditLog::open_signed(&path, &key, &head).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
