//! The host launcher's side of an elastic rendezvous: the coordinator that forms each round
//! from the registered launchers whose heartbeats move, watches the round while it runs, and
//! at the end keeps the store up until the other launchers have left (the exit barrier).

use super::elastic::{Elastic, RdzvConf, RoundNodes, POLL};
use super::Rounds;
use crate::dist::keys::{self, launcher, worker};
use crate::dist::Store;
use crate::error::Result;
use crate::launch::Signals;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the host keeps the store up for launchers that have not left the job yet
/// (torchrun's `exit_barrier_timeout`).
const EXIT_BARRIER_TIMEOUT: Duration = Duration::from_secs(300);

/// The last value seen of each launcher's heartbeat counter, and when it last moved (by this
/// machine's clock, so the nodes' clocks need not agree).
#[derive(Default)]
pub(super) struct Heartbeats(HashMap<i64, (i64, Instant)>);

impl Heartbeats {
    fn poll(&mut self, store: &Store) -> Result<()> {
        let now = Instant::now();
        for id in 0..store.add(launcher::NEXT_ID, 0)? {
            let beat = store.add(&launcher::heartbeat(id), 0)?;
            let seen = self.0.entry(id).or_insert((beat, now));
            if seen.0 != beat {
                *seen = (beat, now);
            }
        }
        Ok(())
    }

    fn alive(&self, id: i64, lost_after: Duration) -> bool {
        self.0.get(&id).is_some_and(|(_, moved)| moved.elapsed() < lost_after)
    }

    fn alive_ids(&self, lost_after: Duration) -> impl Iterator<Item = i64> + '_ {
        self.0.keys().copied().filter(move |&id| self.alive(id, lost_after))
    }
}

/// How forming a round ended.
enum Formed {
    /// The launchers' ids in node-rank order.
    Nodes(Vec<i64>),
    /// Fewer than MIN nodes came within the join timeout: why the job ends.
    TooFew(String),
    /// The host launcher stops.
    Stopped,
}

/// The host launcher's thread that closes rounds and watches them.
pub(super) struct Coordinator<'a> {
    rounds: Rounds,
    /// The launchers' keys (the same view as `rounds`').
    store: Store,
    /// The store without prefix, for the workers' keys of each round.
    raw: Store,
    elastic: &'a Elastic,
    nproc: usize,
    max_restarts: usize,
    beats: Heartbeats,
}

impl<'a> Coordinator<'a> {
    pub(super) fn new(raw: Store, elastic: &'a Elastic, nproc: usize, max_restarts: usize) -> Result<Self> {
        let store = raw.with_prefix(keys::LAUNCHER)?;
        let rounds = Rounds::of(&raw)?;
        Ok(Coordinator { rounds, store, raw, elastic, nproc, max_restarts, beats: Heartbeats::default() })
    }

    /// Rounds until the job is done or cannot go on; returns the heartbeats it saw, for the
    /// exit barrier.
    pub(super) fn run(mut self, stop: &AtomicBool) -> Result<Heartbeats> {
        let (mut round, mut restarts, mut previous) = (self.rounds.current()?, 0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let nodes = match self.form(round, stop)? {
                Formed::Nodes(nodes) => nodes,
                Formed::TooFew(message) => {
                    self.store.set(&launcher::closed(round), message.as_bytes())?;
                    break;
                }
                Formed::Stopped => break,
            };
            let gone: Vec<usize> = (0..previous.len()).filter(|&rank| !nodes.contains(&previous[rank])).collect();
            if !gone.is_empty() {
                eprintln!(
                    "medbert-run: node(s) {gone:?} of round {} sent no heartbeat for {:?}: round {round} goes on without them",
                    round - 1,
                    self.elastic.conf.lost_after()
                );
            }
            if round > 0 && gone.is_empty() && self.store.contains(&launcher::failed(round - 1))? {
                restarts += 1;
            }
            if restarts > self.max_restarts {
                let message = format!("the worker group failed after {} restart(s)", self.max_restarts);
                self.store.set(&launcher::closed(round), message.as_bytes())?;
                break;
            }
            let json = serde_json::to_vec(&RoundNodes { nodes: nodes.clone(), restarts }).unwrap_or_default();
            self.store.set(&launcher::nodes_of(round), &json)?;
            if !self.watch(round, &nodes, stop)? {
                break;
            }
            (previous, round) = (nodes, round + 1);
        }
        Ok(self.beats)
    }

