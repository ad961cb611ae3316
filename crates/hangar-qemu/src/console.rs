//! The guest console log and the lines `hangar-init` prints on it.
//!
//! Protocol (one line each, a fixed prefix, a space, JSON):
//! `HANGAR_READY {"kernel":…,"uptime_ms":…,"nics":[{"name","mac","addresses"}…]}` once the
//! guest is up (with `network_error` when its network could not be configured);
//! `HANGAR_EXIT {"code":N}` (or `{"code":null,"signal":N}`) after a `hangar run` command;
//! `HANGAR_POWEROFF {"reason":…}` when it powers off on request;
//! `HANGAR_POWEROFF_IGNORED {…}` when told to ignore power-off requests;
//! `HANGAR_ERROR {"message":…}` on a fatal init error.
//! Every line after the ready line is preceded by an empty line, so a marker always starts a
//! line even when the command's output did not end with a newline; readers drop that empty line.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// A recognised marker line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// The guest is up.
    Ready {
        /// Its kernel release.
        kernel: String,
        /// Its interfaces' IPv4 addresses, `eth0 10.0.2.15/24` (interface, space, address).
        addresses: Vec<String>,
        /// Why its init could not configure the network it was given, if it could not.
        network_error: Option<String>,
    },
    /// The `hangar run` command finished.
    Exit {
        /// Its exit code, if it exited normally.
        code: Option<i32>,
        /// The signal that killed it, if any.
        signal: Option<i32>,
    },
    /// The guest is powering off on request.
    PowerOff,
    /// The guest was asked to power off and is configured to ignore it.
    PowerOffIgnored,
    /// `hangar-init` hit a fatal error (it powers off next).
    Error {
        /// What it said.
        message: String,
    },
}

/// Parses one console line.
pub fn parse_marker(line: &str) -> Option<Marker> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (prefix, json) = line.split_once(' ')?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    match prefix {
        "HANGAR_READY" => {
            let nics = value.get("nics").and_then(|n| n.as_array()).cloned().unwrap_or_default();
            let addresses = nics
                .iter()
                .flat_map(|nic| {
                    let name = nic.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let list = nic.get("addresses").and_then(|a| a.as_array());
                    list.into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str())
                        .map(move |a| format!("{name} {a}"))
                })
                .collect();
            Some(Marker::Ready {
                kernel: value.get("kernel")?.as_str()?.to_string(),
                addresses,
                network_error: value
                    .get("network_error")
                    .and_then(|e| e.as_str())
                    .map(str::to_string),
            })
        }
        "HANGAR_EXIT" => Some(Marker::Exit {
            code: value.get("code").and_then(|c| c.as_i64()).map(|c| c as i32),
            signal: value.get("signal").and_then(|c| c.as_i64()).map(|c| c as i32),
        }),
        "HANGAR_POWEROFF" => Some(Marker::PowerOff),
        "HANGAR_POWEROFF_IGNORED" => Some(Marker::PowerOffIgnored),
        "HANGAR_ERROR" => Some(Marker::Error {
            message: value.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_string(),
        }),
        _ => None,
    }
}

/// Whether a line is one of the protocol's marker lines (hidden from `hangar run` output).
pub fn is_marker(line: &str) -> bool {
    parse_marker(line).is_some()
}

/// Reads a growing log file from an offset, line by line.
#[derive(Debug)]
pub struct LogTail {
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    /// Starts at `offset` (0 for the beginning, or the file's length to see only new output).
    pub fn from(offset: u64) -> Self {
        Self { offset, partial: Vec::new() }
    }

    /// Current byte offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Complete new lines since the last call (a missing file yields none).
    pub fn read_lines(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(path) else {
            return Vec::new();
        };
        // A file shorter than what was read is a new file (truncated or replaced): start over.
        if f.metadata().map(|m| m.len() < self.offset).unwrap_or(false) {
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string());
        }
        lines
    }
}

/// The last `n` lines of a file (for failure reasons), reading at most its last
/// [`TAIL_BYTES`] (a console log may be megabytes long).
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(TAIL_BYTES);
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(TAIL_BYTES).read_to_end(&mut text);
        }
        if from > 0 {
            // The first line is probably cut: drop it.
            let cut = text.iter().position(|b| *b == b'\n').map_or(text.len(), |i| i + 1);
            text.drain(..cut);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

/// How much of a file's end [`last_lines`] reads.
pub const TAIL_BYTES: u64 = 64 * 1024;

/// The size at which a console log is rotated: it is copied to `<log>.1` (replacing the one
/// before) and emptied, so a VM's console never takes more than twice this on disk (plus what
/// the guest writes between two checks).
pub const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// The rotated half of a console log.
pub fn rotated(log: &Path) -> std::path::PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    name.into()
}

