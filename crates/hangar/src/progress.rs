//! A one-line progress display for long work.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A one-line progress display on stderr: a spinner with the phase and elapsed time on a TTY,
/// plain phase lines otherwise.
pub(crate) struct Progress {
    phase: Arc<Mutex<String>>,
    done: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
    tty: bool,
    started: Instant,
}

impl Progress {
    pub(crate) fn new(what: String) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let phase = Arc::new(Mutex::new(String::from("starting")));
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let ticker = tty.then(|| {
            let (phase, done) = (phase.clone(), done.clone());
            std::thread::spawn(move || {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut i = 0;
                while !done.load(Ordering::SeqCst) {
                    let p = phase.lock().unwrap().clone();
                    eprint!(
                        "\r\x1b[2K{} {what}: {p} ({:.1}s)",
                        frames[i % frames.len()],
                        started.elapsed().as_secs_f64()
                    );
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprint!("\r\x1b[2K");
            })
        });
        Progress { phase, done, ticker, tty, started }
    }

    pub(crate) fn phase(&self, p: &str) {
        *self.phase.lock().unwrap() = p.to_string();
        if !self.tty {
            eprintln!("[{:>5.1}s] {p}", self.started.elapsed().as_secs_f64());
        }
    }

    pub(crate) fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
