//! A minimal HTTP/1.1 client for `hangard`: over its unix socket, or over TCP with TLS (the
//! server's certificate pinned by its SHA-256 fingerprint) and a bearer token. One request per
//! connection (`Connection: close`), bodies with `Content-Length` or chunked encoding. Enough
//! for the CLI; it is not a general HTTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request failed before a response arrived.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket.
    NotRunning(std::io::Error),
    /// The exchange broke or the response was malformed.
    Protocol(String),
    /// The server is not the one pinned, or TLS failed.
    Tls(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(e) => write!(f, "hangard is not running: {e}"),
            ClientError::Protocol(s) => write!(f, "bad response from hangard: {s}"),
            ClientError::Tls(s) => write!(f, "TLS with hangard failed: {s}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Where a daemon answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Its unix socket (the peer's uid is the principal).
    Unix(PathBuf),
    /// TCP (`host:port`), with a bearer token; over TLS when `fingerprint` pins the server's
    /// certificate (`sha256:<hex>`), else plain HTTP.
    Tcp {
        /// `host:port`.
        addr: String,
        /// The server certificate's pinned fingerprint; `None` for plain HTTP.
        fingerprint: Option<String>,
        /// The bearer token.
        token: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, fingerprint: Some(_), .. } => write!(f, "https://{addr}"),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// `sha256:<hex>` of a certificate's DER bytes: how servers are pinned.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The fingerprint of the first certificate in a PEM document (`hangard`'s `tls/cert.pem`).
pub fn fingerprint_of_pem(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    Some(fingerprint(cert.as_ref()))
}

/// Trusts exactly one certificate, by fingerprint (a self-signed daemon has no CA to check);
/// signatures are still checked, so only the holder of its key can complete the handshake.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self, end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>, _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let found = fingerprint(end_entity.as_ref());
        if found.eq_ignore_ascii_case(&self.fingerprint) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {found}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self, message: &[u8], cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self, message: &[u8], cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Sends one request to `endpoint` and reads the whole response.
pub fn send(
    endpoint: &Endpoint, method: &str, path: &str, body: Option<&[u8]>, timeout: Duration,
) -> Result<Response, ClientError> {
    send_streaming(endpoint, method, path, body, timeout, None)
}

/// Where a streamed body's lines go, each without its newline.
pub type LineSink<'a> = &'a mut dyn FnMut(&[u8]);

/// Like [`send`], but a successful (2xx) chunked body goes to `lines` a line at a time, as it
/// arrives (without its newline), instead of into the response; `timeout` bounds each read.
pub fn send_streaming(
    endpoint: &Endpoint, method: &str, path: &str, body: Option<&[u8]>, timeout: Duration,
    lines: Option<LineSink<'_>>,
) -> Result<Response, ClientError> {
    match endpoint {
        Endpoint::Unix(socket) => {
            let stream = UnixStream::connect(socket).map_err(ClientError::NotRunning)?;
            let proto = |e: std::io::Error| ClientError::Protocol(e.to_string());
            stream.set_read_timeout(Some(timeout)).map_err(proto)?;
            stream.set_write_timeout(Some(timeout)).map_err(proto)?;
            exchange(stream, method, path, body, "", lines)
        }
        Endpoint::Tcp { addr, fingerprint, token } => {
            let stream = TcpStream::connect(addr).map_err(ClientError::NotRunning)?;
            let proto = |e: std::io::Error| ClientError::Protocol(e.to_string());
            stream.set_read_timeout(Some(timeout)).map_err(proto)?;
            stream.set_write_timeout(Some(timeout)).map_err(proto)?;
            let auth = format!("Authorization: Bearer {token}\r\n");
            match fingerprint {
                None => exchange(stream, method, path, body, &auth, lines),
                Some(pin) => {
                    let (conn, stream) = tls_handshake(stream, pin)?;
                    let tls = rustls::StreamOwned::new(conn, stream);
                    exchange(tls, method, path, body, &auth, lines)
                }
            }
        }
    }
}

/// The TLS handshake with a server pinned by fingerprint, finished before anything else is
/// sent (so a wrong pin reads as such).
fn tls_handshake(
    mut stream: TcpStream, pin: &str,
) -> Result<(rustls::ClientConnection, TcpStream), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Pinned {
        fingerprint: pin.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("hangard").expect("a valid DNS name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    Ok((conn, stream))
}

/// One TLS connection used from two threads (a WebSocket's reader and writer): the socket is
/// cloned, and the TLS state is shared under a lock that is never held while the reader waits
/// on the socket.
struct TlsShared {
    conn: std::sync::Mutex<rustls::ClientConnection>,
    sock: TcpStream,
}

impl TlsShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, rustls::ClientConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends whatever TLS records the connection has queued.
    fn flush_tls(&self, conn: &mut rustls::ClientConnection) -> std::io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(&mut &self.sock)?;
        }
        Ok(())
    }
}

/// The reading half of a [`TlsShared`].
struct TlsReader {
    shared: Arc<TlsShared>,
    sock: TcpStream,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.shared.lock().reader().read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let mut raw = [0u8; 16 * 1024];
            let n = self.sock.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut conn = self.shared.lock();
            conn.read_tls(&mut &raw[..n])?;
            conn.process_new_packets().map_err(std::io::Error::other)?;
            self.shared.flush_tls(&mut conn)?;
        }
    }
}

