//! The worker-group launcher behind `medbert-run`, with torchrun's contract: one process per
//! local slot, the same environment variables, all-or-nothing supervision and restarts.
//!
//! Deciding (which workers, with which variables) is apart from doing (spawning, watching,
//! tearing down), so the first is tested without processes.

mod elastic;

pub use elastic::{Elastic, RdzvConf};

use crate::dist::{DistEnv, Store};
use crate::error::{Error, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The shape of the job across nodes and where its rendezvous lives (torchrun's
/// `WorkerSpec` with its rendezvous settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    pub nnodes: usize,
    pub node_rank: usize,
    pub nproc_per_node: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub max_restarts: usize,
    pub run_id: String,
}

/// One worker to start: its ranks and the variables it gets (torchrun's `Worker`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub rank: usize,
    pub local_rank: usize,
    pub env: Vec<(String, String)>,
}

impl WorkerSpec {
    pub fn world_size(&self) -> usize {
        self.nnodes * self.nproc_per_node
    }

    /// The workers of this node for the given attempt (0 = first start). `omp_threads` is
    /// set as OMP_NUM_THREADS when the caller did not set it.
    pub fn workers(&self, restart_count: usize, omp_threads: Option<usize>) -> Vec<Worker> {
        (0..self.nproc_per_node)
            .map(|local_rank| {
                let rank = self.node_rank * self.nproc_per_node + local_rank;
                let dist = DistEnv {
                    rank,
                    world_size: self.world_size(),
                    local_rank,
                    local_world_size: self.nproc_per_node,
                    group_rank: self.node_rank,
                    group_world_size: self.nnodes,
                    master_addr: self.master_addr.clone(),
                    master_port: self.master_port,
                    // Node 0's launcher hosts the rendezvous store, as torchrun's agent does.
                    agent_store: true,
                    restart_count,
                    max_restarts: self.max_restarts,
                    run_id: self.run_id.clone(),
                };
                let mut env: Vec<(String, String)> = dist.vars().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                if let Some(n) = omp_threads {
                    env.push(("OMP_NUM_THREADS".to_string(), n.to_string()));
                }
                Worker { rank, local_rank, env }
            })
            .collect()
    }
}

/// Threads per worker when OMP_NUM_THREADS is unset: the node's cores split evenly.
pub fn omp_threads_per_worker(cores: usize, nproc_per_node: usize) -> usize {
    (cores / nproc_per_node.max(1)).max(1)
}

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    Signal::try_from(sig).map_or("signal", Signal::as_str)
}

/// The end of one attempt of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker exited with code 0.
    Succeeded,
    /// The first worker (by time, then rank) to fail, and how.
    Failed { rank: usize, exit: Exit },
    /// The launcher got this signal; the workers were stopped.
    Interrupted(i32),
    /// Another node's launcher restarted the job; this node's workers were stopped.
    Superseded,
}

impl Outcome {
    /// Says, for every kind of launch alike, how an attempt that did not succeed ended.
    fn say(&self) {
        match self {
            Outcome::Succeeded => {}
            Outcome::Interrupted(sig) => eprintln!("medbert-run: got signal {sig}; stopped the workers"),
            Outcome::Failed { rank, exit } => {
                eprintln!("medbert-run: rank {rank} failed first ({exit}); stopped the other workers")
            }
            Outcome::Superseded => {
                eprintln!("medbert-run: the group restarts in a new round; stopped this node's workers")
            }
        }
    }
}

/// How the supervisor watches and stops the group.
#[derive(Clone, Debug)]
pub struct Supervision {
    pub monitor_interval: Duration,
    /// Time between SIGTERM and SIGKILL when tearing the group down.
    pub term_timeout: Duration,
    /// Directory for per-rank log files (`attempt<K>_rank<R>.log`), beside the prefixed output.
    pub log_dir: Option<PathBuf>,
}

/// One started worker. It leads a process group of its own (as torchrun starts each worker
/// in a new session), so that a signal reaches everything it started, not just itself.
struct Started {
    rank: usize,
    child: Child,
    /// Set once reaped.
    status: Option<ExitStatus>,
}

impl Started {
    /// The worker's process group, numbered by its own pid.
    fn group(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn reap(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| Error::Wait { rank: self.rank, source })?;
        }
        Ok(self.status)
    }
}

