//! The gateway: the data plane in front of pools.
//!
//! It listens on every address a [route](hangar_fleet::Route) names, matches each connection
//! to one route (plain TCP by port; HTTP/1.1 by `Host` and path prefix of its first request),
//! and splices it to an instance of the route's pool that the gateway holds (a claim with
//! holder [`GATEWAY_HOLDER`]), choosing the one with the fewest open connections. With none
//! running it brings one up first: its own paused or sleeping instance (resume, wake), else a
//! claim (warm → spare → sleeping → new). One wake per pool at a time: connections that arrive
//! meanwhile wait for that same wake, up to the route's `max_waiting`, beyond which they are
//! refused at once (HTTP 503 with a coded body; TCP: closed).
//!
//! What flows is counted per instance (open connections, bytes each way, last activity) and
//! handed to the fleet as [`Activity`], which the pool's idle policy reads in the reconcile
//! pass (pause, sleep or stop an idle instance). The gateway itself never pauses anything.
//!
//! Engine steps block: they run on tokio's blocking pool. The fleet and the engine are the
//! only state; the gateway's own (listeners, counters, wake locks) is rebuilt at start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::clock::{Clock, Timestamp};
use hangar_core::contracts::{Lifecycle, Snapshots};
use hangar_core::error::{Coded, ErrorCode};
use hangar_core::ids::{InstanceId, PoolId, RouteId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_fleet::routes::{self, Arrival, Route};
use hangar_fleet::{Activity, Fleet, Instance, GATEWAY_HOLDER};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The longest HTTP request head the gateway reads to match a route.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a woken or new instance's port may take to accept.
const PORT_DEADLINE: Duration = Duration::from_secs(60);
/// One connection attempt to an instance believed running.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the gateway looks again at an instance of its own on its way up.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// The longest pause between attempts to reach a woken instance's port: an attempt costs a
/// refused connect, and every millisecond here is added to the first connection's wait.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// What the daemon does with a refusal (logs and counts it).
type OnRefusal = Box<dyn Fn(&Route, &Refusal) + Send + Sync>;

/// Finds an instance's address from its VM (blocking: it may read the store).
pub type Resolve = Arc<dyn Fn(&VmName) -> Option<IpAddr> + Send + Sync>;

/// What the gateway counts for one instance.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicU32,
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    last_ms: AtomicU64,
    /// Bumped when the instance is found gone with connections still open: the connections
    /// spliced before it are closed (see [`Gateway::publish`]).
    lost: AtomicU64,
    /// Wakes the connections waiting on `lost`.
    lost_notify: tokio::sync::Notify,
}

impl Counters {
    fn touch(&self, now: Timestamp) {
        self.last_ms.store(now.0, Ordering::Relaxed);
    }

    fn activity(&self) -> Activity {
        Activity {
            open: self.open.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            last: Timestamp(self.last_ms.load(Ordering::Relaxed)),
        }
    }
}

/// Why a connection got no instance.
#[derive(Debug)]
pub struct Refusal {
    /// The code (`E_GATEWAY_UNAVAILABLE`, or `E_ROUTE_NOT_FOUND` when nothing matched).
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

/// The gateway over one fleet.
pub struct Gateway<E: Lifecycle + Snapshots + ?Sized + Send + Sync + 'static> {
    fleet: Arc<Fleet<E>>,
    resolve: Resolve,
    /// The fleet's clock: activity times are compared with it by the idle policy.
    clock: Arc<dyn Clock>,
    listeners: Mutex<BTreeMap<SocketAddr, Listening>>,
    waiting: Mutex<BTreeMap<RouteId, Arc<Semaphore>>>,
    wakes: Mutex<BTreeMap<PoolId, Arc<tokio::sync::Mutex<()>>>>,
    counters: Mutex<BTreeMap<InstanceId, Arc<Counters>>>,
    addresses: Mutex<BTreeMap<InstanceId, IpAddr>>,
    /// Called with every refusal, for the daemon's log and metrics.
    on_refusal: OnRefusal,
}

