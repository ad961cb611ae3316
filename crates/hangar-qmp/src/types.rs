//! Typed QMP replies and events, parsed and validated from raw JSON.
//!
//! Every parser here takes untrusted input from the socket and returns a description of what
//! was wrong (`Err(String)`) instead of panicking; the client wraps it in
//! [`QmpError::Protocol`](crate::QmpError::Protocol).

use std::fmt;

use serde_json::{Map, Value};

/// A QEMU version, from the greeting or `query-version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Major version (10 for QEMU 10.0.2).
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
    /// The distribution's package string (for example `Debian 1:10.0.2+ds-1~bpo12+1`); may be
    /// empty.
    pub package: String,
}

impl fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        if !self.package.is_empty() {
            write!(f, " ({})", self.package.trim())?;
        }
        Ok(())
    }
}

impl VersionInfo {
    /// Parses `{"qemu": {"major", "minor", "micro"}, "package"}`.
    pub(crate) fn parse(v: &Value, ctx: &str) -> Result<VersionInfo, String> {
        let obj = as_object(v, ctx)?;
        let qemu_ctx = format!("{ctx}.qemu");
        let qemu = as_object(field(obj, "qemu", ctx)?, &qemu_ctx)?;
        Ok(VersionInfo {
            major: get_u64(qemu, "major", &qemu_ctx)?,
            minor: get_u64(qemu, "minor", &qemu_ctx)?,
            micro: get_u64(qemu, "micro", &qemu_ctx)?,
            package: get_str(obj, "package", ctx)?.to_string(),
        })
    }
}

/// The greeting QEMU sends when a client connects:
/// `{"QMP": {"version": {...}, "capabilities": ["oob"]}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The QEMU version.
    pub version: VersionInfo,
    /// Capabilities QEMU offers (QEMU 10 offers `oob`). The client enables none of them.
    pub capabilities: Vec<String>,
}

