//! What a run covers: the training questions and the evaluation set, this rank's share of
//! each epoch, the number of optimizer steps and the learning-rate schedule.

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

/// The run's shape: this rank's sampler, optimizer steps per epoch and in all, learning rates.
pub(crate) struct Plan {
    sampler: Sampler,
    batch: usize,
    accumulation: usize,
    /// Questions per optimizer step over all processes.
    pub global_batch: usize,
    /// Optimizer steps in a whole epoch.
    pub per_epoch: usize,
    pub total_steps: usize,
    pub schedule: Schedule,
}

impl Plan {
    /// `first_per_epoch`: the steps per epoch the run was planned with when it started (a run
    /// resumed by another number of processes keeps its number of steps and its schedule).
    pub fn new(args: &TrainArgs, split: &Split, comm: &Comm, first_per_epoch: Option<usize>) -> Result<Plan> {
        let (batch, world) = (args.per_device_train_batch_size, comm.world_size());
        let accumulation = args.gradient_accumulation_steps;
        // Batch size and accumulation are in range (`TrainArgs::problems`); the group's size
        // is known only here.
        if world > MAX_RANKS {
            return Err(Error::Input(format!("at most {MAX_RANKS} processes are supported, not {world}")));
        }
        let group_by_length = match args.group_by_length {
            true => {
                let lengths = question_lengths(&split.train)?;
                Some((split.train_idx.iter().map(|&q| lengths[q]).collect(), batch * accumulation))
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
        let per_epoch = steps_per_epoch(sampler.num_samples(0), batch, accumulation);
        let planned = first_per_epoch.unwrap_or(per_epoch);
        let total_steps =
            args.max_steps.unwrap_or_else(|| (args.num_train_epochs * planned as f64).ceil() as usize).max(1);
        let warmup = args.warmup_steps.unwrap_or_else(|| (args.warmup_ratio * total_steps as f64).ceil() as usize);
        let schedule =
            Schedule { kind: args.lr_scheduler_type, base_lr: args.learning_rate, warmup_steps: warmup, total_steps };
        if total_steps as u64 > MAX_STEPS {
            return Err(Error::Input(format!("{total_steps} optimizer steps: at most {MAX_STEPS} are supported")));
        }
        let global_batch = args.global_batch(world);
        Ok(Plan { sampler, batch, accumulation, global_batch, per_epoch, total_steps, schedule })
    }

    /// This rank's micro-batches of `epoch` from position `from` of its global order, as
    /// question indices of the training cache.
    pub fn batches(&self, split: &Split, epoch: u64, from: usize) -> Vec<Vec<usize>> {
        let shard = self.sampler.shard(epoch, from);
        shard.chunks(self.batch).map(|c| c.iter().map(|s| split.train_idx[s.index]).collect()).collect()
    }

    /// Optimizer steps in an epoch sharded from position `from` (as the HF Trainer counts
    /// them: an incomplete last accumulation group is left out).
    pub fn steps_in_epoch(&self, from: usize) -> usize {
        steps_per_epoch(self.sampler.num_samples(from), self.batch, self.accumulation)
    }

    /// Training questions in an epoch.
    pub fn epoch_len(&self) -> usize {
        self.sampler.len
    }
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

    #[test]
    fn the_hf_trainer_counts_steps_per_epoch() {
        assert_eq!(steps_per_epoch(10, 4, 1), 3);
        assert_eq!(steps_per_epoch(10, 4, 2), 1);
        assert_eq!(steps_per_epoch(3, 4, 8), 1);
    }
}
