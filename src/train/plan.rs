//! What a run covers: the training questions and the evaluation set, this rank's share of
//! each epoch, the number of optimizer steps and the learning-rate schedule.

use super::checkpoint::TrainerState;
use super::optim::Schedule;
use super::report::Baseline;
use super::{TrainArgs, TrainInputs};
use crate::batch::{question_lengths, Sampler};
use crate::data::{CHOICES, OPTION_FIELDS};
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::prep::cache::PreparedCache;

/// The questions one evaluation covers.
pub(crate) type EvalSet<'a> = (&'a PreparedCache, Option<&'a [usize]>);

/// The training questions and the evaluation set (a validation cache, or the last `holdout`
/// questions of the training file).
pub(crate) struct Split {
    pub train: PreparedCache,
    eval: Option<PreparedCache>,
    pub train_idx: Vec<usize>,
    holdout_idx: Vec<usize>,
}

impl Split {
    pub fn open(inputs: &TrainInputs, holdout: Option<usize>) -> Result<Split> {
        let train = PreparedCache::open(&inputs.train_cache)?;
        let eval = inputs.eval_cache.as_deref().map(PreparedCache::open).transpose()?;
        train.require_answers("training")?;
        if let Some(eval) = &eval {
            eval.require_answers("evaluation")?;
        }
        let n = train.len();
        let held = match (holdout, &eval) {
            (Some(_), Some(_)) => {
                return Err(Error::Input("--holdout and a validation file exclude each other".into()))
            }
            (Some(h), None) if h == 0 || h >= n => {
                return Err(Error::Input(format!(
                    "--holdout {h} must be between 1 and {} (the training questions)",
                    n.saturating_sub(1)
                )))
            }
            (Some(h), None) => h,
            (None, _) => 0,
        };
        Ok(Split { train, eval, train_idx: (0..n - held).collect(), holdout_idx: (n - held..n).collect() })
    }

    pub fn eval_cache(&self) -> Option<&PreparedCache> {
        self.eval.as_ref()
    }

    /// What the evaluation accuracy compares with: chance, and always giving the training
    /// questions' most common answer (scored on the evaluation questions). None without an
    /// evaluation set.
    pub fn baselines(&self) -> Result<Option<Vec<Baseline>>> {
        let Some((cache, questions)) = self.eval_set() else { return Ok(None) };
        let train = self.train.labels()?;
        let mut counts = [0usize; CHOICES];
        for &q in &self.train_idx {
            counts[usize::try_from(train[q]).unwrap_or(0).min(CHOICES - 1)] += 1;
        }
        let majority = (0..CHOICES).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).unwrap_or(0);
        let labels = cache.labels()?;
        let eval: Vec<i64> = match questions {
            Some(q) => q.iter().map(|&i| labels[i]).collect(),
            None => labels.to_vec(),
        };
        let hits = eval.iter().filter(|&&l| l == majority as i64).count();
        Ok(Some(vec![
            Baseline { name: "chance".into(), accuracy: 1.0 / CHOICES as f64 },
            Baseline {
                name: format!("always {} (training's commonest answer)", OPTION_FIELDS[majority]),
                accuracy: hits as f64 / eval.len().max(1) as f64,
            },
        ]))
    }

    pub fn eval_set(&self) -> Option<EvalSet<'_>> {
        match (&self.eval, self.holdout_idx.is_empty()) {
            (Some(cache), _) => Some((cache, None)),
            (None, true) => None,
            (None, false) => Some((&self.train, Some(self.holdout_idx.as_slice()))),
        }
    }
}

/// How the questions of one optimizer step are laid out: on each of `world` processes,
/// `accumulation` micro-batches of `micro_batch` questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub micro_batch: usize,
    pub accumulation: usize,
    pub world: usize,
}

/// Why a resumed run takes the global batch it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchChoice {
    /// The flags give the checkpoint's global batch on this many processes.
    AsFlagged,
    /// The checkpoint's global batch, by an accumulation (and micro-batch) chosen for this
    /// number of processes.
    Kept,
    /// The checkpoint's global batch cannot be shared equally: the nearest that can.
    Nearest,
    /// This run's batch flags differ from the checkpoint's, and they give another global batch.
    Flags,
}

