//! Fine-tuning `BertForMultipleChoice` on a prepared cache with the HF Trainer's semantics:
//! AdamW with its parameter groups, linear warm-up and decay, clipping by global norm,
//! gradient accumulation, evaluation every N steps and each epoch, early stopping.

pub mod checkpoint;
pub mod optim;

use crate::batch::{collate, question_lengths, Sampler};
use crate::error::{Error, Result};
use crate::model::{ChoiceBatch, MultipleChoiceModel};
use crate::prep::cache::PreparedCache;
use optim::{clip_grad_norm, AdamW, LinearSchedule};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Mean cross-entropy of a batch and its logits; dropout on when `train`.
pub fn batch_loss(
    model: &MultipleChoiceModel,
    batch: &ChoiceBatch,
    labels: &Tensor,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let logits = model.forward(batch, train)?;
    let loss = logits.f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)?;
    Ok((loss, logits))
}

/// Everything a training run is told, named as the HF Trainer's TrainingArguments.
#[derive(Clone, Debug, Serialize)]
pub struct TrainArgs {
    pub model_dir: PathBuf,
    pub train_cache: PathBuf,
    pub eval_cache: Option<PathBuf>,
    /// Without an evaluation cache: hold out the last N training questions (file order).
    pub holdout: Option<usize>,
    pub output_dir: PathBuf,
    pub learning_rate: f64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub num_train_epochs: f64,
    pub max_steps: Option<usize>,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub group_by_length: bool,
    pub patience: Option<usize>,
    pub eval_steps: Option<usize>,
    pub logging_steps: usize,
    #[serde(serialize_with = "device_name")]
    pub device: Device,
    pub progress: bool,
    /// Save a resumable `checkpoint-<step>` every N optimizer steps.
    pub save_steps: Option<usize>,
    /// Keep only the newest K resumable checkpoints.
    pub save_total_limit: Option<usize>,
    /// Continue from the newest resumable checkpoint in the output directory.
    pub resume: bool,
}

fn device_name<S: serde::Serializer>(d: &Device, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{d:?}").to_lowercase())
}

/// Accuracy and loss over a split; sums, so that ranks can add them up exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalResult {
    pub questions: usize,
    pub correct: usize,
    pub loss_sum: f64,
    /// (subject, correct, questions) where the cache names subjects.
    pub per_subject: Vec<(String, usize, usize)>,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.questions.max(1) as f64
    }
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.questions.max(1) as f64
    }
}

/// Loss and accuracy of `model` on the labelled questions of `cache` among `questions`
/// (all when None), in eval mode without a graph.
pub fn evaluate(
    model: &MultipleChoiceModel,
    cache: &PreparedCache,
    questions: Option<&[usize]>,
    batch_size: usize,
) -> Result<EvalResult> {
    let labels = cache.labels()?;
    let subjects = cache.subjects()?;
    let names = &cache.manifest.subjects;
    let mut per_subject = vec![(0usize, 0usize); names.len()];
    let mut out = EvalResult::default();
    let all: Vec<usize>;
    let questions = match questions {
        Some(q) => q,
        None => {
            all = (0..cache.len()).collect();
            &all
        }
    };
    let labelled: Vec<usize> = questions.iter().copied().filter(|&q| labels[q] >= 0).collect();
    tch::no_grad(|| -> Result<()> {
        for chunk in labelled.chunks(batch_size.max(1)) {
            let (batch, y) = collate(cache, chunk, model.vs.device())?;
            let logits = model.forward(&batch, false)?;
            let losses = logits.f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::None, -100, 0.0)?;
            out.loss_sum += losses.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
            let hits: Vec<bool> = Vec::try_from(logits.argmax(-1, false).eq_tensor(&y))?;
            for (&q, hit) in chunk.iter().zip(hits) {
                out.questions += 1;
                out.correct += usize::from(hit);
                if let Some(s) = usize::try_from(subjects[q]).ok().filter(|&s| s < per_subject.len()) {
                    per_subject[s].0 += usize::from(hit);
                    per_subject[s].1 += 1;
                }
            }
        }
        Ok(())
    })?;
    out.per_subject = names.iter().zip(per_subject).map(|(n, (c, t))| (n.clone(), c, t)).collect();
    Ok(out)
}

/// Appends one JSON object per line to `metrics.jsonl`.
struct MetricsLog(std::fs::File);

impl MetricsLog {
    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog(file))
    }
    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.0, "{value}")
            .and_then(|_| self.0.flush())
            .map_err(|e| Error::Input(format!("metrics.jsonl: {e}")))
    }
}

/// What a finished run reports.
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_run: f64,
    pub train_questions_per_second: f64,
    pub final_eval: Option<EvalResult>,
    pub best_eval_loss: Option<f64>,
    pub stopped_early: bool,
    pub checkpoint: PathBuf,
}

