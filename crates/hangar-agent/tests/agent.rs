//! The host client against the real agent code (hangar-init's), over a unix socket as QEMU
//! serves the port: the agent runs host programs here, so no guest is needed.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_agent::{AgentClientError, Connection, Exec};
use hangar_core::contracts::ExitStatus;
use hangar_core::error::{Coded, ErrorCode};
use hangar_init::agent::Agent;
use hangar_init::reap::WaitPid;

/// An agent serving one connection after another on a fresh socket, written `garbage` first
/// (the tail of a frame an earlier connection never read).
fn agent(garbage: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            stream.write_all(garbage).unwrap();
            let agent = Agent::new(Box::new(stream.try_clone().unwrap()), Arc::new(WaitPid));
            agent.serve(stream, None);
        }
    });
    (dir, socket)
}

fn sh(script: &str) -> Exec {
    Exec { argv: vec!["sh".into(), "-c".into(), script.into()], ..Exec::default() }
}

fn run(
    c: &mut Connection, exec: Exec, stdin: Option<&'static [u8]>,
) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let input = stdin.map(|b| Box::new(b) as Box<dyn std::io::Read + Send>);
    let status = c.exec(exec, input, &mut out, &mut err).unwrap();
    (status, out, err)
}

#[test]
fn exit_codes_signals_and_streams_come_back_as_the_program_made_them() {
    let (_d, socket) = agent(b"");
    let mut c = Connection::open(&socket).unwrap();
    assert!(c.welcome().capabilities.contains(&"exec".to_string()), "{:?}", c.welcome());
    let (status, out, err) = run(&mut c, sh("echo out; echo err >&2; exit 7"), None);
    assert_eq!((status, &out[..], &err[..]), (ExitStatus::Code(7), &b"out\n"[..], &b"err\n"[..]));
    let (status, _, _) = run(&mut c, sh("kill -9 $$"), None);
    assert_eq!((status, status.shell_code()), (ExitStatus::Signal(9), 137));
    let (status, out, _) =
        run(&mut c, Exec { argv: vec!["cat".into()], ..Exec::default() }, Some(b"hi\n"));
    assert_eq!((status, &out[..]), (ExitStatus::Code(0), &b"hi\n"[..]));
    let (_, out, _) = run(
        &mut c,
        Exec {
            env: vec!["GREETING=hello".into()],
            cwd: Some("/tmp".into()),
            ..sh("echo $GREETING $PWD")
        },
        None,
    );
    assert_eq!(out, b"hello /tmp\n");
}

#[test]
fn a_missing_program_is_named_and_coded() {
    let (_d, socket) = agent(b"");
    let mut c = Connection::open(&socket).unwrap();
    let e = c
        .exec(
            Exec { argv: vec!["/no/such/program".into()], ..Exec::default() },
            None,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .unwrap_err();
    match &e {
        AgentClientError::Agent(a) => assert_eq!(a.code, "E_AGENT_NOT_FOUND", "{e}"),
        other => panic!("{other:?}"),
    }
    // The connection goes on.
    assert_eq!(run(&mut c, sh("exit 3"), None).0, ExitStatus::Code(3));
}

#[test]
fn output_larger_than_the_window_arrives_whole_and_in_order() {
    let (_d, socket) = agent(b"");
    let mut c = Connection::open(&socket).unwrap();
    // 4 MiB: sixty-four windows' worth, so the agent must wait for credit again and again.
    let (status, out, _) = run(
        &mut c,
        sh("i=0; while [ $i -lt 65536 ]; do printf '%063d\\n' $i; i=$((i+1)); done"),
        None,
    );
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out.len(), 65536 * 64);
    for (i, line) in out.chunks(64).enumerate().step_by(4099) {
        assert_eq!(line, format!("{i:063}\n").as_bytes());
    }
    // And input larger than the window reaches the program whole.
    let input: &'static [u8] = Box::leak(vec![b'x'; 1 << 20].into_boxed_slice());
    let (_, out, _) =
        run(&mut c, Exec { argv: vec!["wc".into(), "-c".into()], ..Exec::default() }, Some(input));
    assert_eq!(String::from_utf8(out).unwrap().trim(), "1048576");
}

#[test]
fn a_torn_frame_left_by_an_earlier_connection_is_skipped() {
    // The length and kind of a data frame, cut short: the agent's old output.
    let (_d, socket) = agent(b"\x00\x00\x10\x00\x11\x00\x00\x00\x05\x01partial output");
    let mut c = Connection::open(&socket).unwrap();
    assert_eq!(run(&mut c, sh("exit 0"), None).0, ExitStatus::Code(0));
    // A second client after the first hung up: the agent starts over.
    drop(c);
    let mut c = Connection::open(&socket).unwrap();
    assert_eq!(run(&mut c, sh("echo again"), None).1, b"again\n");
}

#[test]
fn an_agent_that_never_answers_is_a_coded_error_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // Listening, accepting, never answering: a guest without an agent.
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream.unwrap());
        }
    });
    let started = Instant::now();
    let e = Connection::open_with(&socket, Duration::from_millis(200), 3).err().expect("no agent");
    assert_eq!(e.code(), ErrorCode::AgentUnavailable, "{e}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(5), "{took:?}");
    // No socket at all: the same code, at once.
    let e = Connection::open(&dir.path().join("none.sock")).err().expect("no socket");
    assert_eq!(e.code(), ErrorCode::AgentUnavailable, "{e}");
}

#[test]
fn info_and_sync_answer() {
    let (_d, socket) = agent(b"");
    let mut c = Connection::open(&socket).unwrap();
    let info = c.info().unwrap();
    assert!(info["agent"].as_str().unwrap().starts_with("hangar-init "), "{info}");
    assert!(info["memory"]["total_kib"].as_u64().unwrap() > 0, "{info}");
    c.sync().unwrap();
}

#[test]
fn files_go_in_and_out_whole_with_their_mode_and_mtime() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (_d, socket) = agent(b"");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("copied");
    // 5 MiB of varied bytes: more than the window and the extra credit's first grant.
    let data: Vec<u8> =
        (0..5u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut c = Connection::open(&socket).unwrap();
    let input: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
    c.put(target.to_str().unwrap(), 0o640, 1_700_000_000, Box::new(input)).unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!((meta.permissions().mode() & 0o7777, meta.mtime()), (0o640, 1_700_000_000));
    let mut back = Vec::new();
    let got = c.get(target.to_str().unwrap(), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!((got.mode, got.mtime, got.size), (0o640, 1_700_000_000, data.len() as u64));
    // Failures are coded and leave nothing behind; the connection goes on.
    let e = c.get(dir.path().join("missing").to_str().unwrap(), &mut Vec::new()).unwrap_err();
    assert!(matches!(&e, AgentClientError::Agent(a) if a.code == "E_IO"), "{e}");
    let nowhere = dir.path().join("no/such/dir/f");
    let e = c.put(nowhere.to_str().unwrap(), 0o644, 0, Box::new(&b"x"[..])).unwrap_err();
    assert!(matches!(&e, AgentClientError::Agent(a) if a.code == "E_IO"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the copied file");
    assert_eq!(run(&mut c, sh("exit 0"), None).0, ExitStatus::Code(0));
}
