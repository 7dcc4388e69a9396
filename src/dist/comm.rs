//! The collectives every process of a run takes part in on plain values, by what they mean:
//! exact sums, whether something holds on any rank, rank 0's value. Training, evaluation and
//! the run directory's rules use them; with one process (no group) each is the value itself.

use super::ProcessGroup;
use crate::error::Result;
use std::sync::Arc;
use tch::{Device, Tensor};

#[derive(Clone)]
pub struct Comm {
    pg: Option<Arc<ProcessGroup>>,
}

impl Comm {
    /// One process: nothing to agree on.
    pub fn single() -> Comm {
        Comm { pg: None }
    }

    /// The processes of `pg` (one process when None).
    pub fn from_group(pg: Option<ProcessGroup>) -> Comm {
        Comm { pg: pg.map(Arc::new) }
    }

    /// The process group, for the collectives on tensors (gradients, parameters).
    pub fn group(&self) -> Option<&Arc<ProcessGroup>> {
        self.pg.as_ref()
    }

    /// The collective backend, or None for one process without a group.
    pub fn backend(&self) -> Option<super::Backend> {
        self.pg.as_ref().map(|pg| pg.backend())
    }

    pub fn world_size(&self) -> usize {
        self.pg.as_ref().map_or(1, |pg| pg.world_size())
    }

    pub fn rank(&self) -> usize {
        self.pg.as_ref().map_or(0, |pg| pg.rank())
    }

    /// Rank 0: the one process that writes files and logs progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Sums `values` over the ranks in place (f64: exact for counts below 2^53).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        let mut t = Tensor::from_slice(values).to_device(pg.device());
        pg.allreduce_sum(&mut [&mut t])?.wait()?;
        values.copy_from_slice(&Vec::<f64>::try_from(&t.to_device(Device::Cpu))?);
        Ok(())
    }

    /// Whether `local` holds on any rank; every rank gets the same answer.
    pub fn any(&self, local: bool) -> Result<bool> {
        let mut flag = [f64::from(u8::from(local))];
        self.sum(&mut flag)?;
        Ok(flag[0] > 0.0)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        match &self.pg {
            Some(pg) => pg.barrier(),
            None => Ok(()),
        }
    }

    /// Rank 0's `value`, on every rank.
    pub fn from_rank0(&self, value: f64) -> Result<f64> {
        let Some(pg) = &self.pg else { return Ok(value) };
        let mut t = Tensor::from_slice(&[value]).to_device(pg.device());
        pg.broadcast(&mut [&mut t], 0)?.wait()?;
        Ok(t.to_device(Device::Cpu).double_value(&[0]))
    }

    /// Whether the launcher asked this round's workers to stop at this checkpoint (to admit
    /// a node): rank 0 reads the launcher's store, every rank gets its answer. Never without
    /// a group, or where rank 0 hosts the store (no launcher to ask).
    pub fn launcher_asks_to_stop(&self) -> Result<bool> {
        let Some(pg) = &self.pg else { return Ok(false) };
        let asked = self.is_main() && pg.store().contains(super::keys::worker::STOP_AT_CHECKPOINT)?;
        Ok(self.from_rank0(f64::from(u8::from(asked)))? > 0.0)
    }

    /// Tells the launcher that every rank stopped at the checkpoint of `step`; returns once
    /// it is said, so that no worker exits before its launcher can read it.
    pub fn tell_launcher_stopped(&self, step: usize) -> Result<()> {
        let Some(pg) = &self.pg else { return Ok(()) };
        if self.is_main() {
            pg.store().set(super::keys::worker::STOPPED_AT_CHECKPOINT, step.to_string().as_bytes())?;
        }
        pg.barrier()
    }
}
