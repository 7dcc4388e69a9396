//! The agent: torchrun's `_invoke_run` in small. One loop for every kind of launch: ask the
//! rendezvous for the next round, start this node's workers in it, supervise them, and
//! record how the round ended, until the rendezvous says the launch is over.

use super::group::{Outcome, WorkerGroup};
use super::rendezvous::{Next, Rendezvous};
use super::{exit, LaunchConfig};
use crate::dist::{var, DistEnv};
use crate::error::Result;
use crate::launch::Signals;

/// The shape of the job across nodes and where its rendezvous lives (torchrun's
/// `WorkerSpec` with its rendezvous settings); an elastic rendezvous decides the node count
/// and rank anew each round.
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
    /// This node's rank in the round.
    pub node: usize,
    pub env: Vec<(String, String)>,
}

impl WorkerSpec {
    pub fn world_size(&self) -> usize {
        self.nnodes * self.nproc_per_node
    }

    /// The workers of this node in `round` (0 = first start). `omp_threads` is set as
    /// OMP_NUM_THREADS when the caller did not set it.
    pub fn workers(&self, round: usize, omp_threads: Option<usize>) -> Vec<Worker> {
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
                    // The launcher at the rendezvous hosts the store, as torchrun's agent does.
                    agent_store: true,
                    restart_count: round,
                    max_restarts: self.max_restarts,
                    run_id: self.run_id.clone(),
                };
                let mut env: Vec<(String, String)> = dist.vars().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                if let Some(n) = omp_threads {
                    env.push((var::OMP_NUM_THREADS.to_string(), n.to_string()));
                }
                Worker { rank, local_rank, node: self.node_rank, env }
            })
            .collect()
    }
}

