//! `hangar snapshot save|restore|ls|rm`.

use std::io::Write;

use hangar_api::OperationRequest;

use crate::table::print_listing;
use crate::{Failure, Output};

use crate::common::*;

pub fn snapshot_save(
    name: &str, id: &str, sleep: bool, out: &mut dyn Write,
) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let op = run_op(
        &*control()?,
        format!("saving {vm}"),
        OperationRequest::SnapshotSave { vm: vm.to_string(), id: id.to_string(), sleep },
    )?;
    let result = op.result.unwrap_or_default();
    let size = result.snapshot.map(|s| s.size_bytes).unwrap_or_default();
    let _ = writeln!(
        out,
        "{vm}: saved {id} ({} MiB) in {:.2} s",
        size >> 20,
        result.took_ms as f64 / 1000.0
    );
    Ok(())
}

pub fn snapshot_restore(name: &str, id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let op = run_op(
        &*control()?,
        format!("restoring {vm}"),
        OperationRequest::SnapshotRestore { vm: vm.to_string(), id: id.to_string() },
    )?;
    let view = vm_after(&op)?;
    let _ = writeln!(
        out,
        "{vm}: {} from {id} in {:.2} s",
        view.state,
        view.boot_ms.unwrap_or(0) as f64 / 1000.0
    );
    Ok(())
}

pub fn snapshot_ls(name: Option<&str>, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = name.map(vm_name).transpose()?;
    let list = control()?.snapshots(vm.as_ref().map(|v| v.as_str())).map_err(from_body)?;
    // SIZE is what the snapshot takes on disk (its RAM file is sparse).
    print_listing(out, output, &list, ("ID<24 VM<24 LAYOUT<7 SIZE>8", "ENGINE"), |s| {
        let cells = vec![
            s.id.to_string(),
            s.vm.to_string(),
            s.layout.to_string(),
            format!("{}M", s.size_bytes >> 20),
        ];
        (cells, s.engine_version.clone())
    })
}

pub fn snapshot_rm(id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    control()?
        .run(OperationRequest::SnapshotDelete { id: id.to_string() }, &|_| {})
        .map_err(from_body)?;
    let _ = writeln!(out, "{id}: removed");
    Ok(())
}
