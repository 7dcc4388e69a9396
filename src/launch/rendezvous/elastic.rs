//! Elastic membership (`--nnodes MIN:MAX`): torchrun's c10d rendezvous in small, on the store
//! that the launcher at the rendezvous endpoint hosts.
//!
//! Every launcher takes an id, keeps a heartbeat counter in the store and registers for each
//! round; the host's coordinator ([`super::coordinator`]) closes a round once enough nodes
//! registered (node ranks in id order, so the host is node 0), watches the heartbeats while
//! it runs, ends it when a node is lost, and asks the workers to stop at their next
//! checkpoint when a node waits to join. The workers of every round resume from the newest
//! checkpoint at the round's world size, so the epoch goes on where the checkpoint left it.
//! Rounds ended by a lost or a joining node do not count against `--max-restarts`; rounds
//! ended by a failing worker do.

use super::coordinator::{wait_for_the_others_to_leave, Coordinator};
use super::{connect, host, Next, Outcome, Rendezvous, Round, Rounds};
use crate::dist::keys::{self, launcher, worker};
use crate::dist::Store;
use crate::error::{Error, Result};
use crate::launch::Signals;
use crate::launch::{agent, exit, LaunchConfig, WorkerSpec};
use std::net::{TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `--nnodes MIN:MAX` and the rendezvous settings of `--rdzv-conf`.
#[derive(Clone, Debug, PartialEq)]
pub struct Elastic {
    pub min_nodes: usize,
    pub max_nodes: usize,
    pub conf: RdzvConf,
}

/// torchrun's `--rdzv-conf` keys, with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RdzvConf {
    /// How long a round waits for MIN nodes before the run fails (`join_timeout`).
    pub join_timeout: Duration,
    /// Once MIN nodes are in the first round, how long it waits for more (`last_call_timeout`).
    pub last_call_timeout: Duration,
    /// Between a launcher's heartbeats (`keep_alive_interval`).
    pub keep_alive_interval: Duration,
    /// Heartbeats missed before a node is lost (`keep_alive_max_attempt`).
    pub keep_alive_max_attempt: u32,
    /// Whether this launcher hosts the store (`is_host`); by default, when the endpoint is an
    /// address of this machine.
    pub is_host: Option<bool>,
}

impl Default for RdzvConf {
    fn default() -> Self {
        RdzvConf {
            join_timeout: Duration::from_secs(600),
            last_call_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_max_attempt: 3,
            is_host: None,
        }
    }
}

impl RdzvConf {
    /// `KEY=VALUE,KEY=VALUE` as torchrun takes it; seconds are whole or fractional numbers.
    pub fn parse(text: &str) -> Result<RdzvConf> {
        let mut conf = RdzvConf::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| Error::Input(format!("--rdzv-conf {item:?}: {why}"));
            let (key, value) = item.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
            let seconds = || match value.parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
                _ => Err(bad("expected a positive number of seconds")),
            };
            match key {
                "join_timeout" => conf.join_timeout = seconds()?,
                "last_call_timeout" => conf.last_call_timeout = seconds()?,
                "keep_alive_interval" => conf.keep_alive_interval = seconds()?,
                "keep_alive_max_attempt" => {
                    conf.keep_alive_max_attempt =
                        value.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad("expected a whole number above 0"))?
                }
                "is_host" => {
                    conf.is_host = Some(match value.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(bad("expected true or false")),
                    })
                }
                _ => return Err(bad(
                    "unknown key (known: join_timeout, last_call_timeout, keep_alive_interval, keep_alive_max_attempt, is_host)",
                )),
            }
        }
        Ok(conf)
    }

    /// A node whose heartbeat has not moved for this long is lost.
    pub fn lost_after(&self) -> Duration {
        self.keep_alive_interval * self.keep_alive_max_attempt
    }
}

/// How often the launchers and the coordinator look at the store.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// What the coordinator publishes when it closes a round: the launchers' ids in node-rank
/// order, and the restarts that worker failures used so far.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct RoundNodes {
    pub nodes: Vec<i64>,
    pub restarts: usize,
}