impl Greeting {
    /// Validates a greeting message.
    pub(crate) fn parse(v: &Value) -> Result<Greeting, String> {
        let obj = as_object(v, "greeting")?;
        let qmp = as_object(field(obj, "QMP", "greeting")?, "greeting.QMP")?;
        let version =
            VersionInfo::parse(field(qmp, "version", "greeting.QMP")?, "greeting.QMP.version")?;
        let caps = field(qmp, "capabilities", "greeting.QMP")?
            .as_array()
            .ok_or("greeting.QMP.capabilities: expected an array")?;
        let capabilities = caps
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "greeting.QMP.capabilities: expected strings".to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Greeting { version, capabilities })
    }
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $s:literal, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )*
            /// A value this client does not know (a newer QEMU); the string as QEMU sent it.
            Other(String),
        }

        impl $name {
            /// The QMP wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $s, )*
                    $name::Other(s) => s,
                }
            }

            /// Parses a QMP wire string; unknown strings become `Other`.
            pub fn from_wire(s: &str) -> $name {
                match s {
                    $( $s => $name::$variant, )*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// QEMU's run state (QAPI `RunState`), as reported by `query-status`.
    ///
    /// A KVM internal error (for example an emulation failure under a nested hypervisor) does not
    /// end QEMU: it **pauses** the VM with run state [`RunState::InternalError`] and emits only a
    /// `STOP` event. Detect it by calling `query_status` after a [`Event::Stop`] you did not ask
    /// for.
    RunState {
        /// QEMU is being debugged (gdbstub stopped it).
        Debug = "debug",
        /// Waiting for an incoming migration (`-incoming`).
        InMigrate = "inmigrate",
        /// The guest hit an internal error (KVM emulation failure); the VM is paused.
        InternalError = "internal-error",
        /// Paused because of a disk I/O error.
        IoError = "io-error",
        /// Paused by `stop` (or the monitor).
        Paused = "paused",
        /// Paused after an outgoing migration completed.
        PostMigrate = "postmigrate",
        /// Not started yet (`-S`).
        Prelaunch = "prelaunch",
        /// Finishing an outgoing migration.
        FinishMigrate = "finish-migrate",
        /// Restoring a snapshot (`loadvm`).
        RestoreVm = "restore-vm",
        /// The vCPUs run.
        Running = "running",
        /// Saving a snapshot (`savevm`).
        SaveVm = "save-vm",
        /// The guest shut down (with `-no-shutdown`).
        Shutdown = "shutdown",
        /// The guest is suspended (ACPI S3).
        Suspended = "suspended",
        /// Paused by a watchdog action.
        Watchdog = "watchdog",
        /// The guest panicked (with a pvpanic device and `-action panic=pause`).
        GuestPanicked = "guest-panicked",
        /// COLO fault-tolerance mode.
        Colo = "colo",
    }
}

string_enum! {
    /// The state of a migration (QAPI `MigrationStatus`), from `query-migrate` or the
    /// `MIGRATION` event. A memory snapshot (`migrate` to `file:`) goes
    /// `setup` → `active` → `completed` (or `failed`).
    MigrationStatus {
        /// No migration has been started.
        None = "none",
        /// Setting up.
        Setup = "setup",
        /// Being cancelled.
        Cancelling = "cancelling",
        /// Cancelled by a `migrate_cancel`.
        Cancelled = "cancelled",
        /// In progress.
        Active = "active",
        /// Postcopy in progress.
        PostcopyActive = "postcopy-active",
        /// Postcopy paused.
        PostcopyPaused = "postcopy-paused",
        /// Setting up postcopy recovery.
        PostcopyRecoverSetup = "postcopy-recover-setup",
        /// Recovering postcopy.
        PostcopyRecover = "postcopy-recover",
        /// Finished successfully.
        Completed = "completed",
        /// Failed; `query-migrate` has an `error-desc`.
        Failed = "failed",
        /// COLO mode.
        Colo = "colo",
        /// Paused before switchover.
        PreSwitchover = "pre-switchover",
        /// Migrating device state.
        Device = "device",
        /// Waiting for device unplug.
        WaitUnplug = "wait-unplug",
    }
}

impl MigrationStatus {
    /// Whether the migration has ended (completed, failed or cancelled) or never started.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            MigrationStatus::None
                | MigrationStatus::Completed
                | MigrationStatus::Failed
                | MigrationStatus::Cancelled
        )
    }
}

/// The reply to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

impl StatusInfo {
    pub(crate) fn parse(v: &Value) -> Result<StatusInfo, String> {
        let obj = as_object(v, "return")?;
        Ok(StatusInfo {
            running: get_bool(obj, "running", "return")?,
            status: RunState::from_wire(get_str(obj, "status", "return")?),
        })
    }
}

/// RAM transfer counters of a migration (`query-migrate` → `ram`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamStats {
    /// Bytes transferred so far.
    pub transferred: u64,
    /// Bytes still to transfer.
    pub remaining: u64,
    /// Total guest RAM in bytes.
    pub total: u64,
}

/// The reply to `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    /// The status; [`MigrationStatus::None`] when QEMU's reply has no `status` (no migration was
    /// ever started: QEMU answers `{}`).
    pub status: MigrationStatus,
    /// Why the migration failed (`error-desc`), if QEMU said.
    pub error_desc: Option<String>,
    /// RAM counters, if QEMU reported them.
    pub ram: Option<RamStats>,
    /// Milliseconds the migration took (`total-time`), if reported.
    pub total_time_ms: Option<u64>,
}

