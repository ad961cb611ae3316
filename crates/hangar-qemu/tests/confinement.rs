//! Each QEMU confined, proved on real guests: it runs as a uid of its own with no capabilities,
//! `no_new_privs` and QEMU's seccomp sandbox; it sits in a cgroup of its own whose limits are
//! the plan's; it cannot open another VM's overlay, nor Hangar's store; and a guest that uses
//! more memory than its VM is allowed is stopped by its cgroup, not by the host.
//!
//! Needs root, the `hangar-qemu` group (scripts/setup) and cgroups (v1 or v2); without them,
//! or without QEMU and the built image, each test says SKIPPED and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{Lifecycle, SaveMode, Snapshots};
use hangar_core::error::{Coded, ErrorCode};
use hangar_core::ids::{SnapshotId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_plan::{CgroupVersion, HostFacts, HostProbe, Plan};
use hangar_qemu::{EngineOptions, QemuEngine};
use std::os::unix::fs::MetadataExt;

/// Why confinement cannot be tested here, if it cannot.
fn confinement_missing() -> Option<String> {
    if let Some(reason) = hangar_testkit::real_engine_missing() {
        return Some(reason);
    }
    let facts = hangar_plan::probe::confinement_facts();
    if !facts.root {
        return Some("not root: QEMU cannot be started as another user".into());
    }
    if facts.qemu_group.is_none() {
        return Some("no hangar-qemu group (run scripts/setup)".into());
    }
    if facts.cgroup == CgroupVersion::None {
        return Some("no cgroup hierarchy with memory, cpu and pids".into());
    }
    None
}

fn skip(test: &str) -> bool {
    match confinement_missing() {
        None => false,
        Some(reason) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
            true
        }
    }
}

fn facts(home: &Path) -> HostFacts {
    let facts = hangar_plan::probe::SystemProbe { home: home.to_path_buf() }.probe();
    assert!(facts.confinement.enabled, "HANGAR_CONFINE=off is set");
    facts
}

fn engine(home: &Path, facts: HostFacts) -> QemuEngine {
    // Ephemeral: guests are stopped when the engine is dropped, also when an assertion fails.
    QemuEngine::with_facts(
        home,
        facts,
        EngineOptions { ephemeral: true, ..EngineOptions::default() },
    )
    .unwrap()
}

use hangar_testkit::{spec_over as spec, toml_spec};

/// A home of its own with the images linked in, its QEMUs killed when the test ends, a
/// qcow2 base for overlays, and an engine over it (with `facts` changed as `adjust` says).
struct Bench {
    home: tempfile::TempDir,
    _reaper: hangar_testkit::Reaper,
    base: PathBuf,
    engine: QemuEngine,
}

/// The bench for `test`, or `None` (said on stderr) where it cannot run here.
fn bench(test: &str, adjust: impl FnOnce(&mut HostFacts)) -> Option<Bench> {
    if skip(test) {
        return None;
    }
    let home = hangar_testkit::private_home("hgc-");
    let reaper = hangar_testkit::Reaper(home.path().to_path_buf());
    let base = home.path().join("base.qcow2");
    hangar_testkit::base_qcow2(&base);
    let mut facts = facts(home.path());
    adjust(&mut facts);
    let engine = engine(home.path(), facts);
    Some(Bench { home, _reaper: reaper, base, engine })
}

fn plan(engine: &QemuEngine, vm: &str) -> Plan {
    QemuEngine::plan_of(&engine.record(&VmName::new(vm).unwrap()).unwrap()).unwrap()
}

fn pid(engine: &QemuEngine, vm: &str) -> u32 {
    engine
        .record(&VmName::new(vm).unwrap())
        .unwrap()
        .process
        .expect("a running VM has a process")
        .pid
}

