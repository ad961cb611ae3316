//! The host's end of "malformed or oversized frames end the session with an error, never a
//! panic or a hung agent": a fake agent that syncs and welcomes properly, then answers an exec
//! with anything at all (frames for other sessions, garbage, oversized lengths) and hangs up.
//! The client's call always returns, with an exit status or an error.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use hangar_agent::{Connection, Exec};
use hangar_agent_proto::*;
use proptest::prelude::*;

/// What the fake agent sends after the handshake.
#[derive(Debug, Clone)]
enum Piece {
    Frame(Frame),
    Noise(Vec<u8>),
    Oversized(u32),
}

fn frame() -> impl Strategy<Value = Frame> {
    // Session 1 is the exec the client opens; others are strangers.
    let session = 0..4u32;
    prop_oneof![
        (session.clone(), 1u8..3, prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(session, stream, bytes)| Frame::Data { session, stream, bytes }),
        (session.clone(), 0u8..3).prop_map(|(session, stream)| Frame::Eof { session, stream }),
        (session.clone(), 0u8..3, any::<u32>())
            .prop_map(|(session, stream, bytes)| Frame::Credit { session, stream, bytes }),
        (session.clone(), any::<i32>())
            .prop_map(|(session, code)| Frame::Exit { session, status: ExitStatus::Code(code) }),
        (session.clone(), ".{0,8}").prop_map(|(session, message)| Frame::Error {
            session,
            error: AgentError { code: "E_X".into(), message }
        }),
        session.clone().prop_map(|session| Frame::Reply { session, value: serde_json::json!(1) }),
        any::<u64>().prop_map(|nonce| Frame::SyncOk { nonce }),
        session.prop_map(|session| Frame::Open { session, request: Request::Info }),
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => frame().prop_map(Piece::Frame),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Noise),
        1 => ((MAX_FRAME as u32 + 1)..u32::MAX).prop_map(Piece::Oversized),
    ]
}

/// Reads host frames until `want` matches one; its value.
fn await_frame<T>(
    stream: &mut std::os::unix::net::UnixStream, d: &mut Decoder,
    want: impl Fn(&Frame) -> Option<T>,
) -> T {
    let mut buf = [0u8; 4096];
    loop {
        while let Ok(Some(f)) = d.next_frame() {
            if let Some(v) = want(&f) {
                return v;
            }
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the client hung up during the handshake");
        d.push(&buf[..n]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_agent_answer_ends_the_call(pieces in prop::collection::vec(piece(), 0..16)) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let fake = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut d = Decoder::new();
            let nonce = await_frame(&mut stream, &mut d, |f| match f {
                Frame::Sync { nonce } => Some(*nonce),
                _ => None,
            });
            let mut out = Vec::new();
            Frame::SyncOk { nonce }.encode(&mut out);
            stream.write_all(&out).unwrap();
            await_frame(&mut stream, &mut d, |f| matches!(f, Frame::Hello(_)).then_some(()));
            let welcome = Welcome {
                version: 1,
                agent: "fake".into(),
                capabilities: vec!["exec".into(), "files".into(), "info".into()],
            };
            let mut out = Vec::new();
            Frame::Welcome(welcome).encode(&mut out);
            for p in &pieces {
                match p {
                    Piece::Frame(f) => f.encode(&mut out),
                    Piece::Noise(n) => out.extend_from_slice(n),
                    Piece::Oversized(len) => out.extend_from_slice(&len.to_be_bytes()),
                }
            }
            // The client may stop reading early (an Exit or an Error ends its call).
            let _ = stream.write_all(&out);
            // Hanging up ends whatever the client still waits for.
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let socket_for_client = socket.clone();
        std::thread::spawn(move || {
            let outcome = Connection::open_with(&socket_for_client, Duration::from_secs(5), 1)
                .map(|mut c| {
                    let exec = Exec { argv: vec!["true".into()], ..Exec::default() };
                    c.exec(exec, None, &mut Vec::new(), &mut Vec::new()).map(|_| ())
                });
            let _ = tx.send(format!("{outcome:?}"));
        });
        let ended = rx.recv_timeout(Duration::from_secs(30));
        prop_assert!(ended.is_ok(), "the client's call never returned");
        fake.join().unwrap();
    }
}
