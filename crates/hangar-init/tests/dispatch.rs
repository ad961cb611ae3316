//! The agent's end of "malformed or oversized frames end the session with an error, never a
//! panic or a hung agent": whatever a host sends (well-formed frames for sessions that do not
//! exist, garbage, oversized lengths, torn frames), the agent returns when its input ends and
//! everything it wrote is well-formed frames, the first of them the SyncOk.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hangar_agent_proto::*;
use hangar_init::agent::Agent;
use hangar_init::reap::WaitPid;
use proptest::prelude::*;

/// What the agent writes, kept for the test.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Frames a host may send that start nothing on the machine running the test: sessions that
/// do not exist, `info` (reads /proc), and every control frame. (Exec, file and tree
/// requests would act on this host, and `sync` would flush its disks.)
fn harmless() -> impl Strategy<Value = Frame> {
    let session = 1..50u32;
    prop_oneof![
        (prop::collection::vec(any::<u32>(), 0..3), ".{0,10}")
            .prop_map(|(versions, client)| Frame::Hello(Hello { versions, client })),
        any::<u64>().prop_map(|nonce| Frame::Sync { nonce }),
        session.clone().prop_map(|session| Frame::Open { session, request: Request::Info }),
        (session.clone(), 0u8..3, prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(session, stream, bytes)| Frame::Data { session, stream, bytes }),
        (session.clone(), 0u8..3).prop_map(|(session, stream)| Frame::Eof { session, stream }),
        (session.clone(), 0u8..3, any::<u32>())
            .prop_map(|(session, stream, bytes)| Frame::Credit { session, stream, bytes }),
        (session.clone(), any::<i32>())
            .prop_map(|(session, signal)| Frame::Signal { session, signal }),
        (session.clone(), any::<u16>(), any::<u16>())
            .prop_map(|(session, rows, cols)| Frame::Resize { session, rows, cols }),
        // Frames only an agent sends: refused, not obeyed.
        (session.clone(), any::<i32>())
            .prop_map(|(session, code)| Frame::Exit { session, status: ExitStatus::Code(code) }),
        session.prop_map(|session| Frame::Reply { session, value: serde_json::json!({}) }),
    ]
}

/// A piece of the host's stream: a frame, raw noise, or an oversized length.
#[derive(Debug, Clone)]
enum Piece {
    Frame(Frame),
    Noise(Vec<u8>),
    Oversized(u32),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => harmless().prop_map(Piece::Frame),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Noise),
        1 => ((MAX_FRAME as u32 + 1)..u32::MAX).prop_map(Piece::Oversized),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_host_stream_ends_the_agent_cleanly_with_only_whole_frames_written(
        pieces in prop::collection::vec(piece(), 0..24),
        nonce in any::<u64>(),
    ) {
        let mut input = Vec::new();
        Frame::Sync { nonce }.encode(&mut input);
        for p in &pieces {
            match p {
                Piece::Frame(f) => f.encode(&mut input),
                Piece::Noise(n) => input.extend_from_slice(n),
                Piece::Oversized(len) => input.extend_from_slice(&len.to_be_bytes()),
            }
        }
        let out = Shared::default();
        let agent = Agent::new(Box::new(out.clone()), Arc::new(WaitPid));
        // Returns at the end of the input: the agent never waits for a frame that is not
        // coming.
        agent.serve(&input[..], None);
        let written = out.0.lock().unwrap().clone();
        let mut decoder = Decoder::new();
        decoder.push(&written);
        let mut frames = Vec::new();
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return Err(TestCaseError::fail(format!("the agent wrote a bad frame: {e}"))),
            }
        }
        prop_assert_eq!(frames.first(), Some(&Frame::SyncOk { nonce }));
    }
}
