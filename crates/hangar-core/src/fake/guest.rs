//! [`Guest`] for the fake: a guest with an in-memory filesystem and a handful of programs, the
//! ones the conformance scenarios run (`echo`, `cat`, `true`, `false`, `hostname`,
//! `sh -c 'exit N'` and `sh -c 'kill -9 $$'`). Anything else is "not found" (127), as in a shell. A directory
//! written as a tar stream is kept as those bytes and read back as them.

use std::io::{Read, Write};

use crate::contracts::*;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::VmName;
use crate::lifecycle::VmState;

use super::{lock, FakeEngine, FakeFile};

impl FakeEngine {
    /// Fails unless `vm` runs (its agent answers only then) and the capability is on.
    fn guest_ready(&self, vm: &VmName) -> Result<()> {
        self.enter()?;
        if !lock(&self.capabilities).has(Capability::GuestAgent) {
            return Err(Error::Unsupported("a guest agent".into()));
        }
        let inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        if state != VmState::Running {
            return Err(Error::Backend {
                code: ErrorCode::AgentUnavailable,
                message: format!("{vm} is {state}, not running: its agent cannot answer"),
            });
        }
        Ok(())
    }

    fn network_of(&self, vm: &VmName) -> Result<Option<GuestNetwork>> {
        Ok(lock(&self.inner).vm(vm)?.network.clone())
    }

    fn file(&self, vm: &VmName, path: &str) -> Result<FakeFile> {
        let inner = lock(&self.inner);
        inner.vm(vm)?.files.get(path).cloned().ok_or_else(|| Error::Backend {
            code: ErrorCode::AgentFailed,
            message: format!("E_IO: {path}: No such file or directory"),
        })
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Backend { code: ErrorCode::AgentUnavailable, message: e.to_string() }
}

impl Guest for FakeEngine {
    fn exec(&self, vm: &VmName, request: &ExecRequest, io: ExecIo<'_>) -> Result<ExitStatus> {
        self.guest_ready(vm)?;
        let ExecIo { stdin, stdout, stderr, .. } = io;
        // With a terminal, both outputs are the terminal.
        let stderr: &mut dyn Write = if request.tty.is_some() { stdout } else { stderr };
        let out = |w: &mut dyn Write, bytes: &[u8]| w.write_all(bytes).map_err(self::io);
        let argv: Vec<&str> = request.argv.iter().map(String::as_str).collect();
        match argv.as_slice() {
            ["true"] => Ok(ExitStatus::Code(0)),
            ["hostname"] => {
                let name = self.network_of(vm)?.and_then(|n| n.hostname).unwrap_or("fake".into());
                out(stdout, format!("{name}\n").as_bytes())?;
                Ok(ExitStatus::Code(0))
            }
            ["false"] => Ok(ExitStatus::Code(1)),
            ["echo", words @ ..] => {
                out(stdout, format!("{}\n", words.join(" ")).as_bytes())?;
                Ok(ExitStatus::Code(0))
            }
            ["cat"] => {
                let mut input = Vec::new();
                if let Some(mut stdin) = stdin {
                    stdin.read_to_end(&mut input).map_err(self::io)?;
                }
                out(stdout, &input)?;
                Ok(ExitStatus::Code(0))
            }
            ["cat", path] => match self.file(vm, path) {
                Ok(f) => {
                    out(stdout, &f.bytes)?;
                    Ok(ExitStatus::Code(0))
                }
                Err(_) => {
                    out(stderr, format!("cat: can't open '{path}': No such file\n").as_bytes())?;
                    Ok(ExitStatus::Code(1))
                }
            },
            ["sh", "-c", script] => match script.trim().strip_prefix("exit ") {
                Some(n) => Ok(ExitStatus::Code(n.trim().parse().unwrap_or(2))),
                None if script.trim() == "kill -9 $$" => Ok(ExitStatus::Signal(9)),
                None => {
                    out(stderr, format!("sh: the fake guest cannot run {script:?}\n").as_bytes())?;
                    Ok(ExitStatus::Code(127))
                }
            },
            [program, ..] => {
                out(stderr, format!("{program}: not found\n").as_bytes())?;
                Ok(ExitStatus::Code(127))
            }
            [] => Err(Error::InvalidArgument {
                what: "argv".into(),
                reason: "names no program".into(),
            }),
        }
    }

