//! An in-process `hangard` for the CLI tests.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A daemon serving a home's socket; stops when dropped.
pub struct Served {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

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
    home: &Path,
    engine: hangar_qemu::QemuEngine,
    options: hangard::Options,
    reconcile: bool,
) -> Served {
    let socket = home.join("hangard.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = hangard::bind(&socket, !options.uids.0.is_empty()).unwrap();
            let daemon = Arc::new(hangard::Daemon::with_options(engine, options).unwrap());
            if reconcile {
                daemon.start_reconciler();
            }
            ready_tx.send(()).unwrap();
            hangard::serve(listener, daemon, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        })
    });
    ready_rx.recv().unwrap();
    Served {
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// Serves `engine` on `home`'s socket and on TLS over TCP (the self-signed identity made in
/// `home`), no reconcile loop; returns the TCP address and the certificate's fingerprint.
pub fn serve_tls(
    home: &Path,
    engine: hangar_qemu::QemuEngine,
) -> (Served, std::net::SocketAddr, String) {
    let socket = home.join("hangard.sock");
    let identity = hangard::server::identity(home, None).unwrap();
    let fingerprint = identity.fingerprint.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = hangard::bind(&socket, false).unwrap();
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            let daemon = Arc::new(hangard::Daemon::new(engine).unwrap());
            let (tcp_stop, tcp_stopped) = tokio::sync::oneshot::channel::<()>();
            let tcp_served = tokio::spawn(hangard::serve_tcp(
                tcp,
                daemon.clone(),
                Some(identity.acceptor),
                async {
                    let _ = tcp_stopped.await;
                },
            ));
            ready_tx.send(addr).unwrap();
            hangard::serve(listener, daemon, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            let _ = tcp_stop.send(());
            let _ = tcp_served.await;
        })
    });
    let addr = ready_rx.recv().unwrap();
    (
        Served {
            stop: Some(stop),
            thread: Some(thread),
        },
        addr,
        fingerprint,
    )
}
