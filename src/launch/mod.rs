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

use crate::error::Result;
use std::sync::atomic::AtomicUsize;

/// The launcher's exit statuses, as README's Clusters section documents them.
pub mod exit {
    /// The job finished (every worker of the last round exited with 0).
    pub const SUCCEEDED: i32 = 0;
    /// The worker group failed for good: restarts used up, or an elastic job that cannot go on.
    pub const FAILED: i32 = 1;
    /// Nothing ran: the flags or the rendezvous refused this launcher, or an error.
    pub const INVALID: i32 = 2;

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

/// torchrun's `elastic_launch` in small: the rendezvous the config asks for, and the agent's
/// loop over its rounds until the job succeeds, fails for good or the launcher gets a signal
/// (`signal` holds its number once set). Returns the launcher's exit status ([`exit`]).
pub fn launch(config: &LaunchConfig, signal: &AtomicUsize) -> Result<i32> {
    match &config.elastic {
        None => agent::run(&mut rendezvous::fixed::StaticRendezvous::open(config.spec.clone())?, config, signal),
        Some(elastic) => rendezvous::elastic::launch(config, elastic, signal),
    }
}