/// `Name:\tvalue` lines of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The directory of `controller` for a VM's cgroup (v1: one per controller; v2: one).
fn cgroup_dir(version: CgroupVersion, controller: &str, path: &str) -> PathBuf {
    match version {
        CgroupVersion::V1 => Path::new("/sys/fs/cgroup").join(controller).join(path),
        _ => Path::new("/sys/fs/cgroup").join(path),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn a_guest_runs_as_its_own_user_without_privileges_in_its_own_cgroup() {
    let Some(b) =
        bench("a_guest_runs_as_its_own_user_without_privileges_in_its_own_cgroup", |_| {})
    else {
        return;
    };
    let (home, base, engine, c) = (b.home.path(), &b.base, &b.engine, CancelToken::new());
    let mut s = spec("conf-a", 128, base);
    s.machine.cpu_weight = Some(300);
    engine.define(&s).unwrap();
    engine.start(&s.name, &c).unwrap();
    let plan = plan(engine, "conf-a");
    let conf = plan.confinement.clone().expect("the plan confines QEMU");
    let uid = conf.uid.expect("root starts QEMU as a user of its own");
    let pid = pid(engine, "conf-a");

    // The process: its own uid and gid everywhere (real, effective, saved, fs), the QEMU group
    // besides, no capability at all, no way to gain one, QEMU's seccomp filter on.
    let all = |v: u32| format!("{v}\t{v}\t{v}\t{v}");
    assert_eq!(status_field(pid, "Uid"), all(uid));
    assert_eq!(status_field(pid, "Gid"), all(conf.gid.unwrap()));
    assert_eq!(
        status_field(pid, "Groups"),
        conf.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
    );
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "2 is SECCOMP_MODE_FILTER");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline)
            .contains("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"),
        "QEMU was started with its sandbox"
    );

    // The cgroup: QEMU is in it, and its limits are the plan's.
    let cg = conf.cgroup.clone().expect("a cgroup on this host");
    let tag = hangar_plan::home_tag(&format!("{}/vms", home.display()));
    assert_eq!(cg.path, format!("hangar/{tag}-conf-a"));
    assert_eq!(cg.memory_max_bytes, (128 + 256) << 20);
    assert_eq!(cg.cpu_quota_us, 2 * 100_000, "one vCPU plus one for QEMU");
    let in_cgroup = read(Path::new(&format!("/proc/{pid}/cgroup")));
    let dir = |c: &str| cgroup_dir(cg.version, c, &cg.path);
    match cg.version {
        CgroupVersion::V1 => {
            for c in ["memory", "cpu", "pids"] {
                assert!(
                    in_cgroup.lines().any(|l| l
                        .split(':')
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .any(|x| x == c)
                        && l.ends_with(&format!(":/{}", cg.path))),
                    "QEMU is not in its {c} cgroup: {in_cgroup}"
                );
            }
            assert_eq!(
                read(&dir("memory").join("memory.limit_in_bytes")),
                cg.memory_max_bytes.to_string()
            );
            assert_eq!(read(&dir("cpu").join("cpu.cfs_quota_us")), "200000");
            assert_eq!(read(&dir("cpu").join("cpu.cfs_period_us")), "100000");
            assert_eq!(
                read(&dir("cpu").join("cpu.shares")),
                (300 * 1024 / 100).to_string(),
                "the spec's cpu_weight"
            );
            assert_eq!(read(&dir("pids").join("pids.max")), "512");
        }
        _ => {
            assert!(in_cgroup.contains(&format!("0::/{}", cg.path)), "{in_cgroup}");
            assert_eq!(read(&dir("").join("memory.max")), cg.memory_max_bytes.to_string());
            assert_eq!(read(&dir("").join("cpu.max")), "200000 100000");
            assert_eq!(read(&dir("").join("cpu.weight")), "300");
            assert_eq!(read(&dir("").join("pids.max")), "512");
        }
    }
    // Found again: a QEMU outside its cgroup (started by an older Hangar, or moved by
    // someone) is put back at the next look.
    let root_procs: Vec<PathBuf> = match cg.version {
        CgroupVersion::V1 => ["memory", "cpu", "pids"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join("cgroup.procs"))
            .collect(),
        _ => vec![PathBuf::from("/sys/fs/cgroup/cgroup.procs")],
    };
    for procs in &root_procs {
        std::fs::write(procs, pid.to_string()).unwrap();
    }
    assert!(!read(Path::new(&format!("/proc/{pid}/cgroup"))).contains(&format!("/{}", cg.path)));
    engine.list().unwrap();
    assert_eq!(read(Path::new(&format!("/proc/{pid}/cgroup"))), in_cgroup);
    // `hangar inspect` shows them as the kernel has them.
    let shown = engine.confinement(&s.name).unwrap().unwrap();
    assert_eq!(shown["uid"], uid);
    assert_eq!(shown["cgroup_now"]["limits"]["pids.max"], "512", "{shown}");

    // Files: the runtime directory stays root's (QEMU cannot create or replace anything in
    // it); only the overlay and the console log are QEMU's.
    let runtime = Path::new(&plan.runtime_dir);
    let meta = std::fs::metadata(runtime).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o750));
    let overlay = std::fs::metadata(runtime.join("disks/root.qcow2")).unwrap();
    assert_eq!((overlay.uid(), overlay.mode() & 0o777), (uid, 0o600));
    assert_eq!(std::fs::metadata(runtime.join("qmp.sock")).unwrap().uid(), 0);

    // A snapshot QEMU wrote is taken back: root's, private.
    let snap = SnapshotId::new("conf-snap").unwrap();
    engine.save(&s.name, &snap, SaveMode::KeepPaused, &c).unwrap();
    let state = home.join("snapshots/conf-snap@conf-a.state");
    let m = std::fs::metadata(&state).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
    assert!(!runtime.join("save.state").exists(), "nothing left behind");
    // ... and restored through a descriptor QEMU could not have opened itself.
    engine.stop(&s.name, hangar_core::contracts::StopMode::Force, &c).unwrap();
    engine.restore(&s.name, &snap, &c).unwrap();
    // In its cgroups as well: a restore joins them while QEMU starts, before the guest runs.
    // (Read before asking the engine anything else: a look would move it there if not.)
    let restored = read(&runtime.join("pid"));
    let restored = restored.split_whitespace().next().unwrap();
    assert_eq!(read(Path::new(&format!("/proc/{restored}/cgroup"))), in_cgroup);
    assert_eq!(engine.status(&s.name).unwrap().state, VmState::Running);
    assert_eq!(status_field(self::pid(engine, "conf-a"), "Uid"), all(uid));

    // Removed with the VM.
    engine.stop(&s.name, hangar_core::contracts::StopMode::Force, &c).unwrap();
    engine.delete_snapshot(&snap).unwrap();
    engine.undefine(&s.name).unwrap();
    for c in ["memory", "cpu", "pids"] {
        assert!(!dir(c).exists(), "{} outlived its VM", dir(c).display());
    }
}