impl MigrationInfo {
    pub(crate) fn parse(v: &Value) -> Result<MigrationInfo, String> {
        let obj = as_object(v, "return")?;
        let status = match obj.get("status") {
            None => MigrationStatus::None,
            Some(s) => {
                MigrationStatus::from_wire(s.as_str().ok_or("return.status: expected a string")?)
            }
        };
        let error_desc = match obj.get("error-desc") {
            None => None,
            Some(d) => Some(d.as_str().ok_or("return.error-desc: expected a string")?.to_string()),
        };
        let ram = match obj.get("ram") {
            None => None,
            Some(r) => {
                let r = as_object(r, "return.ram")?;
                Some(RamStats {
                    transferred: get_u64(r, "transferred", "return.ram")?,
                    remaining: get_u64(r, "remaining", "return.ram")?,
                    total: get_u64(r, "total", "return.ram")?,
                })
            }
        };
        let total_time_ms = match obj.get("total-time") {
            None => None,
            Some(t) => Some(t.as_u64().ok_or("return.total-time: expected an unsigned integer")?),
        };
        Ok(MigrationInfo { status, error_desc, ram, total_time_ms })
    }
}

/// When QEMU emitted an event (host wall clock, since the Unix epoch). QEMU sends `-1`/`-1`
/// when it could not read the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Whole seconds since the epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// The events Hangar acts on, parsed from a raw [`QmpEvent`]; everything else is
/// [`Event::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `RESUME`: the vCPUs started running (after `cont` or an incoming migration).
    Resume,
    /// `STOP`: the vCPUs stopped. This is also the only event for a KVM internal error: check
    /// `query_status` for [`RunState::InternalError`].
    Stop,
    /// `SHUTDOWN`: QEMU is shutting down (or, with `-no-shutdown`, the guest halted).
    Shutdown {
        /// True if the guest asked for it (ACPI poweroff, triple fault, …), false if the host did
        /// (`quit`, a signal).
        guest: bool,
        /// QEMU's reason, for example `host-qmp-quit`, `guest-shutdown`, `host-signal`.
        reason: String,
    },
    /// `POWERDOWN`: the ACPI power button was pressed (`system_powerdown`). The guest may ignore
    /// it.
    Powerdown,
    /// `RESET`: the machine was reset.
    Reset,
    /// `GUEST_PANICKED`: the guest reported a panic (needs a pvpanic device).
    GuestPanicked,
    /// `MIGRATION`: the migration status changed (only sent when the `events` migration
    /// capability is on).
    MigrationStatus(MigrationStatus),
    /// Any other event, unparsed.
    Other {
        /// The event name, for example `BLOCK_JOB_COMPLETED`.
        name: String,
        /// The event's `data` (`null` when QEMU sent none).
        data: Value,
    },
}

/// One event exactly as QEMU sent it, validated: a name, its `data`, and its timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// The event name, for example `SHUTDOWN`.
    pub name: String,
    /// The event's `data` (`null` when QEMU sent none, as it does for `STOP` and `RESUME`).
    pub data: Value,
    /// When QEMU emitted it.
    pub timestamp: Timestamp,
    /// The parsed form.
    pub kind: Event,
}

impl QmpEvent {
    /// Validates an event message (the caller has checked it has an `event` key).
    pub(crate) fn parse(obj: &Map<String, Value>) -> Result<QmpEvent, String> {
        let name = get_str(obj, "event", "event")?.to_string();
        let ctx = format!("event {name}");
        let ts_ctx = format!("{ctx}: timestamp");
        let ts = as_object(field(obj, "timestamp", &ctx)?, &ts_ctx)?;
        let timestamp = Timestamp {
            seconds: get_i64(ts, "seconds", &ts_ctx)?,
            microseconds: get_i64(ts, "microseconds", &ts_ctx)?,
        };
        let data = obj.get("data").cloned().unwrap_or(Value::Null);
        let kind = Event::parse(&name, &data)?;
        Ok(QmpEvent { name, data, timestamp, kind })
    }
}

