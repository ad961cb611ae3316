//! `exec` with a terminal, end to end on this host: the host client, the agent, and this
//! crate's binary as the terminal helper (`--hangar-tty-exec`), over a unix socket as QEMU
//! serves the port.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use hangar_agent::{AgentClientError, Connection, Exec};
use hangar_core::contracts::ExitStatus;
use hangar_init::agent::Agent;
use hangar_init::reap::WaitPid;

/// An agent that gives terminals, serving connections on a fresh socket.
fn agent(terminals: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            let out = Box::new(stream.try_clone().unwrap());
            let agent = if terminals {
                let helper = PathBuf::from(env!("CARGO_BIN_EXE_hangar-init"));
                Agent::in_guest(out, Arc::new(WaitPid), helper)
            } else {
                Agent::new(out, Arc::new(WaitPid))
            };
            agent.serve(stream, None);
        }
    });
    (dir, socket)
}

/// Output handed to the test as it arrives.
struct Chunks(Sender<Vec<u8>>);

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects output until it contains `want`; panics after a minute without it.
fn read_until(rx: &Receiver<Vec<u8>>, seen: &mut String, want: &str) {
    while !seen.contains(want) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(e) => panic!("no {want:?} in {seen:?}: {e}"),
        }
    }
}

/// Starts `script` under `sh -c` on a terminal of `size`; the test writes its input to the
/// returned stream and reads its output from the receiver.
#[allow(clippy::type_complexity)]
fn start(
    socket: &std::path::Path, script: &str, size: [u16; 2],
) -> (
    hangar_agent::Signaller,
    std::os::unix::net::UnixStream,
    Receiver<Vec<u8>>,
    std::thread::JoinHandle<Result<ExitStatus, AgentClientError>>,
) {
    let mut c = Connection::open(socket).unwrap();
    assert!(c.welcome().capabilities.contains(&"tty".to_string()), "{:?}", c.welcome());
    let signaller = c.signaller();
    let (input, to_program) = std::os::unix::net::UnixStream::pair().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let exec = Exec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        tty: Some(size),
        ..Exec::default()
    };
    let run = std::thread::spawn(move || {
        c.exec(exec, Some(Box::new(input)), &mut Chunks(tx), &mut std::io::sink())
    });
    (signaller, to_program, rx, run)
}

#[test]
fn a_terminal_has_the_asked_size_follows_resizes_and_is_the_controlling_one() {
    let (_d, socket) = agent(true);
    let (signaller, mut input, output, run) =
        start(&socket, "stty size; tty; echo err >&2; read x; stty size; exit 3", [33, 101]);
    let mut seen = String::new();
    read_until(&output, &mut seen, "33 101");
    // stdout and stderr are both the terminal, which the program sees as one.
    read_until(&output, &mut seen, "/dev/pts/");
    read_until(&output, &mut seen, "err");
    signaller.resize(40, 120).unwrap();
    input.write_all(b"\n").unwrap();
    read_until(&output, &mut seen, "40 120");
    assert_eq!(run.join().unwrap().unwrap(), ExitStatus::Code(3), "{seen:?}");
    // The terminal's line discipline: input echoes, newlines go out as CR LF.
    assert!(seen.contains("33 101\r\n"), "{seen:?}");
    // Both hold the connection open (the stdin feeder waits on `input`), and the socket serves
    // one at a time.
    drop((signaller, input));

    // Ctrl-C typed on the terminal interrupts the program: the terminal is its controlling
    // one and it runs in the foreground.
    let (_, mut input, output, run) = start(&socket, "echo ready; exec sleep 300", [24, 80]);
    read_until(&output, &mut String::new(), "ready");
    input.write_all(&[0x03]).unwrap();
    assert_eq!(run.join().unwrap().unwrap(), ExitStatus::Signal(2));
}

#[test]
fn a_missing_or_unexecutable_program_on_a_terminal_is_coded_like_without() {
    let (dir, socket) = agent(true);
    let mut c = Connection::open(&socket).unwrap();
    let exec =
        |argv: &str| Exec { argv: vec![argv.into()], tty: Some([24, 80]), ..Exec::default() };
    let not_executable = dir.path().join("data");
    std::fs::write(&not_executable, "echo no\n").unwrap();
    let not_executable = not_executable.to_str().unwrap();
    for (program, code) in
        [("no-such-program", "E_AGENT_NOT_FOUND"), (not_executable, "E_AGENT_DENIED")]
    {
        let e = c.exec(exec(program), None, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert!(matches!(&e, AgentClientError::Agent(a) if a.code == code), "{program}: {e}");
    }
}

#[test]
fn an_agent_without_terminals_refuses_one_with_a_code() {
    let (_d, socket) = agent(false);
    let mut c = Connection::open(&socket).unwrap();
    let exec = Exec { argv: vec!["true".into()], tty: Some([24, 80]), ..Exec::default() };
    let e = c.exec(exec, None, &mut Vec::new(), &mut Vec::new()).unwrap_err();
    assert_eq!(
        hangar_core::error::Coded::code(&e),
        hangar_core::error::ErrorCode::AgentUnsupported
    );
}