/// Starts every worker, watches them, and on the first failure or an incoming signal
/// (`signal` holds its number once set) stops the rest: SIGTERM to every worker's process
/// group, then SIGKILL after the deadline. Each output line is prefixed with `[rank<R>]:`.
pub fn run_attempt(
    program: &[String],
    workers_to_start: &[Worker],
    attempt: usize,
    sup: &Supervision,
    signal: &AtomicUsize,
    superseded: &dyn Fn() -> bool,
) -> Result<Outcome> {
    let (exe, args) = program.split_first().ok_or_else(|| Error::Input("no command to run".into()))?;
    if let Some(dir) = &sup.log_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut workers: Vec<Started> = Vec::new();
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    for w in workers_to_start {
        let mut cmd = Command::new(exe);
        cmd.args(args).envs(w.env.iter().map(|(k, v)| (k, v))).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                tear_down(&mut workers, sup.term_timeout);
                return Err(Error::Spawn { program: exe.clone(), rank: w.rank, source });
            }
        };
        let log = match &sup.log_dir {
            Some(dir) => {
                let path = dir.join(format!("attempt{attempt}_rank{}.log", w.rank));
                Some(Arc::new(Mutex::new(File::create(&path).map_err(|e| Error::io(&path, e))?)))
            }
            None => None,
        };
        let prefix = format!("[rank{}]:", w.rank);
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, prefix.clone(), false, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, prefix, true, log));
        }
        workers.push(Started { rank: w.rank, child, status: None });
    }

    let outcome = loop {
        let sig = signal.load(Ordering::SeqCst);
        if sig != 0 {
            tear_down(&mut workers, sup.term_timeout);
            break Outcome::Interrupted(sig as i32);
        }
        // The first failure by time; within one check, by rank.
        let mut failed = None;
        for w in workers.iter_mut().filter(|w| w.status.is_none()) {
            if let Some(status) = w.reap()? {
                if !status.success() && failed.is_none() {
                    failed = Some(Outcome::Failed { rank: w.rank, exit: status.into() });
                }
            }
        }
        if let Some(outcome) = failed {
            tear_down(&mut workers, sup.term_timeout);
            break outcome;
        }
        if workers.iter().all(|w| w.status.is_some()) {
            break Outcome::Succeeded;
        }
        if superseded() {
            tear_down(&mut workers, sup.term_timeout);
            break Outcome::Superseded;
        }
        std::thread::sleep(sup.monitor_interval);
    };
    // A descendant that left its worker's process group may still hold a pipe open: its
    // output is not waited for.
    let until = Instant::now() + PUMP_GRACE;
    while pumps.iter().any(|p| !p.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(outcome)
}

/// How long the output of a finished group may still be flowing.
const PUMP_GRACE: Duration = Duration::from_secs(1);

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

/// The restart round the launchers of a job agree on, kept in the store node 0's launcher
/// hosts. A launcher whose workers failed moves the job to the next round; a launcher that
/// sees a newer round stops its workers and starts them again in it. So every node's workers
/// meet under the same attempt's keys however often each node failed (torchrun's dynamic
/// rendezvous negotiates its rounds the same way).
struct Rounds(Store);

const ROUND_PREFIX: &str = "medbert-run";
const ROUND_KEY: &str = "round";

/// How long a launcher waits for node 0's store to be up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(900);

impl Rounds {
    /// Node 0 opens round 0 in its store; the other nodes connect to it.
    fn join(spec: &WorkerSpec, hosted: Option<&Store>) -> Result<Rounds> {
        match hosted {
            Some(store) => {
                let rounds = Rounds(store.with_prefix(ROUND_PREFIX)?);
                rounds.0.set(ROUND_KEY, b"0")?;
                Ok(rounds)
            }
            None => {
                let client = Store::tcp(&spec.master_addr, spec.master_port, false, 0, JOIN_TIMEOUT)?;
                Ok(Rounds(client.with_prefix(ROUND_PREFIX)?))
            }
        }
    }

    fn current(&self) -> Result<usize> {
        let value = self.0.get(ROUND_KEY)?;
        String::from_utf8_lossy(&value).parse().map_err(|_| Error::Dist(format!("bad {ROUND_KEY} {value:?}")))
    }

    /// Moves the job past `round` unless another launcher already did.
    fn advance_past(&self, round: usize) -> Result<()> {
        match self.current()? {
            current if current > round => Ok(()),
            _ => self.0.set(ROUND_KEY, (round + 1).to_string().as_bytes()),
        }
    }
}

