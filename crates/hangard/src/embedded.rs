//! A daemon served from its own thread and runtime, inside another program: the CLI's and the
//! API's integration tests use it, so that one place knows how a daemon is started and stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Daemon;

/// Where an [`Embedded`] daemon listens besides its unix socket.
pub enum Tcp {
    /// Only the unix socket.
    Off,
    /// Also on an ephemeral 127.0.0.1 port, plain HTTP (token-protected).
    Plain,
    /// Also on an ephemeral 127.0.0.1 port, over TLS.
    Tls(tokio_rustls::TlsAcceptor),
}

/// How to start an [`Embedded`] daemon.
pub struct Embedding {
    /// The unix socket it serves.
    pub socket: PathBuf,
    /// Whether the socket is open to other users (as `hangard --map-uid` makes it).
    pub shared_socket: bool,
    /// The TCP listener, if any.
    pub tcp: Tcp,
    /// Whether the fleet's reconcile loop runs (without, passes happen only when asked for).
    pub reconcile: bool,
}

/// A running embedded daemon; stops, and waits for its thread, when dropped.
pub struct Embedded {
    /// The TCP listener's address, when [`Embedding::tcp`] asked for one.
    pub tcp: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    /// Starts the daemon `make` builds (on the new thread, so engines need not be `Send`
    /// across a runtime) and returns once it accepts connections.
    ///
    /// # Panics
    /// When the socket or the TCP port cannot be bound or the daemon cannot be made: this is
    /// for tests and tools, which have nothing better to do with those failures.
    pub fn start(how: Embedding, make: impl FnOnce() -> Daemon + Send + 'static) -> Embedded {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the embedded daemon");
            rt.block_on(serve(how, make, ready_tx, stopped));
        });
        let tcp = ready_rx.recv().expect("the embedded daemon started");
        Embedded { tcp, stop: Some(stop), thread: Some(thread) }
    }
}

async fn serve(
    how: Embedding, make: impl FnOnce() -> Daemon,
    ready: std::sync::mpsc::Sender<Option<SocketAddr>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = crate::bind(&how.socket, how.shared_socket).expect("bind the socket");
    let daemon = Arc::new(make());
    if how.reconcile {
        daemon.start_reconciler();
        daemon.start_gateway();
    }
    let (tcp, tls) = match how.tcp {
        Tcp::Off => (None, None),
        Tcp::Plain => (Some(tcp_listener().await), None),
        Tcp::Tls(acceptor) => (Some(tcp_listener().await), Some(acceptor)),
    };
    let addr = tcp.as_ref().map(|l| l.local_addr().expect("a bound address"));
    let (tcp_stop, tcp_stopped) = tokio::sync::oneshot::channel::<()>();
    let tcp_served = tcp.map(|listener| {
        tokio::spawn(crate::serve_tcp(listener, daemon.clone(), tls, async {
            let _ = tcp_stopped.await;
        }))
    });
    ready.send(addr).expect("the starter waits");
    crate::serve(listener, daemon, async {
        let _ = stopped.await;
    })
    .await
    .expect("serve the socket");
    let _ = tcp_stop.send(());
    if let Some(served) = tcp_served {
        served.await.expect("the TCP server did not panic").expect("serve TCP");
    }
}

async fn tcp_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
