//! Slurm's description of a task that `srun` started, read where torchrun's variables are
//! absent (as Lightning and Accelerate read it): one task per GPU trains without a launcher,
//! and `medbert-run` started once per node takes its nodes from it.

use crate::error::{Error, Result};

/// The variables' names, as Slurm spells them.
pub mod var {
    pub const PROCID: &str = "SLURM_PROCID";
    pub const NTASKS: &str = "SLURM_NTASKS";
    pub const LOCALID: &str = "SLURM_LOCALID";
    pub const NODEID: &str = "SLURM_NODEID";
    pub const NNODES: &str = "SLURM_NNODES";
    pub const TASKS_PER_NODE: &str = "SLURM_TASKS_PER_NODE";
    pub const JOB_NODELIST: &str = "SLURM_JOB_NODELIST";
    pub const JOB_ID: &str = "SLURM_JOB_ID";
    pub const STEP_ID: &str = "SLURM_STEP_ID";
}

/// Step ids from here on are Slurm's own steps (the batch script's, the job's extern step),
/// not an `srun`.
const FIRST_SPECIAL_STEP: u64 = 0xffff_fff0;

/// Where one task of an `srun` step stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmTask {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Tasks of the step on this node.
    pub local_world_size: usize,
    pub node_rank: usize,
    pub nnodes: usize,
    /// The first host of the job's node list: where rank 0 runs.
    pub first_host: String,
    pub job_id: String,
}

impl SlurmTask {
    /// The task this process is, when `srun` started it (SLURM_STEP_ID names a step of its
    /// own); `None` outside Slurm and in the batch script itself. A variable that is present
    /// but malformed, or missing from a step, is an error naming it.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<SlurmTask>> {
        let step = get(var::STEP_ID).and_then(|s| s.trim().parse::<u64>().ok());
        if step.is_none_or(|s| s >= FIRST_SPECIAL_STEP) || get(var::PROCID).is_none() {
            return Ok(None);
        }
        let num = |name: &'static str| -> Result<usize> {
            let value = get(name).ok_or(Error::Env { name, message: "not set in this srun step".into() })?;
            value.trim().parse().map_err(|e| Error::Env { name, message: format!("{value:?} is not valid: {e}") })
        };
        let (rank, world_size, local_rank) = (num(var::PROCID)?, num(var::NTASKS)?, num(var::LOCALID)?);
        let (node_rank, nnodes) = (num(var::NODEID)?, num(var::NNODES)?);
        let spec = get(var::TASKS_PER_NODE).unwrap_or_default();
        let env_error = |name, message| Error::Env { name, message };
        let per_node = tasks_per_node(&spec).map_err(|m| env_error(var::TASKS_PER_NODE, m))?;
        let local_world_size = *per_node
            .get(node_rank)
            .ok_or_else(|| env_error(var::TASKS_PER_NODE, format!("{spec:?} names no tasks for node {node_rank}")))?;
        if rank >= world_size || local_rank >= local_world_size || node_rank >= nnodes {
            return Err(env_error(
                var::PROCID,
                format!(
                    "task {rank} of {world_size}, local {local_rank} of {local_world_size}, node {node_rank} of \
                     {nnodes} do not fit together"
                ),
            ));
        }
        let list = get(var::JOB_NODELIST).unwrap_or_default();
        let first_host = first_host(&list).map_err(|m| env_error(var::JOB_NODELIST, m))?;
        let job_id = get(var::JOB_ID).unwrap_or_default().trim().to_string();
        Ok(Some(SlurmTask { rank, world_size, local_rank, local_world_size, node_rank, nnodes, first_host, job_id }))
    }

    /// Where the job's rendezvous is: `addr` and `port` where given (MASTER_ADDR and
    /// MASTER_PORT, or the launcher's flags), else the job's first host and
    /// [`default_port`](Self::default_port).
    pub fn rendezvous(&self, addr: Option<String>, port: Option<u16>) -> (String, u16) {
        (addr.unwrap_or_else(|| self.first_host.clone()), port.unwrap_or_else(|| self.default_port()))
    }

    /// The rendezvous port when MASTER_PORT is not given: 15000 plus the job id's last four
    /// digits (Lightning's choice), so every task of a job derives the same one and jobs
    /// sharing a node rarely collide.
    pub fn default_port(&self) -> u16 {
        let digits: String = self.job_id.chars().filter(char::is_ascii_digit).collect();
        let tail = digits.get(digits.len().saturating_sub(4)..).unwrap_or_default();
        15000 + tail.parse::<u16>().unwrap_or(0)
    }
}