impl Event {
    /// Parses a known event's data; an event Hangar acts on with missing or mistyped fields is
    /// an error, an unknown event is [`Event::Other`].
    pub(crate) fn parse(name: &str, data: &Value) -> Result<Event, String> {
        let ctx = format!("event {name}: data");
        Ok(match name {
            "RESUME" => Event::Resume,
            "STOP" => Event::Stop,
            "POWERDOWN" => Event::Powerdown,
            "RESET" => Event::Reset,
            "GUEST_PANICKED" => Event::GuestPanicked,
            "SHUTDOWN" => {
                let d = as_object(data, &ctx)?;
                Event::Shutdown {
                    guest: get_bool(d, "guest", &ctx)?,
                    reason: get_str(d, "reason", &ctx)?.to_string(),
                }
            }
            "MIGRATION" => {
                let d = as_object(data, &ctx)?;
                Event::MigrationStatus(MigrationStatus::from_wire(get_str(d, "status", &ctx)?))
            }
            other => Event::Other { name: other.to_string(), data: data.clone() },
        })
    }
}

pub(crate) fn as_object<'a>(v: &'a Value, ctx: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{ctx}: expected an object, got {}", kind_of(v)))
}

pub(crate) fn field<'a>(
    obj: &'a Map<String, Value>, name: &str, ctx: &str,
) -> Result<&'a Value, String> {
    obj.get(name).ok_or_else(|| format!("{ctx}: missing field {name:?}"))
}

pub(crate) fn get_str<'a>(
    obj: &'a Map<String, Value>, name: &str, ctx: &str,
) -> Result<&'a str, String> {
    let v = field(obj, name, ctx)?;
    v.as_str()
        .ok_or_else(|| format!("{ctx}: field {name:?}: expected a string, got {}", kind_of(v)))
}

fn get_bool(obj: &Map<String, Value>, name: &str, ctx: &str) -> Result<bool, String> {
    let v = field(obj, name, ctx)?;
    v.as_bool()
        .ok_or_else(|| format!("{ctx}: field {name:?}: expected a boolean, got {}", kind_of(v)))
}

fn get_u64(obj: &Map<String, Value>, name: &str, ctx: &str) -> Result<u64, String> {
    let v = field(obj, name, ctx)?;
    v.as_u64().ok_or_else(|| {
        format!("{ctx}: field {name:?}: expected an unsigned integer, got {}", kind_of(v))
    })
}

