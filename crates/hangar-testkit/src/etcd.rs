//! A throwaway etcd cluster for tests: `members` etcd processes on loopback, each with its own
//! ports and data directory, killed on drop. Needs Debian's `etcd-server` (scripts/setup
//! installs it); without it [`EtcdCluster::start`] says why, for a `SKIPPED` line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
    token: String,
}

use crate::free_port;

impl EtcdCluster {
    /// Starts `members` members and waits until each answers `/health`.
    pub fn start(members: usize) -> Result<EtcdCluster, String> {
        hangar_plan::probe::find_in_path("etcd")
            .ok_or("etcd not found (scripts/setup installs etcd-server)")?;
        let dir = tempfile::Builder::new()
            .prefix("hg-etcd-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("hg-{}-{}", std::process::id(), dir.path().display().to_string().len());
        let mut cluster = EtcdCluster { members, dir, initial_cluster, token };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .map_err(|e| e.to_string())?;
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            // Quick elections: the tests stop and start members.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start etcd: {e}"))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits (up to 20 s) until member `i` says it is healthy (it has a leader).
    fn wait_healthy(&self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.healthy(i) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(
                    self.dir.path().join(format!("{}.log", self.members[i].name)),
                )
                .unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                return Err(format!(
                    "etcd member {} did not become healthy; its log ends:\n{tail}",
                    self.members[i].name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether member `i` answers `GET /health` with `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        let addr = format!("127.0.0.1:{}", self.members[i].client_port);
        let Ok(mut s) = TcpStream::connect(&addr) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// The client URLs, for `hangard --cluster`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect()
    }

    /// Stops member `i` (kill -9: a crash, not a goodbye).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Starts every stopped member again, then waits until all are healthy.
    pub fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        (0..self.members.len()).try_for_each(|i| self.wait_healthy(i))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}
