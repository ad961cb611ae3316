//! `hangar up|start|stop|pause|resume|reboot|rm|ps|inspect|logs`: one VM's lifecycle.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_api::OperationRequest;
use hangar_control::Control;
use hangar_core::error::ErrorCode;
use hangar_core::ids::VmName;
use hangar_qemu::console::{self, LogTail};
use hangar_qemu::QemuEngine;

use crate::table::print_listing;
use crate::{Failure, Output};

use crate::common::*;

pub(crate) fn boot_and_report(
    control: &dyn Control, vm: &str, no_wait: bool, timeout: Option<u64>, out: &mut dyn Write,
) -> Result<(), Failure> {
    let op = run_op(
        control,
        format!("starting {vm}"),
        OperationRequest::Start { vm: vm.to_string(), no_wait, timeout_s: timeout },
    )?;
    let view = vm_after(&op)?;
    let boot =
        view.boot_ms.map(|ms| format!(" in {:.2} s", ms as f64 / 1000.0)).unwrap_or_default();
    let what = if no_wait { "vCPUs running" } else { "guest ready" };
    let _ = writeln!(out, "{vm}: {} ({}), {what}{boot}", view.state, view.accel);
    Ok(())
}

pub fn up(
    file: &Path, no_wait: bool, timeout: Option<u64>, out: &mut dyn Write,
) -> Result<(), Failure> {
    // Validate here first: a bad spec is reported with every diagnostic, daemon or not.
    let doc = hangar_spec::load_document(file)?;
    let control = control()?;
    let name = doc.canonical.spec.name.to_string();
    control
        .run(
            OperationRequest::Create {
                spec: doc.document,
                base_dir: Some(doc.base_dir.display().to_string()),
            },
            &|_| {},
        )
        .map_err(from_body)?;
    boot_and_report(&*control, &name, no_wait, timeout, out)
}

pub fn start(
    name: &str, no_wait: bool, timeout: Option<u64>, out: &mut dyn Write,
) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    boot_and_report(&*control()?, vm.as_str(), no_wait, timeout, out)
}

pub fn stop(name: &str, force: bool, timeout: u64, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let op = control()?
        .run(
            OperationRequest::Stop { vm: vm.to_string(), force, timeout_s: Some(timeout) },
            &|_| {},
        )
        .map_err(from_body)?;
    let view = vm_after(&op)?;
    let escalated = op.result.as_ref().and_then(|r| r.escalated) == Some(true);
    let how = if escalated {
        format!(", forced after the guest ignored {timeout} s of power-off")
    } else {
        String::new()
    };
    let took = op.result.as_ref().map(|r| r.took_ms).unwrap_or_default();
    let _ = writeln!(out, "{vm}: {}{how} ({:.2} s)", view.state, took as f64 / 1000.0);
    Ok(())
}

pub fn simple(name: &str, op: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?.to_string();
    let request = match op {
        "pause" => OperationRequest::Pause { vm: vm.clone() },
        "resume" => OperationRequest::Resume { vm: vm.clone() },
        "reboot" => OperationRequest::Reboot { vm: vm.clone() },
        _ => unreachable!("{op}"),
    };
    let done = control()?.run(request, &|_| {}).map_err(from_body)?;
    let _ = writeln!(out, "{vm}: {}", vm_after(&done)?.state);
    Ok(())
}

pub fn rm(name: &str, force: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    control()?.run(OperationRequest::Delete { vm: vm.to_string(), force }, &|_| {}).map_err(
        |e| {
            let mut f = from_body(e);
            if let Some(d) = f.diagnostics.first_mut() {
                if d.code == ErrorCode::InvalidTransition {
                    d.hint = format!(
                        "stop it first (`hangar stop {vm}`), or use `hangar rm --force {vm}`"
                    );
                }
            }
            f
        },
    )?;
    let _ = writeln!(out, "{vm}: removed");
    Ok(())
}

pub fn ps(all: bool, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let views = control()?.list().map_err(from_body)?;
    let rows: Vec<_> = views.into_iter().filter(|v| all || v.is_live()).collect();
    let columns = ("NAME<24 STATE<9 ACCEL<5 VCPUS>5 MEMORY>8 UPTIME>8 PID>8 ADDRESS<18", "REASON");
    print_listing(out, output, &rows, columns, |r| {
        let cells = vec![
            r.name.clone(),
            r.state.clone(),
            r.accel.clone(),
            r.vcpus.to_string(),
            format!("{}M", r.memory_mib),
            r.uptime_s.map(|s| fmt_duration(Duration::from_secs(s))).unwrap_or_else(|| "-".into()),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.addresses.first().cloned().unwrap_or_else(|| "-".into()),
        ];
        (cells, r.reason.clone().unwrap_or_default())
    })
}

pub fn inspect(name: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let engine = engine()?;
    let rec = engine.record(&vm).map_err(fail)?;
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    let history = engine.history(&vm).map_err(fail)?;
    let guest = crate::guest::info(&rec.state, plan.agent_socket.as_deref());
    let doc = serde_json::json!({
        "name": vm.as_str(),
        "state": rec.state,
        "reason": rec.reason,
        "spec_hash": rec.spec_hash,
        "spec": rec.spec,
        "plan": plan,
        "process": rec.process.map(|p| serde_json::json!({"pid": p.pid, "start_time": p.start_time})),
        "boot_ms": rec.boot_ms,
        "addresses": hangar_control::view_of(&rec).addresses,
        "sleeping_on": rec.sleeping_on,
        "runtime_dir": rec.runtime_dir,
        "confinement": engine.confinement(&vm).map_err(fail)?,
        "memory": engine.memory(&vm).map_err(fail)?,
        "history": history,
        "guest": guest,
    });
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).expect("json"));
    Ok(())
}

pub(crate) fn console_path(engine: &QemuEngine, vm: &VmName) -> Result<PathBuf, Failure> {
    let rec = engine.record(vm).map_err(fail)?;
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    plan.serial.log.map(PathBuf::from).ok_or_else(|| {
        crate::failure(
            ErrorCode::Unsupported,
            format!("{vm} has no console log (serial mode none)"),
            "set [serial] mode = \"log\" or \"socket\"",
        )
    })
}

pub fn logs(name: &str, follow: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let engine = engine()?;
    let path = console_path(&engine, &vm)?;
    // The half rotated away first, whole (it no longer grows).
    for line in LogTail::from(0).read_lines(&console::rotated(&path)) {
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    let mut tail = LogTail::from(0);
    loop {
        for line in tail.read_lines(&path) {
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        let rec = engine.record(&vm).map_err(fail)?;
        if rec.process.is_none() {
            for line in tail.read_lines(&path) {
                let _ = writeln!(out, "{line}");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