/// Whether this launcher hosts the store: `is_host`, else whether `host` is an address of
/// this machine (one it can bind).
fn hosts_here(host: &str, is_host: Option<bool>) -> bool {
    is_host.unwrap_or_else(|| {
        (host, 0).to_socket_addrs().is_ok_and(|mut addrs| addrs.any(|a| TcpListener::bind((a.ip(), 0)).is_ok()))
    })
}

/// How a launcher's registration for a round ended.
enum Admission {
    /// In the round, as this node of that many.
    Node {
        node_rank: usize,
        nnodes: usize,
        restarts: usize,
    },
    /// The round closed without this launcher: it registers for the next.
    Late,
    /// The run cannot go on, for this reason.
    Closed(String),
    /// This launcher cannot take part, for this reason.
    Refused(String),
    /// The job finished.
    Done,
    Interrupted(i32),
}

/// A launcher of an elastic job: its id in the store and the rounds it took part in.
struct ElasticRendezvous {
    rounds: Rounds,
    /// The launchers' keys (the same view as `rounds`').
    store: Store,
    /// The store without prefix, for the workers' keys of each round.
    raw: Store,
    id: i64,
    spec: WorkerSpec,
    /// The node count and restarts of the last round this launcher ran.
    last: Option<(usize, usize)>,
}

impl ElasticRendezvous {
    fn join(&self, round: usize, signal: &Signals) -> Result<Admission> {
        let slot = self.store.add(&launcher::registered(round), 1)? - 1;
        let me = format!("{} {}", self.id, self.spec.nproc_per_node);
        self.store.set(&launcher::registration(round, slot), me.as_bytes())?;
        loop {
            if let Some(json) = self.store.try_get(&launcher::nodes_of(round))? {
                let closed: RoundNodes = serde_json::from_slice(&json)
                    .map_err(|e| Error::Dist(format!("round {round}: unreadable node list: {e}")))?;
                return Ok(match closed.nodes.iter().position(|&id| id == self.id) {
                    Some(node_rank) => {
                        Admission::Node { node_rank, nnodes: closed.nodes.len(), restarts: closed.restarts }
                    }
                    None => Admission::Late,
                });
            }
            let said = |message: Vec<u8>| String::from_utf8_lossy(&message).into_owned();
            if let Some(message) = self.store.try_get(&launcher::closed(round))? {
                return Ok(Admission::Closed(said(message)));
            }
            if let Some(message) = self.store.try_get(&launcher::refused(self.id))? {
                return Ok(Admission::Refused(said(message)));
            }
            if self.store.contains(launcher::DONE)? {
                return Ok(Admission::Done);
            }
            match signal.first() {
                None => std::thread::sleep(POLL),
                Some(sig) => return Ok(Admission::Interrupted(sig)),
            }
        }
    }

    /// Says that this launcher is out of the job, for the host's exit barrier; a store that
    /// is gone (the host finished) has nobody to tell.
    fn leave(&self) {
        let _ = self.store.set(&launcher::left(self.id), b"1");
    }

    /// Whether the workers of `round` stopped at a checkpoint for a joining node. A store
    /// that cannot be read (the host finished) means they did not.
    fn stopped_at_checkpoint(&self, round: usize) -> bool {
        let keys = self.raw.with_prefix(&keys::attempt(round));
        keys.and_then(|k| k.contains(worker::STOPPED_AT_CHECKPOINT)).unwrap_or(false)
    }

    /// Says how the group changed since the last round this launcher ran, and the round.
    fn announce(&mut self, round: &Round, restarts: usize) {
        let nnodes = round.spec.nnodes;
        match self.last {
            Some((_, restarts_were)) if restarts > restarts_were => {
                eprintln!("medbert-run: restarting the group ({restarts}/{})", self.spec.max_restarts)
            }
            Some((nnodes_were, _)) if nnodes != nnodes_were => {
                eprintln!("medbert-run: the group goes on with {nnodes} node(s), {nnodes_were} before")
            }
            _ => {}
        }
        eprintln!(
            "medbert-run: round {}: {nnodes} node(s), world size {}; this launcher is node {}",
            round.number,
            round.spec.world_size(),
            round.spec.node_rank
        );
        self.last = Some((nnodes, restarts));
    }
}

