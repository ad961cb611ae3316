//! The client against an in-process fake QMP server with scripted replies. No sleep is used to
//! synchronise: the server waits for the client's commands and the tests hand signals over
//! channels.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hangar_core::error::{Coded, ErrorCode};
use hangar_qmp::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

fn event_of(item: Option<EventItem>) -> QmpEvent {
    match item {
        Some(EventItem::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// `res` failed as a protocol error (E_ENGINE_FAILED) whose message contains `expect`;
/// `context` goes into the failure message.
fn expect_protocol_error<T: std::fmt::Debug>(
    res: Result<T, QmpError>, expect: &str, context: &str,
) {
    match res {
        Err(e @ QmpError::Protocol { .. }) => {
            assert!(e.to_string().contains(expect), "{context}: {e} vs {expect}");
            assert_eq!(e.code(), ErrorCode::EngineFailed);
        }
        other => panic!("{context}: {other:?}"),
    }
}

#[tokio::test]
async fn greeting_is_validated_and_version_exposed() {
    let (qmp, mut peer, _fake) = connected().await;
    assert_eq!(qmp.version().major, 10);
    assert_eq!(qmp.version().micro, 2);
    assert_eq!(qmp.greeting().capabilities, vec!["oob".to_string()]);
    assert!(qmp.is_connected());
    assert_eq!(qmp.timeout(), DEFAULT_CALL_TIMEOUT);
    let (v, ()) = tokio::join!(qmp.query_version(), async {
        let cmd = peer.expect("query-version").await;
        peer.reply(&cmd, json!({"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}))
            .await;
    });
    assert_eq!(v.unwrap().to_string(), "10.0.2");
}

#[tokio::test]
async fn invalid_greetings_are_protocol_errors() {
    let cases: Vec<(&[u8], &str)> = vec![
        (b"this is not json\n", "not valid JSON"),
        (b"[1, 2]\n", "expected an object"),
        (b"{\"return\": {}}\n", "missing field \"QMP\""),
        (b"{\"QMP\": {\"capabilities\": []}}\n", "missing field \"version\""),
        (
            b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 10, \"minor\": 0}, \"package\": \"\"}, \"capabilities\": []}}\n",
            "missing field \"micro\"",
        ),
        (b"{\"QMP\": {\"version\": ", "middle of a message"),
    ];
    for (greeting, expect) in cases {
        let fake = Fake::new();
        let (res, ()) = tokio::join!(Qmp::connect(&fake.path, CONNECT), async {
            let mut p = fake.accept().await;
            p.send_raw(greeting).await;
            if greeting.ends_with(b"\n") {
                // Hold the connection until the client gives up on it.
                assert!(p.try_recv().await.is_none());
            }
        });
        expect_protocol_error(res, expect, &String::from_utf8_lossy(greeting));
    }
}

#[tokio::test]
async fn connection_closed_before_greeting_is_disconnected() {
    let fake = Fake::new();
    let (res, ()) = tokio::join!(Qmp::connect(&fake.path, CONNECT), async {
        drop(fake.accept().await);
    });
    assert!(matches!(res, Err(QmpError::Disconnected { .. })), "{res:?}");
}

#[tokio::test]
async fn missing_greeting_times_out_at_the_connect_deadline() {
    let fake = Fake::new();
    let deadline = Duration::from_millis(150);
    let started = Instant::now();
    let (res, ()) = tokio::join!(Qmp::connect(&fake.path, deadline), async {
        let mut p = fake.accept().await;
        assert!(p.try_recv().await.is_none());
    });
    match res {
        Err(e @ QmpError::Timeout { .. }) => {
            assert_eq!(e.code(), ErrorCode::Timeout);
            assert!(e.to_string().contains("greeting"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= deadline);
}

#[tokio::test]
async fn refused_capabilities_are_a_command_error() {
    let fake = Fake::new();
    let (res, ()) = tokio::join!(Qmp::connect(&fake.path, CONNECT), async {
        let mut p = fake.accept().await;
        p.send(greeting()).await;
        let cmd = p.expect("qmp_capabilities").await;
        p.reply_error(&cmd, "CommandNotFound", "Capabilities negotiation is already complete")
            .await;
        assert!(p.try_recv().await.is_none());
    });
    match res {
        Err(QmpError::Command { command, class, .. }) => {
            assert_eq!(command, "qmp_capabilities");
            assert_eq!(class, "CommandNotFound");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn replies_are_matched_by_id_out_of_order() {
    let (qmp, mut peer, _fake) = connected().await;
    let client = async {
        tokio::join!(
            qmp.execute("first", None),
            qmp.execute("second", Some(json!({"x": 1}))),
            qmp.execute("third", None),
        )
    };
    let server = async {
        let mut cmds = Vec::new();
        for _ in 0..3 {
            cmds.push(peer.try_recv().await.unwrap());
        }
        let ids: std::collections::HashSet<String> =
            cmds.iter().map(|c| c["id"].to_string()).collect();
        assert_eq!(ids.len(), 3, "ids are unique: {cmds:?}");
        // Reply in reverse order, each with its own command's name.
        for cmd in cmds.iter().rev() {
            let name = cmd["execute"].clone();
            let args = cmd.get("arguments").cloned().unwrap_or(Value::Null);
            peer.reply(cmd, json!({"was": name, "args": args})).await;
        }
    };
    let ((a, b, c), ()) = tokio::join!(client, server);
    assert_eq!(a.unwrap(), json!({"was": "first", "args": null}));
    assert_eq!(b.unwrap(), json!({"was": "second", "args": {"x": 1}}));
    assert_eq!(c.unwrap(), json!({"was": "third", "args": null}));
}

#[tokio::test]
async fn events_interleave_with_replies() {
    let (qmp, mut peer, _fake) = connected().await;
    let mut events = qmp.events();
    let mut second = qmp.events();
    let (status, ()) = tokio::join!(qmp.query_status(), async {
        let cmd = peer.expect("query-status").await;
        peer.event("STOP", None).await;
        peer.reply(&cmd, json!({"running": false, "status": "paused"})).await;
        peer.event("RESUME", None).await;
        peer.event("SHUTDOWN", Some(json!({"guest": true, "reason": "guest-shutdown"}))).await;
    });
    let status = status.unwrap();
    assert!(!status.running);
    assert_eq!(status.status, RunState::Paused);

    let stop = event_of(events.recv().await);
    assert_eq!(stop.kind, Event::Stop);
    assert_eq!(stop.name, "STOP");
    assert_eq!(stop.data, Value::Null);
    assert_eq!(stop.timestamp, Timestamp { seconds: 1_700_000_000, microseconds: 123_456 });
    assert_eq!(event_of(events.recv().await).kind, Event::Resume);
    assert_eq!(
        event_of(events.recv().await).kind,
        Event::Shutdown { guest: true, reason: "guest-shutdown".into() }
    );
    // Every subscriber sees every event.
    for want in [Event::Stop, Event::Resume] {
        assert_eq!(event_of(second.recv().await).kind, want);
    }
}

#[tokio::test]
async fn command_errors_map_to_the_command_variant() {
    let (qmp, mut peer, _fake) = connected().await;
    let (res, ()) = tokio::join!(qmp.execute("bogus", None), async {
        let cmd = peer.expect("bogus").await;
        peer.reply_error(&cmd, "CommandNotFound", "The command bogus has not been found").await;
    });
    let err = res.unwrap_err();
    match &err {
        QmpError::Command { command, class, desc } => {
            assert_eq!(command, "bogus");
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "The command bogus has not been found");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::EngineFailed);
    // The connection is still fine.
    let (res, ()) = tokio::join!(qmp.stop(), async {
        let cmd = peer.expect("stop").await;
        peer.reply(&cmd, json!({})).await;
    });
    res.unwrap();
    assert!(qmp.is_connected());
}

#[tokio::test]
async fn calls_time_out_and_late_replies_are_discarded() {
    let options = QmpOptions { call_timeout: Duration::from_millis(100), ..QmpOptions::default() };
    let (qmp, mut peer, _fake) = connected_with(options).await;
    let (timed_out_tx, timed_out_rx) = tokio::sync::oneshot::channel();
    let client = async {
        let err = qmp.execute("slow", None).await.unwrap_err();
        match &err {
            QmpError::Timeout { operation, after } => {
                assert_eq!(operation, "slow");
                assert_eq!(*after, Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.code(), ErrorCode::Timeout);
        timed_out_tx.send(()).unwrap();
        // A per-call override: this one gets a long limit.
        qmp.with_timeout(Duration::from_secs(30)).execute("next", None).await
    };
    let server = async {
        let slow = peer.expect("slow").await;
        timed_out_rx.await.unwrap();
        // The late reply arrives after the caller gave up: dropped, not a protocol error.
        peer.reply(&slow, json!("late")).await;
        let next = peer.expect("next").await;
        peer.reply(&next, json!("on time")).await;
    };
    let (res, ()) = tokio::join!(client, server);
    assert_eq!(res.unwrap(), json!("on time"));
    assert!(qmp.is_connected());
}

#[tokio::test]
async fn per_call_timeout_override_is_shorter_than_the_default() {
    let (qmp, mut peer, _fake) = connected().await;
    let short = qmp.with_timeout(Duration::from_millis(50));
    assert_eq!(short.timeout(), Duration::from_millis(50));
    let (res, _cmd) = tokio::join!(short.query_migrate(), peer.expect("query-migrate"));
    assert!(matches!(res, Err(QmpError::Timeout { .. })), "{res:?}");
    assert_eq!(qmp.timeout(), DEFAULT_CALL_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn the_default_timeout_applies_in_virtual_time() {
    let (qmp, mut peer, _fake) = connected().await;
    let started = tokio::time::Instant::now();
    let (res, _cmd) = tokio::join!(qmp.cont(), peer.expect("cont"));
    assert!(matches!(res, Err(QmpError::Timeout { .. })), "{res:?}");
    assert!(started.elapsed() >= DEFAULT_CALL_TIMEOUT);
}

#[tokio::test]
async fn a_cancelled_call_does_not_poison_the_connection() {
    let (qmp, mut peer, _fake) = connected().await;
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel();
    let client = async {
        tokio::select! {
            _ = qmp.execute("abandoned", None) => panic!("no reply was sent"),
            _ = got_rx => {}
        }
        dropped_tx.send(()).unwrap();
        qmp.execute("after", None).await
    };
    let server = async {
        let cmd = peer.expect("abandoned").await;
        got_tx.send(()).unwrap();
        dropped_rx.await.unwrap();
        peer.reply(&cmd, json!(1)).await;
        let after = peer.expect("after").await;
        peer.reply(&after, json!(2)).await;
    };
    let (res, ()) = tokio::join!(client, server);
    assert_eq!(res.unwrap(), json!(2));
}

#[tokio::test]
async fn disconnect_fails_pending_calls_and_ends_events() {
    let (qmp, mut peer, _fake) = connected().await;
    let mut events = qmp.events();
    let client = async { tokio::join!(qmp.execute("a", None), qmp.query_status()) };
    let server = async move {
        peer.try_recv().await.unwrap();
        peer.try_recv().await.unwrap();
        peer.event("STOP", None).await;
        drop(peer);
    };
    let ((a, b), ()) = tokio::join!(client, server);
    for (res, name) in [(a.map(drop), "a"), (b.map(drop), "query-status")] {
        match res {
            Err(e @ QmpError::Disconnected { .. }) => {
                assert_eq!(e.code(), ErrorCode::EngineFailed);
                assert!(e.to_string().contains(&format!("(command {name})")), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The event sent before the close is delivered, then the stream ends.
    assert_eq!(event_of(events.recv().await).kind, Event::Stop);
    assert_eq!(events.recv().await, None);
    assert!(!qmp.is_connected());
    assert!(matches!(qmp.stop().await, Err(QmpError::Disconnected { .. })));
    assert_eq!(qmp.events().recv().await, None);
    assert_eq!(qmp.events().try_recv(), TryRecv::Ended);
}

#[tokio::test]
async fn quit_counts_a_close_before_the_reply_as_success() {
    let (qmp, mut peer, _fake) = connected().await;
    let mut events = qmp.events();
    let (res, ()) = tokio::join!(qmp.quit(), async move {
        peer.expect("quit").await;
        peer.event("SHUTDOWN", Some(json!({"guest": false, "reason": "host-qmp-quit"}))).await;
        drop(peer);
    });
    res.unwrap();
    assert_eq!(
        event_of(events.recv().await).kind,
        Event::Shutdown { guest: false, reason: "host-qmp-quit".into() }
    );
    assert_eq!(events.recv().await, None);
}

type BadInput = fn(&Value) -> Vec<u8>;

#[tokio::test]
async fn malformed_input_is_a_protocol_error_and_closes_the_connection() {
    let cases: Vec<(&str, BadInput, &str)> = vec![
        ("not json", |_| b"{not json}\n".to_vec(), "malformed JSON"),
        ("not utf-8", |_| b"\xff\xfe\n".to_vec(), "malformed JSON"),
        ("not an object", |_| b"[1, 2, 3]\n".to_vec(), "expected an object"),
        ("unknown id", |_| b"{\"return\": {}, \"id\": 999}\n".to_vec(), "unknown id 999"),
        (
            "string id",
            |_| b"{\"return\": {}, \"id\": \"abc\"}\n".to_vec(),
            "not an id this client sent",
        ),
        ("no id", |_| b"{\"return\": {}}\n".to_vec(), "without an id"),
        (
            "error without desc",
            |cmd| {
                format!("{{\"error\": {{\"class\": \"GenericError\"}}, \"id\": {}}}\n", cmd["id"])
                    .into_bytes()
            },
            "missing field \"desc\"",
        ),
        (
            "error not an object",
            |cmd| format!("{{\"error\": \"boom\", \"id\": {}}}\n", cmd["id"]).into_bytes(),
            "expected an object",
        ),
        (
            "event without timestamp",
            |_| b"{\"event\": \"STOP\"}\n".to_vec(),
            "missing field \"timestamp\"",
        ),
        (
            "SHUTDOWN without reason",
            |_| {
                b"{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n"
                    .to_vec()
            },
            "missing field \"reason\"",
        ),
        ("unrecognised message", |_| b"{\"hello\": 1}\n".to_vec(), "unrecognised message"),
        (
            "second greeting",
            |_| {
                let mut g = serde_json::to_vec(&greeting()).unwrap();
                g.push(b'\n');
                g
            },
            "second greeting",
        ),
        (
            "oversize line",
            |_| {
                let mut line = format!("{{\"return\": \"{}\"}}", "x".repeat(2000)).into_bytes();
                line.push(b'\n');
                line
            },
            "1024-byte limit",
        ),
    ];
    for (name, bad, expect) in cases {
        let options = QmpOptions { max_line_bytes: 1024, ..QmpOptions::default() };
        let (qmp, mut peer, _fake) = connected_with(options).await;
        let mut events = qmp.events();
        let (res, ()) = tokio::join!(qmp.execute("probe", None), async {
            let cmd = peer.expect("probe").await;
            peer.send_raw(&bad(&cmd)).await;
            // The client shuts the socket down.
            assert!(peer.try_recv().await.is_none(), "{name}");
        });
        expect_protocol_error(res, expect, name);
        assert!(!qmp.is_connected(), "{name}");
        assert_eq!(events.recv().await, None, "{name}");
        // Later calls report the same protocol failure.
        assert!(matches!(qmp.stop().await, Err(QmpError::Protocol { .. })), "{name}");
    }
}

#[tokio::test]
async fn a_message_cut_off_by_eof_is_a_protocol_error() {
    let (qmp, mut peer, _fake) = connected().await;
    let (res, ()) = tokio::join!(qmp.execute("probe", None), async move {
        let cmd = peer.expect("probe").await;
        peer.send_raw(format!("{{\"return\": {{}}, \"id\": {}", cmd["id"]).as_bytes()).await;
        drop(peer);
    });
    expect_protocol_error(res, "middle of a message", "");
}

#[tokio::test]
async fn a_line_over_the_default_16_mib_cap_is_rejected() {
    let (qmp, mut peer, _fake) = connected().await;
    let (res, ()) = tokio::join!(qmp.execute("probe", None), async {
        peer.expect("probe").await;
        let huge = vec![b' '; DEFAULT_MAX_LINE_BYTES + 1];
        // The client hangs up part-way; a failed write is expected.
        let _ = peer.w.write_all(&huge).await;
    });
    expect_protocol_error(res, "16777216-byte limit", "");
}

#[tokio::test]
async fn a_typed_reply_with_missing_fields_is_a_protocol_error() {
    let (qmp, mut peer, _fake) = connected().await;
    let (res, ()) = tokio::join!(qmp.query_status(), async {
        let cmd = peer.expect("query-status").await;
        peer.reply(&cmd, json!({"running": true})).await;
    });
    match res {
        Err(QmpError::Protocol { command, detail }) => {
            assert_eq!(command.as_deref(), Some("query-status"));
            assert!(detail.contains("missing field \"status\""), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // The stream itself was well-formed, so the connection stays usable.
    let (res, ()) = tokio::join!(qmp.query_status(), async {
        let cmd = peer.expect("query-status").await;
        peer.reply(&cmd, json!({"running": true, "status": "running"})).await;
    });
    assert_eq!(res.unwrap().status, RunState::Running);
}

#[tokio::test]
async fn typed_queries_and_control_commands() {
    let (qmp, mut peer, _fake) = connected().await;
    let client = async {
        let status = qmp.query_status().await.unwrap();
        assert_eq!(status, StatusInfo { running: false, status: RunState::Prelaunch });
        assert_eq!(qmp.query_status().await.unwrap().status, RunState::InternalError);
        assert_eq!(
            qmp.query_status().await.unwrap().status,
            RunState::Other("brand-new-state".into())
        );
        let mig = qmp.query_migrate().await.unwrap();
        assert_eq!(mig.status, MigrationStatus::None);
        let mig = qmp.query_migrate().await.unwrap();
        assert_eq!(mig.status, MigrationStatus::Failed);
        assert_eq!(mig.error_desc.as_deref(), Some("No space left on device"));
        assert_eq!(mig.ram, Some(RamStats { transferred: 1, remaining: 2, total: 3 }));
        qmp.stop().await.unwrap();
        qmp.cont().await.unwrap();
        qmp.system_powerdown().await.unwrap();
        qmp.system_reset().await.unwrap();
        qmp.migrate("file:/tmp/vm.mem").await.unwrap();
        qmp.migrate_incoming("file:/tmp/vm.mem").await.unwrap();
        qmp.quit().await.unwrap();
    };
    let server = async {
        for st in ["prelaunch", "internal-error", "brand-new-state"] {
            let cmd = peer.expect("query-status").await;
            peer.reply(&cmd, json!({"running": false, "status": st})).await;
        }
        let cmd = peer.expect("query-migrate").await;
        peer.reply(&cmd, json!({})).await;
        let cmd = peer.expect("query-migrate").await;
        peer.reply(
            &cmd,
            json!({"status": "failed", "error-desc": "No space left on device",
                   "ram": {"transferred": 1, "remaining": 2, "total": 3}}),
        )
        .await;
        for name in ["stop", "cont", "system_powerdown", "system_reset"] {
            let cmd = peer.expect(name).await;
            assert!(cmd.get("arguments").is_none(), "{cmd}");
            peer.reply(&cmd, json!({})).await;
        }
        let cmd = peer.expect("migrate").await;
        assert_eq!(cmd["arguments"], json!({"uri": "file:/tmp/vm.mem"}));
        peer.reply(&cmd, json!({})).await;
        let cmd = peer.expect("migrate-incoming").await;
        assert_eq!(cmd["arguments"], json!({"uri": "file:/tmp/vm.mem"}));
        peer.reply(&cmd, json!({})).await;
        let cmd = peer.expect("quit").await;
        peer.reply(&cmd, json!({})).await;
    };
    tokio::join!(client, server);
}

/// Generic code can demand only the read-only half.
async fn observe(q: &impl QmpQuery) -> RunState {
    q.query_status().await.unwrap().status
}

#[tokio::test]
async fn queries_work_through_the_read_only_trait() {
    let (qmp, mut peer, _fake) = connected().await;
    let (st, ()) = tokio::join!(observe(&qmp), async {
        let cmd = peer.expect("query-status").await;
        peer.reply(&cmd, json!({"running": true, "status": "running"})).await;
    });
    assert_eq!(st, RunState::Running);
}

#[tokio::test]
async fn a_lagging_subscriber_gets_an_explicit_lag_item() {
    let options = QmpOptions { event_capacity: 2, ..QmpOptions::default() };
    let (qmp, mut peer, _fake) = connected_with(options).await;
    let mut events = qmp.events();
    assert_eq!(events.capacity(), 2);
    let (res, ()) = tokio::join!(qmp.execute("probe", None), async {
        let cmd = peer.expect("probe").await;
        for n in 0..5 {
            peer.event("TICK", Some(json!({"n": n}))).await;
        }
        peer.reply(&cmd, json!({})).await;
    });
    // The reply comes after the events on the stream, so all five have been dispatched.
    res.unwrap();
    assert_eq!(events.recv().await, Some(EventItem::Lagged { missed: 3 }));
    for n in 3..5 {
        let e = event_of(events.recv().await);
        assert_eq!(e.kind, Event::Other { name: "TICK".into(), data: json!({"n": n}) });
    }
    assert_eq!(events.try_recv(), TryRecv::Empty);
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_socket() {
    let (qmp, mut peer, _fake) = connected().await;
    let clone = qmp.with_timeout(Duration::from_secs(1));
    drop(qmp);
    assert!(clone.is_connected());
    drop(clone);
    assert!(peer.try_recv().await.is_none());
}

#[tokio::test]
async fn connect_retries_until_the_socket_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let server_path = path.clone();
    let server = tokio::spawn(async move {
        // A delay, not synchronisation: the client must keep retrying meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = tokio::net::UnixListener::bind(&server_path).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let mut peer = Peer { r: tokio::io::BufReader::new(r), w };
        peer.handshake().await;
        peer
    });
    let started = Instant::now();
    let qmp = Qmp::connect(&path, Duration::from_secs(10)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(qmp.version().major, 10);
    assert_eq!(qmp.path(), path);
    let _peer = server.await.unwrap();
}

#[tokio::test]
async fn connect_gives_up_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // Never appears.
    let missing = dir.path().join("never.sock");
    // Exists but nobody listens (a stale socket from a dead QEMU).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for (path, kind) in
        [(missing, std::io::ErrorKind::NotFound), (stale, std::io::ErrorKind::ConnectionRefused)]
    {
        let deadline = Duration::from_millis(150);
        let started = Instant::now();
        let err = Qmp::connect(&path, deadline).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed >= deadline, "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(err.code(), ErrorCode::EngineUnavailable);
        match err {
            QmpError::Connect { path: p, waited, source } => {
                assert_eq!(p, path);
                assert!(waited >= deadline);
                assert_eq!(source.kind(), kind);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn connect_fails_fast_on_an_error_retrying_cannot_fix() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than sun_path allows.
    let path = dir.path().join("x".repeat(200));
    let started = Instant::now();
    let err = Qmp::connect(&path, Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_duplicate_reply_is_a_protocol_error() {
    let (qmp, mut peer, _fake) = connected().await;
    let (res, first) = tokio::join!(qmp.execute("once", None), async {
        let cmd = peer.expect("once").await;
        peer.reply(&cmd, json!(1)).await;
        cmd
    });
    assert_eq!(res.unwrap(), json!(1));
    let (res, ()) = tokio::join!(qmp.stop(), async {
        peer.reply(&first, json!(1)).await;
        // The client may or may not have sent `stop` before it shut the socket down.
        while peer.try_recv().await.is_some() {}
    });
    match res {
        Err(QmpError::Protocol { detail, .. }) => {
            assert!(detail.contains("unknown id"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn many_abandoned_calls_stay_recognised() {
    let (qmp, mut peer, _fake) = connected().await;
    let short = qmp.with_timeout(Duration::from_millis(1));
    let (late_tx, late_rx) = tokio::sync::oneshot::channel();
    let client = async {
        let calls: Vec<_> = (0..50).map(|_| short.execute("lost", None)).collect();
        for call in calls {
            assert!(matches!(call.await, Err(QmpError::Timeout { .. })));
        }
        late_tx.send(()).unwrap();
        qmp.execute("after", None).await
    };
    let server = async {
        let mut lost = Vec::new();
        for _ in 0..50 {
            lost.push(peer.expect("lost").await);
        }
        late_rx.await.unwrap();
        for cmd in &lost {
            peer.reply(cmd, json!("late")).await;
        }
        let after = peer.expect("after").await;
        peer.reply(&after, json!("ok")).await;
    };
    let (res, ()) = tokio::join!(client, server);
    assert_eq!(res.unwrap(), json!("ok"));
}
