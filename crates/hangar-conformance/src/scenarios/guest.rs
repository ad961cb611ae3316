//! `Guest`: exec, files, info and sync in a running guest, through its agent.

use std::sync::mpsc::Receiver;

use hangar_core::contracts::*;
use hangar_core::error::ErrorCode;
use hangar_core::ids::VmName;

use crate::Ctx;

use super::*;

/// Runs `argv` (with `stdin`, if any): (how it ended, stdout, stderr).
fn exec(
    ctx: &Ctx<'_>, vm: &VmName, argv: &[&str], stdin: Option<&'static [u8]>,
    control: Option<Receiver<ExecControl>>,
) -> Result<(ExitStatus, String, String), String> {
    let request =
        ExecRequest { argv: argv.iter().map(|a| a.to_string()).collect(), ..Default::default() };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo {
        stdin: stdin.map(|b| Box::new(b) as Box<dyn std::io::Read + Send>),
        stdout: &mut out,
        stderr: &mut err,
        control,
    };
    let status = ok(ctx.engine.exec(vm, &request, io), &format!("exec {argv:?}"))?;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok((status, text(out), text(err)))
}

pub(super) fn g01_exec_codes_and_output(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-g01")?;
    let (status, out, _) = exec(ctx, &vm, &["echo", "hello", "guest"], None, None)?;
    ensure!(
        (status, out.as_str()) == (ExitStatus::Code(0), "hello guest\n"),
        "echo: {status:?} {out:?}"
    );
    let (status, _, _) = exec(ctx, &vm, &["sh", "-c", "exit 7"], None, None)?;
    ensure!(status == ExitStatus::Code(7), "exit 7 gave {status:?}");
    let (status, _, _) = exec(ctx, &vm, &["sh", "-c", "kill -9 $$"], None, None)?;
    ensure!(
        status == ExitStatus::Signal(9) && status.shell_code() == 137,
        "kill -9 gave {status:?}"
    );
    // Several times: a failed start once raced the guest's PID 1 reaping it, and lost the VM.
    for _ in 0..5 {
        let (status, _, err) = exec(ctx, &vm, &["conf-no-such-program"], None, None)?;
        ensure!(status == ExitStatus::Code(127), "a missing program gave {status:?} ({err})");
        ensure!(!err.is_empty(), "a missing program says nothing on stderr");
    }
    let (status, out, _) = exec(ctx, &vm, &["cat"], Some(b"from stdin\n"), None)?;
    ensure!(
        (status, out.as_str()) == (ExitStatus::Code(0), "from stdin\n"),
        "cat: {status:?} {out:?}"
    );
    // A control channel the caller never uses changes nothing.
    let (_keep, control) = std::sync::mpsc::channel();
    let (status, _, _) = exec(ctx, &vm, &["true"], None, Some(control))?;
    ensure!(status == ExitStatus::Code(0), "true gave {status:?}");
    teardown(ctx, &vm)
}

pub(super) fn g02_files_keep_bytes_mode_and_mtime(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-g02")?;
    let path = "/tmp/conf-g02";
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mode, mtime) = (0o640, 1_700_000_000);
    ok(
        ctx.engine.write_file(&vm, path, mode, mtime, Box::new(std::io::Cursor::new(data.clone()))),
        "write_file",
    )?;
    let mut back = Vec::new();
    let meta = ok(ctx.engine.read_file(&vm, path, &mut back), "read_file")?;
    ensure!(back == data, "read {} bytes back, not the {} written", back.len(), data.len());
    ensure!(
        meta == GuestFile { mode, mtime, size: data.len() as u64 },
        "metadata {meta:?}, wrote mode {mode:o} mtime {mtime}"
    );
    // The guest's programs see the same file.
    ok(ctx.engine.write_file(&vm, path, 0o600, mtime, Box::new(&b"seen inside\n"[..])), "rewrite")?;
    let (status, out, _) = exec(ctx, &vm, &["cat", path], None, None)?;
    ensure!((status, out.as_str()) == (ExitStatus::Code(0), "seen inside\n"), "cat: {out:?}");
    expect_code(
        ctx.engine.read_file(&vm, "/conf-g02/missing", &mut Vec::new()),
        ErrorCode::AgentFailed,
        "reading a missing file",
    )?;
    teardown(ctx, &vm)
}

pub(super) fn g03_info_and_sync(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-g03")?;
    let info = ok(ctx.engine.guest_info(&vm), "guest_info")?;
    ensure!(!info.agent.is_empty() && !info.kernel.is_empty(), "empty info: {info:?}");
    ensure!(info.filesystems.iter().any(|f| f.path == "/"), "no root filesystem: {info:?}");
    ok(ctx.engine.sync_guest(&vm), "sync_guest")?;
    teardown(ctx, &vm)
}

