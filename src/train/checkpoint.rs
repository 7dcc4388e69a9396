//! Checkpoints in the Hugging Face layout: `model.safetensors` with transformers' names,
//! `config.json` and the tokenizer files, so `AutoModelForMultipleChoice.from_pretrained`
//! loads them. Written into a temporary sibling and renamed into place: a crash never leaves
//! a half-written checkpoint where a good one was.

use super::amp::GradScaler;
use super::optim::AdamW;
use super::run_dir::RunDir;
use super::Resume;
use crate::atomic::StagedDir;
use crate::dist::Comm;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use tch::nn::VarStore;

/// Where a run stands: the training loop's state, saved beside the weights of
/// `checkpoint-<step>` for `--resume` (as the HF Trainer's `TrainerState`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    pub epoch: u64,
    /// The position in `epoch`'s global order where its sharding began: 0, or where a run
    /// resumed by another number of processes (or another global batch) took over.
    #[serde(default)]
    pub epoch_start: usize,
    /// Accumulation groups done since `epoch_start`: training resumes at the next one.
    pub group: usize,
    pub seen: usize,
    /// The best value of `--metric-for-best-model` so far, and the step that reached it.
    #[serde(alias = "best_eval_loss")]
    pub best_metric: Option<f64>,
    #[serde(default)]
    pub best_step: Option<usize>,
    pub evals_without_improvement: usize,
    /// Processes that trained, and the questions of one optimizer step over all of them.
    #[serde(default = "one")]
    pub world_size: usize,
    #[serde(default)]
    pub global_batch: Option<usize>,
    /// Optimizer steps the run planned in all when this state was saved (a resume with
    /// another global batch plans the rest of its epochs anew).
    #[serde(default)]
    pub total_steps: Option<usize>,
    /// Updates the optimizer applied (fewer than `step` when fp16 skipped some).
    #[serde(default)]
    pub optimizer_step: Option<usize>,
    #[serde(default)]
    pub scaler: Option<super::amp::GradScaler>,
}

fn one() -> usize {
    1
}

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Saves the model as `save` does, plus the trainer state, the optimizer moments and the
/// run's arguments (`training_args.json`).
pub fn save_resumable(
    dest: &Path,
    vs: &VarStore,
    source_model: &Path,
    state: &TrainerState,
    opt: &AdamW,
    run_args: &[u8],
) -> Result<()> {
    save_with(dest, vs, source_model, |staged| {
        staged.write(super::run_dir::ARGS_FILE, run_args)?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::write(dest.join(STATE_FILE), e))?;
        staged.write(STATE_FILE, &json)?;
        write_hf_safetensors(&staged.file(OPTIMIZER_FILE), &opt.state())
    })
}

/// Reads what `save_resumable` wrote.
pub fn load_resumable(dir: &Path) -> Result<(TrainerState, HashMap<String, tch::Tensor>)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state = serde_json::from_str(&text).map_err(|e| Error::data(&path, None, None, e.to_string()))?;
    let path = dir.join(OPTIMIZER_FILE);
    let moments = tch::Tensor::read_safetensors(&path)
        .map_err(|e| Error::Weights { path: path.clone(), message: crate::error::torch_message(e) })?
        .into_iter()
        .collect();
    Ok((state, moments))
}

/// The checkpoint a run continues from, if any; the newest is chosen by rank 0 so that every
/// rank resumes from the same.
pub(crate) fn to_resume(run: &RunDir, resume: &Resume, comm: &Comm) -> Result<Option<PathBuf>> {
    let fallback = match resume {
        Resume::No => return Ok(None),
        Resume::From(dir) => return checked(dir, "--resume-from-checkpoint").map(Some),
        Resume::Required => None,
        Resume::IfAny(fallback) => Some(fallback),
    };
    let newest = resumable(run)?.pop();
    // Rank 0's newest step + 1, or 0 for none.
    let chosen = comm.from_rank0(newest.map_or(0.0, |(step, _)| step as f64 + 1.0))?;
    match (chosen, fallback) {
        (0.0, Some(None)) => Ok(None),
        (0.0, Some(Some(dir))) => checked(dir, "--resume-from-checkpoint").map(Some),
        (0.0, None) => Err(Error::Input(format!(
            "--resume: no checkpoint-<step> with a trainer state in {}",
            run.root().display()
        ))),
        (step, _) => {
            let dir = run.checkpoint(step as usize - 1);
            match dir.join(STATE_FILE).is_file() {
                true => checked(&dir, "--resume").map(Some),
                false => Err(Error::Input(format!(
                    "--resume: rank {} cannot see {} that rank 0 resumes from (the output directory must be shared)",
                    comm.rank(),
                    dir.display()
                ))),
            }
        }
    }
}

