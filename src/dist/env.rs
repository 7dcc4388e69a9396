//! The launcher's contract: the variables torchrun (and medbert-run) set for each worker,
//! written (`DistEnv::vars`) and read (`DistEnv::from_env`) here alone.

use super::slurm::SlurmTask;
use crate::error::{Error, Result};
use std::str::FromStr;

/// The variables' names, as torchrun spells them.
pub mod var {
    pub const RANK: &str = "RANK";
    pub const WORLD_SIZE: &str = "WORLD_SIZE";
    pub const LOCAL_RANK: &str = "LOCAL_RANK";
    pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
    pub const GROUP_RANK: &str = "GROUP_RANK";
    pub const GROUP_WORLD_SIZE: &str = "GROUP_WORLD_SIZE";
    pub const ROLE_RANK: &str = "ROLE_RANK";
    pub const ROLE_WORLD_SIZE: &str = "ROLE_WORLD_SIZE";
    pub const ROLE_NAME: &str = "ROLE_NAME";
    pub const MASTER_ADDR: &str = "MASTER_ADDR";
    pub const MASTER_PORT: &str = "MASTER_PORT";
    pub const RESTART_COUNT: &str = "TORCHELASTIC_RESTART_COUNT";
    pub const MAX_RESTARTS: &str = "TORCHELASTIC_MAX_RESTARTS";
    pub const RUN_ID: &str = "TORCHELASTIC_RUN_ID";
    pub const USE_AGENT_STORE: &str = "TORCHELASTIC_USE_AGENT_STORE";
    /// Threads of each worker's intra-op pool; the launcher sets it when the user did not.
    pub const OMP_NUM_THREADS: &str = "OMP_NUM_THREADS";
}

/// This machine's cores, as the standard library counts them (cgroup quotas included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Threads per worker when OMP_NUM_THREADS is unset: the node's cores split evenly among its
/// workers, never below one (the launcher's rule, which the trainer's choices follow too).
pub fn threads_per_worker(cores: usize, local_world_size: usize) -> usize {
    (cores / local_world_size.max(1)).max(1)
}

/// Where this process stands in the worker group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    /// This node's rank among the nodes, and their number (0 and 1 when not given).
    pub group_rank: usize,
    pub group_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher hosts the rendezvous store (TORCHELASTIC_USE_AGENT_STORE=True).
    pub agent_store: bool,
    /// Restarts of the worker group so far (TORCHELASTIC_RESTART_COUNT).
    pub restart_count: usize,
    pub max_restarts: usize,
    /// The job's id (TORCHELASTIC_RUN_ID; "none" when not given, as torchrun's default).
    pub run_id: String,
}

impl DistEnv {
    /// Reads the process environment. Without WORLD_SIZE, a task that Slurm's `srun` started
    /// stands where Slurm says (`SlurmTask`; MASTER_ADDR and MASTER_PORT override its first
    /// host and job-derived port); `Ok(None)` otherwise (a plain, single-process run). Any
    /// variable that is present but malformed, or missing while WORLD_SIZE is set, is an error
    /// naming it.
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As `from_env`, over any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        if get(var::WORLD_SIZE).is_none() {
            let Some(task) = SlurmTask::from_lookup(&get)? else { return Ok(None) };
            let port = get(var::MASTER_PORT).map(|p| parse(var::MASTER_PORT, Some(p))).transpose()?;
            let (master_addr, master_port) =
                task.rendezvous(get(var::MASTER_ADDR).filter(|s| !s.trim().is_empty()), port);
            return Ok(Some(DistEnv {
                rank: task.rank,
                world_size: task.world_size,
                local_rank: task.local_rank,
                local_world_size: task.local_world_size,
                group_rank: task.node_rank,
                group_world_size: task.nnodes,
                master_addr,
                master_port,
                agent_store: false,
                restart_count: 0,
                max_restarts: 0,
                run_id: task.job_id,
            }));
        }
        let num = |name: &'static str| -> Result<usize> { parse(name, get(name)) };
        let num_or = |name: &'static str, default: usize| get(name).map_or(Ok(default), |v| parse(name, Some(v)));
        let world_size = num(var::WORLD_SIZE)?;
        let rank = num(var::RANK)?;
        if world_size == 0 {
            return Err(Error::Env { name: var::WORLD_SIZE, message: "must be at least 1".into() });
        }
        if rank >= world_size {
            return Err(Error::Env {
                name: var::RANK,
                message: format!("{rank} is not below WORLD_SIZE {world_size}"),
            });
        }
        let local_rank = num_or(var::LOCAL_RANK, rank)?;
        let local_world_size = num_or(var::LOCAL_WORLD_SIZE, world_size)?;
        if local_rank >= local_world_size {
            return Err(Error::Env {
                name: var::LOCAL_RANK,
                message: format!("{local_rank} is not below LOCAL_WORLD_SIZE {local_world_size}"),
            });
        }
        let master_addr = get(var::MASTER_ADDR)
            .filter(|s| !s.trim().is_empty())
            .ok_or(Error::Env { name: var::MASTER_ADDR, message: "not set (the launcher sets it)".into() })?;
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            group_rank: num_or(var::GROUP_RANK, 0)?,
            group_world_size: num_or(var::GROUP_WORLD_SIZE, 1)?,
            master_addr,
            master_port: parse(var::MASTER_PORT, get(var::MASTER_PORT))?,
            agent_store: get(var::USE_AGENT_STORE).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            restart_count: num_or(var::RESTART_COUNT, 0)?,
            max_restarts: num_or(var::MAX_RESTARTS, 0)?,
            run_id: get(var::RUN_ID).unwrap_or_else(|| "none".into()),
        }))
    }

    /// The variables a launcher sets for this worker (what `from_env` reads back).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (var::RANK, self.rank.to_string()),
            (var::LOCAL_RANK, self.local_rank.to_string()),
            (var::WORLD_SIZE, self.world_size.to_string()),
            (var::LOCAL_WORLD_SIZE, self.local_world_size.to_string()),
            (var::GROUP_RANK, self.group_rank.to_string()),
            (var::GROUP_WORLD_SIZE, self.group_world_size.to_string()),
            (var::ROLE_RANK, self.rank.to_string()),
            (var::ROLE_WORLD_SIZE, self.world_size.to_string()),
            (var::ROLE_NAME, "default".to_string()),
            (var::MASTER_ADDR, self.master_addr.clone()),
            (var::MASTER_PORT, self.master_port.to_string()),
            (var::RESTART_COUNT, self.restart_count.to_string()),
            (var::MAX_RESTARTS, self.max_restarts.to_string()),
            (var::RUN_ID, self.run_id.clone()),
            (var::USE_AGENT_STORE, if self.agent_store { "True" } else { "False" }.to_string()),
        ]
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether the launcher restarted the worker group (a run then resumes by itself).
    pub fn restarted(&self) -> bool {
        self.restart_count > 0
    }
}