pub(super) fn g04_no_agent_unless_running(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-g04");
    let unavailable = ErrorCode::AgentUnavailable;
    ok(ctx.engine.define(&ctx.spec("conf-g04")), "define")?;
    expect_code(ctx.engine.guest_info(&vm), unavailable, "info on a defined VM")?;
    ok(ctx.engine.start(&vm, &hangar_core::cancel::CancelToken::new()), "start")?;
    ok(ctx.engine.guest_info(&vm), "info on the running VM")?;
    ok(ctx.engine.stop(&vm, StopMode::Force, &hangar_core::cancel::CancelToken::new()), "stop")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, control: None };
    let request = ExecRequest { argv: vec!["true".into()], ..Default::default() };
    expect_code(ctx.engine.exec(&vm, &request, io), unavailable, "exec on a stopped VM")?;
    expect_code(ctx.engine.sync_guest(&vm), unavailable, "sync on a stopped VM")?;
    ok(ctx.engine.undefine(&vm), "undefine")?;
    expect_code(ctx.engine.guest_info(&vm), ErrorCode::VmNotFound, "info on no VM")
}

pub(super) fn g05_directories_round_trip_whole(ctx: &Ctx<'_>) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let vm = running(ctx, "conf-g05")?;
    let local = std::env::temp_dir().join(format!("conf-g05-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&local);
    let (src, back) = (local.join("src"), local.join("back"));
    let io = |e: std::io::Error| format!("local files: {e}");
    std::fs::create_dir_all(src.join("sub/deeper")).map_err(io)?;
    std::fs::write(src.join("a.txt"), b"alpha\n").map_err(io)?;
    std::fs::write(src.join("sub/deeper/b.bin"), vec![9u8; 70_000]).map_err(io)?;
    std::fs::set_permissions(src.join("a.txt"), std::fs::Permissions::from_mode(0o640))
        .map_err(io)?;
    let mut tar = Vec::new();
    hangar_tree::pack(&src, &mut tar).map_err(io)?;
    let path = "/tmp/conf-g05";
    ok(
        ctx.engine.write_tree(&vm, path, Box::new(std::io::Cursor::new(tar.clone()))),
        "write_tree",
    )?;
    let again = ctx.engine.write_tree(&vm, path, Box::new(std::io::Cursor::new(tar)));
    expect_code(again, ErrorCode::AgentFailed, "writing over an existing directory")?;
    let mut out = Vec::new();
    ok(ctx.engine.read_tree(&vm, path, &mut out), "read_tree")?;
    hangar_tree::unpack(&out[..], &back).map_err(io)?;
    let same = |rel: &str| std::fs::read(src.join(rel)).ok() == std::fs::read(back.join(rel)).ok();
    let mode =
        |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
    let checked = same("a.txt")
        && same("sub/deeper/b.bin")
        && mode(back.join("a.txt")) == Some(0o640)
        && back.join("sub/deeper").is_dir();
    let _ = std::fs::remove_dir_all(&local);
    ensure!(checked, "the tree read back differs from the one written");
    teardown(ctx, &vm)
}

pub(super) fn g06_network_configuration_shows_in_the_guest(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-g06")?;
    let bad = GuestNetwork { nics: vec![GuestNic::default()], ..GuestNetwork::default() };
    expect_code(
        ctx.engine.configure_network(&vm, &bad),
        ErrorCode::InvalidArgument,
        "a NIC named by nothing",
    )?;
    // Loopback exists in every guest: an extra address on it, and a hostname.
    let network = GuestNetwork {
        nics: vec![GuestNic {
            name: Some("lo".into()),
            addresses: vec!["127.0.0.1/8".into(), "10.123.45.67/32".into()],
            ..GuestNic::default()
        }],
        dns: vec![],
        hostname: Some("conf-g06".into()),
    };
    ok(ctx.engine.configure_network(&vm, &network), "configure_network")?;
    let info = ok(ctx.engine.guest_info(&vm), "guest_info")?;
    ensure!(
        info.addresses.iter().any(|a| a == "10.123.45.67"),
        "the new address is not among {:?}",
        info.addresses
    );
    let (status, out, _) = exec(ctx, &vm, &["hostname"], None, None)?;
    ensure!((status, out.as_str()) == (ExitStatus::Code(0), "conf-g06\n"), "hostname: {out:?}");
    teardown(ctx, &vm)
}
