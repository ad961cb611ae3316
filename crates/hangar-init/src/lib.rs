//! The pure half of `hangar-init`, the PID 1 of Hangar's built-in guest images.
//!
//! Everything here is host-testable and free of side effects: kernel command-line parsing,
//! base64url, the console protocol lines the host waits for, `/proc/uptime` parsing and
//! input-event decoding. The binary (`src/main.rs`) does the mounting, module loading, process
//! supervision and power-off.
//!
//! # Console protocol
//!
//! `hangar-init` writes single lines of the form `PREFIX {json}` on `/dev/console`:
//!
//! | line | when |
//! |---|---|
//! | `HANGAR_READY {"kernel":"6.1.0-…","uptime_ms":3120,"nics":[{"name":"eth0","mac":"52:54:00:…","addresses":["10.0.2.15/24"]}]}` | once, after mounts, modules and the network (`network_error` says why `hangar.net=` failed) |
//! | `HANGAR_EXIT {"code":0}` / `{"code":null,"signal":9}` / `{"code":127,"error":"…"}` | after the `hangar.run` command ends (or failed to start) |
//! | `HANGAR_POWEROFF {"reason":"power-button"}` | just before a graceful power-off |
//! | `HANGAR_POWEROFF_IGNORED {"reason":"power-button"}` | a power-off request under `hangar.ignore_poweroff=1` |
//! | `HANGAR_ERROR {"message":"…"}` | on any fatal error, just before powering off |
//!
//! Power-off reasons: `power-button` (ACPI button, i.e. QMP `system_powerdown`), and
//! `poweroff` / `halt` / `reboot` (busybox's commands signal PID 1 with SIGUSR2 / SIGUSR1 /
//! SIGTERM; all three power off, the VM runs with `-no-reboot`).
//!
//! Every line after `HANGAR_READY` is written as `\n` + line + `\n`: the leading newline ends
//! any partial line a child left (a shell prompt, `printf` output), so a protocol line always
//! starts a line. Hosts should ignore the empty line this can produce just before a marker.
//! Kernel messages are not suppressed; boot with `quiet` to keep them off the console.
//!
//! The host side builds `hangar.run=` values with [`encode_run_argv`] and recognises lines
//! with [`parse_line`].

use serde::{Deserialize, Serialize};

pub mod agent;
pub mod net;
pub mod reap;

/// Prefix of the readiness line.
pub const READY: &str = "HANGAR_READY";
/// Prefix of the line reporting how the `hangar.run` command ended.
pub const EXIT: &str = "HANGAR_EXIT";
/// Prefix of the line printed just before a graceful power-off.
pub const POWEROFF: &str = "HANGAR_POWEROFF";
/// Prefix of the line printed when a power-off request is ignored (`hangar.ignore_poweroff=1`).
pub const POWEROFF_IGNORED: &str = "HANGAR_POWEROFF_IGNORED";
/// Prefix of the line printed on a fatal error, just before powering off.
pub const ERROR: &str = "HANGAR_ERROR";

/// The `PATH` commands are resolved against.
pub const PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// File in the image listing the kernel modules to load, one path per line, in load order,
/// relative to `/lib/modules/<release>/`. Blank lines and `#` comments are ignored.
pub const MODULE_LIST: &str = "/etc/hangar/modules";

/// Linux input event type for keys (`EV_KEY`).
pub const EV_KEY: u16 = 1;
/// Linux key code of the power button (`KEY_POWER`).
pub const KEY_POWER: u16 = 116;
/// Size of `struct input_event` on 64-bit Linux (two 8-byte time fields, u16, u16, i32).
pub const INPUT_EVENT_SIZE: usize = 24;

/// What the kernel command line asks of `hangar-init`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootConfig {
    /// `hangar.run=`: the argv to run instead of an interactive shell.
    pub run: Option<Vec<String>>,
    /// `hangar.ignore_poweroff=1`: ignore power-off requests.
    pub ignore_poweroff: bool,
    /// `hangar.agent=0`: do not serve the guest agent (the port stays silent: for tests of a
    /// host facing an agent that never answers, and for guests that want none).
    pub no_agent: bool,
    /// `hangar.net=`: the network to configure at boot (unpadded base64url of the
    /// [`GuestNetwork`](hangar_agent_proto::GuestNetwork) JSON the agent's `network` request
    /// takes).
    pub network: Option<hangar_agent_proto::GuestNetwork>,
}