fn dropout_seed(seed: u64, step: usize, micro: usize) -> i64 {
    (seed as i64).wrapping_mul(1_000_003).wrapping_add((step as i64).wrapping_mul(64)).wrapping_add(micro as i64)
}

/// Best evaluation loss so far, evaluations since it improved, and the latest result.
#[derive(Default)]
struct Tracker {
    best: Option<f64>,
    bad: usize,
    last: Option<EvalResult>,
    /// Time spent evaluating and saving, excluded from the training throughput.
    spent: std::time::Duration,
}

impl Tracker {
    /// Evaluates (when there is an evaluation split), logs, keeps the best checkpoint, and
    /// says whether patience ran out.
    fn evaluate(
        &mut self,
        args: &TrainArgs,
        eval: Option<(&PreparedCache, Option<&[usize]>)>,
        model: &MultipleChoiceModel,
        metrics: &mut MetricsLog,
        step: usize,
        epoch: f64,
    ) -> Result<bool> {
        let Some((cache, questions)) = eval else { return Ok(false) };
        let started = Instant::now();
        let r = evaluate(model, cache, questions, args.per_device_eval_batch_size)?;
        metrics.write(serde_json::json!({"step": step, "epoch": epoch, "eval_loss": r.loss(),
            "eval_accuracy": r.accuracy(), "eval_questions": r.questions, "per_subject": r.per_subject}))?;
        tracing::info!(step, loss = r.loss(), accuracy = r.accuracy(), "evaluation");
        if self.best.is_none_or(|b| r.loss() < b) {
            self.best = Some(r.loss());
            self.bad = 0;
            checkpoint::save(&args.output_dir.join("best"), &model.vs, &args.model_dir)?;
        } else {
            self.bad += 1;
        }
        self.last = Some(r);
        self.spent += started.elapsed();
        Ok(args.patience.is_some_and(|p| self.bad >= p))
    }
}

/// Optimizer steps per epoch as the HF Trainer counts them (batches / accumulation, at least 1).
pub fn steps_per_epoch(questions: usize, batch_size: usize, accumulation: usize) -> usize {
    (questions.div_ceil(batch_size.max(1)) / accumulation.max(1)).max(1)
}