impl Layout {
    /// As the flags say: --per-device-train-batch-size x --gradient-accumulation-steps.
    pub fn from_flags(args: &TrainArgs, world: usize) -> Layout {
        Layout { micro_batch: args.per_device_train_batch_size, accumulation: args.gradient_accumulation_steps, world }
    }

    /// Questions per optimizer step over all processes.
    pub fn global_batch(&self) -> usize {
        self.micro_batch * self.accumulation * self.world
    }

    /// The layout of a run resumed on `world` processes from a checkpoint that took
    /// `checkpoint_batch` questions per step. The global batch is a hyperparameter, the world
    /// size is not: the checkpoint's is kept, each process taking `checkpoint_batch / world`
    /// questions per step in equal micro-batches: the largest share that divides them and is
    /// at most --per-device-train-batch-size (4 questions at 4, 6 questions at 3 x 2, 7 at
    /// 1 x 7), as many as it takes. Where `world` does not divide it, each process takes the
    /// nearest whole share instead. Batch flags that differ from the checkpoint's
    /// (`flags_changed`) are the user's choice and win.
    pub fn resumed(
        args: &TrainArgs,
        world: usize,
        checkpoint_batch: usize,
        flags_changed: bool,
    ) -> (Layout, BatchChoice) {
        let flagged = Layout::from_flags(args, world);
        if flagged.global_batch() == checkpoint_batch {
            return (flagged, BatchChoice::AsFlagged);
        }
        if flags_changed {
            return (flagged, BatchChoice::Flags);
        }
        let (share, choice) = match checkpoint_batch % world {
            0 => (checkpoint_batch / world, BatchChoice::Kept),
            _ => (((checkpoint_batch as f64 / world as f64).round() as usize).max(1), BatchChoice::Nearest),
        };
        let cap = args.per_device_train_batch_size;
        let micro_batch = (1..=cap.min(share)).rev().find(|m| share % m == 0).unwrap_or(1);
        (Layout { micro_batch, accumulation: share / micro_batch, world }, choice)
    }
}

/// The run's shape: this rank's sampler, optimizer steps per epoch and in all, learning rates.
pub(crate) struct Plan {
    sampler: Sampler,
    pub layout: Layout,
    pub total_steps: usize,
    pub schedule: Schedule,
}

impl Plan {
    /// The plan of a run laid out as `layout` that stands where `at` says: the steps taken,
    /// then the rest of the epochs asked for (--num-train-epochs, counted from where the run
    /// stands, so a run resumed with another global batch still trains every question of its
    /// epochs), or --max-steps in all.
    pub fn new(args: &TrainArgs, split: &Split, comm: &Comm, layout: Layout, at: &TrainerState) -> Result<Plan> {
        let world = comm.world_size();
        // Batch size and accumulation flags are in range (`TrainArgs::problems`); the group's
        // size, and the accumulation a resume chooses, are known only here.
        if world > MAX_RANKS {
            return Err(Error::Input(format!("at most {MAX_RANKS} processes are supported, not {world}")));
        }
        if layout.accumulation > MAX_MICRO_STEPS {
            return Err(Error::Input(format!(
                "{} micro-batches per optimizer step: at most {MAX_MICRO_STEPS} are supported",
                layout.accumulation
            )));
        }
        // The mega-batches of --group-by-length are sized by the flags (fixed on a resume), so
        // the epoch's order does not depend on the layout.
        let group_by_length = match args.group_by_length {
            true => {
                let lengths = question_lengths(&split.train)?;
                let mega = args.per_device_train_batch_size * args.gradient_accumulation_steps;
                Some((split.train_idx.iter().map(|&q| lengths[q]).collect(), mega))
            }
            false => None,
        };
        let sampler = Sampler {
            len: split.train_idx.len(),
            world_size: world,
            rank: comm.rank(),
            shuffle: true,
            seed: args.seed,
            drop_last: false,
            group_by_length,
        };
        let (per_epoch, rest) = (steps_in(&sampler, layout, 0), steps_in(&sampler, layout, at.epoch_start));
        let left = || steps_left(args.num_train_epochs, at, per_epoch, rest, layout.global_batch());
        let total_steps = args.max_steps.unwrap_or_else(|| at.step + left()).max(1);
        let warmup = args.warmup_steps.unwrap_or_else(|| (args.warmup_ratio * total_steps as f64).ceil() as usize);
        if total_steps as u64 > MAX_STEPS {
            return Err(Error::Input(format!("{total_steps} optimizer steps: at most {MAX_STEPS} are supported")));
        }
        let schedule =
            Schedule { kind: args.lr_scheduler_type, base_lr: args.learning_rate, warmup_steps: warmup, total_steps };
        Ok(Plan { sampler, layout, total_steps, schedule })
    }

