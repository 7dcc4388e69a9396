//! Elastic membership (`--nnodes MIN:MAX`): torchrun's c10d rendezvous in small, on the store
//! that the launcher at the rendezvous endpoint hosts.
//!
//! Every launcher takes an id, keeps a heartbeat counter in the store and registers for each
//! round; the host's coordinator closes a round once enough nodes registered (node ranks in
//! id order, so the host is node 0), watches the heartbeats while it runs, ends it when a node
//! is lost, and asks the workers to stop at their next checkpoint when a node waits to join.
//! The workers of every round resume from the newest checkpoint at the round's world size, so
//! the epoch goes on where the checkpoint left it. Rounds ended by a lost or a joining node do
//! not count against `--max-restarts`; rounds ended by a failing worker do.

use super::{run_attempt, LaunchConfig, Outcome, Rounds, WorkerSpec, JOIN_TIMEOUT, ROUND_PREFIX};
use crate::dist::{attempt_prefix, round_key, Store};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::net::{TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
const POLL: Duration = Duration::from_millis(50);

// Keys under ROUND_PREFIX, beside the round number.
const NEXT_ID: &str = "next_id";
const DONE: &str = "done";
fn heartbeat(id: i64) -> String {
    format!("heartbeat/{id}")
}
fn registered(round: usize) -> String {
    format!("round{round}/registered")
}
fn registration(round: usize, slot: i64) -> String {
    format!("round{round}/registered/{slot}")
}
fn nodes_of(round: usize) -> String {
    format!("round{round}/nodes")
}
fn closed(round: usize) -> String {
    format!("round{round}/closed")
}
fn failed(round: usize) -> String {
    format!("round{round}/failed")
}
fn refused(id: i64) -> String {
    format!("refused/{id}")
}
fn left(id: i64) -> String {
    format!("left/{id}")
}

/// How long the host keeps the store up for launchers that have not left the job yet
/// (torchrun's `exit_barrier_timeout`).
const EXIT_BARRIER_TIMEOUT: Duration = Duration::from_secs(300);

/// What the coordinator publishes when it closes a round: the launchers' ids in node-rank
/// order, and the restarts that worker failures used so far.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RoundNodes {
    nodes: Vec<i64>,
    restarts: usize,
}

/// The last value seen of each launcher's heartbeat counter, and when it last moved (by this
/// machine's clock, so the nodes' clocks need not agree).
#[derive(Default)]
struct Heartbeats(HashMap<i64, (i64, Instant)>);

impl Heartbeats {
    fn poll(&mut self, store: &Store) -> Result<()> {
        let now = Instant::now();
        for id in 0..store.add(NEXT_ID, 0)? {
            let beat = store.add(&heartbeat(id), 0)?;
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

/// The host launcher's thread that closes rounds and watches them.
struct Coordinator<'a> {
    rounds: Rounds,
    /// The store without prefix, for the workers' keys of each round.
    raw: Store,
    elastic: &'a Elastic,
    nproc: usize,
    max_restarts: usize,
    beats: Heartbeats,
}

impl Coordinator<'_> {
    fn store(&self) -> &Store {
        &self.rounds.0
    }

    /// Rounds until the job is done or cannot go on.
    fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let (mut round, mut restarts, mut previous) = (self.rounds.current()?, 0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let nodes = match self.form(round, stop)? {
                Some(Ok(nodes)) => nodes,
                Some(Err(message)) => return self.store().set(&closed(round), message.as_bytes()),
                None => return Ok(()),
            };
            let gone: Vec<usize> = (0..previous.len()).filter(|&rank| !nodes.contains(&previous[rank])).collect();
            if !gone.is_empty() {
                eprintln!(
                    "medbert-run: node(s) {gone:?} of round {} sent no heartbeat for {:?}: round {round} goes on without them",
                    round - 1,
                    self.elastic.conf.lost_after()
                );
            }
            let lost = !gone.is_empty();
            if round > 0 && !lost && self.store().contains(&failed(round - 1))? {
                restarts += 1;
            }
            if restarts > self.max_restarts {
                let message = format!("the worker group failed after {} restart(s)", self.max_restarts);
                return self.store().set(&closed(round), message.as_bytes());
            }
            let json = serde_json::to_vec(&RoundNodes { nodes: nodes.clone(), restarts }).unwrap_or_default();
            self.store().set(&nodes_of(round), &json)?;
            if !self.watch(round, &nodes, stop)? {
                return Ok(());
            }
            (previous, round) = (nodes, round + 1);
        }
        Ok(())
    }

