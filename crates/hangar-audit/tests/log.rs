//! Appending, reopening, the exact line format, permissions, torn tails and concurrency.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hangar_audit::{
    hash_line, verify, AuditError, AuditLog, Head, NewEntry, VerifyReport, GENESIS,
};
use hangar_core::clock::Timestamp;
use hangar_core::error::{Coded, ErrorCode};

fn entry(i: u64) -> NewEntry {
    NewEntry::ok(Timestamp(1_700_000_000_000 + i), "local:root", "vm.start", format!("vm/vm{i}"))
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

/// The log at `path` verifies, with `entries` entries; the report.
fn assert_intact(path: &Path, entries: u64) -> VerifyReport {
    let report = verify(path).unwrap();
    assert!(report.is_intact(), "{:?}", report.failure);
    assert_eq!(report.entries, entries);
    report
}

#[test]
fn append_then_verify_round_trip() {
    let (_dir, path) = fresh();
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(*log.head(), Head::genesis());
    let mut written = Vec::new();
    for i in 1..=5 {
        let e = log.append(entry(i)).unwrap();
        assert_eq!(e.seq, i);
        written.push(e);
    }
    assert_eq!(written[0].prev, GENESIS);
    for pair in written.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash());
    }
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    for (line, e) in lines.iter().zip(&written) {
        assert_eq!(*line, e.to_line());
    }
    assert!(text.ends_with('\n'));

    let report = assert_intact(&path, 5);
    assert_eq!(report.head.seq, 5);
    assert_eq!(report.head.hash, written[4].hash());
    assert_eq!(report.head, *log.head());
}

#[test]
fn empty_log_verifies_as_genesis() {
    let (_dir, path) = fresh();
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    let report = verify(log.path()).unwrap();
    assert!(report.is_intact());
    assert_eq!(report.entries, 0);
    assert_eq!(report.head, Head::genesis());
}

#[test]
fn reopen_continues_the_chain() {
    let (_dir, path) = fresh();
    let last = {
        let mut log = AuditLog::open(&path).unwrap();
        log.append(entry(1)).unwrap();
        log.append(entry(2)).unwrap()
    };
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.head().seq, 2);
    assert_eq!(log.head().hash, last.hash());
    assert!(log.recovered_tail().is_none());
    let next = log.append(entry(3)).unwrap();
    assert_eq!(next.seq, 3);
    assert_eq!(next.prev, last.hash());
    assert_intact(&path, 3);
}

#[test]
fn lines_are_exactly_the_pinned_bytes() {
    let (_dir, path) = fresh();
    let mut log = AuditLog::open(&path).unwrap();
    log.append(NewEntry::ok(Timestamp(1_700_000_000_000), "local:root", "vm.start", "vm/hello"))
        .unwrap();
    log.append(
        NewEntry::failed(
            Timestamp(1_700_000_000_500),
            "token:abc123",
            "vm.stop",
            "vm/nope",
            ErrorCode::VmNotFound,
        )
        .with_detail("said \"hi\"\nbye é"),
    )
    .unwrap();
    let expected = concat!(
        r#"{"seq":1,"at":1700000000000,"who":"local:root","what":"vm.start","target":"vm/hello","result":"ok","prev":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#,
        "\n",
        r#"{"seq":2,"at":1700000000500,"who":"token:abc123","what":"vm.stop","target":"vm/nope","result":"E_VM_NOT_FOUND","detail":"said \"hi\"\nbye é","prev":"sha256:6d0f1cebbbfa152ad8bc8fb3619d5af4ceaf65001c28c6afe025fc3de33d79e3"}"#,
        "\n",
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), expected);
    // The hash is SHA-256 of the line bytes without the newline (pinned with `sha256sum`).
    let line1 = expected.lines().next().unwrap();
    assert_eq!(
        hash_line(line1.as_bytes()),
        "sha256:6d0f1cebbbfa152ad8bc8fb3619d5af4ceaf65001c28c6afe025fc3de33d79e3"
    );
}