/// Refuses, before anything is written, a resume from a checkpoint medbert cannot resume
/// ([`checked`]): the one given, or the newest in the run directory as this process sees it.
pub(crate) fn precheck(run: &RunDir, resume: &Resume) -> Result<()> {
    match resume {
        Resume::No => Ok(()),
        Resume::From(dir) => checked(dir, "--resume-from-checkpoint").map(drop),
        Resume::Required | Resume::IfAny(_) => match resumable(run)?.pop() {
            Some((_, dir)) => checked(&dir, "--resume").map(drop),
            None => Ok(()),
        },
    }
}

/// What the HF Trainer saves in its checkpoints beside the weights (and medbert does not).
const HF_TRAINER_FILES: [&str; 3] = ["optimizer.pt", "scheduler.pt", "training_args.bin"];

/// `dir` when it is a checkpoint medbert can resume: its trainer state and optimizer state,
/// not another trainer's (an HF Trainer checkpoint is refused with what to do instead).
pub(crate) fn checked(dir: &Path, flag: &str) -> Result<PathBuf> {
    let hf = HF_TRAINER_FILES.iter().find(|f| dir.join(f).is_file());
    if let (Some(file), false) = (hf, dir.join(OPTIMIZER_FILE).is_file()) {
        return Err(Error::Input(format!(
            "{flag} {}: an HF Trainer checkpoint (it holds {file}, not medbert's {OPTIMIZER_FILE}): medbert does not \
             resume another trainer's optimizer and schedule; fine-tune its weights in a new run with --model {} \
             instead (the optimizer starts afresh)",
            dir.display(),
            dir.display()
        )));
    }
    match dir.join(STATE_FILE).is_file() {
        true => Ok(dir.to_path_buf()),
        false => Err(Error::Input(format!(
            "{flag} {}: no {STATE_FILE} there (expected a checkpoint-<step> directory)",
            dir.display()
        ))),
    }
}

/// How a resume lays the rest of an epoch out again: the processes and global batch of the
/// checkpoint, and of this run.
#[derive(Debug, PartialEq)]
pub(crate) struct Reshard {
    pub from: (usize, usize),
    pub to: (usize, usize),
}

impl TrainerState {
    /// The global batch the checkpoint `dir` holding this state trained with. A checkpoint
    /// from before it was recorded resumes only on its own number of processes, where the
    /// flags' batch (`flagged`) is taken to be its.
    pub(crate) fn trained_batch(&self, dir: &Path, world: usize, flagged: usize) -> Result<usize> {
        match self.global_batch {
            Some(batch) => Ok(batch),
            None if self.world_size == world => Ok(flagged),
            None => Err(Error::Input(format!(
                "--resume: {} was written by {} process(es) and records no global batch; resume it with as \
                 many processes and the same batch settings",
                dir.display(),
                self.world_size
            ))),
        }
    }

    /// The state of a checkpoint written by another number of processes or global batch,
    /// resharded for `world` processes taking `global_batch` questions per step: the epoch
    /// continues at the first question of its order that no optimizer step took, shared
    /// among this run's processes.
    pub(crate) fn reshard(&mut self, trained_batch: usize, world: usize, global_batch: usize) -> Option<Reshard> {
        let reshard = match (self.world_size, trained_batch) == (world, global_batch) {
            true => None,
            false => {
                self.epoch_start += self.group * trained_batch;
                self.group = 0;
                Some(Reshard { from: (self.world_size, trained_batch), to: (world, global_batch) })
            }
        };
        (self.world_size, self.global_batch) = (world, Some(global_batch));
        reshard
    }
}

