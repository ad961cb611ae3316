//! The validating walker: document tree → normalised [`VmSpec`], collecting every problem.
//!
//! The walker never stops at the first error: each field is checked on its own and a broken
//! field only suppresses checks that depend on it. The field lists (in `constants`) are the spec
//! format; `schema.rs` describes the same format for JSON Schema, and a test keeps the two equal.
//!
//! This module is the driver ([`Walker::spec`], the tenant namespace of the name); the typed
//! value readers are in `values`, and each group of sections has its own module: `machine`
//! (`[machine]`, `[boot]`), `disks`, `nics` (with port forwards), `serial` and `labels`.

use std::collections::BTreeMap;
use std::path::Path;

use hangar_core::error::ErrorCode;
use hangar_core::ids::{PoolId, TenantId, VmName};
use hangar_core::spec::*;

use crate::diag::Diagnostic;
use crate::node::Node;

mod constants;
mod disks;
mod labels;
mod machine;
mod nics;
mod serial;
mod values;

pub use constants::{
    defaults, limits, BOOT_FIELDS, BUILTIN_IMAGES, DISK_FIELDS, MACHINE_FIELDS, NIC_FIELDS,
    SERIAL_FIELDS, TOP_FIELDS,
};

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

struct Obj<'n> {
    map: &'n BTreeMap<String, Node>,
    path: String,
}

impl<'n> Obj<'n> {
    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

pub(crate) struct Walker<'a> {
    errors: Vec<Diagnostic>,
    base_dir: &'a Path,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(base_dir: &'a Path) -> Self {
        Self { errors: Vec::new(), base_dir }
    }

    fn push(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    /// Validates a whole document.
    pub(crate) fn spec(mut self, root: &Node) -> Result<VmSpec, Vec<Diagnostic>> {
        let Some(top) = self.obj(root, String::new(), TOP_FIELDS) else {
            return Err(self.errors);
        };
        match top.map.get("schema_version") {
            None => self.missing(&top, "schema_version", "`schema_version = 1` at the top"),
            Some(Node::Int(1)) => {}
            Some(Node::Int(v)) => self.push(
                Diagnostic::new(
                    ErrorCode::SpecSchemaVersion,
                    "schema_version",
                    format!("schema_version {v} is not supported (this Hangar reads 1)"),
                )
                .hint("set schema_version = 1"),
            ),
            Some(other) => self.type_error("schema_version".into(), "an integer", other),
        }
        let name = match self.string(&top, "name") {
            None if !top.map.contains_key("name") => {
                self.missing(&top, "name", "`name = \"my-vm\"`");
                None
            }
            None => None,
            Some(n) => VmName::new(n).map_err(|e| self.name_error("name".into(), e)).ok(),
        };
        let machine = self.machine(&top);
        let boot = self.boot(&top);
        let disks = self.disks(&top);
        let nics = self.nics(&top);
        let serial = self.serial(&top);
        let labels = self.labels(&top);
        let tenant = self
            .string(&top, "tenant")
            .and_then(|t| TenantId::new(t).map_err(|e| self.name_error("tenant".into(), e)).ok());
        let pool = self
            .string(&top, "pool")
            .and_then(|p| PoolId::new(p).map_err(|e| self.name_error("pool".into(), e)).ok());

        let name = name.and_then(|n| self.tenant_name(n, tenant.as_ref()));

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let (
            Some(name),
            Some(machine),
            Some(boot),
            Some(disks),
            Some(nics),
            Some(serial),
            Some(labels),
        ) = (name, machine, boot, disks, nics, serial, labels)
        else {
            unreachable!("a section failed without reporting why");
        };
        Ok(VmSpec { name, machine, boot, disks, nics, serial, labels, tenant, pool })
    }

    /// A tenant's VM lives in its namespace: `web` of tenant `acme` is `acme--web` (see
    /// [`hangar_core::ids::TENANT_SEPARATOR`]). A name that already carries a tenant prefix
    /// must carry its own tenant's.
    fn tenant_name(&mut self, name: VmName, tenant: Option<&TenantId>) -> Option<VmName> {
        let sep = hangar_core::ids::TENANT_SEPARATOR;
        if let Some(prefix) = hangar_core::ids::tenant_prefix(name.as_str()) {
            if tenant.is_none_or(|t| t.as_str() != prefix) {
                self.push(
                    Diagnostic::new(
                        ErrorCode::InvalidName,
                        "name",
                        format!(
                            "{name:?} has the form TENANT{sep}NAME, which only a VM of tenant {prefix:?} may have"
                        ),
                    )
                    .hint(format!(
                        "use single hyphens in the name, or set tenant = \"{prefix}\""
                    )),
                );
                return None;
            }
            return Some(name);
        }
        let Some(tenant) = tenant else {
            return Some(name);
        };
        VmName::new(hangar_core::ids::qualify(tenant, name.as_str()))
            .map_err(|e| {
                self.push(
                    Diagnostic::new(
                        ErrorCode::InvalidName,
                        "name",
                        format!(
                            "{name:?} in tenant {tenant:?} becomes {:?}, which is {} characters long, at most {}",
                            e.value,
                            e.value.len(),
                            hangar_core::ids::MAX_NAME_LEN
                        ),
                    )
                    .hint("use a shorter name (a tenant's VMs are named TENANT--NAME on the host)"),
                )
            })
            .ok()
    }
}
