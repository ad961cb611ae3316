//! An in-process daemon for the API tests, on a temporary home, with its unix socket and a
//! token-protected TCP listener.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use hangar_api::client::{request, Response};
use hangar_qemu::{EngineOptions, QemuEngine};
use hangard::embedded::{Embedded, Embedding, Tcp};

/// A daemon serving on a temporary home; stops when dropped.
pub struct TestDaemon {
    // First, so the daemon stops before its home is removed.
    _served: Embedded,
    pub home: tempfile::TempDir,
    /// The token-protected TCP listener's address.
    pub tcp: std::net::SocketAddr,
    /// With TLS on TCP: the certificate's fingerprint.
    pub fingerprint: Option<String>,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(|_| hangard::Options::default())
    }

    /// Starts with the options `options` makes for the new home.
    pub fn start_with(options: impl FnOnce(&std::path::Path) -> hangard::Options) -> TestDaemon {
        let home = tempfile::Builder::new().prefix("hgd-").tempdir_in("/tmp").unwrap();
        TestDaemon::start_in(home, options)
    }

    /// Starts on `home` (for example a private home with the built images linked in).
    pub fn start_in(
        home: tempfile::TempDir, options: impl FnOnce(&std::path::Path) -> hangard::Options,
    ) -> TestDaemon {
        TestDaemon::start_full(home, options, false)
    }

    /// [`TestDaemon::start_in`] with TLS on the TCP listener.
    #[allow(dead_code)]
    pub fn start_in_tls(
        home: tempfile::TempDir, options: impl FnOnce(&std::path::Path) -> hangard::Options,
    ) -> TestDaemon {
        TestDaemon::start_full(home, options, true)
    }

    /// Starts with TLS on the TCP listener (the self-signed identity made in the home).
    pub fn start_tls() -> TestDaemon {
        let home = tempfile::Builder::new().prefix("hgd-").tempdir_in("/tmp").unwrap();
        TestDaemon::start_full(home, |_| hangard::Options::default(), true)
    }

    fn start_full(
        home: tempfile::TempDir, options: impl FnOnce(&std::path::Path) -> hangard::Options,
        tls: bool,
    ) -> TestDaemon {
        let options = options(home.path());
        let identity = tls.then(|| hangard::server::identity(home.path(), None).unwrap());
        let fingerprint = identity.as_ref().map(|i| i.fingerprint.clone());
        let how = Embedding {
            socket: home.path().join("hangard.sock"),
            shared_socket: false,
            tcp: match identity {
                Some(identity) => Tcp::Tls(identity.acceptor),
                None => Tcp::Plain,
            },
            reconcile: false,
        };
        let engine = QemuEngine::open(home.path(), EngineOptions::default()).unwrap();
        let served =
            Embedded::start(how, move || hangard::Daemon::with_options(engine, options).unwrap());
        TestDaemon { tcp: served.tcp.unwrap(), _served: served, home, fingerprint }
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("hangard.sock")
    }

    /// One exchange on the unix socket (as this process's user: an admin).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let Response { status, body, .. } =
            request(&self.socket(), method, path, body.map(str::as_bytes), Duration::from_secs(60))
                .unwrap();
        (status, json(&body))
    }

    /// One HTTP/1.1 exchange over TCP: by hand over plain TCP, through the CLI's client over TLS.
    pub fn over_tcp(
        &self, method: &str, path: &str, token: Option<&str>, body: Option<&str>,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        if let (Some(pin), Some(token)) = (&self.fingerprint, token) {
            // Over TLS, through the CLI's client.
            let endpoint = hangar_api::client::Endpoint::Tcp {
                addr: self.tcp.to_string(),
                fingerprint: Some(pin.clone()),
                token: token.to_string(),
            };
            let r = hangar_api::client::send(
                &endpoint,
                method,
                path,
                body.map(str::as_bytes),
                Duration::from_secs(60),
            )
            .unwrap();
            return (r.status, String::from_utf8_lossy(&r.body).into_owned());
        }
        let mut s = std::net::TcpStream::connect(self.tcp).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// [`TestDaemon::over_tcp`] with the body decoded as JSON (`Null` when empty).
    pub fn as_token(
        &self, token: &str, method: &str, path: &str, body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (s, b) = self.over_tcp(method, path, Some(token), body);
        (s, json(b.as_bytes()))
    }

    /// A new token with `scope`; its secret.
    pub fn token(&self, scope: &str) -> String {
        let (s, t) = self.call(
            "POST",
            "/v1/tokens",
            Some(&format!(r#"{{"name": "test", "scope": "{scope}"}}"#)),
        );
        assert_eq!(s, 201, "{t}");
        t["token"].as_str().unwrap().to_string()
    }
}

pub fn json(body: &[u8]) -> serde_json::Value {
    if body.is_empty() {
        serde_json::Value::Null
    } else if let Ok(v) = serde_json::from_slice(body) {
        v
    } else {
        // Server-sent events and Prometheus text are not JSON.
        serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
    }
}

pub fn coded(v: &serde_json::Value, code: &str) {
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["hint"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Starts the real `hangard` binary on `home` with `args` after `--home`, its stderr appended
/// to `home/hangard.log` (a restarted daemon adds to it), and waits until it answers
/// `/v1/health`.
pub fn spawn_hangard(home: &std::path::Path, args: &[&str]) -> std::process::Child {
    use std::process::{Command, Stdio};
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("hangard.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hangard"))
        .args(["--home", home.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let socket = home.join("hangard.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hangar_api::client::request(&socket, "GET", "/v1/health", None, Duration::from_secs(2))
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "hangard did not come up; its log:\n{}",
            std::fs::read_to_string(home.join("hangard.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The real `hangard` binary on a home, spawned by the calling thread (so in its network
/// namespace); killed when dropped.
pub struct SpawnedDaemon {
    child: std::process::Child,
    socket: PathBuf,
}

impl SpawnedDaemon {
    /// Starts it and waits until it answers.
    pub fn start(home: &std::path::Path) -> SpawnedDaemon {
        let child = spawn_hangard(home, &[]);
        SpawnedDaemon { child, socket: home.join("hangard.sock") }
    }

    /// Wraps a daemon [`spawn_hangard`] started (with arguments of the test's choosing).
    pub fn from_child(child: std::process::Child, home: &std::path::Path) -> SpawnedDaemon {
        SpawnedDaemon { child, socket: home.join("hangard.sock") }
    }

    /// `kill -9`, and reaped.
    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for SpawnedDaemon {
    fn drop(&mut self) {
        // Also on a failed assertion: never leave a daemon behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpawnedDaemon {
    /// One request over the unix socket (as the admin): status and JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let r = hangar_api::client::request(
            &self.socket,
            method,
            path,
            body.map(str::as_bytes),
            Duration::from_secs(120),
        )
        .unwrap();
        (r.status, serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
    }

    /// One request's body as text (`/metrics`), as the admin.
    pub fn text(&self, method: &str, path: &str) -> String {
        let r =
            hangar_api::client::request(&self.socket, method, path, None, Duration::from_secs(60))
                .unwrap();
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// Waits (server side) until the operation has ended, and returns it.
    pub fn settled(&self, id: &str) -> serde_json::Value {
        let (s, op) = self.call("GET", &format!("/v1/operations/{id}?wait=true"), None);
        assert_eq!(s, 200, "{op}");
        op
    }

    /// `GET /v1/vms/NAME`.
    pub fn vm(&self, name: &str) -> serde_json::Value {
        self.call("GET", &format!("/v1/vms/{name}"), None).1
    }

    /// Polls until `pred` holds for the VM (a bounded wait on a condition).
    pub fn wait_for(
        &self, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let v = self.vm(name);
            if pred(&v) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "{name} never became {what}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
