//! The worker group of one round: started (one process group per worker, output prefixed
//! with its rank), supervised (all-or-nothing) and torn down (SIGTERM, a deadline, SIGKILL).

use super::Worker;
use crate::error::{Error, Result};
use crate::launch::Signals;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
            cmd.process_group(0);
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(source) => {
                    group.tear_down(Signal::SIGTERM, sup.term_timeout, &|| false);
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
            group.workers.push(Started { rank: w.rank, child, status: None });
        }
        Ok(group)
    }

    /// Watches the workers until they all succeed, one fails, the launcher gets a signal,
    /// the workers stop at a checkpoint on a worker's warning signal, or `superseded` says a
    /// newer round began; in all but the first case the group is torn down.
    pub fn supervise(mut self, signal: &Signals, superseded: &dyn Fn() -> bool) -> Result<Outcome> {
        // When the first worker stopped at a checkpoint on a warning signal.
        let mut preempting: Option<Instant> = None;
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
                self.tear_down(Signal::SIGTERM, self.sup.term_timeout, &|| false);
                break outcome;
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
                self.tear_down(Signal::SIGTERM, self.sup.term_timeout, &|| false);
                break Outcome::Preempted { signal: None };
            }
            if superseded() {
                self.tear_down(Signal::SIGTERM, self.sup.term_timeout, &|| false);
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

    /// `first` to every worker's process group (also of workers that have exited: what they
    /// started may live on), then SIGKILL to the groups with a process left after `grace` (or
    /// once `cut_short` says so); returns once every worker is reaped and every group is empty.
    fn tear_down(&mut self, first: Signal, grace: Duration, cut_short: &dyn Fn() -> bool) {
        let alive = |g: Pid| killpg(g, None).is_ok();
        for w in &self.workers {
            let _ = killpg(w.group(), first);
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