/// torchrun's `elastic_launch` in small: node 0 hosts the rendezvous store for the whole
/// launch (so it outlives every restart; each attempt keeps its keys under its own prefix),
/// then the group runs, and is restarted after a failure on any node up to `max_restarts`
/// times, every node in the same round (`Rounds`). A master port of 0 picks a free one.
/// With `elastic`, the nodes come and go ([`elastic`]'s rounds).
/// Returns the launcher's exit code: 0, 128 + the signal that interrupted it, or 1 when the
/// group failed for good.
pub fn elastic_launch(config: LaunchConfig, signal: &AtomicUsize) -> Result<i32> {
    if let Some(elastic) = config.elastic.clone() {
        return elastic::launch(config, &elastic, signal);
    }
    let LaunchConfig { mut spec, program, supervision, omp_threads, .. } = config;
    let store = match spec.node_rank {
        0 => Some(Store::tcp(&spec.master_addr, spec.master_port, true, 0, Duration::from_secs(60))?),
        _ => None,
    };
    if let Some(store) = &store {
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
    let rounds = Rounds::join(&spec, store.as_ref())?;
    let mut round = rounds.current()?;
    loop {
        let workers = spec.workers(round, omp_threads);
        // A store that cannot be read (node 0's launcher finished) restarts nothing.
        let superseded = || rounds.current().is_ok_and(|r| r > round);
        let outcome = run_attempt(&program, &workers, round, &supervision, signal, &superseded)?;
        outcome.say();
        match outcome {
            Outcome::Succeeded => return Ok(0),
            Outcome::Interrupted(sig) => return Ok(128 + sig),
            Outcome::Failed { .. } => rounds.advance_past(round)?,
            Outcome::Superseded => {}
        }
        round = rounds.current()?;
        if round > spec.max_restarts {
            eprintln!("medbert-run: error: the worker group failed after {} restart(s)", spec.max_restarts);
            return Ok(1);
        }
        eprintln!("medbert-run: restarting the group ({round}/{})", spec.max_restarts);
    }
}

/// SIGTERM to every worker's process group (also of workers that have exited: what they
/// started may live on), then SIGKILL to the groups with a process left after `deadline`;
/// returns once every worker is reaped and every group is empty.
fn tear_down(workers: &mut [Started], deadline: Duration) {
    let alive = |g: Pid| killpg(g, None).is_ok();
    for w in workers.iter() {
        let _ = killpg(w.group(), Signal::SIGTERM);
    }
    let until = Instant::now() + deadline;
    loop {
        for w in workers.iter_mut() {
            let _ = w.reap();
        }
        let left: Vec<Pid> = workers.iter().map(Started::group).filter(|&g| alive(g)).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= until {
            for g in left {
                let _ = killpg(g, Signal::SIGKILL);
            }
            for w in workers.iter_mut().filter(|w| w.status.is_none()) {
                w.status = w.child.wait().ok();
            }
            // Killed processes leave their group once their parent (the init process, for
            // orphans) has reaped them.
            let reaped = Instant::now() + Duration::from_secs(1);
            while workers.iter().any(|w| alive(w.group())) && Instant::now() < reaped {
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies a worker's stream line by line to ours (and its log file), prefixed with its rank.
fn pump(
    stream: impl Read + Send + 'static,
    prefix: String,
    is_err: bool,
    log: Option<Arc<Mutex<File>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if is_err {
                let _ = writeln!(std::io::stderr().lock(), "{prefix} {text}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{prefix} {text}");
            }
            if let Some(log) = &log {
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{text}");
                }
            }
            line.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::var;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            nnodes: 2,
            node_rank: 1,
            nproc_per_node: 3,
            master_addr: "10.1.0.1".into(),
            master_port: 29400,
            max_restarts: 2,
            run_id: "job".into(),
        }
    }

    fn value<'a>(w: &'a Worker, name: &str) -> &'a str {
        &w.env.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{name} not set")).1
    }

    #[test]
    fn second_node_workers_get_global_ranks_and_torchrun_variables() {
        let workers = spec().workers(1, Some(2));
        assert_eq!(workers.iter().map(|w| w.rank).collect::<Vec<_>>(), [3, 4, 5]);
        let w = &workers[2];
        assert_eq!(
            [
                value(w, var::RANK),
                value(w, var::LOCAL_RANK),
                value(w, var::WORLD_SIZE),
                value(w, var::LOCAL_WORLD_SIZE),
                value(w, var::GROUP_RANK),
                value(w, var::MASTER_ADDR),
                value(w, var::MASTER_PORT),
                value(w, var::RESTART_COUNT),
                value(w, var::MAX_RESTARTS),
                value(w, "OMP_NUM_THREADS"),
            ],
            ["5", "2", "6", "3", "1", "10.1.0.1", "29400", "1", "2", "2"]
        );
    }

    #[test]
    fn omp_threads_are_left_alone_when_the_user_set_them() {
        assert!(spec().workers(0, None)[0].env.iter().all(|(k, _)| k != "OMP_NUM_THREADS"));
    }

    #[test]
    fn cores_split_evenly_and_never_below_one() {
        assert_eq!(omp_threads_per_worker(8, 2), 4);
        assert_eq!(omp_threads_per_worker(2, 3), 1);
        assert_eq!(omp_threads_per_worker(7, 2), 3);
    }
}