    fn read_file(&self, vm: &VmName, path: &str, out: &mut dyn Write) -> Result<GuestFile> {
        self.guest_ready(vm)?;
        let f = self.file(vm, path)?;
        out.write_all(&f.bytes).map_err(io)?;
        Ok(GuestFile { mode: f.mode, mtime: f.mtime, size: f.bytes.len() as u64 })
    }

    fn write_file(
        &self, vm: &VmName, path: &str, mode: u32, mtime: i64, mut input: Box<dyn Read + Send>,
    ) -> Result<()> {
        self.guest_ready(vm)?;
        // Read whole before it appears: a reader never sees half a file.
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(io)?;
        let mut inner = lock(&self.inner);
        let file = FakeFile { bytes, mode: mode & 0o7777, mtime };
        inner.vm_mut(vm)?.files.insert(path.to_string(), file);
        Ok(())
    }

    /// The fake keeps a written tree as its tar bytes, under its path, and reads them back.
    fn read_tree(&self, vm: &VmName, path: &str, out: &mut dyn Write) -> Result<TreeCounts> {
        self.guest_ready(vm)?;
        let tree = self.file(vm, &format!("{path}/"))?;
        out.write_all(&tree.bytes).map_err(io)?;
        Ok(TreeCounts { bytes: tree.bytes.len() as u64, ..TreeCounts::default() })
    }

    fn write_tree(
        &self, vm: &VmName, path: &str, mut input: Box<dyn Read + Send>,
    ) -> Result<TreeCounts> {
        self.guest_ready(vm)?;
        let key = format!("{path}/");
        if lock(&self.inner).vm(vm)?.files.contains_key(&key) {
            return Err(Error::Backend {
                code: ErrorCode::AgentFailed,
                message: format!("E_IO: {path} exists; copy to a new name"),
            });
        }
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(io)?;
        let counts = TreeCounts { bytes: bytes.len() as u64, ..TreeCounts::default() };
        let tree = FakeFile { bytes, mode: 0o755, mtime: 0 };
        lock(&self.inner).vm_mut(vm)?.files.insert(key, tree);
        Ok(counts)
    }

    fn guest_info(&self, vm: &VmName) -> Result<GuestInfo> {
        self.guest_ready(vm)?;
        Ok(GuestInfo {
            agent: "fake-agent 1".into(),
            kernel: "fake".into(),
            uptime_s: 0.0,
            load: vec![0.0, 0.0, 0.0],
            memory: GuestMemory::default(),
            filesystems: vec![GuestFilesystem {
                device: "rootfs".into(),
                path: "/".into(),
                fs_type: "rootfs".into(),
            }],
            addresses: self.network_of(vm)?.map_or(vec!["127.0.0.1".into()], |n| {
                let mut all = vec!["127.0.0.1".to_string()];
                for nic in &n.nics {
                    for a in &nic.addresses {
                        all.push(a.split('/').next().unwrap_or(a).to_string());
                    }
                }
                all
            }),
        })
    }

    fn configure_network(&self, vm: &VmName, network: &GuestNetwork) -> Result<()> {
        self.guest_ready(vm)?;
        for nic in &network.nics {
            if nic.mac.is_none() && nic.name.is_none() {
                return Err(Error::InvalidArgument {
                    what: "nics".into(),
                    reason: "a NIC needs a mac or a name".into(),
                });
            }
        }
        lock(&self.inner).vm_mut(vm)?.network = Some(network.clone());
        Ok(())
    }

    fn sync_guest(&self, vm: &VmName) -> Result<()> {
        self.guest_ready(vm)
    }
}
