//! A checkpoint on a warning signal. Clusters warn a job before they stop it: Kubernetes'
//! eviction and spot reclaim send SIGTERM (SIGKILL follows after the pod's grace period, 30 s
//! by default), Slurm's preemption, `scancel` and time limit SIGTERM (or what `--signal`
//! names, often SIGUSR1), a terminal SIGINT. The first such signal is noted and training goes
//! on to the end of the optimizer step; there every rank learns whether any rank was
//! signalled (one small all-reduce per step, over the group's backend), so they all stop at
//! the same step boundary, the first that all of them can still reach, save a checkpoint
//! there and exit with [`PREEMPTED`]. A second signal, or no checkpoint within the timeout,
//! ends the process as the signal would have without this (a checkpoint is written into a
//! temporary directory and renamed into place, so none is left half-written). Signals within
//! [`SAME_WARNING`] of the first count as that one: Slurm signals every process of a step, so
//! a worker under medbert-run gets the signal both from Slurm and forwarded by its launcher.

use crate::error::{Error, Result};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The exit status of a process (and of medbert-run) that stopped on a warning signal after
/// saving a checkpoint: sysexits' EX_TEMPFAIL, "try again": a requeued job resumes from it.
pub const PREEMPTED: i32 = 75;

/// The warning signals.
pub const SIGNALS: [i32; 3] = [SIGTERM, SIGUSR1, SIGINT];

/// How long after the first signal another counts as the same warning, not a second one.
pub const SAME_WARNING: Duration = Duration::from_secs(2);

/// The handlers of the warning signals, for this process's lifetime.
pub(crate) struct Preemption {
    /// The first signal's number; 0 before one came.
    received: Arc<AtomicUsize>,
}

impl Preemption {
    /// Installs the handlers: the first signal is noted, a second (once [`SAME_WARNING`] has
    /// passed) runs the signal's default action, and `timeout` after the first a watchdog does
    /// the same.
    pub fn install(timeout: Duration) -> Result<Preemption> {
        let received = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let failed = |e: std::io::Error| Error::Input(format!("installing the signal handlers: {e}"));
        for sig in SIGNALS {
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&armed)).map_err(failed)?;
            let first = Arc::clone(&received);
            // SAFETY: the action only touches an atomic, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    let _ = first.compare_exchange(0, sig as usize, Ordering::SeqCst, Ordering::SeqCst);
                })
            }
            .map_err(failed)?;
        }
        let watched = Arc::clone(&received);
        std::thread::Builder::new()
            .name("save-on-signal".into())
            .spawn(move || {
                let sig = loop {
                    match watched.load(Ordering::SeqCst) {
                        0 => std::thread::sleep(Duration::from_millis(50)),
                        sig => break sig as i32,
                    }
                };
                std::thread::sleep(SAME_WARNING.min(timeout));
                armed.store(true, Ordering::SeqCst);
                std::thread::sleep(timeout.saturating_sub(SAME_WARNING));
                eprintln!(
                    "medbert: no checkpoint within --save-on-signal-timeout {}s of {}: stopping without one",
                    timeout.as_secs_f64(),
                    name(sig)
                );
                let _ = signal_hook::low_level::emulate_default_handler(sig);
            })
            .map_err(|e| Error::Input(format!("starting the signal watchdog: {e}")))?;
        Ok(Preemption { received })
    }

    /// The first warning signal this process got, if any.
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig as i32),
        }
    }
}

/// A signal's name (SIGTERM), or its number.
pub fn name(sig: i32) -> String {
    signal_hook::low_level::signal_name(sig).map_or_else(|| format!("signal {sig}"), str::to_string)
}
