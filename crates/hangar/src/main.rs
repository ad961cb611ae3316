//! `hangar`: the command-line tool. Thin glue over `hangar-spec` and `hangar-plan`: parse
//! arguments, call the library, print. Exit codes: 0 success, 1 invalid input or failed
//! operation, 2 usage or environment error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hangar_core::error::{registry_markdown, ErrorCode};
use hangar_plan::probe::SystemProbe;
use hangar_plan::HostProbe;

mod access;
mod common;
mod console;
mod doctor;
mod failure;
mod fleet;
mod guest;
mod manual;
mod network;
mod node;
mod ops;
mod planning;
mod progress;
mod route;
mod run;
mod snapshot;
mod table;
mod vm;

pub(crate) use failure::{coded, failure, Failure};
use planning::*;

const AFTER_HELP: &str = "\
Examples:
  hangar up examples/hello.toml                boot the VM a spec describes and wait until it is ready
  hangar run -- uname -r                       run one command in a throwaway guest
  hangar ps --all                              list VMs (add --output json for programs)
  hangar stop hello && hangar rm hello         stop gracefully, then remove everything it made
  hangar plan examples/hello.toml              show the exact QEMU command, touch nothing
  hangar validate vm.toml --output json        every problem in a spec, with code, path and fix
  hangar doctor                                check this host: qemu, accelerator, image, disk

Fleet (needs hangard):
  hangar tenant create acme --max-memory-mib 4096
  hangar pool create web --tenant acme --spec examples/hello.toml --warm 3
  hangar pool claim acme--web                  a running instance in milliseconds (warm set first)
  hangar pool status acme--web                 counts, instances and the last reconcile pass

Tenants and tokens:
  hangar token create --name ci --tenant acme --role operator   a token that reaches acme only
  hangar audit verify                          check the audit log and its signed head

State lives in $HANGAR_HOME (default /var/lib/hangar as root, else ~/.local/share/hangar).

Exit codes: 0 success, 1 invalid input or failed operation, 2 usage or environment error.";

/// Hangar turns a small declarative VM spec into running VMs.
#[derive(Parser)]
#[command(name = "hangar", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Let specs name host files (kernels, initrds, disk images) under DIR too, besides
    /// $HANGAR_HOME/images and volumes. Repeatable; only without hangard (the daemon has its
    /// own: `hangard --allow-path`). `--allow-path /` restores the freedom to name any file.
    #[arg(long = "allow-path", value_name = "DIR", global = true)]
    allow_paths: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// For programs: one JSON document on stdout.
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RegistryOutput {
    /// A table for people.
    Text,
    /// JSON array of {code, meaning, retryable, exit_code, fix}.
    Json,
    /// The Markdown committed as docs/error-codes.md.
    Markdown,
}

