//! `hangar validate` and `hangar plan`: the host files a spec names, host facts from a file,
//! and the plan as text.

use std::io::Write;
use std::path::Path;

use hangar_core::error::ErrorCode;
use hangar_plan::HostFacts;
use hangar_spec::{CanonicalSpec, Diagnostic};

use crate::*;

pub(crate) fn json_line(out: &mut dyn Write, value: &serde_json::Value) {
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(value).expect("json"));
}

/// The host files a spec names, with their fields.
pub(crate) fn host_files(spec: &hangar_core::spec::VmSpec) -> Vec<(String, String)> {
    use hangar_core::spec::{BootSource, DiskSource};
    let mut files = Vec::new();
    if let BootSource::Kernel { kernel, initrd, .. } = &spec.boot {
        files.push(("boot.kernel".to_string(), kernel.clone()));
        if let Some(initrd) = initrd {
            files.push(("boot.initrd".to_string(), initrd.clone()));
        }
    }
    for (i, d) in spec.disks.iter().enumerate() {
        if let DiskSource::Base { source } = &d.source {
            files.push((format!("disk[{i}].source"), source.clone()));
        }
    }
    files
}

pub(crate) fn read_facts(path: &Path) -> Result<HostFacts, Failure> {
    let fail = |code: ErrorCode, message: String, hint: &str| Failure {
        diagnostics: vec![Diagnostic::new(code, "", message).hint(hint)],
        exit: None,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            ErrorCode::Io,
            format!("cannot read {}: {e}", path.display()),
            "check the --host-facts path",
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        fail(
            ErrorCode::HostFactsInvalid,
            format!("{}: {e}", path.display()),
            "write the file with `hangar host-facts > FACTS.json` and edit it",
        )
    })
}

pub(crate) fn print_plan(out: &mut dyn Write, spec: &CanonicalSpec, plan: &hangar_plan::Plan) {
    let _ = writeln!(out, "plan for {} ({})", plan.name, spec.hash);
    let _ = writeln!(
        out,
        "accel:    {} (requested {}) — {}",
        plan.accel_resolved.as_str(),
        serde_json::to_value(plan.accel_requested)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        plan.accel_reason
    );
    let _ = writeln!(out, "qemu:     {}", plan.qemu_version.as_deref().unwrap_or("not found"));
    let _ = writeln!(out, "runtime:  {}", plan.runtime_dir);
    let _ = writeln!(out, "argv:     {}\n", plan.argv_hash);
    let _ = writeln!(out, "{}\n", plan.shell_command());
    let _ = writeln!(out, "creates (nothing is created by `plan`):");
    for c in &plan.creates {
        let line = match c {
            hangar_plan::Creation::Dir { path } => format!("dir      {path}"),
            hangar_plan::Creation::File { path, purpose } => {
                format!("file     {path}  ({purpose})")
            }
            hangar_plan::Creation::Socket { path, purpose } => {
                format!("socket   {path}  ({purpose})")
            }
            hangar_plan::Creation::Overlay { path, backing, .. } => {
                format!("overlay  {path}  (over {backing})")
            }
            hangar_plan::Creation::Disk { path, size_mib, .. } => {
                format!("disk     {path}  ({size_mib} MiB, blank)")
            }
            hangar_plan::Creation::RamFile { path, size_mib } => {
                format!("ram      {path}  ({size_mib} MiB guest RAM, sparse, mapped shared)")
            }
            hangar_plan::Creation::Tap { ifname, nic } => format!("tap      {ifname}  (nic {nic})"),
            hangar_plan::Creation::Lease { network, nic, address, leased } => {
                let held = if *leased { "held" } else { "to take" };
                format!("lease    {address} on {network}  (nic {nic}, {held})")
            }
            hangar_plan::Creation::BridgePort { ifname, nic, bridge, fd, .. } => {
                format!("port     {ifname} on bridge {bridge}  (nic {nic}, QEMU fd {fd})")
            }
            hangar_plan::Creation::Rule { table, nic, rule } => {
                format!("rule     {table}: {rule}  (nic {nic})")
            }
        };
        let _ = writeln!(out, "  {line}");
    }
    match &plan.confinement {
        None => {
            let _ = writeln!(out, "confined: no (HANGAR_CONFINE=off)");
        }
        Some(c) => {
            let user = match (c.uid, &c.groups[..]) {
                (Some(uid), groups) => format!("uid {uid}, groups {groups:?}, no capabilities"),
                (None, _) => "this user (Hangar is not root)".into(),
            };
            let _ = writeln!(
                out,
                "confined: {user}; no_new_privs; seccomp {}",
                if c.seccomp { "on" } else { "off" }
            );
            match &c.cgroup {
                Some(cg) => {
                    let _ = writeln!(
                        out,
                        "cgroup:   {} {}: memory {} MiB, cpu {} µs per {} µs, weight {}, pids {}",
                        cg.version.as_str(),
                        cg.path,
                        cg.memory_max_bytes >> 20,
                        cg.cpu_quota_us,
                        cg.cpu_period_us,
                        cg.cpu_weight,
                        cg.pids_max
                    );
                }
                None => {
                    let _ = writeln!(out, "cgroup:   none on this host");
                }
            }
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
}

/// What a dry run's bridge NICs would get: the lease each holds, or the address a lease would
/// get now. Read from an existing store only (`plan` creates nothing; without a store there
/// are no networks, and the planner says so with the NIC's field).
pub(crate) fn nic_networks(
    spec: &hangar_core::spec::VmSpec,
) -> Result<std::collections::BTreeMap<String, hangar_plan::NicNetwork>, Failure> {
    let bridged = spec.nics.iter().any(|n| n.mode == hangar_core::spec::NicMode::Bridge);
    let home = crate::common::home();
    if !bridged || !home.join("state.db").exists() {
        return Ok(Default::default());
    }
    let store = hangar_store::Store::open_in(&home)
        .map_err(|e| crate::common::fail(hangar_qemu::QemuError::Store(e).into()))?;
    let now = hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock);
    hangar_net::nic_networks(&store, spec, hangar_net::Leasing::Look, now)
        .map_err(crate::common::fail)
}
