//! `[machine]` and `[boot]` (with the kernel command line).

use hangar_core::error::ErrorCode;
use hangar_core::spec::*;

use super::constants::{defaults, limits, BOOT_FIELDS, BUILTIN_IMAGES, MACHINE_FIELDS};
use super::{Obj, Walker};
use crate::diag::{closest, Diagnostic};

impl Walker<'_> {
    pub(super) fn machine(&mut self, top: &Obj<'_>) -> Option<MachineSpec> {
        let mut spec = MachineSpec {
            vcpus: defaults::VCPUS,
            memory_mib: defaults::MEMORY_MIB,
            accel: AccelRequest::Auto,
            kind: MachineKind::Microvm,
            cpu_weight: None,
        };
        let Some(o) = self.section(top, "machine", MACHINE_FIELDS).ok()? else {
            return Some(spec);
        };
        let before = self.errors.len();
        if let Some(v) = self.int(&o, "vcpus", limits::VCPUS, "") {
            spec.vcpus = v as u32;
        }
        if let Some(v) = self.int(&o, "memory_mib", limits::MEMORY_MIB, " MiB") {
            spec.memory_mib = v as u32;
        }
        if let Some(v) = self.int(&o, "cpu_weight", limits::CPU_WEIGHT, "") {
            spec.cpu_weight = Some(v as u32);
        }
        let accels =
            [("auto", AccelRequest::Auto), ("kvm", AccelRequest::Kvm), ("tcg", AccelRequest::Tcg)];
        if let Some(v) = self.choice(&o, "accel", &accels) {
            spec.accel = v;
        }
        let kinds = [("microvm", MachineKind::Microvm), ("q35", MachineKind::Q35)];
        if let Some(v) = self.choice(&o, "type", &kinds) {
            spec.kind = v;
        }
        (self.errors.len() == before).then_some(spec)
    }

    pub(super) fn cmdline(&mut self, o: &Obj<'_>) -> Option<String> {
        let Some(raw) = self.string(o, "cmdline") else {
            return Some(String::new()).filter(|_| !o.map.contains_key("cmdline"));
        };
        // Kernel arguments are whitespace-separated: any run of spaces, tabs or newlines means
        // the same thing, so the canonical form uses single spaces.
        let normalized = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if normalized.len() > limits::CMDLINE {
            self.push(Diagnostic::new(
                ErrorCode::SpecOutOfRange,
                o.at("cmdline"),
                format!(
                    "the command line is {} bytes, at most {}",
                    normalized.len(),
                    limits::CMDLINE
                ),
            ));
            return None;
        }
        if normalized.chars().any(|c| c.is_control()) {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecInvalidValue,
                    o.at("cmdline"),
                    "the command line contains control characters",
                )
                .hint("remove control characters from cmdline"),
            );
            return None;
        }
        self.secret_check(o.at("cmdline"), "the kernel command line", &normalized);
        Some(normalized)
    }

    pub(super) fn boot(&mut self, top: &Obj<'_>) -> Option<BootSource> {
        let Some(o) = self.section(top, "boot", BOOT_FIELDS).ok()? else {
            return Some(BootSource::Image {
                image: defaults::IMAGE.to_string(),
                cmdline: String::new(),
            });
        };
        let before = self.errors.len();
        let has = |k: &str| o.map.contains_key(k);
        if has("image") && has("kernel") {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecBootConflict,
                    o.path.clone(),
                    "both `image` and `kernel` are set; a VM boots from one source",
                )
                .hint("keep `image` (a built-in image) or `kernel` (+ `initrd`), not both"),
            );
        } else if has("image") && has("initrd") {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecBootConflict,
                    o.at("initrd"),
                    "`initrd` belongs to kernel boot, but this spec boots a built-in image",
                )
                .hint("remove `initrd`, or replace `image` with `kernel`"),
            );
        } else if has("initrd") && !has("kernel") {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecBootConflict,
                    o.at("initrd"),
                    "`initrd` without `kernel`",
                )
                .hint("add `kernel = \"path/to/vmlinuz\"`"),
            );
        }
        let cmdline = self.cmdline(&o);
        let source = if has("kernel") {
            let kernel = self.file_path(&o, "kernel");
            let initrd =
                if has("initrd") { self.file_path(&o, "initrd").map(Some) } else { Some(None) };
            match (kernel, initrd, cmdline) {
                (Some(kernel), Some(initrd), Some(cmdline)) => {
                    Some(BootSource::Kernel { kernel, initrd, cmdline })
                }
                _ => None,
            }
        } else {
            let image = match self.string(&o, "image") {
                Some(image) if BUILTIN_IMAGES.contains(&image) => Some(image.to_string()),
                Some(image) => {
                    let hint = match closest(image, BUILTIN_IMAGES) {
                        Some(s) => format!(
                            "did you mean \"{s}\"? built-in images: {}",
                            BUILTIN_IMAGES.join(", ")
                        ),
                        None => format!(
                            "built-in images: {}; or boot a file with `kernel = ...`",
                            BUILTIN_IMAGES.join(", ")
                        ),
                    };
                    self.push(
                        Diagnostic::new(
                            ErrorCode::SpecUnknownImage,
                            o.at("image"),
                            format!("there is no built-in image {image:?}"),
                        )
                        .hint(hint),
                    );
                    None
                }
                None if has("image") => None,
                None => Some(defaults::IMAGE.to_string()),
            };
            match (image, cmdline) {
                (Some(image), Some(cmdline)) => Some(BootSource::Image { image, cmdline }),
                _ => None,
            }
        };
        source.filter(|_| self.errors.len() == before)
    }
}