    /// The launchers registered for `round`, by id, with their processes per node.
    fn registrants(&self, round: usize) -> Result<Vec<(i64, usize)>> {
        let mut out = Vec::new();
        for slot in 0..self.store().add(&registered(round), 0)? {
            let text = String::from_utf8_lossy(&self.store().get(&registration(round, slot))?).into_owned();
            let mut fields = text.split_whitespace().map(str::parse::<i64>);
            if let (Some(Ok(id)), Some(Ok(nproc))) = (fields.next(), fields.next()) {
                out.push((id, nproc as usize));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Waits until `round` can close: MAX nodes; or MIN and every live launcher (after the
    /// first round) or the last call (the first round). The ids in node-rank order, an
    /// error message when MIN nodes did not come within the join timeout, or None once the
    /// launcher stops.
    fn form(&mut self, round: usize, stop: &AtomicBool) -> Result<Option<std::result::Result<Vec<i64>, String>>> {
        let (conf, min, max) = (&self.elastic.conf, self.elastic.min_nodes, self.elastic.max_nodes);
        let (started, mut enough_since) = (Instant::now(), None);
        while !stop.load(Ordering::SeqCst) {
            self.beats.poll(&self.rounds.0)?;
            let mut live = Vec::new();
            for (id, nproc) in self.registrants(round)? {
                if nproc != self.nproc {
                    let why = format!(
                        "this launcher starts {nproc} worker(s) but the job's nodes start {} each (--nproc-per-node)",
                        self.nproc
                    );
                    self.store().set(&refused(id), why.as_bytes())?;
                } else if self.beats.alive(id, conf.lost_after()) {
                    live.push(id);
                }
            }
            if live.len() >= max {
                live.truncate(max);
                return Ok(Some(Ok(live)));
            }
            if live.len() >= min {
                let since = *enough_since.get_or_insert_with(Instant::now);
                let mut others = self.beats.alive_ids(conf.lost_after());
                let everyone =
                    others.all(|id| live.contains(&id) || self.store().contains(&refused(id)).unwrap_or(true));
                if (round > 0 && everyone) || since.elapsed() >= conf.last_call_timeout {
                    return Ok(Some(Ok(live)));
                }
            } else {
                enough_since = None;
            }
            if started.elapsed() >= conf.join_timeout {
                return Ok(Some(Err(format!(
                    "round {round} had {} of the {min} node(s) it needs (--nnodes {min}:{max}) after join_timeout {:?}",
                    live.len(),
                    conf.join_timeout
                ))));
            }
            std::thread::sleep(POLL);
        }
        Ok(None)
    }

    /// While `round` runs: ends it when one of its `nodes` is lost, and asks its workers to
    /// stop at their next checkpoint when a node waits for the next round and there is room.
    /// False once the job is done or the launcher stops.
    fn watch(&mut self, round: usize, nodes: &[i64], stop: &AtomicBool) -> Result<bool> {
        let lost_after = self.elastic.conf.lost_after();
        let mut asked = false;
        loop {
            std::thread::sleep(POLL);
            if stop.load(Ordering::SeqCst) || self.store().contains(DONE)? {
                return Ok(false);
            }
            if self.rounds.current()? > round {
                return Ok(true);
            }
            self.beats.poll(&self.rounds.0)?;
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
                    self.raw.with_prefix(&attempt_prefix(round))?.set(round_key::STOP_AT_CHECKPOINT, b"1")?;
                    asked = true;
                }
            }
        }
    }
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
    Interrupted(usize),
}

/// A launcher of an elastic job: the connection to the store and its id there.
struct Member {
    rounds: Rounds,
    raw: Store,
    id: i64,
    nproc: usize,
}

impl Member {
    fn store(&self) -> &Store {
        &self.rounds.0
    }

    fn join(&self, round: usize, signal: &AtomicUsize) -> Result<Admission> {
        let slot = self.store().add(&registered(round), 1)? - 1;
        self.store().set(&registration(round, slot), format!("{} {}", self.id, self.nproc).as_bytes())?;
        loop {
            if let Some(json) = self.store().try_get(&nodes_of(round))? {
                let closed: RoundNodes = serde_json::from_slice(&json)
                    .map_err(|e| Error::Dist(format!("round {round}: unreadable node list: {e}")))?;
                return Ok(match closed.nodes.iter().position(|&id| id == self.id) {
                    Some(node_rank) => {
                        Admission::Node { node_rank, nnodes: closed.nodes.len(), restarts: closed.restarts }
                    }
                    None => Admission::Late,
                });
            }
            if let Some(message) = self.store().try_get(&closed(round))? {
                return Ok(Admission::Closed(String::from_utf8_lossy(&message).into_owned()));
            }
            if let Some(message) = self.store().try_get(&refused(self.id))? {
                return Ok(Admission::Refused(String::from_utf8_lossy(&message).into_owned()));
            }
            if self.store().contains(DONE)? {
                return Ok(Admission::Done);
            }
            match signal.load(Ordering::SeqCst) {
                0 => std::thread::sleep(POLL),
                sig => return Ok(Admission::Interrupted(sig)),
            }
        }
    }

    /// Says that this launcher is out of the job, for the host's exit barrier; a store that
    /// is gone (the host finished) has nobody to tell.
    fn leave(&self) {
        let _ = self.store().set(&left(self.id), b"1");
    }

    /// Whether the workers of `round` stopped at a checkpoint for a joining node. A store
    /// that cannot be read (the host finished) means they did not.
    fn stopped_at_checkpoint(&self, round: usize) -> bool {
        let key = self.raw.with_prefix(&attempt_prefix(round));
        key.and_then(|k| k.contains(round_key::STOPPED_AT_CHECKPOINT)).unwrap_or(false)
    }
}

/// An elastic launch (module docs). Returns the launcher's exit code as `elastic_launch` does.
pub(super) fn launch(config: LaunchConfig, elastic: &Elastic, signal: &AtomicUsize) -> Result<i32> {
    let LaunchConfig { spec, program, supervision, omp_threads, .. } = config;
    let (addr, nproc) = (spec.master_addr.clone(), spec.nproc_per_node);
    let hosted = match hosts_here(&addr, elastic.conf.is_host) {
        true => match Store::tcp(&addr, spec.master_port, true, 0, Duration::from_secs(60)) {
            Ok(store) => Some(store),
            // Another launcher on this machine hosts it (torchrun falls back the same way).
            Err(_) if elastic.conf.is_host.is_none() => None,
            Err(e) => return Err(e),
        },
        false => None,
    };
    let port = hosted.as_ref().map_or(spec.master_port, Store::port);
    // The store's errors name it; others (a worker that cannot start) are as they came.
    let lost_store = |e: Error| match e {
        Error::Dist(message) => {
            Error::Dist(format!("the rendezvous store at {addr}:{port} (node 0's launcher): {message}"))
        }
        other => other,
    };
    let connect = || -> Result<Store> { Store::tcp(&addr, port, false, 0, JOIN_TIMEOUT) };
    let raw = connect()?;
    let rounds = Rounds(raw.with_prefix(ROUND_PREFIX)?);
    // The host takes id 0 before it opens round 0; the others take theirs after it did.
    let id = match hosted {
        Some(_) => {
            let id = rounds.0.add(NEXT_ID, 1)? - 1;
            rounds.0.set(super::ROUND_KEY, b"0")?;
            id
        }
        None => {
            rounds.current()?;
            rounds.0.add(NEXT_ID, 1)? - 1
        }
    };
    let (min, max) = (elastic.min_nodes, elastic.max_nodes);
    eprintln!(
        "medbert-run: elastic job of {min} to {max} node(s) x {nproc} worker(s), rendezvous {addr}:{port}{}",
        if hosted.is_some() { " (hosted by this launcher)" } else { "" }
    );
    let member = Member { rounds, raw, id, nproc };
    // The heartbeat and the coordinator have connections of their own, apart from this
    // thread's waits.
    let beating = connect()?.with_prefix(ROUND_PREFIX)?;
    let coordinator = match hosted.is_some() {
        true => Some({
            let raw = connect()?;
            Coordinator {
                rounds: Rounds(raw.with_prefix(ROUND_PREFIX)?),
                raw,
                elastic,
                nproc,
                max_restarts: spec.max_restarts,
                beats: Heartbeats::default(),
            }
        }),
        false => None,
    };
    let stop = &AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while !stop.load(Ordering::SeqCst) && beating.add(&heartbeat(id), 1).is_ok() {
                let until = Instant::now() + elastic.conf.keep_alive_interval;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(POLL);
                }
            }
        });
        let coordinating = coordinator.map(|mut coordinator| {
            scope.spawn(move || {
                if let Err(e) = coordinator.run(stop) {
                    eprintln!("medbert-run: error: the rendezvous coordinator stopped: {e}; stopping the workers");
                    signal.store(signal_hook::consts::SIGTERM as usize, Ordering::SeqCst);
                }
                coordinator.beats
            })
        });
        let code = rounds_of(&member, &spec, &program, &supervision, omp_threads, signal).map_err(lost_store);
        member.leave();
        stop.store(true, Ordering::SeqCst);
        if let Some(Ok(beats)) = coordinating.map(|c| c.join()) {
            if signal.load(Ordering::SeqCst) == 0 {
                wait_for_the_others_to_leave(&member, beats, &elastic.conf, signal).map_err(lost_store)?;
            }
        }
        code
    })
}

