//! The worker-group launcher behind `medbert-run`, with torchrun's contract: one process per
//! local slot, the same environment variables, all-or-nothing supervision and restarts.
//!
//! Read it as torchrun's parts: [`config`] turns the flags into a [`LaunchConfig`]; the
//! [`agent`] runs one loop over rounds; the [`rendezvous`] says who is in each round (static
//! or elastic, with the host's coordinator); the worker [`group`] starts, supervises and
//! tears down one round's processes.

mod agent;
pub mod config;
mod group;
mod rendezvous;

pub use agent::{Worker, WorkerSpec};
pub use group::{Exit, Outcome, Supervision};
pub use rendezvous::elastic::{Elastic, RdzvConf};

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The launcher's exit statuses, as README's Clusters section documents them.
pub mod exit {
    /// The job finished (every worker of the last round exited with 0).
    pub const SUCCEEDED: i32 = 0;
    /// The worker group failed for good: restarts used up, or an elastic job that cannot go on.
    pub const FAILED: i32 = 1;
    /// Nothing ran: the flags or the rendezvous refused this launcher, or an error.
    pub const INVALID: i32 = 2;

    /// The workers saved a checkpoint on a warning signal and stopped: requeue the job and it
    /// resumes from there.
    pub const PREEMPTED: i32 = crate::train::preempt::PREEMPTED;

    /// The launcher stopped the workers on this signal (the shell's convention).
    pub fn interrupted(signal: i32) -> i32 {
        128 + signal
    }
}

/// Everything one launch needs: the group, the command each worker runs, how they are
/// watched, and OMP_NUM_THREADS for them when the caller did not set it.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    pub spec: WorkerSpec,
    /// `--nnodes MIN:MAX`: node ranks assigned at each round, nodes lost and joined.
    pub elastic: Option<Elastic>,
    pub program: Vec<String>,
    pub supervision: Supervision,
    pub omp_threads: Option<usize>,
}

/// The signals the launcher got: the first one's number, and how many.
#[derive(Debug, Default)]
pub struct Signals {
    first: AtomicUsize,
    count: AtomicUsize,
}

impl Signals {
    /// Starts noting the warning signals (SIGTERM, SIGUSR1, SIGINT) as they come.
    pub fn listen() -> Result<Arc<Signals>> {
        let signals = Arc::new(Signals::default());
        let mut incoming = signal_hook::iterator::Signals::new(crate::train::preempt::SIGNALS)
            .map_err(|e| Error::Input(format!("installing signal handlers: {e}")))?;
        let noted = Arc::clone(&signals);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || incoming.forever().for_each(|sig| noted.note(sig)))
            .map_err(|e| Error::Input(format!("starting the signal thread: {e}")))?;
        Ok(signals)
    }

    /// One more signal.
    pub fn note(&self, sig: i32) {
        let _ = self.first.compare_exchange(0, sig as usize, Ordering::SeqCst, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// The first signal, once one came.
    pub fn first(&self) -> Option<i32> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig as i32),
        }
    }

    /// Whether more than one came.
    pub fn repeated(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 1
    }
}

/// torchrun's `elastic_launch` in small: the rendezvous the config asks for, and the agent's
/// loop over its rounds until the job succeeds, fails for good or the launcher gets a signal
/// (`signal`). Returns the launcher's exit status ([`exit`]).
pub fn launch(config: &LaunchConfig, signal: &Signals) -> Result<i32> {
    // The workers' position files, for the table printed when the group hangs or fails.
    let positions = tempfile::Builder::new().prefix("medbert-run-").tempdir().map_err(|e| Error::io("$TMPDIR", e))?;
    let mut config = config.clone();
    config.supervision.positions = Some(positions.path().to_path_buf());
    let config = &config;
    match &config.elastic {
        None => agent::run(&mut rendezvous::fixed::StaticRendezvous::open(config.spec.clone())?, config, signal),
        Some(elastic) => rendezvous::elastic::launch(config, elastic, signal),
    }
}