impl<E: Lifecycle + Snapshots + ?Sized + Send + Sync + 'static> Gateway<E> {
    /// A gateway for `fleet`'s routes, finding instances' addresses with `resolve`. Nothing
    /// listens until [`Gateway::sync`].
    pub fn new(
        fleet: Arc<Fleet<E>>, clock: Arc<dyn Clock>, resolve: Resolve,
        on_refusal: impl Fn(&Route, &Refusal) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            fleet,
            resolve,
            clock,
            listeners: Mutex::new(BTreeMap::new()),
            waiting: Mutex::new(BTreeMap::new()),
            wakes: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            addresses: Mutex::new(BTreeMap::new()),
            on_refusal: Box::new(on_refusal),
        })
    }

    /// Listens on `address` if nothing of ours does yet (the API binds before it adds a
    /// route, so a port taken by another program is refused there). Must run in a tokio
    /// runtime.
    pub fn listen(self: &Arc<Self>, address: SocketAddr) -> std::io::Result<()> {
        let mut listeners = lock(&self.listeners);
        if listeners.contains_key(&address) {
            return Ok(());
        }
        let std_listener = std::net::TcpListener::bind(address)?;
        std_listener.set_nonblocking(true)?;
        let socket = std_listener.try_clone()?.into();
        let listener = TcpListener::from_std(std_listener)?;
        let gateway = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _peer)) => {
                        let _ = conn.set_nodelay(true);
                        tokio::spawn(gateway.clone().serve(conn, address));
                    }
                    // Out of descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        listeners.insert(address, Listening { task, socket });
        Ok(())
    }

    /// Listens on every route's address and stops listening where no route is left. Returns
    /// the addresses it could not listen on, with why.
    pub fn sync(self: &Arc<Self>) -> Vec<(SocketAddr, std::io::Error)> {
        let routes = self.fleet.routes();
        let wanted: BTreeSet<SocketAddr> = routes.iter().map(|r| r.listen).collect();
        lock(&self.listeners).retain(|address, _| wanted.contains(address));
        lock(&self.waiting).retain(|id, _| routes.iter().any(|r| &r.id == id));
        wanted.into_iter().filter_map(|a| self.listen(a).err().map(|e| (a, e))).collect()
    }

    /// The addresses listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).keys().copied().collect()
    }

    /// Every instance the gateway has counted, with what it saw.
    pub fn activity(&self) -> Vec<(InstanceId, Activity)> {
        lock(&self.counters).iter().map(|(id, c)| (id.clone(), c.activity())).collect()
    }

    /// Hands every instance's counts to the fleet (the idle policy reads them there), and
    /// closes the connections still spliced to an instance the fleet no longer has or found
    /// without its guest (failed, stopped, asleep): a guest that vanished sends no reset, so
    /// its clients would otherwise wait for their own timeouts. Run every second or so;
    /// connections opening and closing also hand over their instance's counts.
    pub fn publish(&self) {
        let states: BTreeMap<InstanceId, VmState> =
            self.fleet.instances(None).into_iter().map(|i| (i.id, i.state)).collect();
        let mut counters = lock(&self.counters);
        counters.retain(|id, c| states.contains_key(id) || c.open.load(Ordering::Relaxed) > 0);
        for (id, c) in counters.iter() {
            let gone = match states.get(id) {
                None => true,
                Some(state) => matches!(
                    state,
                    VmState::Failed
                        | VmState::Stopped
                        | VmState::Stopping
                        | VmState::Sleeping
                        | VmState::Defined
                        | VmState::Deleted
                ),
            };
            if gone && c.open.load(Ordering::Relaxed) > 0 {
                c.lost.fetch_add(1, Ordering::SeqCst);
                c.lost_notify.notify_waiters();
            }
            self.fleet.set_activity(id, c.activity());
        }
    }

    fn counters(&self, id: &InstanceId) -> Arc<Counters> {
        lock(&self.counters).entry(id.clone()).or_default().clone()
    }

    async fn serve(self: Arc<Self>, mut conn: TcpStream, listen: SocketAddr) {
        let routes = self.fleet.routes();
        let http = routes::is_http(&routes, listen);
        let (head, host, path) = if http {
            match read_head(&mut conn).await {
                Some(parsed) => parsed,
                None => {
                    let _ = respond(
                        &mut conn,
                        400,
                        "E_INVALID_ARGUMENT",
                        "not an HTTP/1.1 request head",
                    )
                    .await;
                    return;
                }
            }
        } else {
            (Vec::new(), None, None)
        };
        let arrival = Arrival { local: listen, host: host.as_deref(), path: path.as_deref() };
        let Some(route) = routes::select(&routes, arrival).cloned() else {
            if http {
                let what = format!(
                    "no route for host {:?} and path {:?}",
                    host.unwrap_or_default(),
                    path.unwrap_or_default()
                );
                let _ = respond(&mut conn, 404, ErrorCode::RouteNotFound.as_str(), &what).await;
            }
            return;
        };
        let semaphore = lock(&self.waiting)
            .entry(route.id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(route.max_waiting as usize)))
            .clone();
        let backend = match semaphore.try_acquire_owned() {
            Ok(permit) => {
                let found = self.backend(&route).await;
                drop(permit);
                found
            }
            Err(_) => Err(Refusal {
                code: ErrorCode::GatewayUnavailable,
                message: format!(
                    "{} connections are already waiting for an instance of {}",
                    route.max_waiting, route.target.pool
                ),
            }),
        };
        let (instance, upstream) = match backend {
            Ok(found) => found,
            Err(refusal) => {
                (self.on_refusal)(&route, &refusal);
                if http {
                    let _ = respond(&mut conn, 503, refusal.code.as_str(), &refusal.message).await;
                }
                return;
            }
        };
        let counters = self.counters(&instance);
        counters.open.fetch_add(1, Ordering::Relaxed);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        counters.touch(self.clock.now());
        self.fleet.set_activity(&instance, counters.activity());
        splice(conn, upstream, head, &counters, &*self.clock).await;
        counters.open.fetch_sub(1, Ordering::Relaxed);
        counters.touch(self.clock.now());
        self.fleet.set_activity(&instance, counters.activity());
    }

    /// An instance of the route's pool connected on the route's guest port: a running one the
    /// gateway holds (fewest open connections first), else one brought up for it.
    async fn backend(&self, route: &Route) -> Result<(InstanceId, TcpStream), Refusal> {
        let pool = &route.target.pool;
        let mut failed: BTreeSet<InstanceId> = BTreeSet::new();
        let refusal = |message: String| Refusal { code: ErrorCode::GatewayUnavailable, message };
        let mut last = format!("no instance of {pool} accepted a connection");
        // Failures end the search after a few attempts; waiting for an instance already on
        // its way up (a wake the daemon was doing when it restarted) ends at the deadline.
        let (mut failures, until) = (0, Instant::now() + PORT_DEADLINE);
        while failures < 4 && Instant::now() < until {
            if let Some(i) = self.running(pool, &failed) {
                match self.connect(&i, route.target.port, None).await {
                    Ok(s) => return Ok((i.id, s)),
                    Err(_) => {
                        // Dead, or its port is gone: let the fleet look, and try another.
                        failures += 1;
                        failed.insert(i.id.clone());
                        let fleet = self.fleet.clone();
                        let _ = tokio::task::spawn_blocking(move || fleet.observe()).await;
                        continue;
                    }
                }
            }
            // One wake per pool: whoever waits here gets the instance the holder brought up.
            let wake = lock(&self.wakes).entry(pool.clone()).or_default().clone();
            let _waking = wake.lock().await;
            if self.running(pool, &failed).is_some() {
                continue;
            }
            let wake_started = Instant::now();
            let fleet = self.fleet.clone();
            let (pool_id, skip) = (pool.clone(), failed.clone());
            let woken = tokio::task::spawn_blocking(move || {
                let mine: Vec<Instance> = fleet
                    .instances(Some(&pool_id))
                    .into_iter()
                    .filter(|i| held(i) && !skip.contains(&i.id))
                    .collect();
                // One of ours on its way up: wait for it rather than claim another.
                if mine.iter().any(|i| {
                    matches!(i.state, VmState::Starting | VmState::Resuming | VmState::Waking)
                }) {
                    return Ok(None);
                }
                let resting = mine
                    .into_iter()
                    .find(|i| matches!(i.state, VmState::Paused | VmState::Sleeping));
                match resting {
                    Some(i) => fleet.wake_held(&i.id, GATEWAY_HOLDER).map(Some),
                    None => fleet.claim_held(&pool_id).map(|c| Some(c.instance)),
                }
            })
            .await
            .map_err(|e| refusal(format!("the wake of an instance of {pool} panicked: {e}")))?;
            let woken = match woken {
                Ok(Some(i)) => i,
                Ok(None) => {
                    tokio::time::sleep(SETTLE_POLL).await;
                    let fleet = self.fleet.clone();
                    let _ = tokio::task::spawn_blocking(move || fleet.observe()).await;
                    continue;
                }
                Err(e) => {
                    // The registry may be behind the engine (a daemon restarted mid-wake, a
                    // step of the loop's): look, then try again.
                    failures += 1;
                    last = format!("no instance of {pool} could be brought up: {} ({e})", e.code());
                    let fleet = self.fleet.clone();
                    let _ = tokio::task::spawn_blocking(move || fleet.observe()).await;
                    continue;
                }
            };
            let woken_at = Instant::now();
            match self.connect(&woken, route.target.port, Some(PORT_DEADLINE)).await {
                Ok(s) => {
                    // Where a first connection's wait goes (`HANGARD_LOG=debug`).
                    tracing::debug!(
                        instance = %woken.id,
                        wake_ms = (woken_at - wake_started).as_secs_f64() * 1000.0,
                        port_ms = woken_at.elapsed().as_secs_f64() * 1000.0,
                        "woke {} for {pool}", woken.name
                    );
                    return Ok((woken.id, s));
                }
                Err(e) => {
                    failed.insert(woken.id.clone());
                    return Err(refusal(format!(
                        "{} ({}) never accepted on port {}: {e}",
                        woken.name, woken.id, route.target.port
                    )));
                }
            }
        }
        Err(refusal(last))
    }

    /// The running instance of `pool` the gateway holds with the fewest open connections.
    fn running(&self, pool: &PoolId, except: &BTreeSet<InstanceId>) -> Option<Instance> {
        let counters = lock(&self.counters);
        let open = |i: &Instance| counters.get(&i.id).map_or(0, |c| c.open.load(Ordering::Relaxed));
        self.fleet
            .instances(Some(pool))
            .into_iter()
            .filter(|i| held(i) && i.state == VmState::Running && !except.contains(&i.id))
            .min_by_key(|i| (open(i), i.ordinal))
    }

    /// Connects to `instance`'s `port`: once (an instance believed running that refuses is
    /// dead or no longer serving), or retrying refusals until `retry_for` has passed (a woken
    /// guest's server may take a moment; a new one boots first).
    async fn connect(
        &self, instance: &Instance, port: u16, retry_for: Option<Duration>,
    ) -> std::io::Result<TcpStream> {
        let deadline = retry_for.unwrap_or(CONNECT_TIMEOUT);
        let address = self.address(instance).await.ok_or_else(|| {
            std::io::Error::other(format!("{} has no address the host can reach", instance.name))
        })?;
        let target = SocketAddr::new(address, port);
        let until = Instant::now() + deadline;
        let mut pause = Duration::from_millis(1);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(left.min(CONNECT_TIMEOUT), TcpStream::connect(target)).await;
            match attempt {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) if retry_for.is_none() || Instant::now() + pause >= until => {
                    return Err(e)
                }
                Err(_) if Instant::now() >= until => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{target} did not answer"),
                    ))
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
    }

    async fn address(&self, instance: &Instance) -> Option<IpAddr> {
        if let Some(a) = lock(&self.addresses).get(&instance.id) {
            return Some(*a);
        }
        let (resolve, name) = (self.resolve.clone(), instance.name.clone());
        let found = tokio::task::spawn_blocking(move || resolve(&name)).await.ok().flatten()?;
        lock(&self.addresses).insert(instance.id.clone(), found);
        Some(found)
    }
}

