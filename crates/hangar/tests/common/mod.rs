//! An in-process `hangard` for the CLI tests.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use hangard::embedded::{Embedded, Embedding, Tcp};

/// A daemon serving a home's socket; stops when dropped.
pub type Served = Embedded;

/// Serves `engine` on `home`'s socket; with `reconcile`, the fleet's loop runs at that interval
/// (without, passes happen only when asked for).
pub fn serve(home: &Path, engine: hangar_qemu::QemuEngine, reconcile: Option<Duration>) -> Served {
    let options = hangard::Options {
        reconcile_interval: reconcile.unwrap_or(hangard::Options::default().reconcile_interval),
        ..hangard::Options::default()
    };
    serve_with(home, engine, options, reconcile.is_some())
}

/// Serves `engine` with `options`; the reconcile loop runs only with `reconcile`. With uids
/// mapped, the socket is open to other users (as `hangard --map-uid` makes it).
pub fn serve_with(
    home: &Path, engine: hangar_qemu::QemuEngine, options: hangard::Options, reconcile: bool,
) -> Served {
    let how = Embedding {
        socket: home.join("hangard.sock"),
        shared_socket: !options.uids.0.is_empty(),
        tcp: Tcp::Off,
        reconcile,
    };
    Embedded::start(how, move || hangard::Daemon::with_options(engine, options).unwrap())
}

/// Serves `engine` on `home`'s socket and on TLS over TCP (the self-signed identity made in
/// `home`), no reconcile loop; returns the TCP address and the certificate's fingerprint.
pub fn serve_tls(
    home: &Path, engine: hangar_qemu::QemuEngine,
) -> (Served, std::net::SocketAddr, String) {
    let identity = hangard::server::identity(home, None).unwrap();
    let how = Embedding {
        socket: home.join("hangard.sock"),
        shared_socket: false,
        tcp: Tcp::Tls(identity.acceptor),
        reconcile: false,
    };
    let served = Embedded::start(how, move || hangard::Daemon::new(engine).unwrap());
    let addr = served.tcp.unwrap();
    (served, addr, identity.fingerprint)
}