pub fn train(args: &TrainArgs) -> Result<TrainSummary> {
    if args.per_device_train_batch_size == 0 || args.gradient_accumulation_steps == 0 {
        return Err(Error::Input("batch size and gradient accumulation steps must be at least 1".into()));
    }
    std::fs::create_dir_all(&args.output_dir).map_err(|e| Error::io(&args.output_dir, e))?;
    tch::manual_seed(args.seed as i64);
    let resume_from = match args.resume {
        true => Some(checkpoint::resumable(&args.output_dir)?.pop().map(|(_, dir)| dir).ok_or_else(|| {
            Error::Input(format!(
                "--resume: no checkpoint-<step> with a trainer state in {}",
                args.output_dir.display()
            ))
        })?),
        false => None,
    };
    let (model, report) =
        MultipleChoiceModel::from_dir(resume_from.as_deref().unwrap_or(&args.model_dir), args.device)?;
    if !report.initialised.is_empty() || !report.unexpected.is_empty() {
        tracing::info!(initialised = ?report.initialised, unused = ?report.unexpected, "weights loaded ({} tensors)", report.loaded);
    }
    let train_cache = PreparedCache::open(&args.train_cache)?;
    let eval_cache = args.eval_cache.as_deref().map(PreparedCache::open).transpose()?;
    if train_cache.labels()?.iter().any(|&l| l < 0) {
        return Err(Error::Input(format!("{}: training data must be labelled", args.train_cache.display())));
    }
    let n = train_cache.len();
    let held = match (args.holdout, &eval_cache) {
        (Some(_), Some(_)) => return Err(Error::Input("--holdout and a validation file exclude each other".into())),
        (Some(h), None) if h == 0 || h >= n => {
            return Err(Error::Input(format!("--holdout {h} must be between 1 and {} (the training questions)", n - 1)))
        }
        (Some(h), None) => h,
        (None, _) => 0,
    };
    let train_idx: Vec<usize> = (0..n - held).collect();
    let holdout_idx: Vec<usize> = (n - held..n).collect();
    let eval_set = match (&eval_cache, held) {
        (Some(cache), _) => Some((cache, None)),
        (None, 0) => None,
        (None, _) => Some((&train_cache, Some(holdout_idx.as_slice()))),
    };
    let batch = args.per_device_train_batch_size;
    let sampler = Sampler {
        len: train_idx.len(),
        world_size: 1,
        rank: 0,
        shuffle: true,
        seed: args.seed,
        drop_last: false,
        group_by_length: match args.group_by_length {
            true => {
                let lengths = question_lengths(&train_cache)?;
                Some((train_idx.iter().map(|&q| lengths[q]).collect(), batch))
            }
            false => None,
        },
    };
    let per_epoch = steps_per_epoch(sampler.num_samples(), batch, args.gradient_accumulation_steps);
    let total_steps =
        args.max_steps.unwrap_or_else(|| (args.num_train_epochs * per_epoch as f64).ceil() as usize).max(1);
    let warmup = args.warmup_steps.unwrap_or_else(|| (args.warmup_ratio * total_steps as f64).ceil() as usize);
    let schedule = LinearSchedule { base_lr: args.learning_rate, warmup_steps: warmup, total_steps };
    let mut opt = AdamW::new(&model.vs, args.weight_decay, (0.9, 0.999), 1e-8);
    let mut metrics = MetricsLog::open(&args.output_dir)?;
    let bar =
        if args.progress { indicatif::ProgressBar::new(total_steps as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let (mut step, mut seen, mut epoch, mut skip) = (0usize, 0usize, 0u64, 0usize);
    let mut tracker = Tracker::default();
    if let Some(dir) = &resume_from {
        let (state, moments) = checkpoint::load_resumable(dir)?;
        opt.load_state(&moments, state.step as i64)?;
        (step, seen, epoch, skip) = (state.step, state.seen, state.epoch, state.group);
        (tracker.best, tracker.bad) = (state.best_eval_loss, state.evals_without_improvement);
        bar.set_position(step as u64);
        tracing::info!(checkpoint = %dir.display(), step, epoch, "resuming");
    }
    let mut stopped_early = false;
    'epochs: while step < total_steps {
        let shard = sampler.shard(epoch);
        let batches: Vec<Vec<usize>> =
            shard.chunks(batch).map(|c| c.iter().map(|s| train_idx[s.index]).collect()).collect();
        let n_groups = per_epoch;
        let skipped = std::mem::take(&mut skip);
        for (g, group) in batches.chunks(args.gradient_accumulation_steps).take(n_groups).enumerate().skip(skipped) {
            let mut loss_sum = 0.0;
            for (m, micro) in group.iter().enumerate() {
                // Dropout masks depend only on (seed, step, micro-batch), so a resumed run
                // draws the same ones as an uninterrupted run.
                tch::manual_seed(dropout_seed(args.seed, step, m));
                let (x, y) = collate(&train_cache, micro, args.device)?;
                let (loss, _) = batch_loss(&model, &x, &y, true)?;
                (&loss / group.len() as f64).backward();
                loss_sum += loss.double_value(&[]) / group.len() as f64;
                seen += micro.len();
            }
            let grad_norm = clip_grad_norm(opt.variables().map(|(_, v)| v), args.max_grad_norm)?;
            let lr = schedule.lr(step);
            opt.step(lr)?;
            opt.zero_grad();
            step += 1;
            let epoch_f = epoch as f64 + (g + 1) as f64 / n_groups as f64;
            let qps = seen as f64 / (started.elapsed() - tracker.spent).as_secs_f64();
            bar.set_message(format!("loss {loss_sum:.4} lr {lr:.2e} {qps:.1} q/s"));
            bar.inc(1);
            if step % args.logging_steps.max(1) == 0 || step == total_steps {
                metrics
                    .write(serde_json::json!({"step": step, "epoch": epoch_f, "loss": loss_sum, "learning_rate": lr,
                    "grad_norm": grad_norm, "questions_per_second": qps}))?;
            }
            if args.save_steps.is_some_and(|n| step % n == 0) {
                let state = checkpoint::TrainerState {
                    step,
                    epoch,
                    group: g + 1,
                    seen,
                    best_eval_loss: tracker.best,
                    evals_without_improvement: tracker.bad,
                };
                let dir = checkpoint::dir_for_step(&args.output_dir, step);
                checkpoint::save_resumable(&dir, &model.vs, &args.model_dir, &state, &opt)?;
                if let Some(keep) = args.save_total_limit {
                    checkpoint::prune(&args.output_dir, keep)?;
                }
            }
            if args.eval_steps.is_some_and(|n| step % n == 0)
                && tracker.evaluate(args, eval_set, &model, &mut metrics, step, epoch_f)?
            {
                stopped_early = true;
                break 'epochs;
            }
            if step >= total_steps {
                break;
            }
        }
        epoch += 1;
        if tracker.evaluate(args, eval_set, &model, &mut metrics, step, epoch as f64)? {
            stopped_early = true;
            break;
        }
    }
    bar.finish_and_clear();
    let qps = seen as f64 / (started.elapsed() - tracker.spent).as_secs_f64();
    let checkpoint = args.output_dir.join("final");
    checkpoint::save(&checkpoint, &model.vs, &args.model_dir)?;
    Ok(TrainSummary {
        steps: step,
        epochs_run: seen as f64 / train_idx.len().max(1) as f64,
        train_questions_per_second: qps,
        final_eval: tracker.last,
        best_eval_loss: tracker.best,
        stopped_early,
        checkpoint,
    })
}
