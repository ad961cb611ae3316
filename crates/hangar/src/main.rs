//! `hangar`: the command-line tool. Thin glue over `hangar-spec` and `hangar-plan`: parse
//! arguments, call the library, print. Exit codes: 0 success, 1 invalid input or failed
//! operation, 2 usage or environment error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hangar_core::error::{registry_markdown, Coded, ErrorClass, ErrorCode};
use hangar_plan::probe::SystemProbe;
use hangar_plan::{HostFacts, HostProbe};
use hangar_spec::{CanonicalSpec, Diagnostic, SpecErrors};

const AFTER_HELP: &str = "\
Examples:
  hangar validate examples/hello.toml          check a spec, list every problem
  hangar plan examples/hello.toml              show the exact QEMU command, touch nothing
  hangar plan vm.toml --output json            the plan as JSON (spec_hash, argv, argv_hash, ...)
  hangar errors                                every error code with its meaning and fix

Exit codes: 0 success, 1 invalid input or failed operation, 2 usage or environment error.";

/// Hangar turns a small declarative VM spec into running VMs.
#[derive(Parser)]
#[command(name = "hangar", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
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
    /// List every error code: meaning, whether retrying can help, exit code and typical fix.
    Errors {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: RegistryOutput,
    },
    /// Print the host facts a plan would use on this machine (JSON, usable with --host-facts).
    HostFacts,
}

/// A failure to report: diagnostics on stderr, and the exit code.
struct Failure {
    diagnostics: Vec<Diagnostic>,
}

impl Failure {
    fn exit_code(&self) -> u8 {
        let env = self
            .diagnostics
            .iter()
            .any(|d| d.code.class() == ErrorClass::Environment);
        if env {
            2
        } else {
            1
        }
    }
}

impl From<SpecErrors> for Failure {
    fn from(e: SpecErrors) -> Self {
        Self { diagnostics: e.0 }
    }
}

fn coded(e: &dyn CodedError) -> Failure {
    Failure {
        diagnostics: vec![
            Diagnostic::new(e.code(), e.path().unwrap_or_default(), e.to_string())
                .hint(Coded::hint(e).unwrap_or_else(|| e.code().typical_fix().to_string())),
        ],
    }
}

trait CodedError: Coded + std::fmt::Display {}
impl<T: Coded + std::fmt::Display> CodedError for T {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
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

fn json_line(out: &mut dyn Write, value: &serde_json::Value) {
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).expect("json")
    );
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
                    }
                    .with_code_of(&e)),
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
        Command::Plan {
            file,
            output,
            host_facts,
        } => {
            let spec = hangar_spec::load(&file)?;
            let facts = match host_facts {
                Some(path) => read_facts(&path)?,
                None => SystemProbe::default().probe(),
            };
            let plan = hangar_plan::plan(&spec, &facts).map_err(|e| coded(&e))?;
            match output {
                Output::Json => {
                    let _ = out.write_all(plan.to_json().as_bytes());
                }
                Output::Text => print_plan(out, &spec, &plan),
            }
            Ok(())
        }
        Command::Schema => {
            let _ = out.write_all(hangar_spec::schema::schema_json().as_bytes());
            Ok(())
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
    }
}

impl Failure {
    /// An exit code carrier for errors already printed in another form (JSON on stdout).
    fn with_code_of(mut self, e: &SpecErrors) -> Self {
        // Keep only the class so the exit code is right; the details went to stdout.
        if let Some(d) =
            e.0.iter()
                .find(|d| d.code.class() == ErrorClass::Environment)
                .or(e.0.first())
        {
            self.diagnostics = vec![d.clone()];
        }
        self
    }
}

fn read_facts(path: &Path) -> Result<HostFacts, Failure> {
    let fail = |code: ErrorCode, message: String, hint: &str| Failure {
        diagnostics: vec![Diagnostic::new(code, "", message).hint(hint)],
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

fn print_plan(out: &mut dyn Write, spec: &CanonicalSpec, plan: &hangar_plan::Plan) {
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
    let _ = writeln!(
        out,
        "qemu:     {}",
        plan.qemu_version.as_deref().unwrap_or("not found")
    );
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
            hangar_plan::Creation::Tap { ifname, nic } => format!("tap      {ifname}  (nic {nic})"),
        };
        let _ = writeln!(out, "  {line}");
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
}
