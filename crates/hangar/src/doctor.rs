//! `hangar doctor` and `hangar images`: what this host has and can do.

use std::io::Write;
use std::path::Path;

use hangar_control::DaemonMode;
use hangar_core::error::ErrorCode;

use crate::table::print_listing;
use crate::{Failure, Output};

use crate::common::*;

pub(crate) fn check(out: &mut dyn Write, ok: bool, what: &str, detail: &str, fix: &str) -> bool {
    let mark = if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out, "[{mark}] {what}: {detail}");
    if !ok && !fix.is_empty() {
        let _ = writeln!(out, "       fix: {fix}");
    }
    ok
}

pub fn doctor(out: &mut dyn Write) -> Result<(), Failure> {
    use hangar_plan::HostProbe;
    let home = home();
    let facts = hangar_plan::probe::SystemProbe { home: home.clone() }.probe();
    let mut healthy = true;
    healthy &= check(
        out,
        facts.qemu.version.is_some(),
        "qemu",
        &match &facts.qemu.version {
            Some(v) => format!("{} {v}", facts.qemu.binary),
            None => format!("{} not found on PATH", facts.qemu.binary),
        },
        "run scripts/setup (installs qemu-system-x86 10.x from bookworm-backports)",
    );
    let qemu_img = hangar_plan::probe::find_in_path("qemu-img");
    healthy &= check(
        out,
        qemu_img.is_some(),
        "qemu-img",
        &qemu_img.map(|p| p.display().to_string()).unwrap_or_else(|| "not found".into()),
        "apt-get install qemu-utils",
    );
    let (kvm_ok, why) = facts.kvm.verdict();
    check(
        out,
        true,
        "accelerator",
        &if kvm_ok { format!("kvm ({why})") } else { format!("tcg, because {why}") },
        "",
    );
    if let Some(fix) = kvm_access_fix(kvm_ok, facts.confinement.kvm_group) {
        let _ = writeln!(out, "       fix: {fix}");
    }
    let image = Path::new(&facts.image_path("minimal")).to_path_buf();
    let image_ok = image.join("vmlinuz").exists() && image.join("initrd.img").exists();
    let root = rustix::process::geteuid().is_root();
    healthy &= check(
        out,
        image_ok,
        "guest image minimal",
        &image.display().to_string(),
        &if root {
            format!(
                "run scripts/setup (builds the built-in image into {})",
                hangar_plan::probe::SYSTEM_IMAGE_DIR
            )
        } else {
            format!(
                "ask an administrator to run scripts/setup (as root): it builds the image into {}, which every user's Hangar boots",
                hangar_plan::probe::SYSTEM_IMAGE_DIR
            )
        },
    );
    let writable = std::fs::create_dir_all(&home).is_ok() && tempfile_in(&home);
    healthy &= check(
        out,
        writable,
        "state directory",
        &home.display().to_string(),
        "set HANGAR_HOME to a writable directory, or run as root",
    );
    let free = free_bytes(&home);
    let enough = free.map(|b| b > 1 << 30).unwrap_or(false);
    healthy &= check(
        out,
        enough,
        "disk space",
        &free.map(|b| format!("{} MiB free", b >> 20)).unwrap_or_else(|| "unknown".into()),
        "free at least 1 GiB for overlays and snapshots",
    );
    if let Some(cap) = facts.capacity {
        check(
            out,
            true,
            "memory",
            &format!(
                "{} MiB available (a VM needs its RAM + {} MiB for QEMU, else E_HOST_CAPACITY)",
                cap.memory_available_mib, facts.confinement.memory_overhead_mib
            ),
            "",
        );
    }
    let c = &facts.confinement;
    let confined = !c.enabled || !c.root || c.qemu_group.is_some();
    healthy &= check(
        out,
        confined,
        "QEMU confinement",
        &if !c.enabled {
            "off (HANGAR_CONFINE=off): QEMU runs as this user, with seccomp but no cgroup".into()
        } else if !c.root {
            "partial: not root, so QEMU runs as this user (no_new_privs, seccomp), with no cgroup"
                .into()
        } else {
            match c.qemu_group {
                Some(g) => format!(
                    "each QEMU as a uid of its own in group {} ({g}), no capabilities, no_new_privs, seccomp",
                    hangar_plan::probe::QEMU_GROUP
                ),
                None => format!("group {} is missing", hangar_plan::probe::QEMU_GROUP),
            }
        },
        "run scripts/setup (it creates the hangar-qemu group)",
    );
    check(
        out,
        true,
        "cgroups",
        &match c.cgroup {
            hangar_plan::CgroupVersion::V1 => {
                "v1 (memory, cpu, pids under /sys/fs/cgroup/NAME/hangar/<vm>)".to_string()
            }
            hangar_plan::CgroupVersion::V2 => "v2 (/sys/fs/cgroup/hangar/<vm>)".to_string(),
            hangar_plan::CgroupVersion::None if !c.root => {
                "none (only root makes cgroups)".to_string()
            }
            hangar_plan::CgroupVersion::None => {
                "none (neither v2 with memory, cpu and pids, nor those v1 controllers)".to_string()
            }
        },
        "",
    );
    check(
        out,
        true,
        "cpus",
        &format!(
            "{} (TCG boots are CPU-bound: boot at most this many VMs at once)",
            facts.cpu_count
        ),
        "",
    );
    network_checks(out);
    healthy &= match hangar_control::allowed_roots(&home, allow_paths()) {
        Ok(roots) => check(
            out,
            true,
            "allowed paths (without hangard)",
            &roots.roots().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            "",
        ),
        Err(e) => {
            let e = hangar_api::ErrorBody::from(e);
            check(out, false, "allowed paths", &e.message, &e.hint)
        }
    };
    if let Ok(pem) = std::fs::read(home.join("tls/cert.pem")) {
        let fingerprint = hangar_api::client::fingerprint_of_pem(&pem);
        healthy &= check(
            out,
            fingerprint.is_some(),
            "hangard TLS certificate",
            &fingerprint
                .map(|f| format!("{f} (clients set HANGAR_TLS_FINGERPRINT to it)"))
                .unwrap_or_else(|| "tls/cert.pem is not a PEM certificate".into()),
            "move $HANGAR_HOME/tls aside; hangard --listen-tcp makes a new one",
        );
    }
    if let Ok(Some(remote)) = hangar_control::remote_for(&home, DaemonMode::Auto) {
        match remote.call::<serde_json::Value>("GET", "/v1/host", None) {
            Ok(host) => {
                let roots: Vec<&str> = host["allowed_paths"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                check(out, true, "allowed paths (hangard)", &roots.join(", "), "");
                let audit = host["audit"].as_str().unwrap_or("unknown");
                let head = &host["audit_head"];
                healthy &= check(
                    out,
                    audit == "ok",
                    "audit log",
                    &if audit == "ok" {
                        format!(
                            "ok, signed head at entry {} ({})",
                            head["seq"], host["audit_key"].as_str().unwrap_or("?")
                        )
                    } else {
                        audit.to_string()
                    },
                    "hangard refuses every change until the log is fixed: run `hangar audit verify`, keep the damaged log as evidence, move it aside and restart hangard",
                );
            }
            Err(e) => {
                let e = hangar_api::ErrorBody::from(e);
                check(out, false, "hangard", &e.message, &e.hint);
            }
        }
    }
    if healthy {
        Ok(())
    } else {
        Err(Failure { diagnostics: vec![], exit: Some(2) })
    }
}

pub(crate) fn tempfile_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail * st.f_frsize)
}