    /// This rank's micro-batches of `epoch` from position `from` of its global order, as
    /// question indices of the training cache.
    pub fn batches(&self, split: &Split, epoch: u64, from: usize) -> Vec<Vec<usize>> {
        let shard = self.sampler.shard(epoch, from);
        shard.chunks(self.layout.micro_batch).map(|c| c.iter().map(|s| split.train_idx[s.index]).collect()).collect()
    }

    /// Optimizer steps in an epoch sharded from position `from` (as the HF Trainer counts
    /// them: an incomplete last accumulation group is left out).
    pub fn steps_in_epoch(&self, from: usize) -> usize {
        steps_in(&self.sampler, self.layout, from)
    }

    /// Training questions in an epoch.
    pub fn epoch_len(&self) -> usize {
        self.sampler.len
    }
}

/// Optimizer steps in an epoch sharded by `sampler` from position `from`, laid out as `layout`.
fn steps_in(sampler: &Sampler, layout: Layout, from: usize) -> usize {
    steps_per_epoch(sampler.num_samples(from), layout.micro_batch, layout.accumulation)
}

/// Optimizer steps left until `epochs` from where `at` stands, `rest` steps before its epoch
/// ends (`per_epoch` in a whole epoch at `global_batch` questions each): the rest of its epoch,
/// the whole epochs after it, and the share of the last one. A fresh run plans
/// `ceil(epochs x per_epoch)`, as the HF Trainer does.
fn steps_left(epochs: f64, at: &TrainerState, per_epoch: usize, rest: usize, global_batch: usize) -> usize {
    let rest = rest.saturating_sub(at.group);
    let after = epochs - (at.epoch + 1) as f64;
    if after >= 0.0 {
        return rest + (after * per_epoch as f64).ceil() as usize;
    }
    // The run ends in this epoch: at its share `epochs - epoch` of the epoch's steps, of which
    // the questions taken so far make up `done`.
    let done = at.epoch_start as f64 / global_batch as f64 + at.group as f64;
    let planned = (epochs - at.epoch as f64).max(0.0) * per_epoch as f64;
    ((planned - done).ceil().max(0.0) as usize).min(rest)
}

/// The bounds that keep `dropout_seed` one-to-one.
pub(crate) const MAX_MICRO_STEPS: usize = 1 << 16;
const MAX_RANKS: usize = 1 << 16;
const MAX_STEPS: u64 = 1 << 32;

/// The seed of one micro-batch's dropout masks: for a given run seed, a one-to-one function of
/// (optimizer step, micro-step, rank), so no two micro-batches of a run share masks and a
/// resumed run draws the same ones as an uninterrupted run. `Plan::new` keeps the three
/// within their bit fields.
pub(crate) fn dropout_seed(seed: u64, step: usize, micro: usize, rank: usize) -> i64 {
    let packed = (step as u64) << 32 | (micro as u64) << 16 | rank as u64;
    splitmix64(packed ^ splitmix64(seed)) as i64
}

