//! The wire format: every frame survives encode → decode whatever the chunking; garbage, a
//! torn frame before a reconnect, an oversized length or a bad payload is an error or skipped,
//! never a panic, and the decoder finds its place again at the next marker.

use hangar_agent_proto::*;
use proptest::prelude::*;

fn decode_all(bytes: &[u8], chunk: usize, mut d: Decoder) -> (Vec<Frame>, Vec<ProtoError>) {
    let (mut frames, mut errors) = (Vec::new(), Vec::new());
    for piece in bytes.chunks(chunk.max(1)) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => errors.push(e),
            }
        }
    }
    (frames, errors)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            prop::collection::vec(".{0,12}", 1..4),
            prop::collection::vec("[A-Z]{1,4}=.{0,6}", 0..3),
            proptest::option::of("/[a-z]{0,8}"),
            proptest::option::of(any::<[u16; 2]>()),
        )
            .prop_map(|(argv, env, cwd, tty)| Request::Exec(ExecRequest {
                argv,
                env,
                cwd,
                user: None,
                tty
            })),
        "/[a-z/]{0,20}".prop_map(|path| Request::Get { path }),
        ("/[a-z]{1,8}", any::<u32>(), any::<i64>()).prop_map(|(path, mode, mtime)| Request::Put {
            path,
            mode,
            mtime
        }),
        "/[a-z/]{0,20}".prop_map(|path| Request::GetTree { path }),
        "/[a-z/]{0,20}".prop_map(|path| Request::PutTree { path }),
        Just(Request::Info),
        Just(Request::Sync),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let session = 1..u32::MAX;
    prop_oneof![
        (prop::collection::vec(any::<u32>(), 0..3), ".{0,10}")
            .prop_map(|(versions, client)| Frame::Hello(Hello { versions, client })),
        any::<u64>().prop_map(|nonce| Frame::Sync { nonce }),
        any::<u64>().prop_map(|nonce| Frame::SyncOk { nonce }),
        (session.clone(), request())
            .prop_map(|(session, request)| Frame::Open { session, request }),
        (session.clone(), 0u8..3, prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(session, stream, bytes)| Frame::Data { session, stream, bytes }),
        (session.clone(), 0u8..3).prop_map(|(session, stream)| Frame::Eof { session, stream }),
        (session.clone(), 0u8..3, any::<u32>())
            .prop_map(|(session, stream, bytes)| { Frame::Credit { session, stream, bytes } }),
        (session.clone(), any::<i32>())
            .prop_map(|(session, signal)| Frame::Signal { session, signal }),
        (session.clone(), any::<u16>(), any::<u16>())
            .prop_map(|(session, rows, cols)| { Frame::Resize { session, rows, cols } }),
        (session.clone(), any::<i32>(), any::<bool>()).prop_map(|(session, n, sig)| Frame::Exit {
            session,
            status: if sig { ExitStatus::Signal(n) } else { ExitStatus::Code(n) }
        }),
        (session, ".{0,8}", ".{0,20}").prop_map(|(session, code, message)| Frame::Error {
            session,
            error: AgentError { code, message }
        }),
    ]
}

proptest! {
    #[test]
    fn frames_survive_encoding_in_any_chunks(
        frames in prop::collection::vec(frame(), 1..12),
        chunk in 1usize..64,
    ) {
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        let (got, errors) = decode_all(&bytes, chunk, Decoder::synced());
        prop_assert!(errors.is_empty(), "{errors:?}");
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn garbage_never_panics_and_a_sync_after_it_is_found(
        garbage in prop::collection::vec(any::<u8>(), 0..2000),
        after in prop::collection::vec(frame(), 0..4),
        nonce in any::<u64>(),
        chunk in 1usize..97,
    ) {
        // A reconnect: whatever was in the pipe, then a marker and a sync, then real frames.
        let mut bytes = garbage.clone();
        Frame::Sync { nonce }.encode(&mut bytes);
        for f in &after {
            f.encode(&mut bytes);
        }
        let (got, _errors) = decode_all(&bytes, chunk, Decoder::new());
        // The garbage may hold markers and even well-formed frames; what matters is that the
        // decoder ends in step: the sync and everything after it, in order, at the end.
        let mut want = vec![Frame::Sync { nonce }];
        want.extend(after);
        prop_assert!(got.ends_with(&want), "got {got:?}");
    }

    #[test]
    fn random_bytes_on_a_synced_stream_are_errors_not_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        chunk in 1usize..64,
    ) {
        let _ = decode_all(&bytes, chunk, Decoder::synced());
    }
}

#[test]
fn an_oversized_length_is_refused_before_anything_is_buffered() {
    let mut d = Decoder::synced();
    d.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
    assert_eq!(d.next_frame(), Err(ProtoError::Oversized { len: MAX_FRAME + 1 }));
    // Lost now: the rest of that "frame" is skipped up to the next marker.
    d.push(&[0u8; 64]);
    assert_eq!(d.next_frame(), Ok(None));
    let mut bytes = Vec::new();
    Frame::Sync { nonce: 7 }.encode(&mut bytes);
    d.push(&bytes);
    assert_eq!(d.next_frame(), Ok(Some(Frame::Sync { nonce: 7 })));
}

#[test]
fn bad_payloads_and_unknown_kinds_are_coded_errors() {
    let frame = |kind: u8, payload: &[u8]| {
        let mut b = ((5 + payload.len()) as u32).to_be_bytes().to_vec();
        b.push(kind);
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(payload);
        b
    };
    for (bytes, want) in [
        (frame(0x7e, b""), "unknown frame kind 0x7e"),
        (frame(0x10, b"{\"op\":\"format_disk\"}"), "bad Open payload"),
        (frame(0x03, b"\x01\x02"), "bad Sync payload: 2 bytes where 8 belong"),
        (frame(0x12, b""), "bad Eof payload"),
    ] {
        let mut d = Decoder::synced();
        d.push(&bytes);
        let e = d.next_frame().unwrap_err();
        assert!(e.to_string().contains(want), "{e} / {want}");
    }
    let mut d = Decoder::synced();
    d.push(&[0, 0, 0, 2, 0x11, 0]);
    assert_eq!(d.next_frame(), Err(ProtoError::Short { len: 2 }));
}

#[test]
fn a_frame_never_starts_with_the_marker_and_a_sync_always_does() {
    let mut b = Vec::new();
    Frame::Eof { session: u32::MAX, stream: 2 }.encode(&mut b);
    assert_eq!(b[0], 0, "lengths stay under 2^24");
    let mut s = Vec::new();
    Frame::SyncOk { nonce: 1 }.encode(&mut s);
    assert_eq!(s[0], MARKER);
}

#[test]
fn exit_codes_follow_the_shell_convention() {
    assert_eq!(ExitStatus::Code(7).shell_code(), 7);
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
}
