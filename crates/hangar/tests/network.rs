//! Bridged networks end to end with real guests, inside network namespaces the test creates
//! (the machine's own namespace is never touched; every packet stays between the test's
//! guests and its namespace). Without QEMU, the built image or the right to create a
//! namespace, each test prints `SKIPPED …` with the reason and checks nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hangar_netlink::route::Rtnl;
use hangar_testkit::netns::Netns;

/// A private `HANGAR_HOME` sharing the built image; removes its VMs when dropped.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Result<Home, String> {
        if hangar_plan::probe::find_in_path("qemu-system-x86_64").is_none() {
            return Err("qemu-system-x86_64 not found (run scripts/setup)".into());
        }
        let images = std::env::var_os("HANGAR_HOME")
            .map(|h| PathBuf::from(h).join("images"))
            .unwrap_or_else(|| PathBuf::from("/var/lib/hangar/images"));
        if !images.join("minimal/vmlinuz").exists() {
            return Err(format!("no built image at {} (run scripts/setup)", images.display()));
        }
        let dir = tempfile::Builder::new().prefix("hgn-").tempdir_in("/tmp").unwrap();
        std::os::unix::fs::symlink(&images, dir.path().join("images")).unwrap();
        Ok(Home(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn hangar(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_HOME", self.path())
            .env("HANGAR_DAEMON", "never")
            .output()
            .unwrap()
    }

    /// `hangar ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.hangar(args);
        assert!(out.status.success(), "hangar {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// A 128 MiB VM with one bridge NIC on `network`, up.
    fn up_bridged(&self, name: &str, network: &str) {
        let spec = self.path().join(format!("{name}.toml"));
        let text = format!(
            "schema_version = 1\nname = \"{name}\"\n[machine]\nmemory_mib = 128\n\
             [[nic]]\nname = \"net0\"\nmode = \"bridge\"\nnetwork = \"{network}\"\n"
        );
        std::fs::write(&spec, text).unwrap();
        self.ok(&["up", spec.to_str().unwrap()]);
    }

    fn exec(&self, vm: &str, script: &str) -> Output {
        self.hangar(&["exec", vm, "--", "sh", "-c", script])
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Ok(serde_json::Value::Array(vms)) =
            serde_json::from_slice(&self.hangar(&["ps", "--all", "--output", "json"]).stdout)
        {
            for vm in vms {
                if let Some(name) = vm["name"].as_str() {
                    let _ = self.hangar(&["rm", "--force", name]);
                }
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn link_names() -> Vec<String> {
    let mut names: Vec<String> =
        Rtnl::open().unwrap().links().unwrap().into_iter().map(|l| l.name).collect();
    names.sort();
    names
}

macro_rules! or_skip {
    ($test:expr, $what:expr) => {
        match $what {
            Ok(v) => v,
            Err(reason) => {
                let _ = writeln!(std::io::stderr(), "SKIPPED {}: {reason}", $test);
                return;
            }
        }
    };
}

#[test]
fn two_vms_on_one_network_reach_each_other_and_rm_leaves_nothing() {
    let test = "two_vms_on_one_network_reach_each_other_and_rm_leaves_nothing";
    let ns = or_skip!(test, Netns::new());
    let home = or_skip!(test, Home::new());
    let root_links = link_names();
    ns.run(move || {
        let out = home.ok(&["network", "create", "lab", "--subnet", "10.77.0.0/24"]);
        assert!(out.contains("gateway 10.77.0.1"), "{out}");
        let bridge = hangar_plan::bridge_name("lab");
        assert!(link_names().contains(&bridge), "the bridge exists: {:?}", link_names());
        // Refusals are coded and change nothing.
        let out = home.hangar(&["network", "create", "lab2", "--subnet", "10.77.0.0/16"]);
        assert!(text(&out.stderr).contains("E_NETWORK_OVERLAP"), "{}", text(&out.stderr));
        let out = home.hangar(&["network", "create", "lab", "--subnet", "10.78.0.0/24"]);
        assert!(text(&out.stderr).contains("E_NETWORK_EXISTS"), "{}", text(&out.stderr));

        // The dry run says which address a VM would lease, and takes none.
        let spec = home.path().join("dry.toml");
        std::fs::write(
            &spec,
            "schema_version = 1\nname = \"dry\"\n[[nic]]\nname = \"net0\"\nmode = \"bridge\"\nnetwork = \"lab\"\n",
        )
        .unwrap();
        let plan = home.ok(&["plan", spec.to_str().unwrap()]);
        assert!(plan.contains("lease    10.77.0.2 on lab  (nic net0, to take)"), "{plan}");
        let nowhere = spec.with_file_name("nowhere.toml");
        std::fs::write(&nowhere, std::fs::read_to_string(&spec).unwrap().replace("\"lab\"", "\"nowhere\"")).unwrap();
        let out = home.hangar(&["plan", nowhere.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(err.contains("E_NETWORK_NOT_FOUND") && err.contains("nic[0].network"), "{err}");

        home.up_bridged("a", "lab");
        home.up_bridged("b", "lab");
        let ps = home.json(&["ps", "--output", "json"]);
        let addresses: Vec<&serde_json::Value> = ps.as_array().unwrap().iter().map(|v| &v["addresses"]).collect();
        assert_eq!(addresses, [&serde_json::json!(["10.77.0.2/24"]), &serde_json::json!(["10.77.0.3/24"])]);
        let net = home.json(&["network", "inspect", "lab"]);
        assert_eq!(net["leases"].as_array().unwrap().len(), 2, "{net}");

        // Guest to guest: ping, and a TCP exchange with busybox httpd.
        let out = home.exec("b", "mkdir -p /www && echo page-of-b > /www/index.html && busybox httpd -p 80 -h /www");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = home.exec("a", "ping -c 1 -W 10 10.77.0.3");
        assert!(out.status.success(), "ping: {} {}", text(&out.stdout), text(&out.stderr));
        // (busybox nc, not wget: this busybox's wget crashes in a guest without a DNS server.)
        let out = home.exec("a", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 10.77.0.3 80");
        let reply = text(&out.stdout);
        assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("\r\n\r\npage-of-b\n"), "{reply:?}");
        // The host (this namespace) reaches a guest through the bridge's address.
        let mut conn = std::net::TcpStream::connect("10.77.0.3:80").unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut page = String::new();
        std::io::Read::read_to_string(&mut conn, &mut page).unwrap();
        assert!(page.contains("page-of-b"), "{page}");

        let out = home.hangar(&["network", "rm", "lab"]);
        let err = text(&out.stderr);
        assert!(err.contains("E_NETWORK_IN_USE") && err.contains('a') , "{err}");
        home.ok(&["rm", "--force", "a"]);
        home.ok(&["rm", "--force", "b"]);
        let net = home.json(&["network", "inspect", "lab"]);
        assert_eq!(net["leases"], serde_json::json!([]), "rm released the leases");
        assert!(!link_names().iter().any(|l| l.starts_with("hg-")), "no TAP left: {:?}", link_names());
        home.ok(&["network", "rm", "lab"]);
        assert_eq!(link_names(), ["lo"], "nothing left in the namespace");
    });
    assert_eq!(link_names(), root_links, "the machine's links unchanged");
}
