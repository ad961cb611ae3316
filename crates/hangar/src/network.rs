//! `hangar network`: networks (a subnet behind one host bridge) and the addresses their NICs
//! lease. Through `hangard` when it runs, else on the store and the host directly.

use std::io::Write;

use clap::Subcommand;
use hangar_api::NetworkRequest;

use crate::common::{control, from_body, print_json};
use crate::table::print_listing;
use crate::{Failure, Output};

/// Networks VMs join with `[[nic]] mode = "bridge"`, `network = "NAME"`.
#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network: a Linux bridge holding the subnet's first address (the guests'
    /// gateway); each bridged NIC leases the next free address.
    Create {
        /// Its name (a-z, 0-9, '-'); a tenant's is stored as `tenant--name`.
        name: String,
        /// A private IPv4 subnet, prefix 16 to 29: `10.88.0.0/24`.
        #[arg(long)]
        subnet: String,
        /// The tenant that owns it (its VMs name it without the prefix).
        #[arg(long)]
        tenant: Option<String>,
        /// Keep guests on the host: no masquerading out of its default route.
        #[arg(long)]
        no_nat: bool,
    },
    /// Networks with their subnets and how many addresses are leased.
    Ls {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// One network as JSON, with every lease (address, VM, NIC, MAC).
    Inspect {
        /// The network.
        name: String,
    },
    /// Remove a network no VM uses, and its bridge.
    Rm {
        /// The network.
        name: String,
    },
}

/// Runs a `hangar network` command.
pub fn network(cmd: NetworkCommand, out: &mut dyn Write) -> Result<(), Failure> {
    let control = control()?;
    match cmd {
        NetworkCommand::Create { name, subnet, tenant, no_nat } => {
            let req = NetworkRequest { name, subnet, tenant, nat: !no_nat };
            let view = control.create_network(&req).map_err(from_body)?;
            let nat = if view.nat { "NAT" } else { "no NAT" };
            let _ = writeln!(
                out,
                "created network {}: {} on bridge {}, gateway {}, {nat}",
                view.name, view.subnet, view.bridge, view.gateway
            );
            Ok(())
        }
        NetworkCommand::Ls { output } => {
            let list = control.networks().map_err(from_body)?;
            let columns =
                ("NAME<24 SUBNET<18 GATEWAY<15 BRIDGE<15 NAT<4 LEASES>6 FREE>6", "TENANT");
            print_listing(out, output, &list, columns, |n| {
                let cells = vec![
                    n.name.clone(),
                    n.subnet.clone(),
                    n.gateway.clone(),
                    n.bridge.clone(),
                    if n.nat { "yes" } else { "no" }.to_string(),
                    n.leases.len().to_string(),
                    n.free.to_string(),
                ];
                (cells, n.tenant.clone().unwrap_or_default())
            })
        }
        NetworkCommand::Inspect { name } => {
            let list = control.networks().map_err(from_body)?;
            let view = list.into_iter().find(|n| n.name == name).ok_or_else(|| {
                crate::failure(
                    hangar_core::error::ErrorCode::NetworkNotFound,
                    format!("no network {name:?}"),
                    "`hangar network ls` lists them",
                )
            })?;
            print_json(out, &view)
        }
        NetworkCommand::Rm { name } => {
            control.remove_network(&name).map_err(from_body)?;
            let _ = writeln!(out, "{name}: removed");
            Ok(())
        }
    }
}