fn get_i64(obj: &Map<String, Value>, name: &str, ctx: &str) -> Result<i64, String> {
    let v = field(obj, name, ctx)?;
    v.as_i64()
        .ok_or_else(|| format!("{ctx}: field {name:?}: expected an integer, got {}", kind_of(v)))
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn greeting_parses_and_rejects_bad_shapes() {
        let g = Greeting::parse(&json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob"]}})).unwrap();
        assert_eq!(g.version.major, 10);
        assert_eq!(g.version.to_string(), "10.0.2 (Debian 1:10.0.2)");
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
        for bad in [
            json!([]),
            json!({"qmp": {}}),
            json!({"QMP": {"capabilities": []}}),
            json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0}, "package": ""}, "capabilities": []}}),
            json!({"QMP": {"version": {"qemu": {"major": "10", "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}}),
            json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}}, "capabilities": []}}),
            json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": ""}}}),
            json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": ""}, "capabilities": [1]}}),
            json!({"QMP": {"version": {"qemu": {"major": -1, "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}}),
        ] {
            assert!(Greeting::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_states_round_trip_and_unknown_is_other() {
        for s in [
            "prelaunch",
            "running",
            "paused",
            "shutdown",
            "internal-error",
            "inmigrate",
            "postmigrate",
            "finish-migrate",
            "suspended",
            "guest-panicked",
            "io-error",
            "restore-vm",
            "save-vm",
            "watchdog",
            "colo",
            "debug",
        ] {
            let st = RunState::from_wire(s);
            assert!(!matches!(st, RunState::Other(_)), "{s}");
            assert_eq!(st.as_str(), s);
        }
        assert_eq!(RunState::from_wire("warp-speed"), RunState::Other("warp-speed".into()));
        assert_eq!(RunState::InternalError.to_string(), "internal-error");
    }

    #[test]
    fn migration_info_parses_optional_fields() {
        let empty = MigrationInfo::parse(&json!({})).unwrap();
        assert_eq!(empty.status, MigrationStatus::None);
        assert!(empty.status.is_terminal());
        assert_eq!(empty.ram, None);
        let full = MigrationInfo::parse(&json!({
            "status": "completed", "total-time": 440,
            "ram": {"transferred": 10, "remaining": 0, "total": 134217728, "duplicate": 5}
        }))
        .unwrap();
        assert_eq!(full.status, MigrationStatus::Completed);
        assert_eq!(full.total_time_ms, Some(440));
        assert_eq!(full.ram.unwrap().total, 134217728);
        let failed =
            MigrationInfo::parse(&json!({"status": "failed", "error-desc": "disk full"})).unwrap();
        assert_eq!(failed.error_desc.as_deref(), Some("disk full"));
        assert_eq!(
            MigrationInfo::parse(&json!({"status": "postcopy-exotic"})).unwrap().status,
            MigrationStatus::Other("postcopy-exotic".into())
        );
        assert!(MigrationInfo::parse(&json!({"status": 3})).is_err());
        assert!(MigrationInfo::parse(&json!({"ram": {"transferred": 1}})).is_err());
        assert!(MigrationInfo::parse(&json!({"error-desc": false})).is_err());
        assert!(MigrationInfo::parse(&json!("completed")).is_err());
    }

    #[test]
    fn events_parse_known_and_other() {
        let ts = json!({"seconds": 1, "microseconds": 2});
        let parse = |v: Value| QmpEvent::parse(v.as_object().unwrap());
        let e = parse(json!({"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}, "timestamp": ts})).unwrap();
        assert_eq!(e.kind, Event::Shutdown { guest: false, reason: "host-qmp-quit".into() });
        assert_eq!(e.timestamp, Timestamp { seconds: 1, microseconds: 2 });
        assert_eq!(parse(json!({"event": "STOP", "timestamp": ts})).unwrap().kind, Event::Stop);
        assert_eq!(parse(json!({"event": "STOP", "timestamp": ts})).unwrap().data, Value::Null);
        assert_eq!(parse(json!({"event": "RESUME", "timestamp": ts})).unwrap().kind, Event::Resume);
        assert_eq!(
            parse(json!({"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}, "timestamp": ts})).unwrap().kind,
            Event::Reset
        );
        assert_eq!(
            parse(json!({"event": "POWERDOWN", "timestamp": ts})).unwrap().kind,
            Event::Powerdown
        );
        assert_eq!(
            parse(json!({"event": "GUEST_PANICKED", "data": {"action": "pause"}, "timestamp": ts}))
                .unwrap()
                .kind,
            Event::GuestPanicked
        );
        assert_eq!(
            parse(json!({"event": "MIGRATION", "data": {"status": "completed"}, "timestamp": ts}))
                .unwrap()
                .kind,
            Event::MigrationStatus(MigrationStatus::Completed)
        );
        assert_eq!(
            parse(
                json!({"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/x"}, "timestamp": ts})
            )
            .unwrap()
            .kind,
            Event::Other { name: "NIC_RX_FILTER_CHANGED".into(), data: json!({"path": "/x"}) }
        );
        for bad in [
            json!({"event": 5, "timestamp": ts}),
            json!({"event": "STOP"}),
            json!({"event": "STOP", "timestamp": {"seconds": 1}}),
            json!({"event": "STOP", "timestamp": {"seconds": 1.5, "microseconds": 0}}),
            json!({"event": "SHUTDOWN", "timestamp": ts}),
            json!({"event": "SHUTDOWN", "data": {"guest": "no", "reason": "x"}, "timestamp": ts}),
            json!({"event": "MIGRATION", "data": {}, "timestamp": ts}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
