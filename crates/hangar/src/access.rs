//! `hangar token` and `hangar audit`: who may reach hangard, and the evidence of what they did.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use hangar_api::{NewToken, TokenRequest, TokenView};
use hangar_audit::{HeadCheck, HeadSigner, NewEntry, SignedHead};
use hangar_control::{DaemonMode, Remote};
use hangar_core::access::{Role, Scope};
use hangar_core::clock::{Clock, SystemClock};
use hangar_core::error::ErrorCode;
use hangar_core::ids::TenantId;
use serde_json::json;

use crate::common::{from_body, home, print_json};
use crate::table::print_listing;
use crate::{failure, Failure, Output};

/// `hangar token …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (shown once; only its SHA-256 is stored).
    ///
    /// A token has a scope: --admin (everything on the host), or --tenant T with a role:
    /// viewer (read T's VMs, pools, instances, snapshots, operations, events), operator (also
    /// start, stop, pause, resume, reboot, snapshot, claim, release) or owner (also create and
    /// delete VMs, snapshots and pools). A tenant's token sees nothing of other tenants.
    Create {
        /// What the token is for (shown in `hangar token ls`).
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// List tokens (ids, names and scopes; secrets are never stored).
    Ls {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a token; takes effect on the next request.
    Rm {
        /// The token id (`tok-…`).
        id: String,
    },
}

/// A token's scope: exactly one of --admin or --tenant.
#[derive(Args)]
pub struct ScopeArgs {
    /// Everything on the host: tenants, quotas, tokens, every VM.
    #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
    admin: bool,
    /// Only this tenant's objects (with --role).
    #[arg(long, value_name = "TENANT", required_unless_present = "admin")]
    tenant: Option<String>,
    /// With --tenant: viewer, operator or owner.
    #[arg(long, value_name = "ROLE", default_value = "viewer", requires = "tenant")]
    role: String,
}

impl ScopeArgs {
    fn scope(&self) -> Result<Scope, Failure> {
        if self.admin {
            return Ok(Scope::Admin);
        }
        let tenant = self.tenant.as_deref().unwrap_or_default();
        let tenant = TenantId::new(tenant)
            .map_err(|e| failure(ErrorCode::InvalidName, e.to_string(), &e.hint()))?;
        let role: Role = self.role.parse().map_err(|e: String| {
            failure(ErrorCode::InvalidArgument, e, "use --role viewer, operator or owner")
        })?;
        Ok(Scope::Tenant { tenant, role })
    }
}

/// `hangar audit …`
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check $HANGAR_HOME/audit.log: its hash chain, and that it still holds the head the
    /// daemon last signed (a truncated log or a rewritten tail fails). Exit 1 on any finding.
    Verify {
        /// The log to check (default: $HANGAR_HOME/audit.log; its signed head is the
        /// `audit.head` beside it).
        file: Option<PathBuf>,
        /// Also check that the log holds this head: what `hangar audit head` printed earlier
        /// and you kept elsewhere (`SEQ:sha256:HEX`, or the signed head's JSON).
        #[arg(long, value_name = "HEAD")]
        expect_head: Option<String>,
        /// The public key heads must be signed with (`ed25519:HEX`; default: the key in
        /// $HANGAR_HOME/audit.key, which root can read).
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
    },
    /// Print the audit log's current signed head: keep it somewhere the host cannot rewrite,
    /// and check the log against it later with `hangar audit verify --expect-head`.
    Head {
        /// Output format (json: the signed head document).
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
}

/// The daemon, if the CLI should use it (see `HANGAR_DAEMON`).
fn daemon() -> Result<Option<Remote>, Failure> {
    let mode = DaemonMode::from_env().map_err(from_body)?;
    hangar_control::remote_for(&home(), mode).map_err(from_body)
}

/// Appends to the audit log from this process (for token changes made without a daemon),
/// failing closed like the daemon: no entry, no change.
fn audit(what: &str, target: &str, result: &str, detail: Option<String>) -> Result<(), Failure> {
    let (log, key, head) = hangar_audit::files_in(&home());
    let entry = NewEntry {
        at: SystemClock.now(),
        who: format!("local:uid={}", rustix::process::geteuid().as_raw()),
        what: what.to_string(),
        target: target.to_string(),
        result: result.to_string(),
        detail,
    };
    hangar_audit::AuditLog::open_signed(&log, &key, &head)
        .and_then(|mut l| l.append(entry))
        .map(|_| ())
        .map_err(|e| {
            failure(
                ErrorCode::AuditUnavailable,
                format!("the audit log cannot be written, so nothing was done: {e}"),
                "check $HANGAR_HOME/audit.log with `hangar audit verify`",
            )
        })
}

/// `hangar token …`: through hangard when it runs (it records the change), else on the store.
pub fn token(cmd: TokenCommand, out: &mut dyn Write) -> Result<(), Failure> {
    let remote = daemon()?;
    let store = || hangar_store::Store::open_in(&home()).map_err(|e| crate::coded(&e));
    match cmd {
        TokenCommand::Create { name, scope, output } => {
            let scope = scope.scope()?;
            let token: NewToken = match &remote {
                Some(r) => r
                    .call(
                        "POST",
                        "/v1/tokens",
                        Some(&json!(TokenRequest { name, scope: scope.to_string() })),
                    )
                    .map_err(from_body)?,
                None => {
                    audit("token.create", "tokens", "requested", Some(format!("scope {scope}")))?;
                    let t = hangar_control::tokens::create(&store()?, &name, &scope)
                        .map_err(from_body)?;
                    audit(
                        "token.create",
                        &format!("token/{}", t.id),
                        "ok",
                        Some(format!("scope {}", t.scope)),
                    )?;
                    t
                }
            };
            if output == Output::Json {
                return print_json(out, &token);
            }
            let _ = writeln!(out, "{}", token.token);
            eprintln!(
                "token {} ({}, scope {}) created; it is shown only now. Send it as `Authorization: Bearer <token>`.",
                token.id, token.name, token.scope
            );
            Ok(())
        }
        TokenCommand::Ls { output } => {
            let list: Vec<TokenView> = match &remote {
                Some(r) => r.call("GET", "/v1/tokens", None).map_err(from_body)?,
                None => hangar_control::tokens::list(&store()?).map_err(from_body)?,
            };
            print_listing(out, output, &list, ("ID<14 SCOPE<28", "NAME"), |t| {
                (vec![t.id.to_string(), t.scope.to_string()], t.name.clone())
            })
        }
        TokenCommand::Rm { id } => {
            match &remote {
                Some(r) => {
                    r.call::<serde_json::Value>("DELETE", &format!("/v1/tokens/{id}"), None)
                        .map_err(from_body)?;
                }
                None => {
                    let target = format!("token/{id}");
                    audit("token.remove", &target, "requested", None)?;
                    hangar_control::tokens::remove(&store()?, &id).map_err(from_body)?;
                    audit("token.remove", &target, "ok", None)?;
                }
            }
            let _ = writeln!(out, "{id}: revoked");
            Ok(())
        }
    }
}

/// Parses `--expect-head`: `SEQ:sha256:HEX`, or a signed head's JSON.
fn expected_head(s: &str) -> Result<(hangar_audit::Head, Option<SignedHead>), Failure> {
    let bad = || {
        failure(
            ErrorCode::InvalidArgument,
            format!("--expect-head {s:?} is neither SEQ:sha256:HEX nor a signed head"),
            "pass what `hangar audit head` printed",
        )
    };
    if s.trim_start().starts_with('{') {
        let signed: SignedHead = serde_json::from_str(s).map_err(|_| bad())?;
        return Ok((signed.head(), Some(signed)));
    }
    let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    if !hash.starts_with("sha256:") || hash.len() != 7 + 64 {
        return Err(bad());
    }
    Ok((hangar_audit::Head { seq, hash: hash.to_string() }, None))
}

/// The key heads must be signed with: given, or read from the signing key beside the log.
fn trusted_key(given: Option<String>, key_file: &Path) -> Result<Option<String>, Failure> {
    if given.is_some() {
        return Ok(given);
    }
    if !key_file.exists() {
        return Ok(None);
    }
    HeadSigner::load(key_file).map(|k| Some(k.public_key())).map_err(|e| crate::coded(&e))
}

/// `hangar audit …`
pub fn audit_command(cmd: AuditCommand, out: &mut dyn Write) -> Result<(), Failure> {
    let (default_log, key_file, default_head) = hangar_audit::files_in(&home());
    match cmd {
        AuditCommand::Head { output } => {
            let Some(signed) = SignedHead::read(&default_head).map_err(|e| crate::coded(&e))?
            else {
                return Err(failure(
                    ErrorCode::Io,
                    format!("{} does not exist", default_head.display()),
                    "hangard writes it with its first audit entry; start hangard",
                ));
            };
            if let Some(key) = trusted_key(None, &key_file)? {
                signed.check(&key).map_err(|why| {
                    failure(
                        ErrorCode::StoreCorrupt,
                        format!("{}: {why}", default_head.display()),
                        "the signed head was tampered with; keep the files as evidence",
                    )
                })?;
            }
            if output == Output::Json {
                return print_json(out, &signed);
            }
            let _ = writeln!(out, "{}:{}", signed.seq, signed.hash);
            eprintln!(
                "entry {} signed by {} at {} ms; keep this line (or `--output json`) elsewhere and check later with `hangar audit verify --expect-head {}:{}`",
                signed.seq, signed.key, signed.at, signed.seq, signed.hash
            );
            Ok(())
        }
        AuditCommand::Verify { file, expect_head, public_key } => {
            let path = file.unwrap_or(default_log);
            let head_file = path.with_file_name("audit.head");
            let report = hangar_audit::verify(&path).map_err(|e| crate::coded(&e))?;
            if let Some(f) = &report.failure {
                return Err(failure(
                    ErrorCode::StoreCorrupt,
                    format!("{}: {f}", path.display()),
                    "the log was edited, truncated or reordered after it was written; keep the file as evidence",
                ));
            }
            let _ = writeln!(
                out,
                "{}: chain intact, {} entries, head {}",
                path.display(),
                report.entries,
                report.head.hash
            );
            let key = trusted_key(public_key, &key_file)?;
            let mut heads: Vec<(String, hangar_audit::Head)> = Vec::new();
            if let Some(signed) = SignedHead::read(&head_file).map_err(|e| crate::coded(&e))? {
                match &key {
                    Some(k) => signed.check(k).map_err(|why| {
                        failure(
                            ErrorCode::StoreCorrupt,
                            format!("{}: {why}", head_file.display()),
                            "the signed head was forged or altered; keep the files as evidence",
                        )
                    })?,
                    None => eprintln!(
                        "warning: no key to check {} against (give --public-key)",
                        head_file.display()
                    ),
                }
                heads.push((format!("signed head ({})", head_file.display()), signed.head()));
            } else if report.entries > 0 && key_file.exists() {
                return Err(failure(
                    ErrorCode::StoreCorrupt,
                    format!(
                        "{} is missing, but the log has entries and a signing key exists",
                        head_file.display()
                    ),
                    "the signed head was deleted; compare with a head kept elsewhere (--expect-head)",
                ));
            }
            if let Some(h) = expect_head {
                let (head, signed) = expected_head(&h)?;
                if let (Some(signed), Some(k)) = (&signed, &key) {
                    signed.check(k).map_err(|why| {
                        failure(
                            ErrorCode::InvalidArgument,
                            format!("--expect-head: {why}"),
                            "pass a head this host signed",
                        )
                    })?;
                }
                heads.push(("expected head".into(), head));
            }
            for (what, head) in heads {
                let (_, check) =
                    hangar_audit::verify_against(&path, &head).map_err(|e| crate::coded(&e))?;
                if check != HeadCheck::Contains {
                    return Err(failure(
                        ErrorCode::StoreCorrupt,
                        format!(
                            "{}: {check} ({what}: entry {}, {})",
                            path.display(),
                            head.seq,
                            head.hash
                        ),
                        "entries were removed or rewritten after they were written; keep the files as evidence",
                    ));
                }
                let _ = writeln!(out, "{what}: entry {} is in the log, unchanged", head.seq);
            }
            Ok(())
        }
    }
}