impl Rendezvous for ElasticRendezvous {
    fn next_round(&mut self, signal: &Signals) -> Result<Next> {
        let mut number = self.rounds.current()?;
        let (node_rank, nnodes, restarts) = loop {
            match self.join(number, signal)? {
                Admission::Node { node_rank, nnodes, restarts } => break (node_rank, nnodes, restarts),
                Admission::Late => number += 1,
                Admission::Closed(message) => {
                    eprintln!("medbert-run: error: {message}");
                    return Ok(Next::Exit(exit::FAILED));
                }
                Admission::Refused(message) => {
                    eprintln!("medbert-run: error: refused by the rendezvous: {message}");
                    return Ok(Next::Exit(exit::INVALID));
                }
                Admission::Done => {
                    eprintln!("medbert-run: the job finished before this node was admitted");
                    return Ok(Next::Exit(exit::SUCCEEDED));
                }
                Admission::Interrupted(sig) => return Ok(Next::Exit(exit::interrupted(sig))),
            }
        };
        let round = Round { number, spec: WorkerSpec { nnodes, node_rank, ..self.spec.clone() } };
        self.announce(&round, restarts);
        Ok(Next::Run(round))
    }

    fn superseded(&self, round: usize) -> bool {
        self.rounds.superseded(round)
    }

    fn share_rows(&self, round: &Round, rows: &str) -> Vec<String> {
        self.rounds.share_rows(round, rows)
    }

    fn record(&mut self, round: usize, outcome: Outcome) -> Result<Option<i32>> {
        match outcome {
            Outcome::Succeeded if self.stopped_at_checkpoint(round) => {
                eprintln!("medbert-run: the workers stopped at a checkpoint to admit a node");
                self.rounds.advance_past(round)?;
            }
            Outcome::Succeeded => {
                let _ = self.store.set(launcher::DONE, b"1");
                return Ok(Some(exit::SUCCEEDED));
            }
            Outcome::Failed { .. } => {
                self.store.set(&launcher::failed(round), b"1")?;
                self.rounds.advance_past(round)?;
            }
            // Another node's warning signal: it leaves with the checkpoint saved, the others
            // go on from it in the next round.
            Outcome::Preempted { .. } => {
                eprintln!("medbert-run: the workers stopped at a checkpoint on another node's signal");
                self.rounds.advance_past(round)?;
            }
            Outcome::Superseded | Outcome::Interrupted(_) => {}
        }
        Ok(None)
    }
}

/// An elastic launch (module docs): this launcher in the job, a heartbeat thread, the
/// coordinator's thread on the host, and the agent's loop over this launcher's rounds.
/// Returns the launcher's exit code.
pub(crate) fn launch(config: &LaunchConfig, elastic: &Elastic, signal: &Signals) -> Result<i32> {
    let (mut rdzv, hosted) = enter(config, elastic)?;
    let (addr, port, id) = (rdzv.spec.master_addr.clone(), rdzv.spec.master_port, rdzv.id);
    // The store's errors name it; others (a worker that cannot start) are as they came.
    let lost_store = |e: Error| match e {
        Error::Dist(message) => {
            Error::Dist(format!("the rendezvous store at {addr}:{port} (node 0's launcher): {message}"))
        }
        other => other,
    };
    // The heartbeat and the coordinator have connections of their own, apart from the
    // agent's waits.
    let beating = connect(&addr, port)?.with_prefix(keys::LAUNCHER)?;
    let coordinator = match hosted.is_some() {
        true => {
            Some(Coordinator::new(connect(&addr, port)?, elastic, rdzv.spec.nproc_per_node, rdzv.spec.max_restarts)?)
        }
        false => None,
    };
    let stop = &AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while !stop.load(Ordering::SeqCst) && beating.add(&launcher::heartbeat(id), 1).is_ok() {
                let until = Instant::now() + elastic.conf.keep_alive_interval;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(POLL);
                }
            }
        });
        let coordinating = coordinator.map(|coordinator| {
            scope.spawn(move || {
                let beats = coordinator.run(stop);
                if let Err(e) = &beats {
                    eprintln!("medbert-run: error: the rendezvous coordinator stopped: {e}; stopping the workers");
                    signal.note(signal_hook::consts::SIGTERM);
                }
                beats
            })
        });
        let code = agent::run(&mut rdzv, config, signal).map_err(lost_store);
        rdzv.leave();
        stop.store(true, Ordering::SeqCst);
        if let Some(Ok(Ok(beats))) = coordinating.map(|c| c.join()) {
            if signal.first().is_none() {
                wait_for_the_others_to_leave(&rdzv.store, id, beats, &elastic.conf, signal).map_err(lost_store)?;
            }
        }
        code
    })
}