/// The writing half of a [`TlsShared`].
struct TlsWriter(Arc<TlsShared>);

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut conn = self.0.lock();
        conn.writer().write_all(buf)?;
        self.0.flush_tls(&mut conn)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut conn = self.0.lock();
        self.0.flush_tls(&mut conn)
    }
}

/// Sends one request over the unix socket at `socket` and reads the whole response.
pub fn request(
    socket: &Path, method: &str, path: &str, body: Option<&[u8]>, timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(ClientError::NotRunning)?;
    let proto = |e: std::io::Error| ClientError::Protocol(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(proto)?;
    stream.set_write_timeout(Some(timeout)).map_err(proto)?;
    exchange(stream, method, path, body, "", None)
}

/// One exchange over a connected stream; `extra` are header lines (each ending in CRLF). With
/// `lines`, a 2xx chunked body is handed over line by line as it arrives.
fn exchange<S: Read + Write>(
    mut stream: S, method: &str, path: &str, body: Option<&[u8]>, extra: &str,
    mut lines: Option<LineSink<'_>>,
) -> Result<Response, ClientError> {
    let proto = |e: std::io::Error| ClientError::Protocol(e.to_string());
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hangard\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    // The server may answer (413) and close before reading all of an oversized body: a failed
    // write is only an error if no response can be read either.
    let written = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
    let mut reader = BufReader::new(stream);
    if let Err(e) = written {
        if reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
            return Err(proto(e));
        }
    }
    let mut line = String::new();
    reader.read_line(&mut line).map_err(proto)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(proto)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            headers.push((name, value.to_string()));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(proto)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| ClientError::Protocol(format!("chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).map_err(proto)?;
            body.extend_from_slice(&chunk[..size]);
            if let Some(sink) = lines.as_mut().filter(|_| (200..300).contains(&status)) {
                while let Some(end) = body.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = body.drain(..=end).collect();
                    sink(&line[..end]);
                }
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).map_err(proto)?;
    } else {
        reader.read_to_end(&mut body).map_err(proto)?;
    }
    Ok(Response { status, body, headers })
}

/// The two halves of a WebSocket connection to `hangard`: frames are read from one and written
/// to the other (see [`crate::ws`]).
pub type WebSocketHalves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

/// Opens a WebSocket with `POST path` (`hangard`'s `exec`): over the unix socket, plain TCP,
/// or TLS (one connection shared by a reading and a writing half). A refusal (any status but
/// 101) is `Err(Ok(response))` with the coded body; a failure to talk at all is `Err(Err(_))`.
#[allow(clippy::result_large_err)]
pub fn websocket(
    endpoint: &Endpoint, path: &str,
) -> Result<WebSocketHalves, Result<Response, ClientError>> {
    let proto = |e: std::io::Error| Err::<Response, _>(ClientError::Protocol(e.to_string()));
    let (reader, writer, auth): (Box<dyn Read + Send>, Box<dyn Write + Send>, String) =
        match endpoint {
            Endpoint::Unix(socket) => {
                let s = UnixStream::connect(socket).map_err(|e| Err(ClientError::NotRunning(e)))?;
                (Box::new(s.try_clone().map_err(proto)?), Box::new(s), String::new())
            }
            Endpoint::Tcp { addr, fingerprint: None, token } => {
                let s = TcpStream::connect(addr).map_err(|e| Err(ClientError::NotRunning(e)))?;
                let auth = format!("Authorization: Bearer {token}\r\n");
                (Box::new(s.try_clone().map_err(proto)?), Box::new(s), auth)
            }
            Endpoint::Tcp { addr, fingerprint: Some(pin), token } => {
                let s = TcpStream::connect(addr).map_err(|e| Err(ClientError::NotRunning(e)))?;
                let (conn, sock) = tls_handshake(s, pin).map_err(Err)?;
                let reader_sock = sock.try_clone().map_err(proto)?;
                let shared = Arc::new(TlsShared { conn: std::sync::Mutex::new(conn), sock });
                let auth = format!("Authorization: Bearer {token}\r\n");
                (
                    Box::new(TlsReader { shared: shared.clone(), sock: reader_sock }),
                    Box::new(TlsWriter(shared)),
                    auth,
                )
            }
        };
    let (mut reader, mut writer) = (reader, writer);
    let key = crate::ws::key();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: hangard\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nContent-Length: 0\r\n{auth}\r\n"
    );
    writer.write_all(head.as_bytes()).map_err(proto)?;
    // Byte by byte up to the blank line: what follows it is the WebSocket's, not a buffer's.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        match reader.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(Err(ClientError::Protocol("the daemon hung up".into()))),
            Err(e) => return Err(proto(e)),
        }
        if head.len() > 64 * 1024 {
            return Err(Err(ClientError::Protocol("an endless response head".into())));
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Err(ClientError::Protocol(format!("status line in {text:?}"))))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if status == 101 {
        return Ok((reader, writer));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).map_err(proto)?;
    Err(Ok(Response { status, body, headers }))
}
