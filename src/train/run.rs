//! `medbert train` on this process, from the flags to summary.json: the flags checked, the
//! model found, the group joined, the data prepared, the run fitted and reported.

use super::{Fit, Resume, TrainArgs, TrainInputs, TrainSummary, Trainer};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Checks the flags (before anything is downloaded or written), resolves `--model` to a local
/// directory, joins the group medbert-run (or torchrun, or Slurm) describes in the
/// environment, prepares raw data files under the run directory (one process per node at a
/// time), trains, and on rank 0 writes summary.json and returns the summary (None on the
/// other ranks, and when the launcher stopped the group at a checkpoint to admit a node).
pub fn run(args: &TrainArgs) -> Result<Option<TrainSummary>> {
    args.check(None)?;
    let model_dir = crate::hub::resolve_model(&args.model)?;
    args.check(Some(&model_dir))?;
    let worker = args.ddp.group.join_worker(args.data.device)?;
    let resume = Resume::from_flags(args.resume, args.resume_from_checkpoint.as_deref(), worker.restarted());
    super::checkpoint::precheck(&args.run_dir(), &resume)?;
    let (root, max_length) = (args.run_dir().prepared(), args.data.max_length);
    let (train_cache, eval_cache) = worker.in_turn(|| {
        let train = crate::prep::prepared(&args.train_file, &root, &model_dir, max_length)?;
        let eval = args.validation_file.as_deref();
        let eval = eval.map(|p| crate::prep::prepared(p, &root, &model_dir, max_length)).transpose()?;
        Ok::<(PathBuf, Option<PathBuf>), Error>((train, eval))
    })?;
    let (device, local_world_size) = (worker.device, worker.local_world_size());
    let inputs = TrainInputs { model_dir, train_cache, eval_cache, device, resume, local_world_size };
    let mut trainer = Trainer::set_up(args, &inputs, worker.comm)?;
    let is_main = trainer.comm.is_main();
    let summary = match trainer.fit()? {
        Fit::Done => trainer.finish()?,
        Fit::Preempted { step, signal } => {
            trainer.bar.finish_and_clear();
            return Err(Error::Preempted { step, signal, checkpoint: trainer.run.checkpoint(step) });
        }
        Fit::StoppedAtCheckpoint => {
            trainer.bar.finish_and_clear();
            return Ok(None);
        }
    };
    if !is_main {
        return Ok(None);
    }
    let path = args.run_dir().summary();
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::write(&path, e))?;
    crate::atomic::write_file(&path, &json)?;
    Ok(Some(summary))
}
