//! The `hangar-image` binary: exit codes and messages.

use std::process::Command;

fn hangar_image(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-image")).args(args).output().expect("run hangar-image")
}

#[test]
fn help_exits_zero_and_documents_build() {
    let out = hangar_image(&["build", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--kernel-root", "--busybox", "--init", "--out"] {
        assert!(text.contains(flag), "{text}");
    }
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(hangar_image(&[]).status.code(), Some(2));
    assert_eq!(hangar_image(&["build"]).status.code(), Some(2));
    assert_eq!(hangar_image(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn build_failure_exits_one_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kernel");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let out_dir = tmp.path().join("out");
    let out = hangar_image(&[
        "build",
        "--kernel-root",
        root.to_str().unwrap(),
        "--busybox",
        "/nonexistent/busybox",
        "--init",
        "/nonexistent/init",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: no kernel under "), "{err}");
    assert!(!out_dir.exists());
}