/// The first host of a Slurm node list in its compressed form (`gpu[01-04,07]`,
/// `a1,b[2-3]`, `rack[1-2]-n[07,09]`): the first name with each bracket's first value, its
/// zero padding kept.
pub fn first_host(list: &str) -> std::result::Result<String, String> {
    let mut host = String::new();
    let mut chars = list.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => {
                let inside: String = chars.by_ref().take_while(|&c| c != ']').collect();
                let first = inside.split([',', '-']).next().unwrap_or_default();
                if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
                    return Err(format!("{list:?}: cannot read the range [{inside}]"));
                }
                host.push_str(first);
            }
            ']' => return Err(format!("{list:?}: ']' without '['")),
            c => host.push(c),
        }
    }
    match host.is_empty() {
        true => Err(format!("{list:?} names no host")),
        false => Ok(host),
    }
}

/// Slurm's tasks-per-node list (`2(x3),1`: three nodes with two tasks, then one with one),
/// one count per node.
pub fn tasks_per_node(spec: &str) -> std::result::Result<Vec<usize>, String> {
    let mut counts = Vec::new();
    for part in spec.trim().split(',') {
        let (count, times) = match part.split_once("(x") {
            Some((count, rest)) => (count, rest.strip_suffix(')').ok_or_else(|| format!("{spec:?}: bad {part:?}"))?),
            None => (part, "1"),
        };
        let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("{spec:?}: bad {part:?}"));
        counts.extend(std::iter::repeat_n(parse(count)?, parse(times)?));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_first_host_of_real_node_lists() {
        for (list, first) in [
            ("gpu[01-04,07]", "gpu01"),
            ("gpu[07,01-04]", "gpu07"),
            ("node17", "node17"),
            ("a100-n3,a100-n4", "a100-n3"),
            ("cn[0001-0128]", "cn0001"),
            ("rack[1-2]-n[07,09]", "rack1-n07"),
            ("nid00[1-3],nid010", "nid001"),
            ("login1.cluster.org", "login1.cluster.org"),
            ("dgx-[5-6]-ib", "dgx-5-ib"),
        ] {
            assert_eq!(first_host(list).as_deref(), Ok(first), "{list}");
        }
        for bad in ["", "[", "gpu[a-b]", "gpu]1"] {
            assert!(first_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tasks_per_node_expands_repeats() {
        assert_eq!(tasks_per_node("4"), Ok(vec![4]));
        assert_eq!(tasks_per_node("2(x3),1"), Ok(vec![2, 2, 2, 1]));
        assert!(tasks_per_node("2(x3").is_err() && tasks_per_node("x").is_err());
    }

    fn task(pairs: &[(&str, &str)]) -> Result<Option<SlurmTask>> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        SlurmTask::from_lookup(|k| map.get(k).map(|v| v.to_string()))
    }

    const STEP: [(&str, &str); 9] = [
        ("SLURM_STEP_ID", "0"),
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NODEID", "1"),
        ("SLURM_NNODES", "2"),
        ("SLURM_TASKS_PER_NODE", "4(x2)"),
        ("SLURM_JOB_NODELIST", "gpu[03-04]"),
        ("SLURM_JOB_ID", "4711234"),
    ];

    #[test]
    fn a_task_of_an_srun_step_is_read() {
        let t = task(&STEP).unwrap().unwrap();
        assert_eq!((t.rank, t.world_size, t.local_rank, t.local_world_size), (5, 8, 1, 4));
        assert_eq!((t.node_rank, t.nnodes, t.first_host.as_str()), (1, 2, "gpu03"));
        assert_eq!(t.default_port(), 16234);
    }

    #[test]
    fn the_batch_script_and_plain_processes_are_not_tasks() {
        assert_eq!(task(&[]).unwrap(), None);
        let mut batch = STEP.to_vec();
        batch[0] = ("SLURM_STEP_ID", "4294967294");
        assert_eq!(task(&batch).unwrap(), None);
        assert_eq!(task(&STEP[1..]).unwrap(), None, "no step id: not started by srun");
    }

    #[test]
    fn a_bad_variable_is_named() {
        for (name, value) in [("SLURM_NTASKS", "x"), ("SLURM_TASKS_PER_NODE", "4"), ("SLURM_JOB_NODELIST", "[")] {
            let pairs: Vec<(&str, &str)> =
                STEP.iter().map(|&(k, v)| if k == name { (k, value) } else { (k, v) }).collect();
            let err = task(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }
}