/// SplitMix64's finaliser: a bijection of u64 that scatters neighbouring inputs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Optimizer steps per epoch as the HF Trainer counts them (batches / accumulation, at least 1).
pub fn steps_per_epoch(questions: usize, batch_size: usize, accumulation: usize) -> usize {
    (questions.div_ceil(batch_size.max(1)) / accumulation.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_seeds_never_collide_within_a_run() {
        let mut seen = std::collections::HashSet::new();
        for step in 0..50 {
            for micro in 0..130 {
                for rank in 0..3 {
                    assert!(seen.insert(dropout_seed(42, step, micro, rank)), "({step}, {micro}, {rank}) collides");
                }
            }
        }
        assert_ne!(dropout_seed(42, 0, 64, 0), dropout_seed(42, 1, 0, 0), "64 micro-steps reach the next step");
        assert_ne!(dropout_seed(1, 0, 0, 0), dropout_seed(2, 0, 0, 0));
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn args(batch: usize, accumulation: usize) -> TrainArgs {
        let (b, a) = (batch.to_string(), accumulation.to_string());
        let flags = ["medbert", "--model", "m", "--train-file", "t", "--per-device-train-batch-size", &b];
        <Cli as clap::Parser>::parse_from(flags.into_iter().chain(["--gradient-accumulation-steps", &a])).args
    }

    fn layout(micro_batch: usize, accumulation: usize, world: usize) -> Layout {
        Layout { micro_batch, accumulation, world }
    }

    #[test]
    fn a_resume_keeps_the_checkpoints_global_batch_unless_the_batch_flags_change_it() {
        use BatchChoice::*;
        // The shrink: 2 x 4 -> 1 process, the same flags: accumulation 2.
        assert_eq!(Layout::resumed(&args(4, 1), 1, 8, false), (layout(4, 2, 1), Kept));
        // A grow: 1 x 4 x 2 -> 2 processes: 4 each, one micro-batch.
        assert_eq!(Layout::resumed(&args(4, 2), 2, 8, false), (layout(4, 1, 2), Kept));
        // 1 x 8 -> 2 processes, 4 each: a smaller micro-batch, never a larger one.
        assert_eq!(Layout::resumed(&args(8, 1), 2, 8, false), (layout(4, 1, 2), Kept));
        // 6 questions per process at most 4 at a time: 2 x 3; 7 (prime): 7 x 1.
        assert_eq!(Layout::resumed(&args(4, 1), 2, 12, false), (layout(3, 2, 2), Kept));
        assert_eq!(Layout::resumed(&args(4, 1), 1, 7, false), (layout(1, 7, 1), Kept));
        // 8 over 3 processes: 3 each (9), the nearest equal share.
        assert_eq!(Layout::resumed(&args(4, 1), 3, 8, false), (layout(3, 1, 3), Nearest));
        assert_eq!(Layout::resumed(&args(4, 1), 3, 2, false), (layout(1, 1, 3), Nearest));
        // The flags already give it; the flags changed and give another.
        assert_eq!(Layout::resumed(&args(4, 2), 1, 8, true), (layout(4, 2, 1), AsFlagged));
        assert_eq!(Layout::resumed(&args(2, 1), 1, 8, true), (layout(2, 1, 1), Flags));
    }

    #[test]
    fn the_steps_left_finish_the_epochs_asked_for() {
        let at = |epoch: u64, epoch_start: usize, group: usize| TrainerState {
            epoch,
            epoch_start,
            group,
            ..TrainerState::default()
        };
        // Fresh: ceil(epochs x steps per epoch).
        assert_eq!(steps_left(3.0, &at(0, 0, 0), 12, 12, 8), 36);
        assert_eq!(steps_left(0.5, &at(0, 0, 0), 12, 12, 8), 6);
        assert_eq!(steps_left(1.25, &at(0, 0, 0), 12, 12, 8), 15);
        // Resumed where it stood: the same total.
        assert_eq!(4 + steps_left(3.0, &at(0, 0, 4), 12, 12, 8), 36);
        assert_eq!(steps_left(1.25, &at(1, 0, 4), 12, 12, 8), 0, "past the end: nothing left");
        assert_eq!(13 + steps_left(1.25, &at(1, 0, 1), 12, 12, 8), 15);
        // Resharded after 32 of 96 questions at 4 per step: 16 steps finish the epoch.
        assert_eq!(steps_left(1.0, &at(0, 32, 0), 24, 16, 4), 16);
        assert_eq!(steps_left(2.0, &at(0, 32, 0), 24, 16, 4), 40);
        // Half an epoch planned, 32 of 96 questions taken: 16 more questions, 4 steps of 4.
        assert_eq!(steps_left(0.5, &at(0, 32, 0), 24, 16, 4), 4);
    }

    #[test]
    fn the_hf_trainer_counts_steps_per_epoch() {
        assert_eq!(steps_per_epoch(10, 4, 1), 3);
        assert_eq!(steps_per_epoch(10, 4, 2), 1);
        assert_eq!(steps_per_epoch(3, 4, 8), 1);
    }
}