fn parse<T: FromStr>(name: &'static str, value: Option<String>) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let value = value.ok_or(Error::Env { name, message: "not set (the launcher sets it)".into() })?;
    value.trim().parse().map_err(|e| Error::Env { name, message: format!("{value:?} is not valid: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 6] = [
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn cores_split_evenly_and_never_below_one() {
        assert_eq!(threads_per_worker(8, 2), 4);
        assert_eq!(threads_per_worker(2, 3), 1);
        assert_eq!(threads_per_worker(7, 2), 3);
    }

    #[test]
    fn absent_world_size_means_single_process() {
        assert_eq!(lookup(&[("RANK", "0")]).unwrap(), None);
    }

    #[test]
    fn full_environment_parses() {
        let env = lookup(&FULL).unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank, env.local_world_size), (3, 4, 1, 2));
        assert_eq!((env.master_addr.as_str(), env.master_port), ("10.0.0.1", 29500));
        assert!(!env.is_main());
    }

    #[test]
    fn the_launchers_store_and_restart_count_are_read() {
        let env = lookup(&FULL).unwrap().unwrap();
        assert_eq!((env.agent_store, env.restart_count), (false, 0));
        let mut pairs = FULL.to_vec();
        pairs.extend([("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]);
        let env = lookup(&pairs).unwrap().unwrap();
        assert_eq!((env.agent_store, env.restart_count), (true, 2));
        let bad: Vec<(&str, &str)> =
            pairs.iter().map(|&(k, v)| if k == "TORCHELASTIC_RESTART_COUNT" { (k, "x") } else { (k, v) }).collect();
        assert!(lookup(&bad).unwrap_err().to_string().contains("TORCHELASTIC_RESTART_COUNT"));
    }

    #[test]
    fn an_srun_task_joins_as_slurm_says_and_torchruns_variables_win() {
        let slurm = [
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "1"),
            ("SLURM_NNODES", "2"),
            ("SLURM_TASKS_PER_NODE", "2(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "123"),
        ];
        let env = lookup(&slurm).unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank, env.local_world_size), (3, 4, 1, 2));
        assert_eq!((env.group_rank, env.group_world_size, env.run_id.as_str()), (1, 2, "123"));
        assert_eq!((env.master_addr.as_str(), env.master_port), ("gpu07", 15123));
        let mut given = slurm.to_vec();
        given.extend([("MASTER_ADDR", "10.0.0.9"), ("MASTER_PORT", "29501")]);
        let env = lookup(&given).unwrap().unwrap();
        assert_eq!((env.master_addr.as_str(), env.master_port), ("10.0.0.9", 29501));
        let mut both = slurm.to_vec();
        both.extend(FULL);
        assert_eq!(lookup(&both).unwrap(), lookup(&FULL).unwrap(), "torchrun's variables win");
    }

    #[test]
    fn what_a_launcher_writes_reads_back_unchanged() {
        let mut env = lookup(&FULL).unwrap().unwrap();
        (env.agent_store, env.restart_count, env.max_restarts, env.run_id) = (true, 2, 3, "job".into());
        (env.group_rank, env.group_world_size) = (1, 2);
        let vars = env.vars();
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(lookup(&pairs).unwrap().unwrap(), env);
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: [(&str, Option<&str>); 5] = [
            ("RANK", Some("x")),
            ("RANK", Some("4")),
            ("MASTER_PORT", Some("70000")),
            ("MASTER_ADDR", None),
            ("LOCAL_RANK", Some("2")),
        ];
        for (name, value) in cases {
            let mut pairs: Vec<(&str, &str)> = FULL.iter().copied().filter(|(k, _)| *k != name).collect();
            if let Some(v) = value {
                pairs.push((name, v));
            }
            let err = lookup(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={value:?}: {err}");
        }
    }
}