    /// The launchers registered for `round`, by id, with their processes per node.
    fn registrants(&self, round: usize) -> Result<Vec<(i64, usize)>> {
        let mut out = Vec::new();
        for slot in 0..self.store.add(&launcher::registered(round), 0)? {
            let text = String::from_utf8_lossy(&self.store.get(&launcher::registration(round, slot))?).into_owned();
            let mut fields = text.split_whitespace().map(str::parse::<i64>);
            if let (Some(Ok(id)), Some(Ok(nproc))) = (fields.next(), fields.next()) {
                out.push((id, nproc as usize));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Whether every live launcher is in `live` or was refused.
    fn everyone_in(&self, live: &[i64]) -> Result<bool> {
        for id in self.beats.alive_ids(self.elastic.conf.lost_after()) {
            if !live.contains(&id) && !self.store.contains(&launcher::refused(id))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits until `round` can close: MAX nodes; or MIN and every live launcher (after the
    /// first round) or the last call (the first round).
    fn form(&mut self, round: usize, stop: &AtomicBool) -> Result<Formed> {
        let (conf, min, max) = (&self.elastic.conf, self.elastic.min_nodes, self.elastic.max_nodes);
        let (started, mut enough_since) = (Instant::now(), None);
        while !stop.load(Ordering::SeqCst) {
            self.beats.poll(&self.store)?;
            let mut live = Vec::new();
            for (id, nproc) in self.registrants(round)? {
                if nproc != self.nproc {
                    let why = format!(
                        "this launcher starts {nproc} worker(s) but the job's nodes start {} each (--nproc-per-node)",
                        self.nproc
                    );
                    self.store.set(&launcher::refused(id), why.as_bytes())?;
                } else if self.beats.alive(id, conf.lost_after()) {
                    live.push(id);
                }
            }
            if live.len() >= max {
                live.truncate(max);
                return Ok(Formed::Nodes(live));
            }
            if live.len() >= min {
                let since = *enough_since.get_or_insert_with(Instant::now);
                if (round > 0 && self.everyone_in(&live)?) || since.elapsed() >= conf.last_call_timeout {
                    return Ok(Formed::Nodes(live));
                }
            } else {
                enough_since = None;
            }
            if started.elapsed() >= conf.join_timeout {
                return Ok(Formed::TooFew(format!(
                    "round {round} had {} of the {min} node(s) it needs (--nnodes {min}:{max}) after join_timeout {:?}",
                    live.len(),
                    conf.join_timeout
                )));
            }
            std::thread::sleep(POLL);
        }
        Ok(Formed::Stopped)
    }

    /// While `round` runs: ends it when one of its `nodes` is lost, and asks its workers to
    /// stop at their next checkpoint when a node waits for the next round and there is room.
    /// False once the job is done or the launcher stops.
    fn watch(&mut self, round: usize, nodes: &[i64], stop: &AtomicBool) -> Result<bool> {
        let lost_after = self.elastic.conf.lost_after();
        let mut asked = false;
        loop {
            std::thread::sleep(POLL);
            if stop.load(Ordering::SeqCst) || self.store.contains(launcher::DONE)? {
                return Ok(false);
            }
            if self.rounds.current()? > round {
                return Ok(true);
            }
            self.beats.poll(&self.store)?;
            if let Some(rank) = nodes.iter().position(|&id| !self.beats.alive(id, lost_after)) {
                eprintln!(
                    "medbert-run: node {rank} sent no heartbeat for {lost_after:?}: it is lost; the group restarts without it"
                );
                self.rounds.advance_past(round)?;
                return Ok(true);
            }
            if !asked && nodes.len() < self.elastic.max_nodes {
                let waiting = self
                    .registrants(round + 1)?
                    .into_iter()
                    .any(|(id, nproc)| !nodes.contains(&id) && nproc == self.nproc && self.beats.alive(id, lost_after));
                if waiting {
                    eprintln!("medbert-run: a node asks to join: the group stops at its next checkpoint to admit it");
                    self.raw.with_prefix(&keys::attempt(round))?.set(worker::STOP_AT_CHECKPOINT, b"1")?;
                    asked = true;
                }
            }
        }
    }
}

/// torchrun's exit barrier, on the host: the store (`store`, the launchers' keys) stays up
/// until every other launcher has left the job (seen its end, the run's failure or its
/// refusal) or is lost, so none finds it gone while it still reads it. Bounded by
/// [`EXIT_BARRIER_TIMEOUT`] and by a signal.
pub(super) fn wait_for_the_others_to_leave(
    store: &Store,
    me: i64,
    mut beats: Heartbeats,
    conf: &RdzvConf,
    signal: &Signals,
) -> Result<()> {
    let (started, mut said) = (Instant::now(), false);
    loop {
        beats.poll(store)?;
        let mut staying = Vec::new();
        for id in beats.alive_ids(conf.lost_after()).filter(|&id| id != me) {
            if !store.contains(&launcher::left(id))? {
                staying.push(id);
            }
        }
        if staying.is_empty() || signal.first().is_some() {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= EXIT_BARRIER_TIMEOUT {
            eprintln!(
                "medbert-run: warning: launcher(s) {staying:?} still in the job after {waited:?}; closing the rendezvous store"
            );
            return Ok(());
        }
        if !said && waited >= conf.keep_alive_interval {
            eprintln!("medbert-run: keeping the rendezvous store up until launcher(s) {staying:?} leave the job");
            said = true;
        }
        std::thread::sleep(POLL);
    }
}
