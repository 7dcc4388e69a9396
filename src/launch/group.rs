//! The worker group of one round: started (one process group per worker, output prefixed
//! with its rank), supervised (all-or-nothing) and torn down (SIGTERM, a deadline, SIGKILL).

use super::Worker;
use crate::dist::position::{self, Phase, Position};
use crate::error::{Error, Result};
use crate::launch::Signals;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Stopped by the launcher: no step finished for this many seconds (`--hang-timeout`).
    Hung(u64),
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
            Exit::Signal(s) => write!(f, "signal {s} ({})", crate::train::preempt::name(*s)),
            Exit::Hung(s) => write!(f, "stopped by the launcher: no step finished for {s} s (--hang-timeout)"),
        }
    }
}

/// The end of one round of the group.
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
    /// The workers saved a checkpoint on a warning signal and exited with
    /// [`exit::PREEMPTED`](super::exit::PREEMPTED): the launcher's own signal (forwarded to
    /// them), or None where a worker got one directly.
    Preempted { signal: Option<i32> },
}

impl Outcome {
    /// Says, for every kind of launch alike, how a round that did not succeed ended.
    pub fn say(&self) {
        match self {
            Outcome::Succeeded => {}
            Outcome::Interrupted(sig) => eprintln!("medbert-run: got signal {sig}; stopped the workers"),
            Outcome::Failed { rank, exit } => {
                eprintln!("medbert-run: rank {rank} failed first ({exit}); stopped the other workers")
            }
            Outcome::Superseded => {
                eprintln!("medbert-run: the group restarts in a new round; stopped this node's workers")
            }
            Outcome::Preempted { signal } => eprintln!(
                "medbert-run: the workers saved a checkpoint on {} and stopped",
                signal.map_or_else(|| "a worker's warning signal".to_string(), |s| format!("signal {s}"))
            ),
        }
    }
}

/// How the supervisor watches and stops the group.
#[derive(Clone, Debug)]
pub struct Supervision {
    pub monitor_interval: Duration,
    /// Time between SIGTERM and SIGKILL when tearing the group down after a failure.
    pub term_timeout: Duration,
    /// Time the workers have, after the launcher forwards a signal to them (or a worker
    /// stopped on one), to save a checkpoint and exit before SIGKILL.
    pub signal_timeout: Duration,
    /// `--hang-timeout`.
    pub hang_timeout: Option<Duration>,
    /// Where the workers keep their position files (`dist::position`).
    pub positions: Option<PathBuf>,
    /// Directory for per-rank log files (`attempt<K>_rank<R>.log`), beside the prefixed output.
    pub log_dir: Option<PathBuf>,
}

/// One started worker. It leads a process group of its own (as torchrun starts each worker
/// in a new session), so that a signal reaches everything it started, not just itself.
struct Started {
    rank: usize,
    node: usize,
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

/// The running workers of one round and the threads that copy their output.
pub struct WorkerGroup<'a> {
    workers: Vec<Started>,
    pumps: Vec<JoinHandle<()>>,
    sup: &'a Supervision,
}

/// How long the output of a finished group may still be flowing.
const PUMP_GRACE: Duration = Duration::from_secs(1);

