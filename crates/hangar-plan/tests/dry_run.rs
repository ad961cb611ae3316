//! The dry-run guarantee: planning touches nothing.
//!
//! A child process parses and plans the whole corpus under a seccomp filter that **kills the
//! process** on any process-creating syscall and any write-capable open, create, rename,
//! unlink, mkdir, link, truncate, chmod, bind or connect. Planning must finish with the child
//! alive: not one such syscall was even attempted. Two control children prove the filter bites:
//! one tries to create a file, one to spawn a process, and both must die of SIGSYS.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

fn kill_on_side_effects() {
    let write_flags = [libc::O_WRONLY, libc::O_RDWR, libc::O_CREAT, libc::O_TRUNC, libc::O_APPEND];
    let flag_rules = |arg: u8| -> Vec<SeccompRule> {
        write_flags
            .iter()
            .map(|f| {
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(*f as u64),
                    *f as u64,
                )
                .unwrap()])
                .unwrap()
            })
            .collect()
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_creat,
        libc::SYS_openat2,
        libc::SYS_mkdir,
        libc::SYS_mkdirat,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_rmdir,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_link,
        libc::SYS_linkat,
        libc::SYS_symlink,
        libc::SYS_symlinkat,
        libc::SYS_truncate,
        libc::SYS_chmod,
        libc::SYS_fchmodat,
        libc::SYS_mknod,
        libc::SYS_mknodat,
        libc::SYS_bind,
        libc::SYS_connect,
    ] {
        rules.insert(syscall, vec![]);
    }
    rules.insert(libc::SYS_open, flag_rules(1));
    rules.insert(libc::SYS_openat, flag_rules(2));
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter(&program).unwrap();
}

const CHILD_ENV: &str = "HANGAR_DRY_RUN_CHILD";

/// The child side; the parent runs it with `--ignored --exact` and a mode in the environment.
#[test]
#[ignore = "runs only as a child of planning_touches_nothing"]
fn dry_run_child() {
    let mode = std::env::var(CHILD_ENV).expect("run by planning_touches_nothing");
    let valid = common::cases(&common::corpus_dir());
    let invalid = common::cases(&common::corpus_dir().join("invalid"));
    kill_on_side_effects();
    match mode.as_str() {
        "plan" => {
            let planned = valid.iter().filter(|c| common::run(c).is_ok()).count();
            let refused = invalid.iter().filter(|c| common::run(c).is_err()).count();
            println!(
                "planned {planned} of {}, refused {refused} of {}",
                valid.len(),
                invalid.len()
            );
        }
        "write" => {
            let _ = std::fs::File::create(std::env::temp_dir().join("hangar-dry-run-probe"));
            println!("survived a write");
        }
        "spawn" => {
            let _ = std::process::Command::new("/bin/true").status();
            println!("survived a spawn");
        }
        other => panic!("unknown mode {other}"),
    }
}

fn child(mode: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "dry_run_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

#[test]
fn planning_touches_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let valid = common::cases(&common::corpus_dir()).len();
    let invalid = common::cases(&common::corpus_dir().join("invalid")).len();

    let out = child("plan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "planning child died ({:?}): {stdout}", out.status);
    let want = format!("planned {valid} of {valid}, refused {invalid} of {invalid}");
    assert!(stdout.contains(&want), "expected {want:?} in {stdout}");

    for mode in ["write", "spawn"] {
        let out = child(mode);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "the {mode} control child was not killed by the filter: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