/// `hangar images`: the guest images in $HANGAR_HOME/images and the system-wide ones.
pub fn images(output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let home = home();
    let shared = Path::new(hangar_plan::probe::SYSTEM_IMAGE_DIR);
    let list = hangar_api::images(&home, shared).map_err(|e| {
        crate::failure(ErrorCode::Io, format!("{}: {e}", home.join("images").display()), "")
    })?;
    print_listing(out, output, &list, ("NAME<16 COMPLETE<9 SIZE>8 KERNEL<24", "DIR"), |i| {
        let kernel = i.manifest.as_ref().and_then(|m| m["kernel_release"].as_str());
        let cells = vec![
            i.name.clone(),
            if i.complete { "yes" } else { "no" }.into(),
            format!("{}M", i.size_bytes >> 20),
            kernel.unwrap_or("-").to_string(),
        ];
        (cells, i.dir.clone())
    })
}

/// How this user gets KVM, when the host has it and only permissions stand in the way: the
/// device's group (a user outside it falls back to TCG, slower but working).
fn kvm_access_fix(kvm_ok: bool, kvm_group: Option<u32>) -> Option<String> {
    if kvm_ok || rustix::process::geteuid().is_root() {
        return None;
    }
    use std::os::unix::fs::MetadataExt;
    let gid = kvm_group?;
    let mode = std::fs::metadata("/dev/kvm").ok()?.mode();
    if gid == 0 || mode & 0o060 != 0o060 {
        return Some(format!(
            "/dev/kvm is open to root only (mode {:04o}): an administrator gives it to group kvm (`chgrp kvm /dev/kvm && chmod 0660 /dev/kvm`, or a udev rule) and adds you (`usermod -aG kvm $USER`); until then VMs run with TCG",
            mode & 0o7777
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let groups = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or("");
    if groups.split_whitespace().any(|g| g == gid.to_string()) {
        return None; // a member already: the device itself is the problem, as said above
    }
    let name = group_name(gid).unwrap_or_else(|| gid.to_string());
    Some(format!(
        "/dev/kvm belongs to group {name}: `sudo usermod -aG {name} $USER`, then log in again (until then VMs run with TCG)"
    ))
}

/// A group's name from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2] == gid.to_string()).then(|| f[0].to_string())
    })
}

