//! Rendezvous: how the launchers of a job agree on each round of workers (who is in it, at
//! which node rank) and on when a round is over. Static: the nodes the flags name, a restart
//! round after a failure ([`fixed`]). Elastic: rounds formed by the host's coordinator from
//! the nodes alive, membership changing between rounds ([`elastic`]).

mod coordinator;
pub mod elastic;
pub mod fixed;

use super::group::Outcome;
use super::WorkerSpec;
use crate::dist::keys::{self, launcher};
use crate::dist::Store;
use crate::error::{Error, Result};
use crate::launch::Signals;
use std::time::Duration;

/// One round this node's workers run in: its number (TORCHELASTIC_RESTART_COUNT, the prefix
/// of the workers' keys) and the job's shape in it.
pub struct Round {
    pub number: usize,
    pub spec: WorkerSpec,
}

/// What the agent does next.
pub enum Next {
    Run(Round),
    /// The launch is over: the launcher exits with this code.
    Exit(i32),
}

/// What the agent asks of a rendezvous (torchrun's `RendezvousHandler`, as far as it is used).
pub trait Rendezvous {
    /// The next round this node's workers run in, or the end of the launch (the reason said).
    fn next_round(&mut self, signal: &Signals) -> Result<Next>;
    /// Whether a newer round has replaced `round` (another node failed or was lost): this
    /// node's workers stop. A store that cannot be read (the host finished) says no.
    fn superseded(&self, round: usize) -> bool;
    /// Shares this node's rows of the position table of `round` (JSON) with the other nodes;
    /// returns every node's that arrive within a short wait, this node's included.
    fn share_rows(&self, round: &Round, rows: &str) -> Vec<String> {
        let _ = round;
        vec![rows.to_string()]
    }
    /// Records how this node's workers ended `round` (never `Interrupted`, nor `Preempted` by
    /// this launcher's own signal: the agent ends on those); the exit code when the launch
    /// ends with it.
    fn record(&mut self, round: usize, outcome: Outcome) -> Result<Option<i32>>;
}

/// How long a launcher waits for the other nodes' rows of the position table.
const ROWS_WAIT: Duration = Duration::from_secs(2);

/// How long a launcher waits for the host's store to be up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(900);
/// How long hosting the store may take to bind and listen.
const HOST_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the job's store at `addr:port` on this launcher (port 0: a free one).
fn host(addr: &str, port: u16) -> Result<Store> {
    Store::tcp(addr, port, true, 0, HOST_TIMEOUT)
}

/// A connection to the store the host launcher serves.
fn connect(addr: &str, port: u16) -> Result<Store> {
    Store::tcp(addr, port, false, 0, JOIN_TIMEOUT)
}

/// The restart round the launchers of a job agree on, in the store the host serves. A
/// launcher whose workers failed moves the job to the next round; a launcher that sees a
/// newer round stops its workers and starts them again in it. So every node's workers meet
/// under the same round's keys however often each node failed (torchrun's dynamic
/// rendezvous negotiates its rounds the same way).
struct Rounds(Store);

impl Rounds {
    /// The launchers' view of `store` (under [`keys::LAUNCHER`]).
    fn of(store: &Store) -> Result<Rounds> {
        Ok(Rounds(store.with_prefix(keys::LAUNCHER)?))
    }

    /// Round 0 opens (the host, once).
    fn open(&self) -> Result<()> {
        self.0.set(launcher::ROUND, b"0")
    }

    /// The current round; waits until the host opened round 0.
    fn current(&self) -> Result<usize> {
        let value = self.0.get(launcher::ROUND)?;
        let bad = || Error::Dist(format!("bad {} {value:?}", launcher::ROUND));
        String::from_utf8_lossy(&value).parse().map_err(|_| bad())
    }

    /// Whether a round after `round` has begun; a store that cannot be read says no.
    fn superseded(&self, round: usize) -> bool {
        self.current().is_ok_and(|r| r > round)
    }

    /// Publishes node `node`'s rows of `round`'s position table and gathers every node's
    /// that come within [`ROWS_WAIT`] (the others report the same hang or failure at about
    /// the same time); a store that cannot be read gives this node's alone.
    fn share_rows(&self, round: &Round, rows: &str) -> Vec<String> {
        let (number, spec) = (round.number, &round.spec);
        let _ = self.0.set(&launcher::positions(number, spec.node_rank), rows.as_bytes());
        let until = std::time::Instant::now() + ROWS_WAIT;
        loop {
            let found: Vec<String> = (0..spec.nnodes)
                .filter_map(|node| self.0.try_get(&launcher::positions(number, node)).ok().flatten())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .collect();
            if found.len() == spec.nnodes || std::time::Instant::now() >= until {
                return if found.is_empty() { vec![rows.to_string()] } else { found };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Moves the job past `round` unless another launcher already did.
    fn advance_past(&self, round: usize) -> Result<()> {
        match self.current()? {
            current if current > round => Ok(()),
            _ => self.0.set(launcher::ROUND, (round + 1).to_string().as_bytes()),
        }
    }
}