/// Rotates `log` once it is larger than `limit` bytes. QEMU keeps writing the same file (it
/// opened it to append), so emptying it in place is what lets it go on. Returns whether it
/// rotated. Never follows a symlink.
pub fn rotate(log: &Path, limit: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let mut current =
        match std::fs::File::options().read(true).write(true).custom_flags(nofollow).open(log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
    if current.metadata()?.len() <= limit {
        return Ok(false);
    }
    let old = rotated(log);
    let mut tmp = old.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut copy = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(&tmp)?;
    std::io::copy(&mut current, &mut copy)?;
    std::fs::rename(&tmp, &old)?;
    current.set_len(0)?;
    Ok(true)
}

/// File length, 0 if missing.
pub fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The kernel argument that makes `hangar-init` run `argv` and power off:
/// `hangar.run=<base64url, no padding, of the JSON array>`.
pub fn run_argument(argv: &[String]) -> String {
    let json = serde_json::to_vec(argv).expect("strings serialise");
    hangar_plan::kernel_argument("hangar.run", &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_its_limit_is_rotated_in_place_and_its_writer_goes_on() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        // The writer appends, as QEMU's logappend=on does.
        let mut writer = std::fs::File::options().create(true).append(true).open(&log).unwrap();
        writer.write_all(b"first line\nsecond line\n").unwrap();
        assert!(!rotate(&log, 1024).unwrap(), "under the limit: untouched");
        assert!(rotate(&log, 10).unwrap());
        assert_eq!(std::fs::read_to_string(rotated(&log)).unwrap(), "first line\nsecond line\n");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        writer.write_all(b"third line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "third line\n");
        // The next rotation replaces the old half: never more than two.
        writer.write_all(b"fourth line\n").unwrap();
        assert!(rotate(&log, 10).unwrap());
        assert_eq!(std::fs::read_to_string(rotated(&log)).unwrap(), "third line\nfourth line\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "console.log and console.log.1 only");
        // A symlink is not followed (nor rotated).
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        assert!(rotate(&link, 0).is_err());
    }

    #[test]
    fn last_lines_reads_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&log, &text).unwrap();
        assert!(text.len() as u64 > 4 * TAIL_BYTES);
        assert_eq!(last_lines(&log, 2), vec!["line 99998", "line 99999"]);
        // More lines than the tail holds: only whole lines from the tail, none cut.
        let many = last_lines(&log, 1_000_000);
        assert!(many.len() < 100_000);
        assert!(many.iter().all(|l| l.starts_with("line ")));
        let first: usize = many[0]["line ".len()..].parse().unwrap();
        assert_eq!(many.len(), 100_000 - first);
    }

    #[test]
    fn markers() {
        assert_eq!(
            parse_marker("HANGAR_READY {\"kernel\":\"6.1\",\"uptime_ms\":12}\r\n"),
            Some(Marker::Ready { kernel: "6.1".into(), addresses: vec![], network_error: None })
        );
        assert_eq!(
            parse_marker("HANGAR_EXIT {\"code\":7}"),
            Some(Marker::Exit { code: Some(7), signal: None })
        );
        assert_eq!(
            parse_marker("HANGAR_EXIT {\"code\":null,\"signal\":9}"),
            Some(Marker::Exit { code: None, signal: Some(9) })
        );
        assert_eq!(
            parse_marker("HANGAR_POWEROFF {\"reason\":\"power-button\"}"),
            Some(Marker::PowerOff)
        );
        assert_eq!(
            parse_marker("HANGAR_POWEROFF_IGNORED {\"reason\":\"power-button\"}"),
            Some(Marker::PowerOffIgnored)
        );
        assert_eq!(
            parse_marker("HANGAR_ERROR {\"message\":\"boom\"}"),
            Some(Marker::Error { message: "boom".into() })
        );
        assert_eq!(parse_marker("HANGAR_READY not-json"), None);
        assert_eq!(parse_marker("[    0.1] HANGAR_READY {}"), None);
    }

    #[test]
    fn tail_returns_only_complete_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut tail = LogTail::from(0);
        assert!(tail.read_lines(&p).is_empty());
        std::fs::write(&p, "a\nb").unwrap();
        assert_eq!(tail.read_lines(&p), ["a"]);
        std::fs::write(&p, "a\nbc\n").unwrap();
        assert_eq!(tail.read_lines(&p), ["bc"]);
        assert_eq!(last_lines(&p, 1), ["bc"]);
        std::fs::write(&p, "x\n").unwrap();
        assert_eq!(tail.read_lines(&p), ["x"], "a truncated file is read from its start");
    }
}

#[cfg(test)]
mod run_tests {
    #[test]
    fn run_argument_is_base64url_of_json() {
        // ["uname","-r"] → base64url of the JSON text, checked against a known encoding.
        let arg = super::run_argument(&["uname".into(), "-r".into()]);
        assert_eq!(arg, "hangar.run=WyJ1bmFtZSIsIi1yIl0");
        assert!(!arg.contains('=') || arg.matches('=').count() == 1);
    }
}