/// One listening socket and its accept loop. Dropped, it stops listening at once: the socket
/// is shut down (new connections are refused from then on, whenever the aborted task ends).
struct Listening {
    task: tokio::task::JoinHandle<()>,
    socket: std::os::fd::OwnedFd,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Read);
        self.task.abort();
    }
}

fn held(i: &Instance) -> bool {
    i.claimed && i.holder.as_deref() == Some(GATEWAY_HOLDER)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads an HTTP/1.1 request head; returns its bytes (to forward as they are), its `Host`
/// (lowercase, without port) and its path.
async fn read_head(conn: &mut TcpStream) -> Option<(Vec<u8>, Option<String>, Option<String>)> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(_)) => {
                    let host = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("host"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(|h| host_without_port(h).to_ascii_lowercase());
                    let path = request.path.map(str::to_string);
                    return Some((host, path));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
                _ => return None,
            }
        }
    };
    let (host, path) = tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    Some((buf, host, path))
}

fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// Answers with an error status and a coded JSON body, then closes.
async fn respond(
    conn: &mut TcpStream, status: u16, code: &str, message: &str,
) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let hint = hangar_core::error::ErrorCode::parse(code)
        .map(|c| c.typical_fix().to_string())
        .unwrap_or_default();
    let body = serde_json::json!({"code": code, "message": message, "hint": hint}).to_string();
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

