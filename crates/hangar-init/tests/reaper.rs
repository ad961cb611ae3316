//! PID 1's reaping and the agent's starts never race: a program that cannot be started is an
//! error for that exec, never a panic (which, in PID 1, powers the guest off).
//!
//! Its own test binary on purpose: `Reaper::wait_for` reaps every child of the process, as
//! PID 1 does, so it must not share a process with tests that wait for their own children.

use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::sync::Arc;

use hangar_init::reap::{Reap, Reaper};
use hangar_init::ExitOutcome;

// The reaper waits for these children, not `Child::wait`: that is what is under test.
#[allow(clippy::zombie_processes)]
#[test]
fn a_missing_program_is_an_error_while_pid_1_reaps() {
    let reaper = Arc::new(Reaper::default());
    // PID 1's own child: it lives until its stdin closes, and PID 1 reaps meanwhile.
    let mut init_child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cat starts");
    let init_pid = init_child.id();
    let stdin = init_child.stdin.take().expect("piped");
    let pid_1 = {
        let reaper = reaper.clone();
        std::thread::spawn(move || reaper.wait_for(init_pid))
    };
    // The agent's side, as it starts an exec: PATH set, so `spawn` forks and execs itself (not
    // posix_spawn), and reaps a child whose exec failed. Many times, since each is a race.
    for round in 0..300 {
        let mut missing = Command::new("hangar-test-no-such-program");
        missing.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let err = reaper.spawn(&mut missing).expect_err("the program does not exist");
        assert_eq!(err.kind(), ErrorKind::NotFound, "round {round}: {err}");
        // And the children that do start still get their ends.
        let mut ok = Command::new("sh");
        ok.args(["-c", "exit 3"]).env_clear().env("PATH", "/usr/bin:/bin");
        let child = reaper.spawn(&mut ok).expect("sh starts");
        assert_eq!(reaper.wait(child.id()), ExitOutcome::Code(3), "round {round}");
    }
    drop(stdin);
    let ended = pid_1.join().expect("PID 1's wait did not panic");
    assert_eq!(ended, Ok(ExitOutcome::Code(0)));
}
