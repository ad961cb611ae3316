//! `hangar node …`: the cluster's nodes, through hangard (which is the node). Without
//! `hangard --cluster` the host is a cluster of one.

use std::io::Write;

use clap::Subcommand;
use hangar_api::ClusterNode;

use crate::fleet::call;
use crate::table::print_listing;
use crate::{Failure, Output};

/// The cluster's nodes (needs hangard; `hangard --cluster` joins a cluster).
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Every node: alive (its lease renewed) or not, cordoned or not, its capacity and use.
    Ls {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// One node, whole, as JSON.
    Inspect {
        /// The node's name.
        name: String,
    },
    /// Send no new instances to a node (those there stay).
    Cordon {
        /// The node's name.
        name: String,
    },
    /// Move a node's instances to other nodes and send it no new ones (`uncordon` ends it).
    Drain {
        /// The node's name.
        name: String,
    },
    /// Let a cordoned or drained node take new instances again.
    Uncordon {
        /// The node's name.
        name: String,
    },
}

/// `hangar node …`
pub fn node(cmd: NodeCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        NodeCommand::Ls { output } => {
            let list: Vec<ClusterNode> = call("GET", "/v1/nodes", None)?;
            let columns =
                ("NODE<20 STATE<6 SCHEDULE<10 ACCEL<6 VCPUS>6 MEMORY>11 VMS>5", "ADVERTISE");
            print_listing(out, output, &list, columns, |n| {
                let name = if n.this_node { format!("{} *", n.name) } else { n.name.clone() };
                let info = n.info.as_ref();
                let stats = n.stats.as_ref();
                let used_mib = stats.map(|s| s.used.memory_mib).unwrap_or(0);
                (
                    vec![
                        name,
                        if n.alive { "up" } else { "down" }.into(),
                        schedule(n).into(),
                        info.map(|i| i.accel.clone()).unwrap_or_else(|| "-".into()),
                        info.map(|i| i.capacity.vcpus.to_string()).unwrap_or_else(|| "-".into()),
                        info.map(|i| format!("{used_mib}/{}M", i.capacity.memory_mib))
                            .unwrap_or_else(|| "-".into()),
                        stats.map(|s| s.vms_total.to_string()).unwrap_or_else(|| "-".into()),
                    ],
                    match (&n.problem, info) {
                        (Some(p), _) => format!("problem: {p}"),
                        (None, Some(i)) if !i.advertise.is_empty() => i.advertise.clone(),
                        _ => "-".into(),
                    },
                )
            })
        }
        NodeCommand::Inspect { name } => {
            let node: ClusterNode = call("GET", &format!("/v1/nodes/{name}"), None)?;
            let text = serde_json::to_string_pretty(&node).expect("nodes serialise");
            let _ = writeln!(out, "{text}");
            Ok(())
        }
        NodeCommand::Cordon { name } => {
            let n: ClusterNode = call("POST", &format!("/v1/nodes/{name}/cordon"), None)?;
            let _ = writeln!(out, "node {}: {} (no new instances go there)", n.name, schedule(&n));
            Ok(())
        }
        NodeCommand::Drain { name } => {
            let n: ClusterNode = call("POST", &format!("/v1/nodes/{name}/drain"), None)?;
            let _ = writeln!(
                out,
                "node {}: {} (the scheduler moves its instances to other nodes)",
                n.name,
                schedule(&n)
            );
            Ok(())
        }
        NodeCommand::Uncordon { name } => {
            let n: ClusterNode = call("POST", &format!("/v1/nodes/{name}/uncordon"), None)?;
            let _ = writeln!(out, "node {}: {}", n.name, schedule(&n));
            Ok(())
        }
    }
}

fn schedule(n: &ClusterNode) -> &'static str {
    match n.schedule {
        hangar_cluster::Schedule::Ready => "ready",
        hangar_cluster::Schedule::Cordoned => "cordoned",
        hangar_cluster::Schedule::Draining => "draining",
    }
}

/// The cluster's signing key (`hangard --cluster-key`).
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The cluster's signing key.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `hangar cluster key …`
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make a new key in FILE (mode 0600, never overwritten) and print its public half. Copy
    /// the file to every node (`hangard --cluster-key FILE`). To rotate: make a new key, add
    /// its public half to every node's $HANGAR_HOME/cluster/trusted.keys, then switch the
    /// nodes to the new file one by one.
    New {
        /// Where to write it.
        file: std::path::PathBuf,
    },
    /// Print a key's public half (`ed25519:<hex>`, for trusted.keys) and its id.
    Show {
        /// The key file.
        file: std::path::PathBuf,
    },
}

/// `hangar cluster …`
pub fn cluster(cmd: ClusterCommand, out: &mut dyn Write) -> Result<(), Failure> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |file: &std::path::Path, e: std::io::Error| {
        crate::failure(
            hangar_core::error::ErrorCode::Io,
            format!("{}: {e}", file.display()),
            "name a new file in a directory you can write",
        )
    };
    let ClusterCommand::Key(cmd) = cmd;
    let key = match cmd {
        KeyCommand::New { file } => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| r.read_exact(&mut seed))
                .map_err(|e| io(std::path::Path::new("/dev/urandom"), e))?;
            let key = hangar_cluster::ClusterKey::from_seed(seed);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| io(&file, e))?;
            f.write_all(format!("{}\n", key.to_text()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io(&file, e))?;
            key
        }
        KeyCommand::Show { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
            hangar_cluster::ClusterKey::from_text(&text).ok_or_else(|| {
                crate::failure(
                    hangar_core::error::ErrorCode::InvalidArgument,
                    format!("{}: not a cluster key (64 hex digits)", file.display()),
                    "make one with `hangar cluster key new FILE`",
                )
            })?
        }
    };
    let _ = writeln!(out, "{}  (id {})", key.public(), key.id());
    Ok(())
}