/// Runs rounds of this node's workers until `rdzv` ends the launch; returns the launcher's
/// exit code ([`exit`]).
pub(super) fn run(rdzv: &mut dyn Rendezvous, config: &LaunchConfig, signal: &Signals) -> Result<i32> {
    loop {
        let round = match rdzv.next_round(signal)? {
            Next::Run(round) => round,
            Next::Exit(code) => return Ok(code),
        };
        let workers = round.spec.workers(round.number, config.omp_threads);
        let group = WorkerGroup::start(&config.program, &workers, round.number, &config.supervision)?;
        let shared: &dyn Rendezvous = rdzv;
        let share = |rows: &str| shared.share_rows(&round, rows);
        let outcome = group.supervise(signal, &|| shared.superseded(round.number), &share)?;
        outcome.say();
        match outcome {
            Outcome::Interrupted(sig) => return Ok(exit::interrupted(sig)),
            // This launcher's signal: the job (or this node, in an elastic job) stops here.
            Outcome::Preempted { signal: Some(_) } => return Ok(exit::PREEMPTED),
            _ => {}
        }
        if let Some(code) = rdzv.record(round.number, outcome)? {
            return Ok(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rendezvous::Round;
    use super::super::{Exit, Supervision};
    use super::*;
    use std::time::Duration;

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
                value(w, var::OMP_NUM_THREADS),
            ],
            ["5", "2", "6", "3", "1", "10.1.0.1", "29400", "1", "2", "2"]
        );
    }

    /// A rendezvous that hands out the rounds it was given and keeps what it is told.
    struct Scripted {
        next: Vec<Next>,
        recorded: Vec<(usize, Outcome)>,
    }

    impl Rendezvous for Scripted {
        fn next_round(&mut self, _signal: &Signals) -> Result<Next> {
            Ok(self.next.remove(0))
        }
        fn superseded(&self, _round: usize) -> bool {
            false
        }
        fn record(&mut self, round: usize, outcome: Outcome) -> Result<Option<i32>> {
            self.recorded.push((round, outcome));
            Ok(None)
        }
    }

    /// One node of two workers running `program`, watched closely.
    fn config(program: &[&str]) -> LaunchConfig {
        let supervision = Supervision {
            monitor_interval: Duration::from_millis(10),
            term_timeout: Duration::from_secs(5),
            signal_timeout: Duration::from_secs(5),
            hang_timeout: None,
            positions: None,
            log_dir: None,
        };
        let spec = WorkerSpec { nnodes: 1, node_rank: 0, nproc_per_node: 2, ..spec() };
        let program = program.iter().map(|a| a.to_string()).collect();
        LaunchConfig { spec, elastic: None, program, supervision, omp_threads: None }
    }

    fn round(number: usize, config: &LaunchConfig) -> Next {
        Next::Run(Round { number, spec: config.spec.clone() })
    }

    #[test]
    fn the_agent_runs_each_round_it_is_given_and_records_how_it_ended() {
        // Round 0 succeeds; in round 1 rank 1 fails with code 3.
        let config = config(&["sh", "-c", r#"[ "$TORCHELASTIC_RESTART_COUNT$RANK" = 11 ] && exit 3; exit 0"#]);
        let next = vec![round(0, &config), round(1, &config), Next::Exit(7)];
        let mut rdzv = Scripted { next, recorded: Vec::new() };
        assert_eq!(run(&mut rdzv, &config, &Signals::default()).unwrap(), 7);
        let failed = Outcome::Failed { rank: 1, exit: Exit::Code(3) };
        assert_eq!(rdzv.recorded, [(0, Outcome::Succeeded), (1, failed)]);
    }

    #[test]
    fn a_signal_ends_the_launch_with_128_plus_its_number_and_records_nothing() {
        let config = config(&["sleep", "30"]);
        let mut rdzv = Scripted { next: vec![round(0, &config)], recorded: Vec::new() };
        assert_eq!(run(&mut rdzv, &config, &signalled(1)).unwrap(), 128 + 15);
        assert!(rdzv.recorded.is_empty());
    }

    /// Signals as if SIGTERM had come `times` times.
    fn signalled(times: usize) -> Signals {
        let signals = Signals::default();
        (0..times).for_each(|_| signals.note(15));
        signals
    }

    /// Runs `rdzv`'s rounds with SIGTERM coming `times` times once the workers have had time to
    /// set their traps.
    fn run_signalled_later(rdzv: &mut Scripted, config: &LaunchConfig, times: usize) -> i32 {
        let signals = Signals::default();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                (0..times).for_each(|_| signals.note(15));
            });
            run(rdzv, config, &signals).unwrap()
        })
    }

    /// Workers that save a checkpoint on SIGTERM, as medbert train does, in `seconds`.
    const SAVING: &str = r#"trap 'sleep "$SAVE_SECONDS"; exit 75' TERM; sleep 30 & wait"#;

    #[test]
    fn workers_that_save_on_the_launchers_signal_end_the_launch_as_preempted() {
        let config = config(&["sh", "-c", &SAVING.replace("$SAVE_SECONDS", "0.2")]);
        let mut rdzv = Scripted { next: vec![round(0, &config)], recorded: Vec::new() };
        assert_eq!(run_signalled_later(&mut rdzv, &config, 1), exit::PREEMPTED);
        assert!(rdzv.recorded.is_empty(), "the launcher's own signal ends the launch");
    }

    #[test]
    fn a_second_signal_kills_the_workers_without_waiting_for_their_checkpoint() {
        let config = config(&["sh", "-c", &SAVING.replace("$SAVE_SECONDS", "20")]);
        let mut rdzv = Scripted { next: vec![round(0, &config)], recorded: Vec::new() };
        let started = std::time::Instant::now();
        assert_eq!(run_signalled_later(&mut rdzv, &config, 2), 128 + 15);
        assert!(started.elapsed() < Duration::from_secs(4), "waited {:?}", started.elapsed());
    }

    #[test]
    fn workers_that_stop_at_a_checkpoint_on_their_own_signal_are_recorded_as_preempted() {
        // Rank 0 stops at once, rank 1 a moment later: neither is a failure.
        let config = config(&["sh", "-c", r#"[ "$RANK" = 1 ] && sleep 0.3; exit 75"#]);
        let next = vec![round(0, &config), Next::Exit(exit::PREEMPTED)];
        let mut rdzv = Scripted { next, recorded: Vec::new() };
        assert_eq!(run(&mut rdzv, &config, &Signals::default()).unwrap(), exit::PREEMPTED);
        assert_eq!(rdzv.recorded, [(0, Outcome::Preempted { signal: None })]);
    }

    #[test]
    fn omp_threads_are_left_alone_when_the_user_set_them() {
        assert!(spec().workers(0, None)[0].env.iter().all(|(k, _)| k != var::OMP_NUM_THREADS));
    }
}