/// This launcher enters the job: it hosts the store when the endpoint is this machine's (or
/// `is_host` says so; when another launcher on this machine already hosts it, it joins that
/// one, as torchrun does), takes its id (the host id 0, before it opens round 0), and says so.
/// Returns its side of the rendezvous and the store it hosts.
fn enter(config: &LaunchConfig, elastic: &Elastic) -> Result<(ElasticRendezvous, Option<Store>)> {
    let spec = &config.spec;
    let addr = spec.master_addr.as_str();
    let hosted = match hosts_here(addr, elastic.conf.is_host) {
        true => match host(addr, spec.master_port) {
            Ok(store) => Some(store),
            Err(_) if elastic.conf.is_host.is_none() => None,
            Err(e) => return Err(e),
        },
        false => None,
    };
    let port = hosted.as_ref().map_or(spec.master_port, Store::port);
    let raw = connect(addr, port)?;
    let (rounds, store) = (Rounds::of(&raw)?, raw.with_prefix(keys::LAUNCHER)?);
    let id = match hosted {
        Some(_) => {
            let id = store.add(launcher::NEXT_ID, 1)? - 1;
            rounds.open()?;
            id
        }
        None => {
            rounds.current()?;
            store.add(launcher::NEXT_ID, 1)? - 1
        }
    };
    let (min, max, nproc) = (elastic.min_nodes, elastic.max_nodes, spec.nproc_per_node);
    eprintln!(
        "medbert-run: elastic job of {min} to {max} node(s) x {nproc} worker(s), rendezvous {addr}:{port}{}",
        if hosted.is_some() { " (hosted by this launcher)" } else { "" }
    );
    let spec = WorkerSpec { master_port: port, ..spec.clone() };
    Ok((ElasticRendezvous { rounds, store, raw, id, spec, last: None }, hosted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdzv_conf_takes_torchruns_keys_and_names_a_bad_one() {
        let conf =
            RdzvConf::parse("join_timeout=10, last_call_timeout=0.5,keep_alive_interval=1,keep_alive_max_attempt=4")
                .unwrap();
        assert_eq!(conf.join_timeout, Duration::from_secs(10));
        assert_eq!(conf.last_call_timeout, Duration::from_millis(500));
        assert_eq!(conf.lost_after(), Duration::from_secs(4));
        assert_eq!(RdzvConf::parse("").unwrap(), RdzvConf::default());
        assert_eq!(RdzvConf::parse("is_host=false").unwrap().is_host, Some(false));
        let err = RdzvConf::parse("join_timeout=10,heartbeat=3").unwrap_err().to_string();
        assert!(err.contains("\"heartbeat=3\"") && err.contains("unknown key"), "{err}");
        let err = RdzvConf::parse("keep_alive_interval=-1").unwrap_err().to_string();
        assert!(err.contains("positive number of seconds"), "{err}");
    }

    #[test]
    fn the_host_is_the_launcher_on_the_endpoints_machine() {
        assert!(hosts_here("127.0.0.1", None));
        assert!(!hosts_here("192.0.2.7", None), "a TEST-NET address is nobody's here");
        assert!(!hosts_here("127.0.0.1", Some(false)));
    }
}
