//! `[[disk]]`: a base image or a blank disk, its format inferred from the file name.

use std::collections::BTreeSet;

use hangar_core::error::ErrorCode;
use hangar_core::spec::*;

use super::constants::{limits, DISK_FIELDS};
use super::{Obj, Walker};
use crate::diag::Diagnostic;

impl Walker<'_> {
    pub(super) fn disks(&mut self, top: &Obj<'_>) -> Option<Vec<DiskSpec>> {
        let items = self.array_of_tables(top, "disk", DISK_FIELDS, limits::DISKS)?;
        let before = self.errors.len();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for o in &items {
            let name = self.device_name(o, &mut seen, "disk");
            let readonly = self.boolean(o, "readonly");
            let formats = [("qcow2", DiskFormat::Qcow2), ("raw", DiskFormat::Raw)];
            let format = self.choice(o, "format", &formats);
            let source = match (o.map.contains_key("source"), o.map.contains_key("size_mib")) {
                (true, true) | (false, false) => {
                    self.push(
                        Diagnostic::new(
                            ErrorCode::SpecDiskSource,
                            o.path.clone(),
                            "a disk needs exactly one of `source` (a base image) or `size_mib` (a blank disk)",
                        )
                        .hint("keep `source = \"base.qcow2\"` or `size_mib = 1024`, not both"),
                    );
                    None
                }
                (true, false) => {
                    self.file_path(o, "source").map(|source| DiskSource::Base { source })
                }
                (false, true) => {
                    if readonly == Some(true) {
                        self.push(
                            Diagnostic::new(
                                ErrorCode::SpecDiskSource,
                                o.at("readonly"),
                                "a blank disk cannot be read-only: it would stay empty forever",
                            )
                            .hint("remove `readonly`, or give the disk a `source`"),
                        );
                    }
                    self.int(o, "size_mib", limits::DISK_MIB, " MiB")
                        .map(|size_mib| DiskSource::Blank { size_mib: size_mib as u64 })
                }
            };
            if let (Some(name), Some(source)) = (name, source) {
                // The format follows the file name when not given: `.raw` and `.img` are raw,
                // everything else (and every blank disk) is qcow2.
                let inferred = match &source {
                    DiskSource::Base { source }
                        if source.ends_with(".raw") || source.ends_with(".img") =>
                    {
                        DiskFormat::Raw
                    }
                    _ => DiskFormat::Qcow2,
                };
                out.push(DiskSpec {
                    name,
                    source,
                    format: format.unwrap_or(inferred),
                    readonly: readonly.unwrap_or(false),
                });
            }
        }
        (self.errors.len() == before).then_some(out)
    }
}
