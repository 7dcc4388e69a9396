//! `medbert dist-check`: the collectives a run depends on, checked on exact values across the
//! group the environment describes.

use super::{Backend, DistEnv, ProcessGroup};
use crate::error::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// What one rank saw.
pub struct CollectiveCheck {
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
    pub allreduce_ok: bool,
    pub broadcast_ok: bool,
    /// All-reduce bandwidth, bytes per second over the tensor's size.
    pub allreduce_gb_per_s: f64,
}

impl CollectiveCheck {
    pub fn passed(&self) -> bool {
        self.allreduce_ok && self.broadcast_ok
    }
}

impl std::fmt::Display for CollectiveCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = |ok: bool| if ok { "ok" } else { "WRONG" };
        write!(
            f,
            "rank {}/{} backend {}: allreduce {} ({:.3} GB/s), broadcast {}, barrier ok",
            self.rank,
            self.world_size,
            self.backend.name(),
            verdict(self.allreduce_ok),
            self.allreduce_gb_per_s,
            verdict(self.broadcast_ok),
        )
    }
}

/// Rank r all-reduces `arange(n) * (r + 1)` and broadcasts `arange(n) + 1000 r` from rank 0,
/// then a barrier; every rank checks the exact expected values. With `dump`, each rank writes
/// what it received to `dump/rank<R>.safetensors`.
pub fn check_collectives(
    backend: Backend,
    numel: i64,
    timeout: Duration,
    dump: Option<&Path>,
) -> Result<CollectiveCheck> {
    let env = DistEnv::from_env()?
        .ok_or_else(|| Error::Input("WORLD_SIZE is not set: start this under medbert-run or torchrun".into()))?;
    let pg = ProcessGroup::init(&env, backend, timeout)?;
    let (rank, world) = (env.rank as f64, env.world_size as f64);
    let base = Tensor::arange(numel, (Kind::Float, pg.device()));

    let mut summed = &base * (rank + 1.0);
    let started = Instant::now();
    pg.allreduce_sum(&mut [&mut summed])?.wait()?;
    let allreduce_s = started.elapsed().as_secs_f64();
    let expected_sum = &base * (world * (world + 1.0) / 2.0);

    let mut broadcast = &base + 1000.0 * rank;
    pg.broadcast(&mut [&mut broadcast], 0)?.wait()?;
    pg.barrier()?;

    if let Some(dir) = dump {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("rank{}.safetensors", env.rank));
        let (summed, broadcast) = (summed.to_device(Device::Cpu), broadcast.to_device(Device::Cpu));
        Tensor::write_safetensors(&[("allreduce", &summed), ("broadcast", &broadcast)], &path)?;
    }
    Ok(CollectiveCheck {
        rank: env.rank,
        world_size: env.world_size,
        backend,
        allreduce_ok: summed.equal(&expected_sum),
        broadcast_ok: broadcast.equal(&base),
        allreduce_gb_per_s: (numel * 4) as f64 / allreduce_s / 1e9,
    })
}
