//! `hangar tenant`, `hangar pool` and `hangar instance`: the fleet, which lives in `hangard`
//! (its reconcile loop keeps pools at their desired counts, so there is no daemon-less path).

use std::io::Write;
use std::path::Path;

use clap::{Args, Subcommand};
use hangar_api::fleet::{
    Claim, ClaimSource, Desired, Instance, PassReport, Policy, PoolRequest, PoolStatus, PoolUpdate,
    PoolView, Quotas, TenantRequest, TenantView,
};
use hangar_control::{DaemonMode, Remote};
use hangar_core::error::ErrorCode;
use serde_json::{json, Value};

use crate::common::{from_body, home, print_json};
use crate::table::print_listing;
use crate::{Failure, Output};

/// Tenants: isolation and quota boundaries that own pools.
#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (limits not given are unlimited).
    Create {
        /// Its id (a-z, 0-9, '-').
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Change some of a tenant's limits, keeping the others.
    Quota {
        /// The tenant.
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Tenants with their limits and what they use.
    Ls {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove a tenant that owns no pool.
    Rm {
        /// The tenant.
        id: String,
    },
}

/// Quota flags.
#[derive(Args)]
pub struct QuotaArgs {
    /// vCPUs of instances holding a process (running or warm).
    #[arg(long, value_name = "N")]
    max_vcpus: Option<u64>,
    /// Memory (MiB) of instances holding a process.
    #[arg(long, value_name = "MIB")]
    max_memory_mib: Option<u64>,
    /// Running instances, claimed or not.
    #[arg(long, value_name = "N")]
    max_running: Option<u64>,
    /// Warm (paused) instances.
    #[arg(long, value_name = "N")]
    max_warm: Option<u64>,
    /// Instances in any state.
    #[arg(long, value_name = "N")]
    max_instances: Option<u64>,
    /// Disk (MiB): blank disks plus the saved memory of sleeping instances.
    #[arg(long, value_name = "MIB")]
    max_disk_mib: Option<u64>,
}

impl QuotaArgs {
    fn over(&self, mut q: Quotas) -> Quotas {
        let set = |slot: &mut Option<u64>, v: Option<u64>| {
            if v.is_some() {
                *slot = v;
            }
        };
        set(&mut q.max_vcpus, self.max_vcpus);
        set(&mut q.max_memory_mib, self.max_memory_mib);
        set(&mut q.max_running, self.max_running);
        set(&mut q.max_warm, self.max_warm);
        set(&mut q.max_instances, self.max_instances);
        set(&mut q.max_disk_mib, self.max_disk_mib);
        q
    }
}

/// Pools: a spec template kept at desired counts of running, warm, sleeping and spare instances.
#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a pool; the reconcile loop creates its instances.
    Create {
        /// Its id: also the prefix of its instances' names (`<pool>-<n>`).
        pool: String,
        /// The owning tenant.
        #[arg(long)]
        tenant: String,
        /// The instance template (a VM spec file, TOML or JSON; its name is replaced).
        #[arg(long)]
        spec: std::path::PathBuf,
        #[command(flatten)]
        counts: CountArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Boot every instance from scratch instead of cloning the pool's base snapshot.
        #[arg(long)]
        cold_boot: bool,
    },
    /// Change desired counts or policy (what is not given is kept).
    Scale {
        /// The pool.
        pool: String,
        #[command(flatten)]
        counts: CountArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Replace the template new instances are made from (running ones are kept).
    Template {
        /// The pool.
        pool: String,
        /// The new template (a VM spec file).
        spec: std::path::PathBuf,
    },
    /// Pools with their desired and actual counts.
    Ls {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// One pool: counts, instances, base snapshot and the last reconcile pass.
    Status {
        /// The pool.
        pool: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Hand out a running instance: warm (resume) first, then a spare, then sleeping (wake),
    /// then new.
    Claim {
        /// The pool.
        pool: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a reconcile pass now and print what it did.
    Reconcile {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove a pool, all its instances (claimed ones too) and its base snapshot.
    Rm {
        /// The pool.
        pool: String,
    },
}

/// "1 running, 2 warm, 0 sleeping, 3 spare".
fn wanted(d: &Desired) -> String {
    format!("{} running, {} warm, {} sleeping, {} spare", d.running, d.warm, d.sleeping, d.spare)
}

/// Desired count flags.
#[derive(Args)]
pub struct CountArgs {
    /// Unclaimed running instances.
    #[arg(long, value_name = "N")]
    running: Option<u32>,
    /// Warm instances: booted, then paused in memory (a claim is one resume).
    #[arg(long, value_name = "N")]
    warm: Option<u32>,
    /// Sleeping instances: memory on disk, no process (a claim is a restore).
    #[arg(long, value_name = "N")]
    sleeping: Option<u32>,
    /// Spares: a QEMU started ahead from the pool's base snapshot, with no guest yet (a claim
    /// loads the base's device state and runs: the fastest claim after a warm one, for a
    /// fraction of its memory).
    #[arg(long, value_name = "N")]
    spare: Option<u32>,
}

impl CountArgs {
    fn given(&self) -> bool {
        self.running.is_some()
            || self.warm.is_some()
            || self.sleeping.is_some()
            || self.spare.is_some()
    }

    fn over(&self, d: Desired) -> Desired {
        Desired {
            running: self.running.unwrap_or(d.running),
            warm: self.warm.unwrap_or(d.warm),
            sleeping: self.sleeping.unwrap_or(d.sleeping),
            spare: self.spare.unwrap_or(d.spare),
        }
    }
}

/// Policy flags.
#[derive(Args)]
pub struct PolicyArgs {
    /// A claimed instance paused for this many seconds goes to sleep.
    #[arg(long, value_name = "SECONDS")]
    idle_sleep: Option<u64>,
    /// A scale-down never stops a running instance younger than this.
    #[arg(long, value_name = "SECONDS")]
    min_running: Option<u64>,
    /// An instance the gateway woke, with no connection for this long, is paused.
    #[arg(long, value_name = "SECONDS")]
    idle_pause_after: Option<u64>,
    /// An instance the gateway woke, with no connection for this long, goes to sleep (the
    /// next connection wakes it).
    #[arg(long, value_name = "SECONDS")]
    idle_sleep_after: Option<u64>,
    /// An instance the gateway woke, unused for this long, is removed.
    #[arg(long, value_name = "SECONDS")]
    idle_stop_after: Option<u64>,
}

impl PolicyArgs {
    fn given(&self) -> bool {
        self.idle_sleep.is_some()
            || self.min_running.is_some()
            || self.idle_pause_after.is_some()
            || self.idle_sleep_after.is_some()
            || self.idle_stop_after.is_some()
    }

    fn over(&self, mut p: Policy) -> Policy {
        if self.idle_sleep.is_some() {
            p.idle_sleep_s = self.idle_sleep;
        }
        if let Some(m) = self.min_running {
            p.min_running_s = m;
        }
        for (given, field) in [
            (self.idle_pause_after, &mut p.idle_pause_after_s),
            (self.idle_sleep_after, &mut p.idle_sleep_after_s),
            (self.idle_stop_after, &mut p.idle_stop_after_s),
        ] {
            if given.is_some() {
                *field = given;
            }
        }
        p
    }
}

/// Fleet instances.
#[derive(Subcommand)]
pub enum InstanceCommand {
    /// Instances, oldest first.
    Ls {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Release an instance: it is stopped and removed (the loop refills the pool if needed).
    Rm {
        /// The instance id (`i-…`).
        id: String,
    },
}

/// The daemon: the fleet has no other home.
fn daemon() -> Result<Remote, Failure> {
    if DaemonMode::from_env().map_err(from_body)? == DaemonMode::Never {
        return Err(crate::failure(
            ErrorCode::EngineUnavailable,
            "tenants, pools and instances live in hangard, and HANGAR_DAEMON=never".into(),
            "unset HANGAR_DAEMON and start the daemon with `hangard &`",
        ));
    }
    let home = home();
    if !hangar_control::daemon_running(&home) {
        return Err(crate::failure(
            ErrorCode::EngineUnavailable,
            format!(
                "tenants, pools and instances live in hangard, which is not running on {}",
                hangar_control::socket_path(&home).display()
            ),
            "start it with `hangard &` (or the systemd unit in packaging/)",
        ));
    }
    Ok(Remote::new(hangar_control::socket_path(&home)))
}

pub(crate) fn call<T: serde::de::DeserializeOwned>(
    method: &str, path: &str, body: Option<Value>,
) -> Result<T, Failure> {
    daemon()?.call(method, path, body.as_ref()).map_err(from_body)
}

fn limit(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// A spec file as the API takes it: the document and the directory its paths resolve against
/// (validated here first, so a bad file is reported with every diagnostic).
fn template(file: &Path) -> Result<(Value, String), Failure> {
    let doc = hangar_spec::load_document(file)?;
    Ok((doc.document, doc.base_dir.display().to_string()))
}

fn tenants() -> Result<Vec<TenantView>, Failure> {
    call("GET", "/v1/tenants", None)
}

/// `hangar tenant …`
pub fn tenant(cmd: TenantCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        TenantCommand::Create { id, quotas } => {
            if tenants()?.iter().any(|t| t.id == id) {
                return Err(crate::failure(
                    ErrorCode::InvalidArgument,
                    format!("tenant {id} exists"),
                    "change its limits with `hangar tenant quota`",
                ));
            }
            let body = TenantRequest { quotas: quotas.over(Quotas::default()) };
            let t: TenantView = call("PUT", &format!("/v1/tenants/{id}"), Some(json!(body)))?;
            let _ = writeln!(out, "created tenant {}", t.id);
            Ok(())
        }
        TenantCommand::Quota { id, quotas } => {
            let current = tenants()?.into_iter().find(|t| t.id == id).ok_or_else(|| {
                crate::failure(ErrorCode::TenantNotFound, format!("no tenant {id}"), "")
            })?;
            let body = TenantRequest { quotas: quotas.over(current.quotas) };
            let t: TenantView = call("PUT", &format!("/v1/tenants/{id}"), Some(json!(body)))?;
            let _ = writeln!(out, "tenant {}: {}", t.id, quota_line(&t.quotas));
            Ok(())
        }
        TenantCommand::Ls { output } => {
            let list = tenants()?;
            let columns = (
                "TENANT<20 VCPUS>11 MEMORY_MIB>13 RUNNING>11 WARM>9 INSTANCES>13 DISK_MIB>11",
                "POOLS",
            );
            print_listing(out, output, &list, columns, |t| {
                let (q, u) = (t.quotas, t.usage);
                let cells = vec![
                    t.id.to_string(),
                    format!("{}/{}", u.vcpus, limit(q.max_vcpus)),
                    format!("{}/{}", u.memory_mib, limit(q.max_memory_mib)),
                    format!("{}/{}", u.running, limit(q.max_running)),
                    format!("{}/{}", u.warm, limit(q.max_warm)),
                    format!("{}/{}", u.instances, limit(q.max_instances)),
                    format!("{}/{}", u.disk_mib, limit(q.max_disk_mib)),
                ];
                (cells, t.pools.join(","))
            })
        }
        TenantCommand::Rm { id } => {
            call::<Value>("DELETE", &format!("/v1/tenants/{id}"), None)?;
            let _ = writeln!(out, "removed tenant {id}");
            Ok(())
        }
    }
}

fn quota_line(q: &Quotas) -> String {
    format!(
        "max_vcpus={} max_memory_mib={} max_running={} max_warm={} max_instances={} max_disk_mib={}",
        limit(q.max_vcpus),
        limit(q.max_memory_mib),
        limit(q.max_running),
        limit(q.max_warm),
        limit(q.max_instances),
        limit(q.max_disk_mib)
    )
}

fn pool_status(pool: &str) -> Result<PoolStatus, Failure> {
    call("GET", &format!("/v1/pools/{pool}"), None)
}

/// `hangar pool …`
pub fn pool(cmd: PoolCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        PoolCommand::Create { pool, tenant, spec, counts, policy, cold_boot } => {
            let (document, base_dir) = template(&spec)?;
            let mut p = policy.over(Policy::default());
            p.cold_boot = cold_boot;
            let request = PoolRequest {
                id: pool,
                tenant: Some(tenant),
                spec: document,
                base_dir: Some(base_dir),
                desired: counts.over(Desired::default()),
                policy: p,
            };
            let v: PoolView = call("POST", "/v1/pools", Some(json!(request)))?;
            let d = v.pool.desired;
            let _ = writeln!(
                out,
                "created pool {} (tenant {}): want {}; the reconcile loop is on it (`hangar pool status {}`)",
                v.pool.id, v.pool.tenant, wanted(&d), v.pool.id
            );
            Ok(())
        }
        PoolCommand::Scale { pool, counts, policy } => {
            if !counts.given() && !policy.given() {
                return Err(crate::failure(
                    ErrorCode::InvalidArgument,
                    "nothing to change".into(),
                    "give --running, --warm, --sleeping, --spare, --idle-sleep, --min-running or --idle-{pause,sleep,stop}-after",
                ));
            }
            let current = pool_status(&pool)?.view.pool;
            let update = PoolUpdate {
                desired: Some(counts.over(current.desired)),
                policy: policy.given().then(|| policy.over(current.policy)),
                ..PoolUpdate::default()
            };
            let v: PoolView = call("PATCH", &format!("/v1/pools/{pool}"), Some(json!(update)))?;
            let d = v.pool.desired;
            let _ = writeln!(out, "pool {}: want {}", v.pool.id, wanted(&d));
            Ok(())
        }
        PoolCommand::Template { pool, spec } => {
            let (document, base_dir) = template(&spec)?;
            let update = PoolUpdate {
                spec: Some(document),
                base_dir: Some(base_dir),
                ..PoolUpdate::default()
            };
            let v: PoolView = call("PATCH", &format!("/v1/pools/{pool}"), Some(json!(update)))?;
            let _ = writeln!(
                out,
                "pool {}: new instances use the new template (its base snapshot is retaken)",
                v.pool.id
            );
            Ok(())
        }
        PoolCommand::Ls { output } => {
            let list: Vec<PoolView> = call("GET", "/v1/pools", None)?;
            let columns =
                ("POOL<20 TENANT<16 RUNNING>9 WARM>9 SLEEPING>9 SPARE>7 CLAIMED>8 OTHER>6", "BASE");
            print_listing(out, output, &list, columns, |v| {
                let (d, c) = (v.pool.desired, v.counts);
                let cells = vec![
                    v.pool.id.to_string(),
                    v.pool.tenant.to_string(),
                    format!("{}/{}", c.running, d.running),
                    format!("{}/{}", c.warm, d.warm),
                    format!("{}/{}", c.sleeping, d.sleeping),
                    format!("{}/{}", c.spare, d.spare),
                    c.claimed.to_string(),
                    c.other.to_string(),
                ];
                (cells, v.base_snapshot.clone().unwrap_or_else(|| "-".into()))
            })
        }
        PoolCommand::Status { pool, output } => {
            let s = pool_status(&pool)?;
            if output == Output::Json {
                return print_json(out, &s);
            }
            let (p, c) = (&s.view.pool, s.view.counts);
            let _ = writeln!(out, "pool      {} (tenant {})", p.id, p.tenant);
            let _ = writeln!(
                out,
                "running   {}/{}\nwarm      {}/{}\nsleeping  {}/{}\nspare     {}/{}\nclaimed   {}\nother     {}",
                c.running,
                p.desired.running,
                c.warm,
                p.desired.warm,
                c.sleeping,
                p.desired.sleeping,
                c.spare,
                p.desired.spare,
                c.claimed,
                c.other
            );
            let _ = writeln!(
                out,
                "base      {}",
                s.view.base_snapshot.as_deref().unwrap_or(if p.policy.cold_boot {
                    "- (cold boot)"
                } else {
                    "- (taken at the next creation)"
                })
            );
            for (node, share) in &s.nodes {
                let (d, c) = (share.desired, share.counts);
                let _ = writeln!(
                    out,
                    "node {node}: running {}/{} warm {}/{} sleeping {}/{} spare {}/{} claimed {}{}",
                    c.running,
                    d.running,
                    c.warm,
                    d.warm,
                    c.sleeping,
                    d.sleeping,
                    c.spare,
                    d.spare,
                    c.claimed,
                    if share.converged() { "" } else { " (converging)" }
                );
            }
            if let Some(r) = s.last_pass.as_ref().filter(|r| Some(*r) != s.last_change.as_ref()) {
                let _ = writeln!(out, "last pass {}", r.summary());
            }
            match &s.last_change {
                Some(r) => {
                    let _ = writeln!(out, "last change {}", r.summary());
                    for d in &r.deferred {
                        let _ = writeln!(out, "  deferred {}: {}", d.subject, d.why);
                    }
                    for (code, message) in &r.errors {
                        let _ = writeln!(out, "  error {code}: {message}");
                    }
                }
                None => {
                    let _ = writeln!(out, "last change none yet");
                }
            }
            let _ = writeln!(out);
            print_instances(out, Output::Text, &s.instances)
        }
        PoolCommand::Claim { pool, output } => {
            let c: Claim = call("POST", &format!("/v1/pools/{pool}/claim"), None)?;
            if output == Output::Json {
                return print_json(out, &c);
            }
            let how = match c.source {
                ClaimSource::Warm => "from the warm set (resumed)",
                ClaimSource::Spare => "from a spare (its waiting QEMU loaded the base)",
                ClaimSource::Sleeping => "from a sleeping instance (woken)",
                ClaimSource::Cloned => "cloned from the pool's base snapshot",
                ClaimSource::Created => "booted (nothing was ready)",
            };
            let on = c.node.as_deref().map(|n| format!(" on node {n}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "claimed {} ({}){on} {how} in {:.1} ms",
                c.instance.name, c.instance.id, c.took_ms
            );
            Ok(())
        }
        PoolCommand::Reconcile { output } => {
            let r: PassReport = call("POST", "/v1/fleet/reconcile", None)?;
            if output == Output::Json {
                return print_json(out, &r);
            }
            let _ = writeln!(out, "{}", r.summary());
            for d in &r.deferred {
                let _ = writeln!(out, "  deferred {}: {}", d.subject, d.why);
            }
            for (code, message) in &r.errors {
                let _ = writeln!(out, "  error {code}: {message}");
            }
            Ok(())
        }
        PoolCommand::Rm { pool } => {
            call::<Value>("DELETE", &format!("/v1/pools/{pool}"), None)?;
            let _ = writeln!(out, "removed pool {pool} and its instances");
            Ok(())
        }
    }
}

fn print_instances(out: &mut dyn Write, output: Output, list: &[Instance]) -> Result<(), Failure> {
    let columns = ("INSTANCE<12 NAME<24 POOL<16 STATE<9 CLAIMED<9 OPEN>5 IN>10 OUT>10", "IDLE");
    let now = hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock);
    print_listing(out, output, list, columns, |i| {
        let claimed = match (&i.holder, i.claimed) {
            (Some(holder), true) => holder.clone(),
            (None, true) => "yes".into(),
            _ => "no".into(),
        };
        let a = i.activity.unwrap_or_default();
        let served = i.activity.is_some();
        let shown = |v: u64| if served { v.to_string() } else { "-".into() };
        let idle = match i.activity {
            Some(a) if a.open > 0 => "active".to_string(),
            Some(a) => format!("{}s", now.since(a.last).as_secs()),
            None => "-".into(),
        };
        let cells = vec![
            i.id.to_string(),
            i.name.to_string(),
            i.pool.to_string(),
            i.state.as_str().to_string(),
            claimed,
            shown(u64::from(a.open)),
            shown(a.bytes_in),
            shown(a.bytes_out),
        ];
        (cells, idle)
    })
}

/// `hangar instance …`
pub fn instance(cmd: InstanceCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        InstanceCommand::Ls { pool, output } => {
            let path = match &pool {
                Some(p) => {
                    // Checked here: the id goes into the query string as is.
                    hangar_core::ids::PoolId::new(p.as_str()).map_err(|e| {
                        crate::failure(ErrorCode::InvalidName, format!("pool {p:?}: {e}"), "")
                    })?;
                    format!("/v1/instances?pool={p}")
                }
                None => "/v1/instances".into(),
            };
            let list: Vec<Instance> = call("GET", &path, None)?;
            print_instances(out, output, &list)
        }
        InstanceCommand::Rm { id } => {
            call::<Value>("DELETE", &format!("/v1/instances/{id}"), None)?;
            let _ = writeln!(out, "released {id}");
            Ok(())
        }
    }
}