#[test]
fn new_file_has_mode_0600_and_loose_files_are_tightened() {
    let (_dir, path) = fresh();
    AuditLog::open(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    AuditLog::open(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn invalid_entries_are_rejected_and_nothing_is_written() {
    let (_dir, path) = fresh();
    let mut log = AuditLog::open(&path).unwrap();
    log.append(entry(1)).unwrap();
    let before = fs::read(&path).unwrap();
    let bad = [
        NewEntry { who: String::new(), ..entry(2) },
        NewEntry { target: String::new(), ..entry(2) },
        NewEntry { result: "failed".into(), ..entry(2) },
        NewEntry { result: "E_".into(), ..entry(2) },
        entry(2).with_detail("x".repeat(70_000)),
    ];
    for e in bad {
        let err = log.append(e).unwrap_err();
        assert!(matches!(err, AuditError::InvalidEntry { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
    }
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(log.append(entry(2)).unwrap().seq, 2);
    assert!(verify(&path).unwrap().is_intact());
}

fn write_log(path: &Path, n: u64) {
    let mut log = AuditLog::open(path).unwrap();
    for i in 1..=n {
        log.append(entry(i)).unwrap();
    }
}

fn append_raw(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn open_removes_a_torn_append_at_the_very_end() {
    let (_dir, path) = fresh();
    write_log(&path, 3);
    let intact = fs::read(&path).unwrap();
    let torn = br#"{"seq":4,"at":17000000"#;
    append_raw(&path, torn);
    assert_eq!(
        verify(&path).unwrap().failure.unwrap().to_string(),
        "line 4: incomplete line (no trailing newline): torn write or truncation"
    );

    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.recovered_tail(), Some(&torn[..]));
    assert_eq!(fs::read(&path).unwrap(), intact);
    assert_eq!(log.append(entry(4)).unwrap().seq, 4);
    assert_intact(&path, 4);
}

#[test]
fn open_removes_a_torn_first_append_and_a_whole_line_missing_its_newline() {
    let (_dir, path) = fresh();
    fs::write(&path, br#"{"se"#).unwrap();
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.recovered_tail(), Some(&br#"{"se"#[..]));
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(log.append(entry(1)).unwrap().seq, 1);

    // A complete line whose newline never reached the disk was never acknowledged either.
    let mut other = AuditLog::open(&path).unwrap();
    let e2 = other.append(entry(2)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes.pop();
    fs::write(&path, &bytes).unwrap();
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(log.recovered_tail(), Some(e2.to_line().as_bytes()));
    assert_eq!(log.head().seq, 1);
}

#[test]
fn append_removes_a_torn_tail_left_by_another_process() {
    let (_dir, path) = fresh();
    let mut log = AuditLog::open(&path).unwrap();
    log.append(entry(1)).unwrap();
    append_raw(&path, br#"{"seq":2,"at":1,"who":"lo"#);
    assert_eq!(log.append(entry(2)).unwrap().seq, 2);
    assert_eq!(log.recovered_tail(), Some(&br#"{"seq":2,"at":1,"who":"lo"#[..]));
    assert!(verify(&path).unwrap().is_intact());
}

#[test]
fn open_refuses_garbage_after_the_last_line_and_leaves_the_file_alone() {
    for garbage in [
        &b"garbage"[..],
        b"garbage\n",
        br#"{"seq":9,"at":1"#, // wrong seq: not the next append
        b"\n",
        b"\0\0\0\0",
    ] {
        let (_dir, path) = fresh();
        write_log(&path, 2);
        append_raw(&path, garbage);
        let before = fs::read(&path).unwrap();
        let err = AuditLog::open(&path).unwrap_err();
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::StoreCorrupt);
        assert_eq!(fs::read(&path).unwrap(), before, "{garbage:?}");
        assert!(!verify(&path).unwrap().is_intact());
    }
}

#[test]
fn append_refuses_a_log_that_went_backwards() {
    let (_dir, path) = fresh();
    let mut log = AuditLog::open(&path).unwrap();
    for i in 1..=3 {
        log.append(entry(i)).unwrap();
    }
    let text = fs::read_to_string(&path).unwrap();
    let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    fs::write(&path, first_two).unwrap();
    let err = log.append(entry(4)).unwrap_err();
    assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2);
}

#[test]
fn io_errors_map_to_e_io() {
    let (dir, _) = fresh();
    let err = AuditLog::open(dir.path().join("missing/audit.jsonl")).unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::Io);
    let err = verify(&dir.path().join("absent.jsonl")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Io);
}

#[test]
fn concurrent_handles_never_duplicate_or_skip_a_seq() {
    let (_dir, path) = fresh();
    AuditLog::open(&path).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Each thread has its own handle (own open file description), like a process.
                let mut log = AuditLog::open(&path).unwrap();
                (0..200)
                    .map(|i| {
                        log.append(NewEntry::ok(
                            Timestamp(i),
                            format!("local:t{t}"),
                            "vm.start",
                            "vm/x",
                        ))
                        .unwrap()
                        .seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
    assert_intact(&path, 400);
}

const CHILD_ENV: &str = "HANGAR_AUDIT_TEST_CHILD_LOG";

/// Not a test on its own: the body of a child process for `concurrent_processes_...`.
#[test]
#[ignore = "run as a child process by concurrent_processes_never_duplicate_or_skip_a_seq"]
fn child_appender() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut log = AuditLog::open(&path).unwrap();
    for i in 0..100 {
        log.append(NewEntry::ok(
            Timestamp(i),
            format!("local:pid{}", std::process::id()),
            "vm.start",
            "vm/x",
        ))
        .unwrap();
    }
}

#[test]
fn concurrent_processes_never_duplicate_or_skip_a_seq() {
    let (_dir, path) = fresh();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child_appender", "--ignored", "--test-threads=1"])
                .env(CHILD_ENV, &path)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_intact(&path, 300);
    // Three different writers really took part.
    let text = fs::read_to_string(&path).unwrap();
    let mut writers: Vec<&str> = text
        .lines()
        .map(|l| l.split("\"who\":\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    writers.sort_unstable();
    writers.dedup();
    assert_eq!(writers.len(), 3);
}