/// torchrun's exit barrier, on the host: the store stays up until every other launcher has
/// left the job (seen its end, the run's failure or its refusal) or is lost, so none finds
/// it gone while it still reads it. Bounded by [`EXIT_BARRIER_TIMEOUT`] and by a signal.
fn wait_for_the_others_to_leave(
    member: &Member,
    mut beats: Heartbeats,
    conf: &RdzvConf,
    signal: &AtomicUsize,
) -> Result<()> {
    let (started, mut said) = (Instant::now(), false);
    loop {
        beats.poll(member.store())?;
        let mut staying = Vec::new();
        for id in beats.alive_ids(conf.lost_after()).filter(|&id| id != member.id) {
            if !member.store().contains(&left(id))? {
                staying.push(id);
            }
        }
        if staying.is_empty() || signal.load(Ordering::SeqCst) != 0 {
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

/// This launcher's rounds: register, run the round's workers, and go on until the job ends.
fn rounds_of(
    member: &Member,
    spec: &WorkerSpec,
    program: &[String],
    supervision: &super::Supervision,
    omp_threads: Option<usize>,
    signal: &AtomicUsize,
) -> Result<i32> {
    let (mut round, mut last) = (member.rounds.current()?, None::<(usize, usize)>);
    loop {
        let (node_rank, nnodes, restarts) = match member.join(round, signal)? {
            Admission::Node { node_rank, nnodes, restarts } => (node_rank, nnodes, restarts),
            Admission::Late => {
                round += 1;
                continue;
            }
            Admission::Closed(message) => {
                eprintln!("medbert-run: error: {message}");
                return Ok(1);
            }
            Admission::Refused(message) => {
                eprintln!("medbert-run: error: refused by the rendezvous: {message}");
                return Ok(2);
            }
            Admission::Done => {
                eprintln!("medbert-run: the job finished before this node was admitted");
                return Ok(0);
            }
            Admission::Interrupted(sig) => return Ok(128 + sig as i32),
        };
        let round_spec = WorkerSpec { nnodes, node_rank, ..spec.clone() };
        match last {
            Some((_, restarts_were)) if restarts > restarts_were => {
                eprintln!("medbert-run: restarting the group ({restarts}/{})", spec.max_restarts)
            }
            Some((nnodes_were, _)) if nnodes != nnodes_were => {
                eprintln!("medbert-run: the group goes on with {nnodes} node(s), {nnodes_were} before")
            }
            _ => {}
        }
        eprintln!(
            "medbert-run: round {round}: {nnodes} node(s), world size {}; this launcher is node {node_rank}",
            round_spec.world_size()
        );
        last = Some((nnodes, restarts));
        let workers = round_spec.workers(round, omp_threads);
        let superseded = || member.rounds.current().is_ok_and(|r| r > round);
        let outcome = run_attempt(program, &workers, round, supervision, signal, &superseded)?;
        outcome.say();
        match outcome {
            Outcome::Succeeded if member.stopped_at_checkpoint(round) => {
                eprintln!("medbert-run: the workers stopped at a checkpoint to admit a node");
                member.rounds.advance_past(round)?;
            }
            Outcome::Succeeded => {
                let _ = member.store().set(DONE, b"1");
                return Ok(0);
            }
            Outcome::Interrupted(sig) => return Ok(128 + sig),
            Outcome::Failed { .. } => {
                member.store().set(&failed(round), b"1")?;
                member.rounds.advance_past(round)?;
            }
            Outcome::Superseded => {}
        }
        round = member.rounds.current()?;
    }
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
