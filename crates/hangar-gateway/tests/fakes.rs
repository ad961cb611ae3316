//! The gateway over the fake engine: instances are simulated, their "guests" are loopback
//! servers (instance `<pool>-<n>` answers on 127.0.0.(20+n)), so wake-on-connect, the single
//! wake per pool, back-pressure, replacement of a dead instance and the idle policy are tested
//! without QEMU. The real-guest test is in `hangard`'s tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::clock::{Clock, ManualClock};
use hangar_core::fake::{FakeConfig, FakeEngine};
use hangar_core::ids::{PoolId, RouteId, TenantId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_fleet::routes::{Match, Route, RouteTarget};
use hangar_fleet::{Desired, Fleet, Policy, Pool, Quotas, Tenant, GATEWAY_HOLDER};
use hangar_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ordinal(vm: &VmName) -> u8 {
    vm.as_str().rsplit('-').next().and_then(|n| n.parse().ok()).expect("an instance name")
}

fn guest_address(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20 + n))
}

/// The simulated guests' servers: each answers `hello from <n>` and closes; a stopped one
/// refuses connections.
struct Guests {
    tasks: Mutex<Vec<Option<tokio::task::JoinHandle<()>>>>,
}

impl Guests {
    async fn start(count: u8, port: u16) -> Guests {
        let mut tasks = Vec::new();
        for n in 0..count {
            let listener =
                TcpListener::bind(SocketAddr::new(guest_address(n), port)).await.unwrap();
            tasks.push(Some(tokio::spawn(async move {
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else { continue };
                    tokio::spawn(async move {
                        let mut request = [0u8; 1024];
                        let _ = conn.read(&mut request).await;
                        let _ = conn.write_all(format!("hello from {n}\n").as_bytes()).await;
                        let _ = conn.shutdown().await;
                    });
                }
            })));
        }
        Guests { tasks: Mutex::new(tasks) }
    }

    /// Stops guest `n`'s server; once this returns, its address refuses connections.
    async fn stop(&self, n: u8) {
        let task = self.tasks.lock().unwrap()[n as usize].take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

struct Setup {
    fleet: Arc<Fleet<FakeEngine>>,
    engine: Arc<FakeEngine>,
    clock: Arc<ManualClock>,
    gateway: Arc<Gateway<FakeEngine>>,
    listen: SocketAddr,
    pool: PoolId,
    refusals: Arc<Mutex<Vec<String>>>,
}

use hangar_testkit::free_port;

async fn setup(desired: Desired, policy: Policy, max_waiting: u32, port: u16) -> Setup {
    let clock = Arc::new(ManualClock::default());
    let engine =
        Arc::new(FakeEngine::new(FakeConfig { clock: clock.clone(), ..FakeConfig::default() }));
    let fleet = Arc::new(Fleet::new(engine.clone(), clock.clone()));
    let tenant = TenantId::new("acme").unwrap();
    fleet.put_tenant(Tenant { id: tenant.clone(), quotas: Quotas::default() });
    let pool = PoolId::new("acme--web").unwrap();
    let template = hangar_testkit::toml_spec(
        "schema_version = 1\nname = \"template\"\n[machine]\nvcpus = 1\nmemory_mib = 256\n",
    );
    fleet
        .add_pool(Pool { id: pool.clone(), tenant: tenant.clone(), template, desired, policy })
        .unwrap();
    fleet.pass();
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    fleet
        .add_route(Route {
            id: RouteId::new("acme--web").unwrap(),
            tenant,
            listen,
            matcher: Match::Tcp,
            target: RouteTarget { pool: pool.clone(), port },
            max_waiting,
        })
        .unwrap();
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let gateway = Gateway::new(
        fleet.clone(),
        clock.clone(),
        Arc::new(|vm: &VmName| Some(guest_address(ordinal(vm)))),
        move |_route, refusal| seen.lock().unwrap().push(refusal.message.clone()),
    );
    assert!(gateway.sync().is_empty());
    Setup { fleet, engine, clock, gateway, listen, pool, refusals }
}

/// One connection through the gateway: what came back (empty if it was closed unanswered).
async fn fetch(listen: SocketAddr) -> String {
    let mut conn = TcpStream::connect(listen).await.unwrap();
    conn.write_all(b"hi\n").await.unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer).await;
    answer
}

