//! The API's edges: slow and idle clients are cut, one peer cannot hold unbounded connections,
//! and TCP is TLS with a pinned certificate (the CLI side: `hangar/tests/access.rs`). No guest
//! is booted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hangar_api::client::{send, ClientError, Endpoint};

mod common;
use common::TestDaemon;

fn limits(header_read: u64, idle: u64, per_peer: usize) -> hangard::Options {
    hangard::Options {
        limits: hangard::server::Limits {
            header_read: Duration::from_secs(header_read),
            idle: Duration::from_secs(idle),
            per_peer,
        },
        ..hangard::Options::default()
    }
}

/// Whether the server closes `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before closing is fine; keep reading to the close.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let d = TestDaemon::start_with(|_| limits(1, 300, 64));
    let mut s = TcpStream::connect(d.tcp).unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(20)));
    // A complete request is served as usual.
    assert_eq!(d.over_tcp("GET", "/v1/health", None, None).0, 200);
}

#[test]
fn an_idle_connection_is_closed() {
    let d = TestDaemon::start_with(|_| limits(300, 1, 64));
    let mut s = TcpStream::connect(d.tcp).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(20)));
}

#[test]
fn one_peer_cannot_hold_more_connections_than_the_cap() {
    let d = TestDaemon::start_with(|_| limits(300, 300, 3));
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(d.tcp).unwrap()).collect();
    // The fourth is closed at once, before it says anything.
    let mut fourth = TcpStream::connect(d.tcp).unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(20)));
    // The ones it holds still work; letting one go makes room again.
    let mut first = held.into_iter().next().unwrap();
    first.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = d.over_tcp("GET", "/v1/health", None, None);
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot never came back");
    }
}

#[test]
fn tcp_is_tls_with_a_pinned_certificate() {
    let d = TestDaemon::start_tls();
    let pin = d.fingerprint.clone().unwrap();
    assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
    let token = d.token("admin");
    let at = |fingerprint: Option<String>, token: &str| Endpoint::Tcp {
        addr: d.tcp.to_string(),
        fingerprint,
        token: token.to_string(),
    };
    let r = send(&at(Some(pin.clone()), &token), "GET", "/v1/vms", None, Duration::from_secs(10))
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"[]".as_slice()));
    // Another certificate (a server in the middle) is refused before a byte of the request.
    let wrong = format!("sha256:{}", "0".repeat(64));
    match send(&at(Some(wrong), &token), "GET", "/v1/vms", None, Duration::from_secs(10)) {
        Err(ClientError::Tls(e)) => assert!(e.contains("not the pinned"), "{e}"),
        other => panic!("expected a pin failure, got {other:?}"),
    }
    // Plain HTTP to the TLS listener gets nowhere.
    assert!(send(&at(None, &token), "GET", "/v1/vms", None, Duration::from_secs(10))
        .map(|r| r.status == 200)
        .unwrap_or(false)
        .eq(&false));
    // The identity is made once and kept (0600 key), so the pin holds across restarts.
    let (cert, key) = hangard::server::tls_files(d.home.path());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let again = hangard::server::identity(d.home.path(), None).unwrap();
    assert_eq!(again.fingerprint, pin);
    assert!(cert.exists());
}
