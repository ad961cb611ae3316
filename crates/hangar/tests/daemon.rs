//! The CLI goes through `hangard` when it runs: `HANGAR_DAEMON=require` proves the path (it fails
//! without a daemon), and the output is the same as the local path's.

use std::process::Command;
use std::sync::Arc;

fn hangar(home: &std::path::Path, daemon: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_HOME", home)
        .env("HANGAR_DAEMON", daemon)
        .output()
        .unwrap()
}

#[test]
fn ps_goes_through_the_daemon_with_the_same_output() {
    let home = tempfile::Builder::new()
        .prefix("hgcd-")
        .tempdir_in("/tmp")
        .unwrap();
    // Without a daemon, `require` is an environment error.
    let out = hangar(home.path(), "require", &["ps", "--all"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("E_ENGINE_UNAVAILABLE"));

    let engine =
        hangar_qemu::QemuEngine::open(home.path(), hangar_qemu::EngineOptions::default()).unwrap();
    let spec = hangar_spec::parse(
        "schema_version = 1\nname = \"seen\"\n",
        hangar_spec::Format::Toml,
        std::path::Path::new("/"),
    )
    .unwrap();
    hangar_core::contracts::Lifecycle::define(&engine, &spec.spec).unwrap();
    let socket = home.path().join("hangard.sock");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = hangard::bind(&socket).unwrap();
            ready_tx.send(()).unwrap();
            hangard::serve(
                listener,
                Arc::new(hangard::Daemon::new(engine).unwrap()),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        })
    });
    ready_rx.recv().unwrap();
    let via_daemon = hangar(home.path(), "require", &["ps", "--all", "--output", "json"]);
    let local = hangar(home.path(), "never", &["ps", "--all", "--output", "json"]);
    let _ = stop.send(());
    server.join().unwrap();
    assert!(
        via_daemon.status.success(),
        "{}",
        String::from_utf8_lossy(&via_daemon.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&via_daemon.stdout),
        String::from_utf8_lossy(&local.stdout)
    );
    let rows: serde_json::Value = serde_json::from_slice(&via_daemon.stdout).unwrap();
    assert_eq!(rows[0]["name"], "seen");
    assert_eq!(rows[0]["state"], "defined");
}