#[derive(Subcommand)]
enum Command {
    /// Check a spec file (TOML or JSON) and report every problem with its code, path and fix.
    Validate {
        /// The spec file (.toml or .json).
        file: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the canonical form of a spec: RFC 8785 JSON, the bytes its spec_hash is taken of.
    Canonicalize {
        /// The spec file.
        file: PathBuf,
    },
    /// Show exactly what `hangar up` would run for a spec, without touching anything.
    ///
    /// The plan is a pure function of the spec and the host facts: the same spec on the same
    /// host always gives a byte-identical plan (compare spec_hash and argv_hash).
    Plan {
        /// The spec file.
        file: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
        /// Use these host facts (JSON, as in the plan's `host_facts` shape) instead of probing
        /// this host: plan for another machine, or reproducibly in tests.
        #[arg(long, value_name = "FACTS.json")]
        host_facts: Option<PathBuf>,
    },
    /// Print the JSON Schema of the spec format.
    Schema,
    /// Print a shell completion script (scripts/setup installs bash's):
    /// `hangar completion bash > ~/.local/share/bash-completion/completions/hangar`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for hangar and for each of its commands (`man hangar-up`) into DIR
    /// (scripts/setup installs them in /usr/local/share/man/man1).
    Man {
        /// Where to write the pages (`hangar.1`, `hangar-up.1`, …).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List every error code: meaning, whether retrying can help, exit code and typical fix.
    Errors {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: RegistryOutput,
    },
    /// Print the host facts a plan would use on this machine (JSON, usable with --host-facts).
    HostFacts,
    /// Validate, plan and boot the VM a spec describes; wait until the guest reports ready.
    Up {
        /// The spec file.
        file: PathBuf,
        /// Return once QEMU runs the vCPUs, without waiting for the guest.
        #[arg(long)]
        no_wait: bool,
        /// Seconds the guest may take to become ready (default 120).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Boot a throwaway guest, run one command in it, stream its output, exit with its code.
    Run(run::RunArgs),
    /// Run a command in a running VM through its guest agent; exits with the command's code
    /// (126 not executable, 127 not found, 128+N killed by signal N).
    Exec(guest::ExecArgs),
    /// Copy a file into or out of a running VM (NAME:/path on one side), keeping mode and mtime.
    Cp(guest::CpArgs),
    /// List VMs: name, state, accelerator, vCPUs, memory, uptime, pid.
    Ps {
        /// Include VMs that are not running (defined, stopped).
        #[arg(long, short)]
        all: bool,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Start a defined or stopped VM.
    Start {
        /// The VM.
        name: String,
        /// Return once QEMU runs the vCPUs.
        #[arg(long)]
        no_wait: bool,
        /// Seconds the guest may take to become ready.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Stop a VM: ask the guest to power off, then escalate (QMP quit, SIGTERM, SIGKILL).
    Stop {
        /// The VM.
        name: String,
        /// Skip the guest and stop QEMU at once.
        #[arg(long, short)]
        force: bool,
        /// Seconds the guest gets to power off before escalation.
        #[arg(long, value_name = "SECONDS", default_value_t = common::DEFAULT_STOP_TIMEOUT)]
        timeout: u64,
    },
    /// Pause a running VM's vCPUs (memory stays resident).
    Pause {
        /// The VM.
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// The VM.
        name: String,
    },
    /// Reset a running VM's guest and wait until it is ready again.
    Reboot {
        /// The VM.
        name: String,
    },
    /// Remove a VM that is not running, with its runtime directory and overlays.
    Rm {
        /// The VM.
        name: String,
        /// Stop it first if it runs.
        #[arg(long, short)]
        force: bool,
    },
    /// Show a VM's spec, plan, process and state history as JSON.
    Inspect {
        /// The VM.
        name: String,
    },
    /// Print a VM's console log.
    Logs {
        /// The VM.
        name: String,
        /// Keep printing new output until the VM stops.
        #[arg(long, short)]
        follow: bool,
    },
    /// Attach this terminal to a VM's serial console (detach with Ctrl-]).
    Console {
        /// The VM.
        name: String,
    },
    /// Memory snapshots: save a running VM's memory to disk, restore it later.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Check this host: qemu, accelerator, guest image, state directory, disk space.
    Doctor,
    /// The daemon's tamper-evident audit log.
    #[command(subcommand)]
    Audit(access::AuditCommand),
    /// The operation journal: every start, stop, snapshot… with its status and error.
    Ops {
        #[command(subcommand)]
        command: Option<OpsCommand>,
        /// How many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Guest images installed in $HANGAR_HOME/images (build one with scripts/build-image).
    Images {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Bearer tokens for hangard's TCP listener (`hangard --listen-tcp`), each with a scope:
    /// admin, or one tenant with a role.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Networks: a subnet behind one host bridge; VMs join with `[[nic]] mode = "bridge"`.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Tenants: quota boundaries that own pools (needs hangard).
    #[command(subcommand)]
    Tenant(fleet::TenantCommand),
    /// Pools: a spec template kept at desired running/warm/sleeping/spare counts by hangard's
    /// reconcile loop; `claim` hands out a running instance.
    #[command(subcommand)]
    Pool(fleet::PoolCommand),
    /// Fleet instances (the VMs pools make).
    #[command(subcommand)]
    Instance(fleet::InstanceCommand),
    /// Gateway routes: connections on a host port go to a pool's instances, waking one when
    /// none runs (needs hangard).
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// The cluster's nodes: list, inspect, cordon, drain (needs hangard).
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// The cluster's signing key: `hangar cluster key new FILE` (for `hangard --cluster-key`).
    #[command(subcommand)]
    Cluster(node::ClusterCommand),
    /// Print events, oldest first: every state transition of every VM (with the operation that
    /// made it) and what the engine observed (stops escalated, QEMUs adopted after a crash).
    Events {
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Every node's events in a cluster, merged by time, each with its node (needs
        /// hangard; without a cluster, this host's).
        #[arg(long, conflicts_with = "since")]
        cluster: bool,
        /// Output format (json: one object per line).
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum OpsCommand {
    /// One operation, whole, as JSON.
    Show {
        /// The operation id (`op-…`).
        id: String,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save a running or paused VM's memory (it stays paused; --sleep releases its process).
    Save {
        /// The VM.
        name: String,
        /// The snapshot id.
        id: String,
        /// Release the QEMU process afterwards: the VM is `sleeping` until restored.
        #[arg(long)]
        sleep: bool,
    },
    /// Restore a sleeping, stopped or defined VM from a snapshot; it ends up running.
    Restore {
        /// The VM.
        name: String,
        /// The snapshot id.
        id: String,
    },
    /// List snapshots.
    Ls {
        /// Only this VM's.
        name: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a snapshot no VM is sleeping on.
    Rm {
        /// The snapshot id.
        id: String,
    },
}

fn main() -> ExitCode {
    // Everything Hangar (and the QEMUs it starts) creates is private to its user.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    common::set_allow_paths(cli.allow_paths);
    let mut stdout = std::io::stdout();
    match run(cli.command, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let mut stderr = std::io::stderr().lock();
            for d in &failure.diagnostics {
                let _ = writeln!(stderr, "error: {d}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(command: Command, out: &mut dyn Write) -> Result<(), Failure> {
    match command {
        Command::Validate { file, output } => {
            let result = hangar_spec::load(&file);
            if output == Output::Json {
                let errors = match &result {
                    Ok(_) => vec![],
                    Err(e) => e.0.clone(),
                };
                let mut doc = serde_json::json!({ "ok": result.is_ok(), "errors": errors });
                if let Ok(c) = &result {
                    doc["spec_hash"] = c.hash.0.clone().into();
                }
                json_line(out, &doc);
                // The errors are in the JSON; the exit code still tells the story.
                return match result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(Failure {
                        diagnostics: vec![],
                        exit: Some(Failure::from(e).exit_code()),
                    }),
                };
            }
            let c = result?;
            let _ = writeln!(out, "ok: {} is valid ({})", c.spec.name, c.hash);
            Ok(())
        }
        Command::Canonicalize { file } => {
            let c = hangar_spec::load(&file)?;
            let _ = writeln!(out, "{}", c.json);
            Ok(())
        }
        Command::Plan { file, output, host_facts } => {
            let spec = hangar_spec::load(&file)?;
            let host_facts_given = host_facts.is_some();
            let mut facts = match host_facts {
                Some(path) => read_facts(&path)?,
                None => SystemProbe::default().probe(),
            };
            if !host_facts_given {
                facts.nic_networks = planning::nic_networks(&spec.spec)?;
            }
            let plan = hangar_plan::plan(&spec, &facts).map_err(|e| coded(&e))?;
            match output {
                Output::Json => {
                    let _ = out.write_all(plan.to_json().as_bytes());
                }
                Output::Text => print_plan(out, &spec, &plan),
            }
            // The plan is pure; whether its files are here is this host's business, said
            // beside it (with --host-facts the plan is for another host: nothing to say).
            if host_facts_given {
                return Ok(());
            }
            for (field, file) in host_files(&spec.spec) {
                if !Path::new(&file).exists() {
                    eprintln!("warning: {field}: {file} does not exist on this host; `hangar up` would refuse to start the VM");
                }
            }
            Ok(())
        }
        Command::Schema => {
            let _ = out.write_all(hangar_spec::schema::schema_json().as_bytes());
            Ok(())
        }
        Command::Completion { shell } => {
            manual::completion(<Cli as clap::CommandFactory>::command(), shell, out);
            Ok(())
        }
        Command::Man { out: dir } => {
            manual::man_pages(<Cli as clap::CommandFactory>::command(), &dir, out)
        }
        Command::Errors { output } => {
            match output {
                RegistryOutput::Markdown => {
                    let _ = out.write_all(registry_markdown().as_bytes());
                }
                RegistryOutput::Json => {
                    let list: Vec<_> = ErrorCode::ALL
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "code": c.as_str(),
                                "meaning": c.meaning(),
                                "retryable": c.retryable(),
                                "exit_code": c.class().exit_code(),
                                "fix": c.typical_fix(),
                            })
                        })
                        .collect();
                    json_line(out, &serde_json::Value::Array(list));
                }
                RegistryOutput::Text => {
                    for c in ErrorCode::ALL {
                        let retry = if c.retryable() { "retryable" } else { "final" };
                        let _ = writeln!(
                            out,
                            "{:<24} {:<9} {}\n{:<34} fix: {}",
                            c.as_str(),
                            retry,
                            c.meaning(),
                            "",
                            c.typical_fix()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::HostFacts => {
            let facts = SystemProbe::default().probe();
            json_line(out, &serde_json::to_value(&facts).expect("facts serialise"));
            Ok(())
        }
        Command::Up { file, no_wait, timeout } => vm::up(&file, no_wait, timeout, out),
        Command::Run(args) => exit_with(run::run(args, out)?),
        Command::Exec(args) => exit_with(guest::exec(args, out)?),
        Command::Cp(args) => guest::cp(args, out),
        Command::Ps { all, output } => vm::ps(all, output, out),
        Command::Start { name, no_wait, timeout } => vm::start(&name, no_wait, timeout, out),
        Command::Stop { name, force, timeout } => vm::stop(&name, force, timeout, out),
        Command::Pause { name } => vm::simple(&name, "pause", out),
        Command::Resume { name } => vm::simple(&name, "resume", out),
        Command::Reboot { name } => vm::simple(&name, "reboot", out),
        Command::Rm { name, force } => vm::rm(&name, force, out),
        Command::Inspect { name } => vm::inspect(&name, out),
        Command::Logs { name, follow } => vm::logs(&name, follow, out),
        Command::Console { name } => console::console(&name),
        Command::Snapshot(cmd) => match cmd {
            SnapshotCommand::Save { name, id, sleep } => {
                snapshot::snapshot_save(&name, &id, sleep, out)
            }
            SnapshotCommand::Restore { name, id } => snapshot::snapshot_restore(&name, &id, out),
            SnapshotCommand::Ls { name, output } => {
                snapshot::snapshot_ls(name.as_deref(), output, out)
            }
            SnapshotCommand::Rm { id } => snapshot::snapshot_rm(&id, out),
        },
        Command::Doctor => doctor::doctor(out),
        Command::Ops { command: None, limit, output } => ops::ops(limit, output, out),
        Command::Ops { command: Some(OpsCommand::Show { id }), .. } => ops::op_show(&id, out),
        Command::Images { output } => doctor::images(output, out),
        Command::Network(cmd) => network::network(cmd, out),
        Command::Tenant(cmd) => fleet::tenant(cmd, out),
        Command::Pool(cmd) => fleet::pool(cmd, out),
        Command::Instance(cmd) => fleet::instance(cmd, out),
        Command::Route(cmd) => route::route(cmd, out),
        Command::Node(cmd) => node::node(cmd, out),
        Command::Cluster(cmd) => node::cluster(cmd, out),
        Command::Token(cmd) => access::token(cmd, out),
        Command::Events { cluster: true, follow, output, .. } => {
            ops::cluster_events(follow, output, out)
        }
        Command::Events { since, follow, output, .. } => ops::events(since, follow, output, out),
        Command::Audit(cmd) => access::audit_command(cmd, out),
    }
}

/// A command's own exit code as the CLI's: 0 is success, anything else exits with it.
fn exit_with(code: u8) -> Result<(), Failure> {
    if code == 0 {
        Ok(())
    } else {
        Err(Failure { diagnostics: vec![], exit: Some(code) })
    }
}