/// A malformed Hangar parameter on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    /// `hangar.run=` is not valid unpadded base64url.
    Base64(Base64Error),
    /// `hangar.run=` decodes to something that is not a JSON array of strings.
    Json(String),
    /// `hangar.run=` decodes to an empty array.
    EmptyArgv,
    /// `hangar.net=` is not base64url of a network configuration.
    Network(String),
    /// `hangar.ignore_poweroff=` or `hangar.agent=` has a value other than `0` or `1`.
    BadFlag {
        /// The parameter name.
        name: String,
        /// The value found.
        value: String,
    },
}

impl std::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CmdlineError::Base64(e) => write!(f, "hangar.run: {e}"),
            CmdlineError::Json(e) => {
                write!(f, "hangar.run: not a JSON array of strings: {e}")
            }
            CmdlineError::EmptyArgv => write!(f, "hangar.run: the argv is empty"),
            CmdlineError::Network(e) => write!(f, "hangar.net: {e}"),
            CmdlineError::BadFlag { name, value } => {
                write!(f, "{name}: expected 0 or 1, found {value:?}")
            }
        }
    }
}

impl std::error::Error for CmdlineError {}

/// Parses the Hangar parameters out of `/proc/cmdline`.
///
/// Parameters are separated by whitespace; a value may be wrapped in double quotes. Unknown
/// parameters are ignored; when a parameter repeats, the last one wins (as for the kernel).
pub fn parse_cmdline(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut run_raw: Option<&str> = None;
    let mut ignore_raw: Option<&str> = None;
    let mut agent_raw: Option<&str> = None;
    let mut net_raw: Option<&str> = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        match key {
            "hangar.run" => run_raw = Some(value),
            "hangar.ignore_poweroff" => ignore_raw = Some(value),
            "hangar.agent" => agent_raw = Some(value),
            "hangar.net" => net_raw = Some(value),
            _ => {}
        }
    }
    let flag = |name: &str, raw: Option<&str>, default: bool| match raw {
        None => Ok(default),
        Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(CmdlineError::BadFlag { name: name.into(), value: other.into() }),
    };
    let ignore_poweroff = flag("hangar.ignore_poweroff", ignore_raw, false)?;
    let no_agent = !flag("hangar.agent", agent_raw, true)?;
    let run = match run_raw {
        None => None,
        Some(raw) => Some(decode_run_argv(raw)?),
    };
    let network = match net_raw {
        None => None,
        Some(raw) => {
            let bytes = base64url_decode(raw).map_err(|e| CmdlineError::Network(e.to_string()))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| CmdlineError::Network(e.to_string()))?)
        }
    };
    Ok(BootConfig { run, ignore_poweroff, no_agent, network })
}

/// Decodes a `hangar.run=` value: unpadded base64url of a JSON array of strings.
pub fn decode_run_argv(raw: &str) -> Result<Vec<String>, CmdlineError> {
    let bytes = base64url_decode(raw).map_err(CmdlineError::Base64)?;
    let argv: Vec<String> =
        serde_json::from_slice(&bytes).map_err(|e| CmdlineError::Json(e.to_string()))?;
    if argv.is_empty() {
        return Err(CmdlineError::EmptyArgv);
    }
    Ok(argv)
}

/// Encodes an argv as a `hangar.run=` value (the inverse of [`decode_run_argv`]).
pub fn encode_run_argv<S: AsRef<str>>(argv: &[S]) -> String {
    let list: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    // Serialising a list of strings cannot fail.
    let json = serde_json::to_vec(&list).unwrap_or_default();
    base64url_encode(&json)
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Invalid base64url input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base64Error {
    /// A byte outside the base64url alphabet (padding `=` included) at this offset.
    InvalidByte {
        /// Offset of the byte in the input.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// The length leaves a single dangling character (`len % 4 == 1`).
    InvalidLength(usize),
    /// The last character carries non-zero bits beyond the data (non-canonical encoding).
    TrailingBits,
}

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Base64Error::InvalidByte { offset, byte } => write!(
                f,
                "invalid base64url byte {:?} at offset {offset} (unpadded base64url expected)",
                char::from(*byte)
            ),
            Base64Error::InvalidLength(n) => write!(f, "invalid base64url length {n}"),
            Base64Error::TrailingBits => write!(f, "non-canonical base64url (trailing bits set)"),
        }
    }
}

impl std::error::Error for Base64Error {}

/// Encodes bytes as base64url without padding (RFC 4648 §5).
pub fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(B64URL[idx as usize]));
        }
    }
    out
}

