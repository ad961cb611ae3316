//! Network namespaces made by a test, so networking tests never touch the machine's own.
//!
//! A [`Netns`] is a thread that left the test's namespace for a new, empty one (only `lo`,
//! down). Work sent to it with [`Netns::run`] runs on that thread; processes it spawns (QEMU,
//! `hangar`, a server) are born in that namespace. Dropping it ends the thread, and the
//! namespace disappears with the last process and descriptor in it.

use std::os::fd::OwnedFd;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The names of the calling thread's namespace's links, sorted (to compare what a test left).
pub fn link_names() -> Vec<String> {
    let mut names: Vec<String> = hangar_netlink::route::Rtnl::open()
        .and_then(|mut r| r.links())
        .expect("list the links over netlink")
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    names
}

/// A thread in a network namespace of its own.
pub struct Netns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    fd: OwnedFd,
}

impl Netns {
    /// A new namespace with loopback up, or why not (not root, no namespace support).
    pub fn new() -> Result<Netns, String> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = unshare_net().and_then(|()| {
                let fd = rustix::fs::open(
                    "/proc/thread-self/ns/net",
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| format!("cannot open the new namespace: {e}"))?;
                let mut rtnl = hangar_netlink::route::Rtnl::open().map_err(|e| e.to_string())?;
                let lo = rtnl.index_of("lo").map_err(|e| e.to_string())?;
                rtnl.set_up(lo, None).map_err(|e| e.to_string())?;
                Ok(fd)
            });
            let ok = entered.is_ok();
            let _ = ready.send(entered);
            if ok {
                for job in inbox {
                    job();
                }
            }
        });
        let fd = started.recv().map_err(|_| "the namespace thread died".to_string())??;
        Ok(Netns { jobs: Some(jobs), thread: Some(thread), fd })
    }

    /// Runs `f` inside the namespace and returns what it returned (a panic in `f` is
    /// re-raised here).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        self.jobs.as_ref().expect("running").send(job).expect("the namespace thread is alive");
        match rx.recv().expect("the job ran") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The namespace's `/proc/…/ns/net` descriptor (to move links into it).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[allow(unsafe_code)]
fn unshare_net() -> Result<(), String> {
    // SAFETY: CLONE_NEWNET changes only which network namespace this thread's new sockets and
    // children belong to; it shares no memory or descriptor table differently (the reasons
    // rustix marks unshare unsafe are CLONE_FILES/CLONE_FS/CLONE_VM).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| format!("cannot create a network namespace: {e} (root needed)"))
}
