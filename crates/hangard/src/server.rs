//! Serving connections: hyper directly, because the daemon must bound what a client can hold.
//!
//! Every connection, on the unix socket and on TCP, gets a header-read timeout (a client that
//! starts a request must finish its headers in time), an idle timeout (nothing sent either way
//! for that long closes it; event streams send keep-alives), and counts against a cap of
//! connections per peer (uid on the socket, IP address on TCP); beyond it, new connections are
//! closed at once. On TCP the connection is TLS unless the daemon was told
//! `--insecure-plaintext`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;

use crate::Peer;

/// What one peer may hold and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this after it starts.
    pub header_read: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle: Duration,
    /// Connections one peer may hold at once.
    pub per_peer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            // Enough for the API load benchmark's 1,000 concurrent clients from one peer.
            per_peer: 1024,
        }
    }
}

/// Who a connection counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PeerKey {
    Uid(u32),
    Ip(IpAddr),
    Unknown,
}

/// Open connections per peer; a [`Slot`] gives its place back when dropped.
#[derive(Default, Clone)]
struct Counts(Arc<Mutex<HashMap<PeerKey, usize>>>);

struct Slot(Counts, PeerKey);

impl Counts {
    fn take(&self, key: PeerKey, cap: usize) -> Option<Slot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), key))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// A stream that notes when bytes last moved, for the idle timeout.
struct Tracked<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once nothing has moved for `idle`.
async fn idle_for(last: Arc<AtomicU64>, epoch: Instant, idle: Duration) {
    loop {
        let quiet =
            epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

/// Serves one connection until it ends, stays idle too long, or `stop` fires.
async fn connection<S>(
    stream: S, peer: Peer, router: Router, limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Tracked { inner: stream, last: last.clone(), epoch };
    let service = tower::ServiceExt::map_request(
        router,
        move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        },
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    // With upgrades: `POST /v1/vms/{name}/exec` becomes a WebSocket.
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = idle_for(last, epoch, limits.idle) => {}
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// A listener the daemon serves: the unix socket or TCP (plain or TLS).
pub enum Listener {
    /// The unix socket; peers are identified by uid.
    Unix(tokio::net::UnixListener),
    /// TCP; with TLS unless `None`.
    Tcp(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>),
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn run(
    listener: Listener, router: Router, limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let counts = Counts::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = accept(&listener) => a,
        };
        let (stream, peer, key) = match accepted {
            Ok(a) => a,
            // A failed accept (a peer gone, descriptors exhausted) must not stop the server.
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = counts.take(key.clone(), limits.per_peer) else {
            // Over the cap: closed at once (dropping the stream).
            continue;
        };
        let (router, stop) = (router.clone(), stop_rx.clone());
        match (stream, &listener) {
            (Stream::Unix(s), _) => {
                tokio::spawn(async move {
                    connection(s, peer, router, limits, stop).await;
                    drop(slot);
                });
            }
            (Stream::Tcp(s), Listener::Tcp(_, Some(tls))) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    // The handshake counts as header reading: a peer that stalls in it is cut.
                    if let Ok(Ok(s)) = tokio::time::timeout(limits.header_read, tls.accept(s)).await
                    {
                        connection(s, peer, router, limits, stop).await;
                    }
                    drop(slot);
                });
            }
            (Stream::Tcp(s), _) => {
                tokio::spawn(async move {
                    connection(s, peer, router, limits, stop).await;
                    drop(slot);
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, Peer, PeerKey)> {
    match listener {
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let uid = s.peer_cred().ok().map(|c| c.uid());
            let key = uid.map_or(PeerKey::Unknown, PeerKey::Uid);
            Ok((Stream::Unix(s), Peer { uid, tcp: None }, key))
        }
        Listener::Tcp(l, _) => {
            let (s, addr) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Stream::Tcp(s), Peer { uid: None, tcp: Some(addr) }, PeerKey::Ip(addr.ip())))
        }
    }
}

/// The TLS identity of the TCP listener: given (`--tls-cert`, `--tls-key`), or made once and
/// kept in `<home>/tls/` (a self-signed certificate clients pin by its fingerprint).
pub struct Identity {
    /// What the listener presents.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// `sha256:<hex>` of the certificate (DER): what `HANGAR_TLS_FINGERPRINT` pins.
    pub fingerprint: String,
}

/// Why the TCP listener's TLS identity cannot be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file (or the directory for them) cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not PEM of what it should hold.
    #[error("{}: not a PEM {what}: {detail}", path.display())]
    NotPem {
        /// The file.
        path: std::path::PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: std::path::PathBuf,
    },
    /// rustls refuses the certificate and key.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate cannot be generated.
    #[error("TLS: {0}")]
    Generate(#[from] rcgen::Error),
}

impl TlsError {
    fn io(path: &Path, source: std::io::Error) -> TlsError {
        TlsError::Io { path: path.to_path_buf(), source }
    }
}

/// Where the self-signed identity lives in a home.
pub fn tls_files(home: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (home.join("tls/cert.pem"), home.join("tls/key.pem"))
}

/// Loads the TLS identity: `given` (cert, key), or the self-signed one in `home`, made if
/// absent (key `0600`).
pub fn identity(home: &Path, given: Option<(&Path, &Path)>) -> Result<Identity, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_file, key_file) = match given {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => {
            let (c, k) = tls_files(home);
            if !c.exists() || !k.exists() {
                make_self_signed(&c, &k)?;
            }
            (c, k)
        }
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::io(p, e));
    let cert_pem = read(&cert_file)?;
    let key_pem = read(&key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            path: cert_file.clone(),
            what: "certificate",
            detail: format!("{e:?}"),
        })?;
    let Some(first) = certs.first() else {
        return Err(TlsError::NoCertificate { path: cert_file });
    };
    let fingerprint = hangar_api::client::fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NotPem {
        path: key_file.clone(),
        what: "private key",
        detail: format!("{e:?}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Identity { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), fingerprint })
}

fn make_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let names = vec!["hangard".to_string(), "localhost".to_string()];
    let made = rcgen::generate_simple_self_signed(names)?;
    if let Some(dir) = cert.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| TlsError::io(dir, e))?;
    }
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), TlsError> {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| TlsError::io(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| TlsError::io(path, e))
    };
    write(key, &made.signing_key.serialize_pem(), 0o600)?;
    write(cert, &made.cert.pem(), 0o644)
}