/// Copies both ways until both sides are done, or until the instance is found gone (both
/// connections are then closed), counting bytes and activity; `head` (an HTTP request head
/// already read) goes first.
async fn splice(
    client: TcpStream, upstream: TcpStream, head: Vec<u8>, counters: &Counters, clock: &dyn Clock,
) {
    let epoch = counters.lost.load(Ordering::SeqCst);
    let lost = async {
        loop {
            let notified = counters.lost_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if counters.lost.load(Ordering::SeqCst) != epoch {
                return;
            }
            notified.await;
        }
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let to_instance = async {
        if !head.is_empty() {
            if up_write.write_all(&head).await.is_err() {
                return;
            }
            counters.bytes_in.fetch_add(head.len() as u64, Ordering::Relaxed);
        }
        pump(&mut client_read, &mut up_write, &counters.bytes_in, counters, clock).await;
    };
    let to_client = pump(&mut up_read, &mut client_write, &counters.bytes_out, counters, clock);
    tokio::select! {
        _ = async { tokio::join!(to_instance, to_client) } => {}
        () = lost => {}
    }
}

/// One direction: reads until end of file or an error, then shuts the other side's write.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R, to: &mut W, bytes: &AtomicU64, counters: &Counters, clock: &dyn Clock,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                counters.touch(clock.now());
            }
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("shop.test:8080"), "shop.test");
        assert_eq!(host_without_port("shop.test"), "shop.test");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port(" a.test "), "a.test");
    }
}