/// Decodes unpadded base64url (RFC 4648 §5). Padding, whitespace and the standard alphabet's
/// `+`/`/` are rejected; so are non-canonical trailing bits.
pub fn base64url_decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let input = text.as_bytes();
    if input.len() % 4 == 1 {
        return Err(Base64Error::InvalidLength(input.len()));
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for (ci, chunk) in input.chunks(4).enumerate() {
        let mut n: u32 = 0;
        for (i, &byte) in chunk.iter().enumerate() {
            let v = match byte {
                b'A'..=b'Z' => byte - b'A',
                b'a'..=b'z' => byte - b'a' + 26,
                b'0'..=b'9' => byte - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return Err(Base64Error::InvalidByte { offset: ci * 4 + i, byte }),
            };
            n |= u32::from(v) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = chunk.len() - 1; // 4 chars -> 3 bytes, 3 -> 2, 2 -> 1
        if bytes[keep..].iter().any(|&b| b != 0) && chunk.len() < 4 {
            return Err(Base64Error::TrailingBits);
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Ok(out)
}

/// Payload of the readiness line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The guest kernel release (`uname -r`).
    pub kernel: String,
    /// Milliseconds since the guest kernel booted (from `/proc/uptime`).
    pub uptime_ms: u64,
    /// Every interface but loopback with its IPv4 addresses, as the kernel has them.
    #[serde(default)]
    pub nics: Vec<ReadyNic>,
    /// Why `hangar.net=` could not be applied, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_error: Option<String>,
}

/// One interface in the readiness line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyNic {
    /// Kernel name (`eth0`).
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// IPv4 `ADDRESS/PREFIX`es.
    pub addresses: Vec<String>,
}

/// How the `hangar.run` command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Payload of the `HANGAR_EXIT` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code; `null` when killed by a signal; 127 when the command could not start.
    pub code: Option<i32>,
    /// The terminating signal, when killed by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why the command could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn line<T: Serialize>(prefix: &str, payload: &T) -> String {
    // The payloads are plain structs of strings and integers: serialisation cannot fail.
    let json = serde_json::to_string(payload).unwrap_or_else(|_| "{}".to_owned());
    format!("{prefix} {json}")
}

/// `HANGAR_READY {"kernel":…,"uptime_ms":…,"nics":[…]}`.
pub fn ready_line(ready: &Ready) -> String {
    line(READY, ready)
}

/// `HANGAR_EXIT {"code":n}` or `HANGAR_EXIT {"code":null,"signal":n}`.
pub fn exit_line(outcome: ExitOutcome) -> String {
    let payload = match outcome {
        ExitOutcome::Code(code) => Exit { code: Some(code), signal: None, error: None },
        ExitOutcome::Signal(sig) => Exit { code: None, signal: Some(sig), error: None },
    };
    line(EXIT, &payload)
}

/// `HANGAR_EXIT {"code":127,"error":…}`: the command could not be started.
pub fn spawn_error_line(error: &str) -> String {
    line(EXIT, &Exit { code: Some(127), signal: None, error: Some(error.to_owned()) })
}

#[derive(Serialize)]
struct Reason<'a> {
    reason: &'a str,
}

/// `HANGAR_POWEROFF {"reason":…}`.
pub fn poweroff_line(reason: &str) -> String {
    line(POWEROFF, &Reason { reason })
}

/// `HANGAR_POWEROFF_IGNORED {"reason":…}`.
pub fn poweroff_ignored_line(reason: &str) -> String {
    line(POWEROFF_IGNORED, &Reason { reason })
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// `HANGAR_ERROR {"message":…}`.
pub fn error_line(message: &str) -> String {
    line(ERROR, &Message { message })
}

/// Splits a console line into a protocol prefix and its JSON payload, if it is one.
///
/// Leading and trailing whitespace (the serial console's `\r`) is ignored. Returns `None` for
/// anything that is not `KNOWN_PREFIX {…}` with valid JSON.
pub fn parse_line(text: &str) -> Option<(&'static str, serde_json::Value)> {
    let text = text.trim();
    let (prefix, rest) = text.split_once(' ')?;
    let prefix =
        [READY, EXIT, POWEROFF, POWEROFF_IGNORED, ERROR].into_iter().find(|p| *p == prefix)?;
    let value: serde_json::Value = serde_json::from_str(rest).ok()?;
    value.is_object().then_some((prefix, value))
}

/// Parses the first field of `/proc/uptime` (seconds, with a fractional part) into
/// milliseconds, exactly (no floating point).
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let first = text.split_ascii_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let mut ms: u64 = 0;
    for i in 0..3 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        ms = ms * 10 + digit;
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

/// One decoded `struct input_event` (the timestamp is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_KEY`, `EV_SYN`, …).
    pub kind: u16,
    /// Event code (`KEY_POWER`, …).
    pub code: u16,
    /// Value: for keys 1 = press, 0 = release, 2 = autorepeat.
    pub value: i32,
}