/// Reads checkpoint `dir`'s trainer state and restores its optimizer moments and loss scaler.
pub(crate) fn restore(dir: &Path, opt: &mut AdamW, scaler: &mut GradScaler) -> Result<TrainerState> {
    let (state, moments) = load_resumable(dir)?;
    opt.load_state(&moments, state.optimizer_step.unwrap_or(state.step) as i64, &dir.join(OPTIMIZER_FILE))?;
    if let Some(s) = &state.scaler {
        *scaler = s.clone();
    }
    Ok(state)
}

/// The run's `checkpoint-<step>` directories that hold a trainer state, by step.
pub fn resumable(run: &RunDir) -> Result<Vec<(usize, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(run.root()) else { return Ok(Vec::new()) };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = RunDir::checkpoint_step(e.file_name().to_str()?)?;
            e.path().join(STATE_FILE).is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The checkpoints to delete so that only the newest `keep` remain.
pub fn to_delete(steps: &[usize], keep: usize) -> Vec<usize> {
    let mut sorted = steps.to_vec();
    sorted.sort_unstable();
    sorted[..sorted.len().saturating_sub(keep)].to_vec()
}

/// Deletes all but the newest `keep` resumable checkpoints.
pub fn prune(run: &RunDir, keep: usize) -> Result<()> {
    let found = resumable(run)?;
    let steps: Vec<usize> = found.iter().map(|(s, _)| *s).collect();
    for step in to_delete(&steps, keep) {
        let dir = run.checkpoint(step);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}

/// Copies checkpoint directory `src` to `dest` (atomically, as every checkpoint is written).
pub fn copy(src: &Path, dest: &Path) -> Result<()> {
    let staged = StagedDir::new(dest)?;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let path = entry.map_err(|e| Error::io(src, e))?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|_| path.is_file()) {
            std::fs::copy(&path, staged.file(name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    staged.publish()
}

pub fn save(dest: &Path, vs: &VarStore, source_model: &Path) -> Result<()> {
    save_with(dest, vs, source_model, |_| Ok(()))
}

fn save_with(
    dest: &Path,
    vs: &VarStore,
    source_model: &Path,
    extra: impl FnOnce(&StagedDir) -> Result<()>,
) -> Result<()> {
    let staged = StagedDir::new(dest)?;
    let mut named: Vec<(String, tch::Tensor)> =
        vs.variables().into_iter().map(|(n, t)| (n, t.to_device(tch::Device::Cpu).contiguous())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_hf_safetensors(&staged.file(crate::files::WEIGHTS_FILE), &named)?;
    let config = crate::model::checkpoint_config(&source_model.join(crate::files::CONFIG_FILE))?;
    staged.write(crate::files::CONFIG_FILE, &config)?;
    for name in crate::files::TOKENIZER_FILES {
        let src = source_model.join(name);
        if src.is_file() {
            std::fs::copy(&src, staged.file(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    extra(&staged)?;
    staged.publish()
}

/// Writes float32 tensors as safetensors with the `{"format": "pt"}` metadata that
/// transformers requires.
pub fn write_hf_safetensors(path: &Path, named: &[(String, tch::Tensor)]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let data: Vec<(String, Vec<i64>, Vec<f32>)> = named
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.size(), Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1))?)))
        .collect::<Result<_>>()?;
    let views = data
        .iter()
        .map(|(n, shape, values)| {
            let shape = shape.iter().map(|&d| d as usize).collect();
            TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(values))
                .map(|v| (n.as_str(), v))
                .map_err(|e| Error::write_safetensors(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    safetensors::serialize_to_file(views, &metadata, path).map_err(|e| Error::write_safetensors(path, e))
}

#[cfg(test)]
mod tests {
    use super::to_delete;

    #[test]
    fn keeps_the_newest() {
        assert_eq!(to_delete(&[30, 10, 20, 40], 2), [10, 20]);
        assert_eq!(to_delete(&[10], 3), Vec::<usize>::new());
        assert_eq!(to_delete(&[10, 20], 0), [10, 20]);
    }
}
