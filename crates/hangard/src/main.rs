//! `hangard`: serves Hangar's REST API v1 on `$HANGAR_HOME/hangard.sock` (mode 0600), and on
//! TCP with bearer tokens when asked (`--listen-tcp`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hangar_qemu::{EngineOptions, QemuEngine};

/// The Hangar node daemon. Needs no configuration: `hangard &` and the CLI uses it.
#[derive(Parser)]
#[command(name = "hangard", version, about)]
struct Args {
    /// State directory (default: $HANGAR_HOME, /var/lib/hangar as root, ~/.local/share/hangar).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Unix socket to listen on (default: <home>/hangard.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve the API on this TCP address (for example 127.0.0.1:7070), over TLS. Every
    /// request must carry `Authorization: Bearer <token>` (create one with `hangar token create
    /// --admin`, or `--tenant T --role R` for a tenant's scope). Without --tls-cert, a
    /// self-signed certificate is made once in $HANGAR_HOME/tls; clients pin its fingerprint
    /// (printed at start, and by `hangar doctor`).
    #[arg(long, value_name = "ADDR")]
    listen_tcp: Option<std::net::SocketAddr>,
    /// The TCP listener's certificate chain (PEM), instead of the self-signed one.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve the TCP listener as plain HTTP (tokens then cross the network in the clear): only
    /// for loopback or behind a TLS proxy.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_plaintext: bool,
    /// A request's headers must arrive within this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    header_timeout: u64,
    /// Close a connection with no traffic either way for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    idle_timeout: u64,
    /// Connections one peer (uid on the socket, address on TCP) may hold at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections_per_peer: usize,
    /// Let specs name host files (kernels, initrds, disk images and their qcow2 backing
    /// files) under DIR, besides $HANGAR_HOME/images and $HANGAR_HOME/volumes. Repeatable.
    /// Files are opened without following symlinks; Hangar's own state is never allowed.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_paths: Vec<PathBuf>,
    /// Let unix-socket user UID act with SCOPE (`admin`, or `tenant:<id>:<role>`; role viewer,
    /// operator or owner). Root and the daemon's own user are always admins; other users are
    /// refused. Repeatable. The socket must be reachable by that user (see --socket).
    #[arg(long = "map-uid", value_name = "UID=SCOPE", value_parser = hangard::UidMap::parse_entry)]
    map_uid: Vec<(u32, hangar_core::access::Scope)>,
    /// Seconds between reconcile passes when nothing asks for one sooner (every fleet change
    /// and every claim asks).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    reconcile_interval: f64,
    /// The engine VMs run on. `fake` is the in-memory engine the conformance suite checks
    /// QEMU against: the API, the fleet and its reconcile loop work as with QEMU, but no guest
    /// boots and VMs live only as long as the daemon (for simulations and tests).
    #[arg(long, value_enum, default_value_t = EngineKind::Qemu)]
    engine: EngineKind,
    /// How the log on stderr is written: `text` for people, `json` (one object a line, with
    /// `timestamp`, `level`, `message` and the event's fields) for log collectors. The level
    /// comes from `HANGARD_LOG` (`info` by default; `debug`, `warn`, or a tracing filter).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Join a cluster whose shared state is in etcd at these client URLs (comma-separated,
    /// for example http://127.0.0.1:2379,http://127.0.0.1:22379). Without it the host is a
    /// cluster of one, as always.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// Where other nodes reach this one's API, `host:port` (default: --listen-tcp's address).
    #[arg(long, value_name = "ADDR", requires = "cluster")]
    advertise: Option<String>,
    /// The cluster's signing key (made by `hangar cluster key new FILE`; the same file on every
    /// node): this node signs what it writes for others with it, and acts only on documents
    /// signed by it or by a key listed in $HANGAR_HOME/cluster/trusted.keys (one `ed25519:<hex>`
    /// a line, for rotations).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    cluster_key: Option<PathBuf>,
    /// Seconds this node's lease lives without renewal (it renews every third of it): how long
    /// a dead node still counts as a member.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "cluster")]
    lease_ttl: u64,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

/// How the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Sends `tracing` events to stderr in `format`, filtered by `HANGARD_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANGARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => log.with_ansi(false).init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
}