impl InputEvent {
    /// Decodes a 64-bit Linux `struct input_event` (native little-endian on x86_64).
    pub fn decode(raw: &[u8; INPUT_EVENT_SIZE]) -> InputEvent {
        InputEvent {
            kind: u16::from_le_bytes([raw[16], raw[17]]),
            code: u16::from_le_bytes([raw[18], raw[19]]),
            value: i32::from_le_bytes([raw[20], raw[21], raw[22], raw[23]]),
        }
    }

    /// True for a press of the power button.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Parses the module list file ([`MODULE_LIST`]): one relative path per line, `#` comments
/// and blank lines ignored.
pub fn parse_module_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The kernel's module name for a `.ko` path: file stem with `-` read as `_`
/// (`kernel/drivers/char/hw_random/virtio-rng.ko` → `virtio_rng`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.strip_suffix(".ko").unwrap_or(file);
    stem.replace('-', "_")
}

/// Locks `m`, also after a panic elsewhere poisoned it (what it guards stays usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_all_lengths() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..40 {
            let enc = base64url_encode(&data[..n]);
            assert!(!enc.contains('='));
            assert_eq!(base64url_decode(&enc).unwrap(), &data[..n], "n={n}");
        }
        let enc = base64url_encode(&data);
        assert_eq!(base64url_decode(&enc).unwrap(), data);
    }

    #[test]
    fn base64url_known_vectors() {
        // RFC 4648 test vectors, unpadded.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), enc);
            assert_eq!(base64url_decode(enc).unwrap(), plain.as_bytes());
        }
        // The URL-safe alphabet: 0xfb 0xff -> "-_8".
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn base64url_rejects_bad_input() {
        assert_eq!(
            base64url_decode("Zg=="),
            Err(Base64Error::InvalidByte { offset: 2, byte: b'=' })
        );
        assert!(matches!(base64url_decode("+/8"), Err(Base64Error::InvalidByte { offset: 0, .. })));
        assert_eq!(base64url_decode("Zm9vY"), Err(Base64Error::InvalidLength(5)));
        assert_eq!(base64url_decode("Zh"), Err(Base64Error::TrailingBits));
        assert!(base64url_decode("Zm 9v").is_err());
    }

    #[test]
    fn cmdline_without_hangar_params_is_interactive() {
        let cfg = parse_cmdline("console=ttyS0 quiet panic=-1 rdinit=/init\n").unwrap();
        assert_eq!(cfg, BootConfig::default());
    }

    #[test]
    fn cmdline_run_and_ignore_poweroff() {
        let run = encode_run_argv(&["sh", "-c", "echo 'hi there' && exit 7"]);
        let cmdline = format!("console=ttyS0 hangar.run={run} hangar.ignore_poweroff=1 quiet\n");
        let cfg = parse_cmdline(&cmdline).unwrap();
        assert_eq!(
            cfg.run.as_deref(),
            Some(&["sh".to_owned(), "-c".into(), "echo 'hi there' && exit 7".into()][..])
        );
        assert!(cfg.ignore_poweroff);
        // Quoted values and last-one-wins.
        let cfg = parse_cmdline(&format!(
            "hangar.ignore_poweroff=1 hangar.ignore_poweroff=0 hangar.run=\"{run}\""
        ))
        .unwrap();
        assert!(!cfg.ignore_poweroff);
        assert!(cfg.run.is_some());
    }

    #[test]
    fn cmdline_errors_are_reported() {
        assert!(matches!(parse_cmdline("hangar.run=Zg=="), Err(CmdlineError::Base64(_))));
        let not_list = base64url_encode(br#"{"a":1}"#);
        assert!(matches!(
            parse_cmdline(&format!("hangar.run={not_list}")),
            Err(CmdlineError::Json(_))
        ));
        let numbers = base64url_encode(b"[1,2]");
        assert!(matches!(
            parse_cmdline(&format!("hangar.run={numbers}")),
            Err(CmdlineError::Json(_))
        ));
        assert_eq!(
            parse_cmdline(&format!("hangar.run={}", base64url_encode(b"[]"))),
            Err(CmdlineError::EmptyArgv)
        );
        assert!(matches!(parse_cmdline("hangar.net=e30"), Ok(BootConfig { network: Some(_), .. })));
        let not_network = base64url_encode(br#"{"nics":5}"#);
        assert!(matches!(
            parse_cmdline(&format!("hangar.net={not_network}")),
            Err(CmdlineError::Network(_))
        ));
        let err = parse_cmdline("hangar.ignore_poweroff=yes").unwrap_err();
        assert_eq!(err.to_string(), "hangar.ignore_poweroff: expected 0 or 1, found \"yes\"");
    }

    #[test]
    fn line_formats_are_exact() {
        let nic = ReadyNic {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            addresses: vec!["10.0.2.15/24".into()],
        };
        let ready = Ready {
            kernel: "6.1.0-56-cloud-amd64".into(),
            uptime_ms: 3120,
            nics: vec![nic],
            network_error: None,
        };
        assert_eq!(
            ready_line(&ready),
            r#"HANGAR_READY {"kernel":"6.1.0-56-cloud-amd64","uptime_ms":3120,"nics":[{"name":"eth0","mac":"52:54:00:12:34:56","addresses":["10.0.2.15/24"]}]}"#
        );
        assert_eq!(exit_line(ExitOutcome::Code(0)), r#"HANGAR_EXIT {"code":0}"#);
        assert_eq!(exit_line(ExitOutcome::Signal(9)), r#"HANGAR_EXIT {"code":null,"signal":9}"#);
        assert_eq!(
            spawn_error_line("No such file or directory (os error 2)"),
            r#"HANGAR_EXIT {"code":127,"error":"No such file or directory (os error 2)"}"#
        );
        assert_eq!(poweroff_line("power-button"), r#"HANGAR_POWEROFF {"reason":"power-button"}"#);
        assert_eq!(
            poweroff_ignored_line("power-button"),
            r#"HANGAR_POWEROFF_IGNORED {"reason":"power-button"}"#
        );
        assert_eq!(
            error_line("bad \"quote\"\nnewline"),
            r#"HANGAR_ERROR {"message":"bad \"quote\"\nnewline"}"#
        );
        // Every line is exactly one line.
        assert!(!error_line("a\nb\r\nc").contains('\n'));
    }

    #[test]
    fn parse_line_recognises_protocol_lines() {
        let (p, v) = parse_line("HANGAR_EXIT {\"code\":7}\r").unwrap();
        assert_eq!(p, EXIT);
        assert_eq!(v["code"], 7);
        let (p, _) = parse_line(&poweroff_ignored_line("power-button")).unwrap();
        assert_eq!(p, POWEROFF_IGNORED);
        assert!(parse_line("HANGAR_EXITS {}").is_none());
        assert!(parse_line("HANGAR_EXIT not-json").is_none());
        assert!(parse_line("HANGAR_EXIT [1]").is_none());
        assert!(parse_line("6.1.0-56-cloud-amd64").is_none());
    }

    #[test]
    fn uptime_parses_exactly() {
        assert_eq!(parse_uptime_ms("3.45 1.23\n"), Some(3450));
        assert_eq!(parse_uptime_ms("12.3 0.00"), Some(12300));
        assert_eq!(parse_uptime_ms("0.999"), Some(999));
        assert_eq!(parse_uptime_ms("7.12345 0"), Some(7123));
        assert_eq!(parse_uptime_ms("42"), Some(42000));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("-1.0"), None);
        assert_eq!(parse_uptime_ms("1.x"), None);
    }

    #[test]
    fn input_events_decode() {
        let mut raw = [0u8; INPUT_EVENT_SIZE];
        raw[16..18].copy_from_slice(&EV_KEY.to_le_bytes());
        raw[18..20].copy_from_slice(&KEY_POWER.to_le_bytes());
        raw[20..24].copy_from_slice(&1i32.to_le_bytes());
        let ev = InputEvent::decode(&raw);
        assert_eq!(ev, InputEvent { kind: 1, code: 116, value: 1 });
        assert!(ev.is_power_press());
        raw[20..24].copy_from_slice(&0i32.to_le_bytes());
        assert!(!InputEvent::decode(&raw).is_power_press(), "release");
        raw[16..18].copy_from_slice(&0u16.to_le_bytes());
        assert!(!InputEvent::decode(&raw).is_power_press(), "EV_SYN");
    }

    #[test]
    fn module_list_and_names() {
        let list = parse_module_list(
            "# load order\nkernel/drivers/virtio/virtio_ring.ko\n\n  kernel/drivers/char/hw_random/virtio-rng.ko  # rng\n",
        );
        assert_eq!(
            list,
            vec![
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko"
            ]
        );
        assert_eq!(module_name(&list[0]), "virtio_ring");
        assert_eq!(module_name(&list[1]), "virtio_rng");
    }
}
