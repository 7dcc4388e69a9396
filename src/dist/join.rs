//! Joining the worker group a launcher started: the flags that choose the backend, and the
//! order in which workers prepare shared files.

use super::{Backend, Comm, DistEnv, ProcessGroup};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use std::time::Duration;
use tch::Device;

/// The worker group, joined when the launcher (medbert-run or torchrun) sets WORLD_SIZE.
#[derive(Clone, Debug, serde::Serialize, clap::Args)]
pub struct GroupArgs {
    /// Collective backend: auto is NCCL on CUDA, Gloo on CPU.
    #[arg(long, env = "MEDBERT_DDP_BACKEND", value_enum, default_value = "auto")]
    pub ddp_backend: BackendChoice,
    /// Rendezvous and collective timeout, in seconds.
    #[arg(long, env = "MEDBERT_DDP_TIMEOUT", default_value_t = 1800)]
    pub ddp_timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Gloo,
    Nccl,
}

/// This process as a worker of the group its launcher started, or alone without one: where
/// the launcher placed it, the device it computes on, and the processes it agrees with.
pub struct Joined {
    pub env: Option<DistEnv>,
    pub device: Device,
    pub comm: Comm,
}

impl Joined {
    pub fn local_rank(&self) -> usize {
        self.env.as_ref().map_or(0, |e| e.local_rank)
    }

    /// The processes on this node, which share its cores (1 without a launcher).
    pub fn local_world_size(&self) -> usize {
        self.env.as_ref().map_or(1, |e| e.local_world_size)
    }

    /// Whether the launcher restarted the group (a run then resumes by itself).
    pub fn restarted(&self) -> bool {
        self.env.as_ref().is_some_and(DistEnv::restarted)
    }

    /// [`in_turn`] over this worker's group.
    pub fn in_turn<T, E: From<Error>>(&self, prepare: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        in_turn(self.comm.group().map(|pg| &**pg), self.local_rank(), prepare)
    }
}

impl GroupArgs {
    /// The prologue of every command that runs as a worker (`train`, `eval`): the launcher's
    /// variables read, the device chosen for this worker's local rank, the group joined.
    pub fn join_worker(&self, device: DeviceSpec) -> Result<Joined> {
        let env = DistEnv::from_env()?;
        let device = device.resolve(env.as_ref().map_or(0, |e| e.local_rank))?;
        let pg = self.join(env.as_ref(), device)?;
        Ok(Joined { env, device, comm: Comm::from_group(pg) })
    }

    /// The process group of this worker when a launcher started it; None for a plain run.
    pub fn join(&self, env: Option<&DistEnv>, device: tch::Device) -> Result<Option<ProcessGroup>> {
        // Under a launcher a group is formed even for one process, as torchrun + DDP does, so
        // that `--nproc-per-node 1` runs the same collectives as a larger group.
        let Some(env) = env else { return Ok(None) };
        let backend = match (self.ddp_backend, device.is_cuda()) {
            (BackendChoice::Gloo, _) | (BackendChoice::Auto, false) => Backend::Gloo,
            (BackendChoice::Nccl, _) | (BackendChoice::Auto, true) => Backend::Nccl,
        };
        if !Backend::compiled().contains(&backend) {
            return Err(Error::Input(format!(
                "--ddp-backend {}: this binary was built without it (`medbert doctor` says why)",
                backend.name()
            )));
        }
        if backend == Backend::Nccl && !device.is_cuda() {
            return Err(Error::Input(format!("--ddp-backend nccl needs --device cuda; this run is on {device:?}")));
        }
        Ok(Some(ProcessGroup::init(env, backend, Duration::from_secs(self.ddp_timeout))?))
    }
}

/// Runs `prepare` on every worker without two writing one cache at once: rank 0 first, then
/// the first worker of every other node (a cache hit where the directory is shared), then the
/// rest, which find what is there. Without a group it simply runs.
pub fn in_turn<T, E: From<Error>>(
    pg: Option<&ProcessGroup>,
    local_rank: usize,
    prepare: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let Some(pg) = pg else { return prepare() };
    let turn = match (pg.rank(), local_rank) {
        (0, _) => 0,
        (_, 0) => 1,
        _ => 2,
    };
    let mut prepare = Some(prepare);
    let mut out = None;
    for phase in 0..3 {
        if phase == turn {
            out = prepare.take().map(|f| f());
        }
        if phase < 2 {
            pg.barrier()?;
        }
    }
    out.unwrap_or_else(|| Err(Error::Dist(format!("rank {} had no turn to prepare", pg.rank())).into()))
}