/// The engines hangard can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineKind {
    /// Real QEMU guests (KVM when it works, TCG otherwise).
    Qemu,
    /// The in-memory fake engine.
    Fake,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Everything hangard (and the QEMUs it starts) creates is private to its user.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = Args::parse();
    init_logging(args.log_format);
    if args.openapi {
        print!("{}", hangard::openapi_json());
        return std::process::ExitCode::SUCCESS;
    }
    let home = args.home.unwrap_or_else(hangar_plan::probe::hangar_home);
    let socket = args.socket.unwrap_or_else(|| home.join("hangard.sock"));
    let opened = match args.engine {
        EngineKind::Qemu => QemuEngine::open(&home, EngineOptions::default())
            .map(|e| {
                let facts = e.facts().clone();
                (Arc::new(e) as Arc<dyn hangar_control::Backend>, facts)
            })
            .map_err(|e| e.to_string()),
        // The fake needs only the home for the daemon's own state (journal, tokens, audit).
        EngineKind::Fake => hangar_store::Store::open_in(&home)
            .map(|_| {
                use hangar_plan::HostProbe;
                let facts = hangar_plan::probe::SystemProbe { home: home.clone() }.probe();
                let fake = hangar_core::fake::FakeEngine::default();
                (Arc::new(fake) as Arc<dyn hangar_control::Backend>, facts)
            })
            .map_err(|e| e.to_string()),
    };
    let (engine, facts) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match hangard::bind(&socket, !args.map_uid.is_empty()) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", socket.display());
            return std::process::ExitCode::from(2);
        }
    };
    let tcp = match args.listen_tcp {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!("cannot listen on tcp {addr}: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        None => None,
    };
    if !(args.reconcile_interval > 0.0 && args.reconcile_interval.is_finite()) {
        tracing::error!("--reconcile-interval must be a positive number of seconds");
        return std::process::ExitCode::from(2);
    }
    let interval = std::time::Duration::from_secs_f64(args.reconcile_interval);
    if args.header_timeout == 0 || args.idle_timeout == 0 || args.max_connections_per_peer == 0 {
        tracing::error!(
            "--header-timeout, --idle-timeout and --max-connections-per-peer must be positive"
        );
        return std::process::ExitCode::from(2);
    }
    let tls = match (&tcp, args.insecure_plaintext) {
        (Some(_), false) => {
            let given = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            match hangard::server::identity(&home, given) {
                Ok(identity) => Some(identity),
                Err(e) => {
                    tracing::error!("TLS: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let node = args.node.clone().unwrap_or_else(hangard::cluster::host_name);
    if !args.cluster.is_empty() {
        if let Err(e) = hangar_core::ids::check_name("node", &node) {
            tracing::error!("--node {node:?}: {e}");
            return std::process::ExitCode::from(2);
        }
        if args.cluster_key.is_none() {
            tracing::error!(
                "--cluster needs --cluster-key FILE (make one with `hangar cluster key new FILE`)"
            );
            return std::process::ExitCode::from(2);
        }
        if args.lease_ttl < 3 {
            tracing::error!(
                "--lease-ttl must be at least 3 seconds (the lease is renewed every third)"
            );
            return std::process::ExitCode::from(2);
        }
    }
    let engine_name = match args.engine {
        EngineKind::Qemu => "qemu",
        EngineKind::Fake => "fake",
    };
    let options = hangard::Options {
        engine_name,
        reconcile_interval: interval,
        allow_paths: args.allow_paths,
        uids: hangard::UidMap(args.map_uid.into_iter().collect()),
        limits: hangard::server::Limits {
            header_read: std::time::Duration::from_secs(args.header_timeout),
            idle: std::time::Duration::from_secs(args.idle_timeout),
            per_peer: args.max_connections_per_peer,
        },
    };
    let daemon = match hangard::Daemon::on(engine, &home, facts, options) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Settle what a previous daemon left running before answering anyone, then keep
    // settling in the background (an adopted guest may still be booting).
    // (On a plain thread: engine calls drive their own QMP runtime, never inside this one.)
    let (first_pass, first_pass_done) = tokio::sync::oneshot::channel();
    let recovering = daemon.clone();
    std::thread::spawn(move || {
        recovering.recover();
        let _ = first_pass.send(());
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            recovering.recover();
        }
    });
    let _ = first_pass_done.await;
    // Only after recovery: a pass must see interrupted operations settled.
    daemon.start_reconciler();
    daemon.start_gateway();
    if !args.cluster.is_empty() {
        let advertise = args
            .advertise
            .clone()
            .or_else(|| args.listen_tcp.map(|a| a.to_string()))
            .unwrap_or_default();
        tracing::info!(node = %node, etcd = ?args.cluster, "joining the cluster as {node}");
        let keys = match hangard::scheduler::Keys::load(
            args.cluster_key.as_deref().expect("checked above"),
            &home.join("cluster/trusted.keys"),
        ) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::from(2);
            }
        };
        daemon.join_cluster(
            hangard::cluster::ClusterOptions {
                endpoints: args.cluster.clone(),
                node: node.clone(),
                advertise,
                tls_fingerprint: tls.as_ref().map(|identity| identity.fingerprint.clone()),
                lease_ttl: std::time::Duration::from_secs(args.lease_ttl),
            },
            keys,
        );
    }
    tracing::info!(
        socket = %socket.display(),
        engine = engine_name,
        "listening on {} ({engine_name} engine)",
        socket.display()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    if let Some(tcp) = tcp {
        if let Ok(addr) = tcp.local_addr() {
            match &tls {
                Some(identity) => tracing::info!(
                    "listening on tcp {addr} over TLS, certificate {} (bearer tokens required)",
                    identity.fingerprint
                ),
                None => tracing::info!(
                    "listening on tcp {addr} as PLAIN HTTP (--insecure-plaintext; bearer tokens required)"
                ),
            }
        }
        let d = daemon.clone();
        let rx = stop_rx.clone();
        let acceptor = tls.map(|identity| identity.acceptor);
        tokio::spawn(async move {
            if let Err(e) = hangard::serve_tcp(tcp, d, acceptor, stopped(rx)).await {
                tracing::error!("tcp listener: {e}");
            }
        });
    }
    let served = hangard::serve(listener, daemon, stopped(stop_rx)).await;
    let _ = std::fs::remove_file(&socket);
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}
