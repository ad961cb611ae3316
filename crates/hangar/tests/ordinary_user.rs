//! Hangar for an ordinary user: a throwaway user made for this test runs `hangar run`, `up`,
//! `ps`, `stop` and `rm` with no root anywhere: the image comes from the system-wide image
//! directory `scripts/setup` fills, the state from the user's own home, and each QEMU runs as
//! that user. Needs root (to make the user) and the real engine; otherwise it prints
//! `SKIPPED …` with the reason and checks nothing.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hangar_plan::probe::SYSTEM_IMAGE_DIR;

/// A user that exists for one test: removed (with its home and any process left) on drop.
struct ThrowawayUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl ThrowawayUser {
    fn create() -> ThrowawayUser {
        let name = format!("hgu{}", std::process::id());
        // Creating a user has no library here; useradd is the system's own tool for it.
        let made = Command::new("useradd")
            .args(["--create-home", "--user-group", "--shell", "/bin/sh", &name])
            .output()
            .expect("run useradd");
        assert!(made.status.success(), "useradd: {}", String::from_utf8_lossy(&made.stderr));
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let entry: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f[0] == name)
            .expect("the new user is in /etc/passwd");
        ThrowawayUser {
            uid: entry[2].parse().unwrap(),
            gid: entry[3].parse().unwrap(),
            home: PathBuf::from(entry[5]),
            name,
        }
    }

    /// Runs `hangar args` as this user, in its home, with the environment a login would give.
    fn hangar(&self, binary: &Path, args: &[&str]) -> Output {
        Command::new(binary)
            .args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir(&self.home)
            // std drops root's supplementary groups when it changes the uid.
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .expect("run hangar as the user")
    }

    /// Pids of this user's live processes (not zombies: an orphan's exit status waits for an
    /// init that may not reap it, as in some containers).
    fn processes(&self) -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}"))
                    .map(|m| m.uid() == self.uid)
                    .unwrap_or(false)
            })
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .collect()
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        for pid in self.processes() {
            hangar_testkit::kill9(pid);
        }
        let _ = Command::new("userdel").args(["--remove", &self.name]).output();
    }
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A `/proc/<pid>/status` field.
fn status_field(pid: u64, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn an_ordinary_user_runs_vms_without_root() {
    let test = "an_ordinary_user_runs_vms_without_root";
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED {test}: only root can make the throwaway user this test runs as");
        return;
    }
    if hangar_testkit::skip(test) {
        return;
    }
    let shared = Path::new(SYSTEM_IMAGE_DIR).join("minimal");
    let Ok(manifest) = std::fs::read(shared.join("manifest.json")) else {
        eprintln!(
            "SKIPPED {test}: no image in {} (scripts/setup builds it there)",
            shared.display()
        );
        return;
    };
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let release = manifest["kernel_release"].as_str().expect("the manifest names its kernel");

    let user = ThrowawayUser::create();
    // The test's own binary, copied where the user can run it (the build tree may be private).
    let hangar = user.home.join("hangar");
    std::fs::copy(env!("CARGO_BIN_EXE_hangar"), &hangar).unwrap();
    let spec = user.home.join("hello.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(root.join("examples/hello.toml"), &spec).unwrap();
    for file in [&hangar, &spec] {
        std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid)).unwrap();
    }

    // The doctor finds nothing to fix (bridges and cgroups are root's, and not failures), and
    // the image is the system-wide one.
    let doctor = ok(&user.hangar(&hangar, &["doctor"]), "hangar doctor");
    assert!(doctor.contains(&format!("guest image minimal: {}", shared.display())), "{doctor}");
    let images = ok(&user.hangar(&hangar, &["images", "--output", "json"]), "hangar images");
    let images: serde_json::Value = serde_json::from_str(&images).unwrap();
    assert_eq!(images[0]["name"], "minimal", "{images}");
    assert_eq!(images[0]["dir"], shared.display().to_string(), "{images}");

    // A throwaway guest prints the image's kernel release.
    let printed = ok(&user.hangar(&hangar, &["run", "--rm", "--", "uname", "-r"]), "hangar run");
    assert_eq!(printed.trim(), release, "the guest's `uname -r`");

    ok(&user.hangar(&hangar, &["up", "hello.toml"]), "hangar up");
    let ps = ok(&user.hangar(&hangar, &["ps", "--output", "json"]), "hangar ps");
    let vms: serde_json::Value = serde_json::from_str(&ps).unwrap();
    let hello = vms
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "hello"))
        .unwrap_or_else(|| panic!("hello is not listed: {ps}"));
    assert_eq!(hello["state"], "running", "{hello}");
    // Its QEMU runs as the user, with none of root's groups.
    let pid = hello["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {hello}"));
    let uids = status_field(pid, "Uid");
    assert!(uids.split_whitespace().all(|u| u == user.uid.to_string()), "QEMU's uids: {uids}");
    assert_eq!(status_field(pid, "Groups"), "", "QEMU's supplementary groups");
    // The user's state is the user's own.
    let state = user.home.join(".local/share/hangar");
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), user.uid, "{}", state.display());

    ok(&user.hangar(&hangar, &["stop", "hello"]), "hangar stop");
    ok(&user.hangar(&hangar, &["rm", "hello"]), "hangar rm");
    let ps = ok(&user.hangar(&hangar, &["ps", "--all", "--output", "json"]), "hangar ps --all");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&ps).unwrap(), serde_json::json!([]));
    let left: Vec<String> = user
        .processes()
        .iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect();
    assert!(left.is_empty(), "the user's processes outlive its VMs: {left:?}");
}