#[test]
fn a_qemu_cannot_open_another_vms_overlay_or_hangars_files() {
    let Some(b) = bench("a_qemu_cannot_open_another_vms_overlay_or_hangars_files", |_| {}) else {
        return;
    };
    let (home, base, engine, c) = (b.home.path(), &b.base, &b.engine, CancelToken::new());
    for vm in ["conf-b", "conf-c"] {
        let s = spec(vm, 128, base);
        engine.define(&s).unwrap();
        engine.start(&s.name, &c).unwrap();
    }
    let (b, other) = (plan(engine, "conf-b"), plan(engine, "conf-c"));
    assert_ne!(b.confinement.as_ref().unwrap().uid, other.confinement.as_ref().unwrap().uid);
    let theirs = format!("{}/disks/root.qcow2", other.runtime_dir);
    let own = format!("{}/disks/root.qcow2", b.runtime_dir);
    let store = home.join("state.db").display().to_string();

    // Ask conf-b's QEMU itself, over QMP, to open files: what a compromised QEMU could try.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let open = |file: &str, node: &str| -> Result<(), String> {
        rt.block_on(async {
            let qmp = hangar_qmp::Qmp::connect(&b.qmp_socket, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            qmp.execute(
                "blockdev-add",
                Some(serde_json::json!({
                    "driver": "file",
                    "node-name": node,
                    "filename": file,
                    "read-only": true,
                    "locking": "off",
                })),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
    };
    // Its own overlay opens (so the refusals below are about permission, nothing else).
    open(&own, "mine").unwrap();
    for (i, file) in [&theirs, &store].into_iter().enumerate() {
        let e = open(file, &format!("stolen{i}"))
            .err()
            .unwrap_or_else(|| panic!("conf-b's QEMU opened {file}"));
        assert!(e.contains("Permission denied"), "conf-b's QEMU opening {file}: {e}");
    }
}

/// Guest RAM is a file mapped shared (issue 16): the cgroup's limit bounds what the QEMU keeps
/// resident, and what the guest touches beyond it is written back to the VM's RAM file and
/// reclaimed, instead of QEMU being killed. (QEMU's own, anonymous, memory is still killed by
/// the cgroup's OOM killer, and Hangar still reports that; see `oom_note`.)
#[test]
fn a_guest_touching_more_memory_than_its_limit_stays_within_it() {
    // No allowance for QEMU's own memory: the limit is the guest's RAM alone, so a guest that
    // touches most of it takes QEMU over the limit.
    let Some(b) = bench("a_guest_touching_more_memory_than_its_limit_stays_within_it", |facts| {
        facts.confinement.memory_overhead_mib = 0
    }) else {
        return;
    };
    let (home, base, engine, c) = (b.home.path(), &b.base, &b.engine, CancelToken::new());
    let s = spec("conf-hog", 256, base);
    engine.define(&s).unwrap();
    engine.start(&s.name, &c).unwrap();
    let plan = plan(engine, "conf-hog");
    let cg = plan.confinement.unwrap().cgroup.unwrap();
    assert_eq!(cg.memory_max_bytes, 256 << 20);

    // Fill a tmpfs with 150 MiB (as much as the guest's own kernel lets it keep): with what
    // the guest touched while booting and QEMU's own memory, well over 256 MiB resident were
    // nothing reclaimed (a booted guest's QEMU already holds ~220 MiB here).
    let out = hangar_testkit::console(
        &home.join("vms/conf-hog/console.sock"),
        "mkdir -p /hog; mount -t tmpfs -o size=160m tmpfs /hog; dd if=/dev/zero of=/hog/fill bs=1M count=150 2>/dev/null; echo hogged-$(($(wc -c < /hog/fill) / 1048576 + 1))",
        "hogged-151",
    );
    assert!(out.contains("hogged-151"), "{out}");
    let status = engine.status(&s.name).unwrap();
    assert_eq!(status.state, VmState::Running, "{status:?}");
    let (peak, usage) = match cg.version {
        CgroupVersion::V1 => ("memory.max_usage_in_bytes", "memory.usage_in_bytes"),
        _ => ("memory.peak", "memory.current"),
    };
    let dir = cgroup_dir(cg.version, "memory", &cg.path);
    let read =
        |f: &str| -> u64 { std::fs::read_to_string(dir.join(f)).unwrap().trim().parse().unwrap() };
    assert!(read(peak) <= cg.memory_max_bytes, "peak {} over the limit", read(peak));
    assert!(read(usage) <= cg.memory_max_bytes);
    // The guest's pages are in its RAM file (what was reclaimed was written there first): its
    // blocks are all reserved at start, so count the ranges that hold data.
    let ram = std::fs::File::open(home.join("vms/conf-hog/ram")).unwrap();
    let (mut at, mut data) = (0u64, 0u64);
    while let Ok(start) = rustix::fs::seek(&ram, rustix::fs::SeekFrom::Data(at)) {
        let end = rustix::fs::seek(&ram, rustix::fs::SeekFrom::Hole(start)).unwrap();
        data += end - start;
        at = end;
    }
    assert!(data >= 150 << 20, "RAM file holds {data} bytes of data");
    engine.stop(&s.name, hangar_core::contracts::StopMode::Force, &c).unwrap();
    // Nothing of it is left: the cgroup went with its QEMU.
    for c in ["memory", "cpu", "pids"] {
        assert!(!cgroup_dir(cg.version, c, &cg.path).exists());
    }
}

#[test]
fn two_names_with_the_same_derived_uid_still_get_different_users() {
    // No guest needed: uids are given at define.
    let (_home, engine, spec) = uid_bench();
    // Two names whose hashes collide, found by search (the space is 2^24).
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0..)
        .find_map(|i| {
            let name = format!("vm-{i}");
            let uid = hangar_plan::qemu_uid(&name);
            seen.insert(uid, name.clone()).map(|before| (before, name))
        })
        .unwrap();
    assert_eq!(hangar_plan::qemu_uid(&first), hangar_plan::qemu_uid(&second));
    let uid_of = |name: &str| {
        engine.define(&spec(name)).unwrap();
        plan(&engine, name).confinement.unwrap().uid.unwrap()
    };
    let (a, b) = (uid_of(&first), uid_of(&second));
    assert_eq!(a, hangar_plan::qemu_uid(&first));
    assert_ne!(a, b, "{first} and {second} would share a user");
    // Kept across a re-plan (a NIC change replans the VM).
    use hangar_core::contracts::Nics;
    engine
        .attach_nic(
            &VmName::new(&second).unwrap(),
            &hangar_core::spec::NicSpec {
                network: None,
                name: hangar_core::ids::DeviceName::new("net9").unwrap(),
                mode: hangar_core::spec::NicMode::None,
                forward: vec![],
            },
        )
        .unwrap();
    assert_eq!(plan(&engine, &second).confinement.unwrap().uid, Some(b));
}

#[test]
fn a_vm_the_host_cannot_hold_is_refused_with_e_host_capacity_and_nothing_is_made() {
    // No guest needed: admission comes before anything is made.
    let home = tempfile::Builder::new().prefix("hgc-").tempdir_in("/tmp").unwrap();
    let engine = QemuEngine::open(home.path(), EngineOptions::default()).unwrap();
    let kernel = home.path().join("vmlinuz");
    std::fs::write(&kernel, "k").unwrap();
    let available = hangar_plan::probe::capacity(home.path()).unwrap().memory_available_mib;
    // More than the host has, within what a spec may ask (64 GiB steps up to the maximum).
    let memory = (available / 65536 + 1) * 65536;
    if memory > 262_144 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a_vm_the_host_cannot_hold_is_refused_with_e_host_capacity_and_nothing_is_made: this host has more memory ({available} MiB) than a spec may ask for"
        );
        return;
    }
    let s = toml_spec(&format!(
        "schema_version = 1\nname = \"huge\"\n[machine]\nmemory_mib = {memory}\n[boot]\nkernel = \"{}\"\n",
        kernel.display()
    ));
    engine.define(&s).unwrap();
    let e = engine.start(&s.name, &CancelToken::new()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::HostCapacity, "{e}");
    assert!(e.to_string().contains("MiB available"), "{e}");
    assert_eq!(engine.status(&s.name).unwrap().state, VmState::Defined);
    assert!(
        engine.record(&s.name).unwrap().process.is_none()
            && !home.path().join("vms/huge/qemu.log").exists(),
        "nothing was started"
    );
}