impl<'a> WorkerGroup<'a> {
    /// Starts `program` once per worker with its variables; each output line is prefixed with
    /// `[rank<R>]:` (and copied to `attempt<round>_rank<R>.log` under the log directory). A
    /// worker that cannot start stops those already started.
    pub fn start(program: &[String], workers: &[Worker], round: usize, sup: &'a Supervision) -> Result<Self> {
        let (exe, args) = program.split_first().ok_or_else(|| Error::Input("no command to run".into()))?;
        if let Some(dir) = &sup.log_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut group = WorkerGroup { workers: Vec::new(), pumps: Vec::new(), sup };
        for w in workers {
            let mut cmd = Command::new(exe);
            cmd.args(args).envs(w.env.iter().map(|(k, v)| (k, v))).stdout(Stdio::piped()).stderr(Stdio::piped());
            if let Some(dir) = &sup.positions {
                cmd.env(position::FILE_VAR, position_file(dir, w.rank));
            }
            cmd.process_group(0);
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(source) => {
                    group.stop();
                    return Err(Error::Spawn { program: exe.clone(), rank: w.rank, source });
                }
            };
            let log = match &sup.log_dir {
                Some(dir) => {
                    let path = dir.join(format!("attempt{round}_rank{}.log", w.rank));
                    Some(Arc::new(Mutex::new(File::create(&path).map_err(|e| Error::io(&path, e))?)))
                }
                None => None,
            };
            let prefix = format!("[rank{}]:", w.rank);
            if let Some(out) = child.stdout.take() {
                group.pumps.push(pump(out, prefix.clone(), false, log.clone()));
            }
            if let Some(err) = child.stderr.take() {
                group.pumps.push(pump(err, prefix, true, log));
            }
            group.workers.push(Started { rank: w.rank, node: w.node, child, status: None });
        }
        Ok(group)
    }

    /// Watches the workers until they all succeed, one fails, the launcher gets a signal,
    /// the workers stop at a checkpoint on a worker's warning signal, or `superseded` says a
    /// newer round began; in all but the first case the group is torn down.
    /// `share` gives this node's rows of the position table to the other nodes and returns
    /// every node's, for one table of the whole job.
    pub fn supervise(
        mut self,
        signal: &Signals,
        superseded: &dyn Fn() -> bool,
        share: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<Outcome> {
        // When the first worker stopped at a checkpoint on a warning signal.
        let mut preempting: Option<Instant> = None;
        let mut progress = Progress::default();
        let outcome = loop {
            if let Some(sig) = signal.first() {
                break self.stop_on_signal(sig, signal);
            }
            // The first failure by time; within one check, by rank.
            let mut failed = None;
            for w in self.workers.iter_mut().filter(|w| w.status.is_none()) {
                if let Some(status) = w.reap()? {
                    if preempted(status) {
                        preempting.get_or_insert_with(Instant::now);
                    } else if !status.success() && failed.is_none() {
                        failed = Some(Outcome::Failed { rank: w.rank, exit: status.into() });
                    }
                }
            }
            if let Some(outcome) = failed {
                self.report_positions(share);
                self.stop();
                break outcome;
            }
            if let Some(stalled) = self.sup.hang_timeout.and_then(|t| progress.stalled(&self.positions(), t)) {
                let behind = self.report_positions(share);
                self.stop();
                let rank = behind.or_else(|| self.workers.first().map(|w| w.rank)).unwrap_or(0);
                break Outcome::Failed { rank, exit: Exit::Hung(stalled.as_secs()) };
            }
            if self.workers.iter().all(|w| w.status.is_some()) {
                break match preempting {
                    Some(_) => Outcome::Preempted { signal: None },
                    None => Outcome::Succeeded,
                };
            }
            // The checkpoint is whole once one worker stopped (they leave together): the
            // others get the signal timeout to follow.
            if preempting.is_some_and(|since| since.elapsed() >= self.sup.signal_timeout) {
                self.stop();
                break Outcome::Preempted { signal: None };
            }
            if superseded() {
                self.stop();
                break Outcome::Superseded;
            }
            std::thread::sleep(self.sup.monitor_interval);
        };
        // A descendant that left its worker's process group may still hold a pipe open: its
        // output is not waited for.
        let until = Instant::now() + PUMP_GRACE;
        while self.pumps.iter().any(|p| !p.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(outcome)
    }

    /// The launcher's signal `sig`, forwarded to every worker: they have the signal timeout
    /// to save a checkpoint and exit (a second signal to the launcher cuts it short), then
    /// SIGKILL. Preempted when every worker exited saying it saved one.
    fn stop_on_signal(&mut self, sig: i32, signal: &Signals) -> Outcome {
        let forwarded = Signal::try_from(sig).unwrap_or(Signal::SIGTERM);
        self.tear_down(forwarded, self.sup.signal_timeout, &|| signal.repeated());
        match self.workers.iter().all(|w| w.status.is_some_and(preempted)) {
            true => Outcome::Preempted { signal: Some(sig) },
            false => Outcome::Interrupted(sig),
        }
    }

    /// Each worker's position (None before it wrote one, or without position files).
    fn positions(&self) -> Vec<Option<Position>> {
        let dir = self.sup.positions.as_deref();
        self.workers.iter().map(|w| dir.and_then(|d| Position::read(&position_file(d, w.rank)))).collect()
    }

    /// Prints where every worker of the job is (this node's, and the rows the other nodes
    /// share), and which rank(s) the others wait for; returns the first of those.
    fn report_positions(&mut self, share: &dyn Fn(&str) -> Vec<String>) -> Option<usize> {
        for w in self.workers.iter_mut() {
            let _ = w.reap();
        }
        let rows: Vec<Row> = self
            .workers
            .iter()
            .zip(self.positions())
            .map(|(w, at)| Row { rank: w.rank, node: w.node, pid: w.child.id(), at, exit: w.status.map(Exit::from) })
            .collect();
        if rows.iter().all(|r| r.at.is_none()) {
            return None;
        }
        let mine = serde_json::to_string(&rows).unwrap_or_default();
        let mut rows: Vec<Row> =
            share(&mine).iter().flat_map(|json| serde_json::from_str::<Vec<Row>>(json).unwrap_or_default()).collect();
        rows.sort_by_key(|r| r.rank);
        let (table, behind) = position_table(&rows, position::now_ms());
        eprint!("{table}");
        behind
    }

    /// Stops the group after a failure: SIGTERM, then SIGKILL after `--term-timeout`.
    fn stop(&mut self) {
        self.tear_down(Signal::SIGTERM, self.sup.term_timeout, &|| false);
    }

    /// `first` to every worker's process group (also of workers that have exited: what they
    /// started may live on), then SIGKILL to the groups with a process left after `grace` (or
    /// once `cut_short` says so); returns once every worker is reaped and every group is empty.
    fn tear_down(&mut self, first: Signal, grace: Duration, cut_short: &dyn Fn() -> bool) {
        let alive = |g: Pid| killpg(g, None).is_ok();
        for w in &self.workers {
            let _ = killpg(w.group(), first);
            // A stopped worker acts on the signal only once it runs again.
            let _ = killpg(w.group(), Signal::SIGCONT);
        }
        let until = Instant::now() + grace;
        loop {
            for w in self.workers.iter_mut() {
                let _ = w.reap();
            }
            let left: Vec<Pid> = self.workers.iter().map(Started::group).filter(|&g| alive(g)).collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= until || cut_short() {
                for g in left {
                    let _ = killpg(g, Signal::SIGKILL);
                }
                for w in self.workers.iter_mut().filter(|w| w.status.is_none()) {
                    w.status = w.child.wait().ok();
                }
                // Killed processes leave their group once their parent (the init process, for
                // orphans) has reaped them.
                let reaped = Instant::now() + Duration::from_secs(1);
                while self.workers.iter().any(|w| alive(w.group())) && Instant::now() < reaped {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn position_file(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank{rank}"))
}

/// Whether the workers still finish steps: the time since the furthest step any of them
/// works on last grew, not counting the set-up, evaluation and saving.
#[derive(Default)]
struct Progress {
    furthest: u64,
    since: Option<Instant>,
}

impl Progress {
    /// How long no step finished, once that is `timeout` or more.
    fn stalled(&mut self, positions: &[Option<Position>], timeout: Duration) -> Option<Duration> {
        let busy = |p: &Position| matches!(p.phase, Phase::SettingUp | Phase::Evaluation | Phase::Saving);
        let furthest = positions.iter().flatten().map(|p| p.step).max().unwrap_or(0);
        let now = Instant::now();
        if furthest > self.furthest || positions.iter().flatten().any(busy) || self.since.is_none() {
            (self.furthest, self.since) = (furthest, Some(now));
        }
        self.since.map(|since| now - since).filter(|stalled| *stalled >= timeout)
    }
}

/// One worker in the position table.
#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    rank: usize,
    node: usize,
    pid: u32,
    at: Option<Position>,
    exit: Option<Exit>,
}

/// The table of `rows` (rank, node, pid, step, phase, seconds in it) and a sentence naming
/// the rank(s) behind: those that got least far (step, then phase, then the bucket waited
/// for), unless every rank got as far; and the first of them.
fn position_table(rows: &[Row], now_ms: u64) -> (String, Option<usize>) {
    let mut out = String::from(
        "medbert-run: where the workers are:\n  rank  node  pid      step  phase                 seconds\n",
    );
    for r in rows {
        let (step, phase, secs) = match (&r.at, &r.exit) {
            (_, Some(exit)) => ("-".to_string(), format!("exited ({exit})"), String::new()),
            (Some(at), None) => {
                let phase = match at.bucket {
                    Some(b) if at.phase == Phase::AllReduce => format!("all-reduce bucket {b}"),
                    _ => at.phase.name().to_string(),
                };
                (at.step.to_string(), phase, format!("{:.0}", at.seconds_in(now_ms)))
            }
            (None, None) => ("-".to_string(), "starting".to_string(), String::new()),
        };
        out.push_str(&format!("  {:<5} {:<5} {:<8} {:<5} {:<21} {}\n", r.rank, r.node, r.pid, step, phase, secs));
    }
    let running: Vec<(&Row, Position)> =
        rows.iter().filter(|r| r.exit.is_none()).filter_map(|r| Some((r, r.at?))).collect();
    // How far a worker got: its step, its phase in the step, the bucket it waits for.
    let progress = |at: &Position| (at.step, at.phase, at.bucket.map_or(0, |b| b + 1));
    let earliest = running.iter().map(|(_, at)| progress(at)).min();
    let all_level = running.iter().all(|(_, at)| Some(progress(at)) == earliest);
    let behind: Vec<&(&Row, Position)> = match all_level {
        true => Vec::new(),
        false => running.iter().filter(|(_, at)| Some(progress(at)) == earliest).collect(),
    };
    let mut said: Vec<String> = behind
        .iter()
        .map(|(r, at)| {
            format!(
                "rank {} (node {}, pid {}) has been in {} for {:.0} s",
                r.rank,
                r.node,
                r.pid,
                at.describe(),
                at.seconds_in(now_ms)
            )
        })
        .collect();
    let mut others: Vec<(String, Vec<usize>)> = Vec::new();
    for (r, at) in running.iter().filter(|(r, _)| !behind.iter().any(|(b, _)| b.rank == r.rank)) {
        match others.iter_mut().find(|(what, _)| *what == at.describe()) {
            Some((_, ranks)) => ranks.push(r.rank),
            None => others.push((at.describe(), vec![r.rank])),
        }
    }
    for (what, ranks) in others {
        let list = ranks.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
        let (who, verb) =
            if ranks.len() == 1 { (format!("rank {list}"), "is") } else { (format!("ranks {list}"), "are") };
        let verb = match (what.starts_with("the all-reduce"), ranks.len()) {
            (true, 1) => "waits",
            (true, _) => "wait",
            (false, _) => verb,
        };
        said.push(format!("{who} {verb} in {what}"));
    }
    if !said.is_empty() {
        out.push_str(&format!("medbert-run: {}\n", said.join("; ")));
    }
    (out, behind.first().map(|(r, _)| r.rank))
}

/// Whether a worker exited saying it saved a checkpoint on a warning signal.
fn preempted(status: ExitStatus) -> bool {
    status.code() == Some(super::exit::PREEMPTED)
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

    fn row(rank: usize, step: u64, phase: Phase, bucket: Option<u64>, since_ms: u64) -> Row {
        Row {
            rank,
            node: rank / 2,
            pid: 4240 + rank as u32,
            at: Some(Position { step, phase, bucket, since_ms }),
            exit: None,
        }
    }

    #[test]
    fn the_table_names_the_rank_the_others_wait_for() {
        let rows = [
            row(0, 41, Phase::AllReduce, Some(3), 5_000),
            row(1, 41, Phase::AllReduce, Some(3), 5_000),
            row(2, 41, Phase::Forward, None, 1_000),
            row(3, 41, Phase::AllReduce, Some(3), 6_000),
        ];
        let (table, behind) = position_table(&rows, 96_000);
        assert_eq!(behind, Some(2));
        let said = "rank 2 (node 1, pid 4242) has been in forward of step 41 for 95 s; ranks 0, 1, 3 wait in the \
                    all-reduce of bucket 3 of step 41";
        assert!(table.contains(said), "{table}");
        assert!(table.contains("  2     1     4242     41    forward               95\n"), "{table}");
    }

    #[test]
    fn ranks_all_in_the_all_reduce_name_nobody_behind() {
        let rows = [row(0, 7, Phase::AllReduce, Some(0), 0), row(1, 7, Phase::AllReduce, Some(0), 0)];
        let (table, behind) = position_table(&rows, 1_000);
        assert_eq!(behind, None);
        assert!(table.contains("ranks 0, 1 wait in the all-reduce of bucket 0 of step 7"), "{table}");
    }

    #[test]
    fn a_rank_that_has_not_started_the_next_bucket_is_behind() {
        let rows = [
            row(0, 8, Phase::AllReduce, Some(2), 0),
            row(1, 8, Phase::AllReduce, None, 0),
            row(2, 8, Phase::AllReduce, Some(2), 0),
        ];
        let (table, behind) = position_table(&rows, 3_000);
        assert_eq!(behind, Some(1));
        let said = "rank 1 (node 0, pid 4241) has been in the all-reduce of step 8 (starting its buckets) for 3 s; \
                    ranks 0, 2 wait in the all-reduce of bucket 2 of step 8";
        assert!(table.contains(said), "{table}");
    }

    #[test]
    fn a_stall_counts_from_the_last_step_and_not_while_evaluating() {
        let at = |step, phase| Some(Position { step, phase, bucket: None, since_ms: 0 });
        let mut progress = Progress::default();
        let timeout = Duration::from_millis(50);
        assert_eq!(progress.stalled(&[at(3, Phase::Forward)], timeout), None);
        std::thread::sleep(timeout);
        assert!(progress.stalled(&[at(3, Phase::Backward)], timeout).is_some(), "no new step within the timeout");
        assert_eq!(progress.stalled(&[at(4, Phase::Data)], timeout), None, "a step finished");
        std::thread::sleep(timeout);
        assert_eq!(progress.stalled(&[at(4, Phase::Evaluation)], timeout), None, "evaluating");
    }
}