/// What bridge networks need (`hangar network`); `user` NICs need none of it, so these never
/// fail the doctor as a whole.
fn network_checks(out: &mut dyn Write) {
    let root = rustix::process::geteuid().is_root();
    if !root {
        // Not a failure: an ordinary user's VMs use `user` networking, which needs none of it.
        let _ = writeln!(
            out,
            "[ok  ] bridge networks: not for ordinary users (their NICs use mode \"user\"); root or hangard makes bridges, TAPs and rules"
        );
        return;
    }
    check(
        out,
        root,
        "bridge networks: privileges",
        if root { "root" } else { "not root" },
        "run hangar (or hangard) as root to create bridges, TAPs and rules",
    );
    let tun = std::path::Path::new("/dev/net/tun").exists();
    check(
        out,
        tun,
        "bridge networks: TUN/TAP",
        if tun { "/dev/net/tun" } else { "/dev/net/tun is missing" },
        "load the tun module (modprobe tun), or use a kernel with CONFIG_TUN",
    );
    let bridge = std::path::Path::new("/sys/module/bridge").exists();
    check(
        out,
        bridge,
        "bridge networks: Linux bridge",
        if bridge { "bridge support loaded" } else { "no bridge support" },
        "load the bridge module (modprobe bridge), or use a kernel with CONFIG_BRIDGE",
    );
    let nft = hangar_netlink::nft::tables();
    check(
        out,
        nft.is_ok(),
        "bridge networks: nf_tables",
        &match &nft {
            Ok(tables) => format!(
                "answers ({} table(s); Hangar's are `ip hangar` and `bridge hangar`)",
                tables.len()
            ),
            Err(e) => format!("cannot list tables: {e}"),
        },
        "use a kernel with nf_tables (CONFIG_NF_TABLES, with NAT and masquerade), as root",
    );
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    check(
        out,
        true,
        "bridge networks: IPv4 forwarding",
        if forwarding {
            "on"
        } else {
            "off (Hangar turns it on when it creates a network with NAT)"
        },
        "",
    );
}