#[test]
fn colliding_names_defined_at_the_same_moment_still_get_different_users() {
    // Two defines racing: each reads which uids are taken and then records its own; without
    // one lock around both, the two could pick the same uid. No guest needed.
    let (_home, engine, spec) = uid_bench();
    // Pairs of names whose derived uids collide.
    let mut seen = std::collections::HashMap::new();
    let pairs: Vec<(String, String)> = (0..)
        .filter_map(|i| {
            let name = format!("race-{i}");
            seen.insert(hangar_plan::qemu_uid(&name), name.clone()).map(|before| (before, name))
        })
        .take(6)
        .collect();
    for (first, second) in &pairs {
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for name in [first, second] {
                let (engine, barrier, spec) = (&engine, &barrier, spec(name));
                s.spawn(move || {
                    barrier.wait();
                    engine.define(&spec).unwrap();
                });
            }
        });
        let uid = |n: &str| plan(&engine, n).confinement.unwrap().uid.unwrap();
        assert_ne!(uid(first), uid(second), "{first} and {second} share a user");
    }
}

/// A confining engine on a private home (no guest is booted), and the spec of a VM named
/// `name` that boots a kernel file there: what the uid tests define.
fn uid_bench() -> (tempfile::TempDir, QemuEngine, impl Fn(&str) -> hangar_core::spec::VmSpec) {
    let home = tempfile::tempdir().unwrap();
    let mut facts = hangar_plan::probe::SystemProbe { home: home.path().to_path_buf() }.probe();
    facts.confinement.enabled = true;
    facts.confinement.root = true;
    facts.confinement.qemu_group = Some(4242);
    let engine = QemuEngine::with_facts(home.path(), facts, EngineOptions::default()).unwrap();
    let kernel = home.path().join("vmlinuz");
    std::fs::write(&kernel, "k").unwrap();
    let spec = move |name: &str| {
        toml_spec(&format!(
            "schema_version = 1\nname = \"{name}\"\n[boot]\nkernel = \"{}\"\n",
            kernel.display()
        ))
    };
    (home, engine, spec)
}
