//! The typed commands: read-only queries ([`QmpQuery`]) and state-changing commands
//! ([`QmpControl`]), implemented for [`Qmp`].

use std::future::Future;

use serde_json::json;

use super::Qmp;
use crate::error::QmpError;
use crate::types::{MigrationInfo, StatusInfo, VersionInfo};

/// Read-only QMP queries: none of these changes the VM.
pub trait QmpQuery {
    /// `query-status`: whether the vCPUs run and the run state. This is how a KVM internal
    /// error is detected: QEMU stays alive, paused, in [`RunState::InternalError`](crate::RunState::InternalError).
    fn query_status(&self) -> impl Future<Output = Result<StatusInfo, QmpError>> + Send;
    /// `query-migrate`: the state of the current or last migration (also memory snapshots).
    fn query_migrate(&self) -> impl Future<Output = Result<MigrationInfo, QmpError>> + Send;
    /// `query-version`: the running QEMU's version.
    fn query_version(&self) -> impl Future<Output = Result<VersionInfo, QmpError>> + Send;
}

/// QMP commands that change the VM's state.
///
/// QEMU emits the event a command causes (`RESUME` for `cont`, `STOP` for `stop`, `SHUTDOWN`
/// for `quit`, …) *before* the command's reply, so subscribe with [`Qmp::events`] before
/// sending the command.
pub trait QmpControl {
    /// `stop`: pause the vCPUs (emits `STOP`).
    fn stop(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `cont`: resume the vCPUs (emits `RESUME`); also starts a VM launched with `-S` and one
    /// restored with `-incoming`.
    fn cont(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `system_powerdown`: press the ACPI power button (emits `POWERDOWN`). The guest may ignore
    /// it; escalate if it does not shut down.
    fn system_powerdown(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `system_reset`: reset the machine (emits `RESET`).
    fn system_reset(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `quit`: make QEMU exit (emits `SHUTDOWN` with `guest: false, reason: "host-qmp-quit"`,
    /// replies, then closes the socket — often with a reset rather than a clean EOF). A
    /// connection that closes before the reply arrives (or was already closed by the peer)
    /// also counts as success, since that is the command's effect; a protocol error does not.
    fn quit(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `migrate` to `uri` (QEMU 10: `{"uri": "file:/path"}` for a memory snapshot). Returns once
    /// the migration has started; poll [`QmpQuery::query_migrate`] until it is terminal.
    fn migrate(&self, uri: &str) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `migrate-incoming` from `uri`; only valid when QEMU was started with `-incoming defer`.
    fn migrate_incoming(&self, uri: &str) -> impl Future<Output = Result<(), QmpError>> + Send;
}

impl QmpQuery for Qmp {
    async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let v = self.call("query-status", None, self.timeout).await?;
        StatusInfo::parse(&v).map_err(|d| QmpError::bad_reply("query-status", d))
    }

    async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let v = self.call("query-migrate", None, self.timeout).await?;
        MigrationInfo::parse(&v).map_err(|d| QmpError::bad_reply("query-migrate", d))
    }

    async fn query_version(&self) -> Result<VersionInfo, QmpError> {
        let v = self.call("query-version", None, self.timeout).await?;
        VersionInfo::parse(&v, "return").map_err(|d| QmpError::bad_reply("query-version", d))
    }
}

impl QmpControl for Qmp {
    async fn stop(&self) -> Result<(), QmpError> {
        self.call_unit("stop", None).await
    }

    async fn cont(&self) -> Result<(), QmpError> {
        self.call_unit("cont", None).await
    }

    async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.call_unit("system_powerdown", None).await
    }

    async fn system_reset(&self) -> Result<(), QmpError> {
        self.call_unit("system_reset", None).await
    }

    async fn quit(&self) -> Result<(), QmpError> {
        match self.call_unit("quit", None).await {
            Err(QmpError::Disconnected { .. }) => Ok(()),
            other => other,
        }
    }

    async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.call_unit("migrate", Some(json!({ "uri": uri }))).await
    }

    async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.call_unit("migrate-incoming", Some(json!({ "uri": uri }))).await
    }
}
