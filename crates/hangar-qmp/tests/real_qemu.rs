//! The client against a real `qemu-system-x86_64` (skipped, visibly, when it is not installed).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use hangar_qmp::{Event, EventItem, Qmp, QmpControl, QmpQuery, RunState};
use tokio::process::Command;

const QEMU: &str = "qemu-system-x86_64";
/// Hard limit on the whole test; the child is killed when it expires.
const HARD_TIMEOUT: Duration = Duration::from_secs(60);

fn qemu_on_path() -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(QEMU).is_file()))
        .unwrap_or(false)
}

async fn next_event(events: &mut hangar_qmp::EventStream) -> Event {
    match events.recv().await {
        Some(EventItem::Event(e)) => e.kind,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_greets_reports_prelaunch_and_quits() {
    if !qemu_on_path() {
        writeln!(
            std::io::stderr(),
            "SKIPPED real_qemu_greets_reports_prelaunch_and_quits: {QEMU} not found"
        )
        .unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let mut child = Command::new(QEMU)
        // No guest: QEMU stops before running anything (-S), QMP only.
        .args(
            "-machine microvm -accel tcg -nodefaults -no-user-config -display none -S -qmp"
                .split(' '),
        )
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Any early return or panic below drops the child, which kills it.
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu");

    let scenario = async {
        let qmp = Qmp::connect(&sock, Duration::from_secs(10)).await.unwrap();
        let v = qmp.version().clone();
        assert!(v.major >= 7, "QEMU {v}");
        assert_eq!(qmp.query_version().await.unwrap(), v);
        assert_eq!(qmp.greeting().capabilities, vec!["oob".to_string()]);

        let status = qmp.query_status().await.unwrap();
        assert_eq!(status.status, RunState::Prelaunch);
        assert!(!status.running);

        // A real command error comes back typed.
        match qmp.execute("no-such-command", None).await {
            Err(hangar_qmp::QmpError::Command { class, .. }) => {
                assert_eq!(class, "CommandNotFound")
            }
            other => panic!("{other:?}"),
        }
        let mig = qmp.query_migrate().await.unwrap();
        assert!(mig.status.is_terminal(), "{mig:?}");

        // Events are emitted before the command's reply: subscribe first.
        let mut events = qmp.events();
        qmp.cont().await.unwrap();
        assert_eq!(next_event(&mut events).await, Event::Resume);
        assert!(qmp.query_status().await.unwrap().running);
        qmp.stop().await.unwrap();
        assert_eq!(next_event(&mut events).await, Event::Stop);
        assert_eq!(qmp.query_status().await.unwrap().status, RunState::Paused);

        qmp.quit().await.unwrap();
        let mut shutdown = None;
        while let Some(item) = events.recv().await {
            match item {
                EventItem::Event(e) => {
                    if let Event::Shutdown { guest, reason } = e.kind {
                        shutdown = Some((guest, reason));
                    }
                }
                EventItem::Lagged { missed } => panic!("lagged by {missed}"),
            }
        }
        // The stream ended: QEMU closed the socket.
        let (guest, reason) = shutdown.expect("a SHUTDOWN event before the socket closed");
        assert!(!guest);
        assert_eq!(reason, "host-qmp-quit");
        assert!(!qmp.is_connected());
        v
    };
    let version =
        tokio::time::timeout(HARD_TIMEOUT, scenario).await.expect("the scenario finished in time");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("qemu exited after quit")
        .unwrap();
    assert!(status.success(), "qemu exited with {status}");
    writeln!(std::io::stderr(), "real QEMU {version}: ok").unwrap();
}