fn held(fleet: &Fleet<FakeEngine>) -> Vec<(String, VmState)> {
    fleet
        .instances(None)
        .into_iter()
        .filter(|i| i.holder.as_deref() == Some(GATEWAY_HOLDER))
        .map(|i| (i.name.to_string(), i.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_to_a_sleeping_pool_share_one_wake() {
    let guests = Guests::start(4, 18081).await;
    let s =
        setup(Desired { sleeping: 1, ..Desired::default() }, Policy::default(), 256, 18081).await;
    assert!(held(&s.fleet).is_empty());
    let answers = futures_join(50, s.listen).await;
    // Every connection got the page, from the one instance woken for them all.
    assert!(answers.iter().all(|a| a == "hello from 0\n"), "{answers:?}");
    assert_eq!(held(&s.fleet), [("acme--web-0".to_string(), VmState::Running)]);
    closed(&s.gateway).await;
    let activity = s.gateway.activity();
    assert_eq!(activity.len(), 1);
    assert_eq!((activity[0].1.connections, activity[0].1.open), (50, 0));
    assert_eq!(activity[0].1.bytes_in, 50 * 3);
    assert_eq!(activity[0].1.bytes_out, 50 * "hello from 0\n".len() as u64);
    // The pool refills its sleeping set behind the gateway's instance.
    let pass = s.fleet.pass();
    assert_eq!(pass.created, 1, "{pass:?}");
    drop(guests);
}

/// Waits until the gateway has seen every connection close (the client may see the end of
/// its answer a moment before the gateway's side is done).
async fn closed(gateway: &Gateway<FakeEngine>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gateway.activity().iter().any(|(_, a)| a.open > 0) {
        assert!(std::time::Instant::now() < deadline, "connections never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn futures_join(n: usize, listen: SocketAddr) -> Vec<String> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(fetch(listen))).collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_rest_and_the_next_connection_wakes_them() {
    let _guests = Guests::start(4, 18082).await;
    let policy = Policy { idle_sleep_after_s: Some(30), ..Policy::default() };
    let s = setup(Desired { sleeping: 1, ..Desired::default() }, policy, 256, 18082).await;
    assert_eq!(fetch(s.listen).await, "hello from 0\n");
    closed(&s.gateway).await;
    s.fleet.pass();
    // Idle past idle_sleep_after_s (by the fleet's clock): asleep again, still the gateway's.
    s.clock.advance(Duration::from_secs(31));
    s.gateway.publish();
    s.fleet.pass();
    assert_eq!(held(&s.fleet), [("acme--web-0".to_string(), VmState::Sleeping)]);
    // The next connection wakes that same instance.
    assert_eq!(fetch(s.listen).await, "hello from 0\n");
    assert_eq!(held(&s.fleet), [("acme--web-0".to_string(), VmState::Running)]);
    // An open connection is never idle, however long it has been quiet.
    let mut open = TcpStream::connect(s.listen).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut first = [0u8; 5];
    open.read_exact(&mut first).await.unwrap();
    s.clock.advance(Duration::from_secs(3600));
    s.gateway.publish();
    s.fleet.pass();
    assert_eq!(held(&s.fleet)[0].1, VmState::Running);
    let _ = s.clock.now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_replaced_for_the_next_connection() {
    let guests = Guests::start(4, 18083).await;
    let s = setup(Desired::default(), Policy::default(), 256, 18083).await;
    // Nothing resting: the first connection's claim makes a new instance.
    assert_eq!(fetch(s.listen).await, "hello from 0\n");
    // Its QEMU dies (and its guest with it).
    s.engine.crash(&VmName::new("acme--web-0").unwrap(), "killed").unwrap();
    guests.stop(0).await;
    let answer = fetch(s.listen).await;
    assert!(answer.starts_with("hello from ") && answer != "hello from 0\n", "{answer:?}");
    assert!(s.refusals.lock().unwrap().is_empty(), "{:?}", s.refusals.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_an_instance_that_died_are_closed() {
    // A guest that takes connections and never answers: like one whose QEMU was killed, it
    // will never close them either.
    let listener = TcpListener::bind(SocketAddr::new(guest_address(0), 18085)).await.unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            open.push(conn);
        }
    });
    let s = setup(Desired::default(), Policy::default(), 256, 18085).await;
    let mut conn = TcpStream::connect(s.listen).await.unwrap();
    conn.write_all(b"hi\n").await.unwrap();
    // Spliced to the new instance (the fleet counts the open connection).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.gateway.activity().iter().all(|(_, a)| a.open == 0) {
        assert!(std::time::Instant::now() < deadline, "never spliced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answer = Vec::new();
    let waiting = tokio::time::timeout(Duration::from_millis(200), conn.read_to_end(&mut answer));
    assert!(waiting.await.is_err(), "still open while its instance lives");
    // Its QEMU dies; the fleet's next pass sees it, the gateway's next publish closes it.
    s.engine.crash(&VmName::new("acme--web-0").unwrap(), "killed").unwrap();
    s.fleet.pass();
    s.gateway.publish();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the client's connection was not closed");
    assert!(answer.is_empty(), "{answer:?}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_waiting_connections_are_refused_at_once() {
    let _guests = Guests::start(4, 18084).await;
    let s = setup(Desired { sleeping: 1, ..Desired::default() }, Policy::default(), 1, 18084).await;
    // The wake is held inside the engine until released; the hook says when it got there.
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, held_boot) = std::sync::mpsc::channel::<()>();
    let hook = Mutex::new((entered_tx, held_boot));
    s.engine.on_boot(move || {
        let hook = hook.lock().unwrap();
        let _ = hook.0.send(());
        let _ = hook.1.recv_timeout(Duration::from_secs(30));
    });
    let first = tokio::spawn(fetch(s.listen));
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the wake began");
    // The one waiting place is taken: the next connection is closed unanswered, at once.
    assert_eq!(fetch(s.listen).await, "");
    assert!(s.refusals.lock().unwrap()[0].contains("already waiting"), "{:?}", s.refusals);
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap(), "hello from 0\n");
    let _ = &s.pool;
}
