//! The static rendezvous (`--rdzv-backend static`, torchrun's default with a fixed
//! `--nnodes`): the nodes and their ranks come from the flags; node 0's launcher hosts the
//! store for the whole launch (so it outlives every restart); after a failure on any node,
//! every node's workers start again in the next round, up to `--max-restarts` times.

use super::{connect, host, Next, Outcome, Rendezvous, Round, Rounds};
use crate::dist::Store;
use crate::error::Result;
use crate::launch::Signals;
use crate::launch::{exit, WorkerSpec};

pub struct StaticRendezvous {
    spec: WorkerSpec,
    rounds: Rounds,
    /// Node 0's store, served for as long as this launcher runs.
    _hosted: Option<Store>,
    /// Whether a round has run (the next is a restart).
    restarting: bool,
}

impl StaticRendezvous {
    /// Node 0 hosts the store and opens round 0 (a master port of 0 picks a free one); the
    /// other nodes connect to it.
    pub fn open(mut spec: WorkerSpec) -> Result<Self> {
        let hosted = match spec.node_rank {
            0 => Some(host(&spec.master_addr, spec.master_port)?),
            _ => None,
        };
        if let Some(store) = &hosted {
            spec.master_port = store.port();
        }
        eprintln!(
            "medbert-run: {} worker(s) on node {}/{} (world size {}), master {}:{}",
            spec.nproc_per_node,
            spec.node_rank,
            spec.nnodes,
            spec.world_size(),
            spec.master_addr,
            spec.master_port
        );
        let rounds = Rounds::of(&connect(&spec.master_addr, spec.master_port)?)?;
        if hosted.is_some() {
            rounds.open()?;
        }
        Ok(StaticRendezvous { spec, rounds, _hosted: hosted, restarting: false })
    }
}

impl Rendezvous for StaticRendezvous {
    fn next_round(&mut self, _signal: &Signals) -> Result<Next> {
        let number = self.rounds.current()?;
        if std::mem::replace(&mut self.restarting, true) {
            let max = self.spec.max_restarts;
            if number > max {
                eprintln!("medbert-run: error: the worker group failed after {max} restart(s)");
                return Ok(Next::Exit(exit::FAILED));
            }
            eprintln!("medbert-run: restarting the group ({number}/{max})");
        }
        Ok(Next::Run(Round { number, spec: self.spec.clone() }))
    }

    fn superseded(&self, round: usize) -> bool {
        self.rounds.superseded(round)
    }

    fn share_rows(&self, round: &Round, rows: &str) -> Vec<String> {
        self.rounds.share_rows(round, rows)
    }

    fn record(&mut self, round: usize, outcome: Outcome) -> Result<Option<i32>> {
        match outcome {
            Outcome::Succeeded => Ok(Some(exit::SUCCEEDED)),
            Outcome::Failed { .. } => self.rounds.advance_past(round).map(|_| None),
            // A worker's warning signal: the job stops, for its scheduler to requeue.
            Outcome::Preempted { .. } => Ok(Some(exit::PREEMPTED)),
            Outcome::Superseded | Outcome::Interrupted(_) => Ok(None),
        }
    }
}
