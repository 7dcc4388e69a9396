//! Fine-tuning `BertForMultipleChoice` on a prepared cache with the HF Trainer's semantics:
//! AdamW with its parameter groups, linear warm-up and decay, clipping by global norm,
//! gradient accumulation, evaluation every N steps and each epoch, early stopping.

pub mod amp;
mod args;
pub mod checkpoint;
pub mod ddp;
pub mod optim;
pub mod report;

use crate::batch::{collate, collate_to, question_lengths, Sampler};
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::model::{upload, ChoiceBatch, MultipleChoiceModel};
use crate::prep::cache::PreparedCache;
pub use amp::{GradScaler, Precision};
pub use args::{DataArgs, DdpArgs, Resume, TrainArgs, TrainInputs};
pub use ddp::Ddp;
use optim::{clip_grad_norm, AdamW, LinearSchedule};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

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

    /// Adds up every rank's counts and sums: exact, never an average of averages.
    pub fn sum_over(mut self, ddp: &Ddp) -> Result<EvalResult> {
        let mut v = vec![self.questions as f64, self.correct as f64, self.loss_sum];
        v.extend(self.per_subject.iter().flat_map(|&(_, c, t)| [c as f64, t as f64]));
        ddp.sum(&mut v)?;
        (self.questions, self.correct, self.loss_sum) = (v[0] as usize, v[1] as usize, v[2]);
        for (s, pair) in self.per_subject.iter_mut().zip(v[3..].chunks(2)) {
            (s.1, s.2) = (pair[0] as usize, pair[1] as usize);
        }
        Ok(self)
    }
}

/// Loss and accuracy of `model` on the labelled questions of `cache` among `questions`
/// (all when None), in eval mode without a graph, under `precision`'s autocast (as the HF
/// Trainer evaluates a bf16 run in bf16).
pub fn evaluate(
    model: &MultipleChoiceModel,
    cache: &PreparedCache,
    questions: Option<&[usize]>,
    batch_size: usize,
    precision: Precision,
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
            let (batch, y) = collate(cache, chunk)?;
            let y = upload(&y, model.vs.device());
            let logits = precision.autocast(|| model.forward(&batch, false))?.to_kind(Kind::Float);
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

/// Appends one JSON object per line to `metrics.jsonl`; rank 0 only (a no-op elsewhere).
struct MetricsLog(Option<std::fs::File>);

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "curves.png";

impl MetricsLog {
    /// Opens the log for appending. On resume from `resumed_step`, records of later steps (from
    /// the interrupted run, which will be redone) are dropped first.
    fn open(dir: &Path, is_main: bool, resumed_step: Option<usize>) -> Result<Self> {
        if !is_main {
            return Ok(MetricsLog(None));
        }
        let path = dir.join(METRICS_FILE);
        if let (Some(step), Ok(text)) = (resumed_step, std::fs::read_to_string(&path)) {
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_none_or(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::atomic::write_file(&path, kept.as_bytes())?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog(Some(file)))
    }
    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        let Some(file) = &mut self.0 else { return Ok(()) };
        writeln!(file, "{value}").and_then(|_| file.flush()).map_err(|e| Error::Input(format!("{METRICS_FILE}: {e}")))
    }
}

/// What a finished run reports.
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_run: f64,
    pub world_size: usize,
    pub precision: Precision,
    /// Questions per second over all ranks, evaluation and checkpointing excluded.
    pub train_questions_per_second: f64,
    pub final_train_loss: Option<f64>,
    pub final_eval: Option<EvalResult>,
    pub best_eval_loss: Option<f64>,
    pub stopped_early: bool,
    pub checkpoint: PathBuf,
    pub best_checkpoint: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Under DDP: gradient buckets, and the mean time per step spent waiting for their
    /// all-reduce after backward (the communication that overlap did not hide).
    pub ddp_buckets: Option<usize>,
    pub ddp_exposed_ms_per_step: Option<f64>,
}

impl TrainSummary {
    /// The run at a glance, as a plain-text table.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"));
        let eval = self.final_eval.as_ref();
        let rows = [
            ("optimizer steps", self.steps.to_string()),
            ("epochs", format!("{:.2}", self.epochs_run)),
            ("processes", self.world_size.to_string()),
            ("precision", format!("{:?}", self.precision).to_lowercase()),
            ("train questions/s", format!("{:.1}", self.train_questions_per_second)),
            ("last train loss", opt(self.final_train_loss, 4)),
            ("eval questions", eval.map_or_else(|| "-".into(), |e| e.questions.to_string())),
            ("eval loss", opt(eval.map(EvalResult::loss), 4)),
            ("eval accuracy", opt(eval.map(EvalResult::accuracy), 4)),
            ("best eval loss", opt(self.best_eval_loss, 4)),
            ("stopped early", self.stopped_early.to_string()),
            ("final checkpoint", self.checkpoint.display().to_string()),
            ("best checkpoint", self.best_checkpoint.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string())),
            ("plot", self.plot.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string())),
            ("DDP buckets", self.ddp_buckets.map_or_else(|| "-".into(), |b| b.to_string())),
            ("DDP comm. wait/step", self.ddp_exposed_ms_per_step.map_or_else(|| "-".into(), |t| format!("{t:.1} ms"))),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}

fn dropout_seed(seed: u64, step: usize, micro: usize, rank: usize) -> i64 {
    (seed as i64)
        .wrapping_mul(1_000_003)
        .wrapping_add((step as i64).wrapping_mul(64))
        .wrapping_add(micro as i64)
        .wrapping_add((rank as i64).wrapping_mul(7_919_000_003))
}

/// The questions one evaluation covers.
type EvalSet<'a> = (&'a PreparedCache, Option<&'a [usize]>);

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
    /// Evaluates on every rank (each its shard, results summed), logs, keeps the best
    /// checkpoint, and says whether patience ran out (the same answer on every rank).
    fn evaluate(
        &mut self,
        ctx: &Ctx,
        eval: Option<EvalSet>,
        metrics: &mut MetricsLog,
        step: usize,
        epoch: f64,
    ) -> Result<bool> {
        let Some((cache, questions)) = eval else { return Ok(false) };
        let started = Instant::now();
        let r =
            evaluate_sharded(ctx.model, cache, questions, ctx.args.per_device_eval_batch_size, ctx.precision, ctx.ddp)?;
        metrics.write(serde_json::json!({"step": step, "epoch": epoch, "eval_loss": r.loss(),
            "eval_accuracy": r.accuracy(), "eval_questions": r.questions, "per_subject": r.per_subject}))?;
        if ctx.ddp.is_main() {
            tracing::info!(step, loss = r.loss(), accuracy = r.accuracy(), "evaluation");
        }
        if self.best.is_none_or(|b| r.loss() < b) {
            self.best = Some(r.loss());
            self.bad = 0;
            if ctx.ddp.is_main() {
                checkpoint::save(&ctx.args.output_dir.join("best"), &ctx.model.vs, &ctx.inputs.model_dir)?;
            }
        } else {
            self.bad += 1;
        }
        self.last = Some(r);
        self.spent += started.elapsed();
        Ok(ctx.args.patience.is_some_and(|p| self.bad >= p))
    }
}

/// `evaluate` on this rank's share of the labelled questions (every world_size-th, no
/// padding), summed over the ranks.
pub fn evaluate_sharded(
    model: &MultipleChoiceModel,
    cache: &PreparedCache,
    questions: Option<&[usize]>,
    batch_size: usize,
    precision: Precision,
    ddp: &Ddp,
) -> Result<EvalResult> {
    let labels = cache.labels()?;
    let all: Vec<usize> = match questions {
        Some(q) => q.to_vec(),
        None => (0..cache.len()).collect(),
    };
    let mine: Vec<usize> =
        all.into_iter().filter(|&q| labels[q] >= 0).skip(ddp.rank()).step_by(ddp.world_size()).collect();
    evaluate(model, cache, Some(&mine), batch_size, precision)?.sum_over(ddp)
}

/// Optimizer steps per epoch as the HF Trainer counts them (batches / accumulation, at least 1).
pub fn steps_per_epoch(questions: usize, batch_size: usize, accumulation: usize) -> usize {
    (questions.div_ceil(batch_size.max(1)) / accumulation.max(1)).max(1)
}

/// What the step and evaluation helpers share.
struct Ctx<'a> {
    args: &'a TrainArgs,
    inputs: &'a TrainInputs,
    model: &'a MultipleChoiceModel,
    precision: Precision,
    ddp: &'a Ddp,
}

/// The training questions and the evaluation set (a validation cache, or the last `holdout`
/// questions of the training file).
struct Split {
    train: PreparedCache,
    eval: Option<PreparedCache>,
    train_idx: Vec<usize>,
    holdout_idx: Vec<usize>,
}

impl Split {
    fn open(inputs: &TrainInputs, holdout: Option<usize>) -> Result<Split> {
        let train = PreparedCache::open(&inputs.train_cache)?;
        let eval = inputs.eval_cache.as_deref().map(PreparedCache::open).transpose()?;
        if train.labels()?.iter().any(|&l| l < 0) {
            return Err(Error::Input(format!("{}: training data must be labelled", inputs.train_cache.display())));
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

    fn eval_set(&self) -> Option<EvalSet<'_>> {
        match (&self.eval, self.holdout_idx.is_empty()) {
            (Some(cache), _) => Some((cache, None)),
            (None, true) => None,
            (None, false) => Some((&self.train, Some(self.holdout_idx.as_slice()))),
        }
    }
}

/// The newest resumable checkpoint, chosen by rank 0 so that every rank resumes from the same.
fn checkpoint_to_resume(args: &TrainArgs, resume: Resume, ddp: &Ddp) -> Result<Option<PathBuf>> {
    if resume == Resume::No {
        return Ok(None);
    }
    let newest = checkpoint::resumable(&args.output_dir)?.pop();
    let mut chosen = [match (ddp.is_main(), &newest) {
        (true, Some((step, _))) => *step as f64 + 1.0,
        _ => 0.0,
    }];
    ddp.sum(&mut chosen)?;
    if chosen[0] == 0.0 && resume == Resume::IfAny {
        return Ok(None);
    }
    if chosen[0] == 0.0 {
        return Err(Error::Input(format!(
            "--resume: no checkpoint-<step> with a trainer state in {}",
            args.output_dir.display()
        )));
    }
    let dir = checkpoint::dir_for_step(&args.output_dir, chosen[0] as usize - 1);
    if !dir.join(checkpoint::STATE_FILE).is_file() {
        return Err(Error::Input(format!(
            "--resume: rank {} cannot see {} that rank 0 resumes from (the output directory must be shared)",
            ddp.rank(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

/// The run's shape: this rank's sampler, optimizer steps per epoch and in all, learning rates.
struct Plan {
    sampler: Sampler,
    per_epoch: usize,
    total_steps: usize,
    schedule: LinearSchedule,
}

impl Plan {
    fn new(args: &TrainArgs, split: &Split, ddp: &Ddp) -> Result<Plan> {
        let (batch, world) = (args.per_device_train_batch_size, ddp.world_size());
        let group_by_length = match args.group_by_length {
            true => {
                let lengths = question_lengths(&split.train)?;
                Some((split.train_idx.iter().map(|&q| lengths[q]).collect(), batch * world))
            }
            false => None,
        };
        let sampler = Sampler {
            len: split.train_idx.len(),
            world_size: world,
            rank: ddp.rank(),
            shuffle: true,
            seed: args.seed,
            drop_last: false,
            group_by_length,
        };
        let per_epoch = steps_per_epoch(sampler.num_samples(), batch, args.gradient_accumulation_steps);
        let total_steps =
            args.max_steps.unwrap_or_else(|| (args.num_train_epochs * per_epoch as f64).ceil() as usize).max(1);
        let warmup = args.warmup_steps.unwrap_or_else(|| (args.warmup_ratio * total_steps as f64).ceil() as usize);
        let schedule = LinearSchedule { base_lr: args.learning_rate, warmup_steps: warmup, total_steps };
        Ok(Plan { sampler, per_epoch, total_steps, schedule })
    }
}

fn progress_bar(total_steps: usize, show: bool) -> indicatif::ProgressBar {
    let bar = if show { indicatif::ProgressBar::new(total_steps as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Loads a resumable checkpoint's optimizer moments and loss-scaler state; returns where the
/// run stood. A checkpoint of another world size is refused: the data order depends on it.
fn restore(dir: &Path, world: usize, opt: &mut AdamW, scaler: &mut GradScaler) -> Result<checkpoint::TrainerState> {
    let (state, moments) = checkpoint::load_resumable(dir)?;
    if state.world_size != world {
        return Err(Error::Input(format!(
            "--resume: {} was written by {} process(es), this run has {world}; resume at the same world size \
             (the data order depends on it) or start a new run from {}",
            dir.display(),
            state.world_size,
            dir.display()
        )));
    }
    opt.load_state(&moments, state.optimizer_step.unwrap_or(state.step) as i64)?;
    if let Some(s) = &state.scaler {
        *scaler = s.clone();
    }
    Ok(state)
}

/// Writes `checkpoint-<step>` and drops the oldest beyond `--save-total-limit`.
fn save_checkpoint(
    args: &TrainArgs,
    inputs: &TrainInputs,
    model: &MultipleChoiceModel,
    opt: &AdamW,
    state: &checkpoint::TrainerState,
) -> Result<()> {
    let dir = checkpoint::dir_for_step(&args.output_dir, state.step);
    checkpoint::save_resumable(&dir, &model.vs, &inputs.model_dir, state, opt)?;
    match args.save_total_limit {
        Some(keep) => checkpoint::prune(&args.output_dir, keep),
        None => Ok(()),
    }
}

/// Fine-tunes as `args` says: on one process when `pg` is None, else data-parallel over `pg`
/// (each process one shard of every batch; rank 0 alone writes).
pub fn train(args: &TrainArgs, inputs: &TrainInputs, pg: Option<ProcessGroup>) -> Result<TrainSummary> {
    if args.per_device_train_batch_size == 0 || args.gradient_accumulation_steps == 0 {
        return Err(Error::Input("batch size and gradient accumulation steps must be at least 1".into()));
    }
    let precision = args.precision.resolve(inputs.device)?;
    std::fs::create_dir_all(&args.output_dir).map_err(|e| Error::io(&args.output_dir, e))?;
    tch::manual_seed(args.seed as i64);
    let mut ddp = Ddp::from_group(pg);
    let resume_from = checkpoint_to_resume(args, inputs.resume, &ddp)?;
    let (model, report) =
        MultipleChoiceModel::from_dir(resume_from.as_deref().unwrap_or(&inputs.model_dir), inputs.device)?;
    let mut opt = AdamW::new(&model.vs, args.weight_decay, (0.9, 0.999), args.adam_epsilon);
    ddp.attach(&opt.variables().collect::<Vec<_>>(), args.ddp.ddp_bucket_cap_mb, args.ddp.ddp_overlap)?;
    let is_main = ddp.is_main();
    if is_main && (!report.initialised.is_empty() || !report.unexpected.is_empty()) {
        tracing::info!(initialised = ?report.initialised, unused = ?report.unexpected, "weights loaded ({} tensors)", report.loaded);
    }
    let split = Split::open(inputs, args.holdout)?;
    let batch = args.per_device_train_batch_size;
    let world = ddp.world_size();
    let Plan { sampler, per_epoch, total_steps, schedule } = Plan::new(args, &split, &ddp)?;
    let mut scaler = GradScaler::new(precision == Precision::Fp16);
    let pad_to = if args.pad_to_max_length { split.train.manifest.encoding.max_length } else { 0 };
    let bar = progress_bar(total_steps, is_main);

    let (mut step, mut seen, mut epoch, mut skip) = (0usize, 0usize, 0u64, 0usize);
    let mut tracker = Tracker::default();
    if let Some(dir) = &resume_from {
        let state = restore(dir, world, &mut opt, &mut scaler)?;
        (step, seen, epoch, skip) = (state.step, state.seen, state.epoch, state.group);
        (tracker.best, tracker.bad) = (state.best_eval_loss, state.evals_without_improvement);
        bar.set_position(step as u64);
        if is_main {
            tracing::info!(checkpoint = %dir.display(), step, epoch, "resuming");
        }
    }
    let mut metrics = MetricsLog::open(&args.output_dir, is_main, resume_from.as_ref().map(|_| step))?;
    let ctx = Ctx { args, inputs, model: &model, precision, ddp: &ddp };
    let params: Vec<Tensor> = opt.variables().map(|(_, v)| v.shallow_clone()).collect();
    let started = Instant::now();
    let (mut stopped_early, mut last_loss) = (false, None);
    'epochs: while step < total_steps {
        let shard = sampler.shard(epoch);
        let batches: Vec<Vec<usize>> =
            shard.chunks(batch).map(|c| c.iter().map(|s| split.train_idx[s.index]).collect()).collect();
        let skipped = std::mem::take(&mut skip);
        for (g, group) in batches.chunks(args.gradient_accumulation_steps).take(per_epoch).enumerate().skip(skipped) {
            // The group's mean loss stays on the device; it is read only when logged.
            let mut loss_sum = Tensor::zeros([], (Kind::Float, inputs.device));
            for (m, micro) in group.iter().enumerate() {
                // Dropout masks depend only on (seed, step, micro-batch, rank), so a resumed run
                // draws the same ones as an uninterrupted run.
                tch::manual_seed(dropout_seed(args.seed, step, m, ddp.rank()));
                // Collated on the CPU; the model and `upload` move it without waiting.
                let (x, y) = collate_to(&split.train, micro, pad_to)?;
                let y = upload(&y, inputs.device);
                if m + 1 == group.len() {
                    ddp.prepare_sync();
                }
                let (loss, _) = precision.autocast(|| batch_loss(&model, &x, &y, true))?;
                scaler.scale(&(&loss / group.len() as f64)).backward();
                loss_sum += loss.detach().to_kind(Kind::Float) / group.len() as f64;
                seen += micro.len();
            }
            // Accumulation micro-steps stay local; the group's gradients are averaged once.
            ddp.average_gradients()?;
            let found_inf = scaler.unscale(params.iter())?;
            let grad_norm = clip_grad_norm(params.iter(), args.max_grad_norm)?;
            let lr = schedule.lr(step);
            if !found_inf {
                opt.step(lr)?;
            }
            scaler.update(found_inf);
            opt.zero_grad()?;
            step += 1;
            let epoch_f = epoch as f64 + (g + 1) as f64 / per_epoch as f64;
            let qps = (seen * world) as f64 / (started.elapsed() - tracker.spent).as_secs_f64();
            if step % args.logging_steps.max(1) == 0 || step == total_steps {
                let mut mean = [loss_sum.double_value(&[]) / world as f64];
                let grad_norm = grad_norm.double_value(&[]);
                ddp.sum(&mut mean)?;
                last_loss = Some(mean[0]);
                bar.set_message(format!("loss {:.4} lr {lr:.2e} {qps:.1} q/s", mean[0]));
                metrics
                    .write(serde_json::json!({"step": step, "epoch": epoch_f, "loss": mean[0], "learning_rate": lr,
                    "grad_norm": grad_norm, "questions_per_second": qps, "skipped_step": found_inf}))?;
            }
            bar.inc(1);
            if args.ddp.verify_sync.is_some_and(|n| step % n == 0) {
                ddp.verify_sync(step, &opt.variables().collect::<Vec<_>>())?;
            }
            if is_main && args.save_steps.is_some_and(|n| step % n == 0) {
                let state = checkpoint::TrainerState {
                    step,
                    epoch,
                    group: g + 1,
                    seen,
                    best_eval_loss: tracker.best,
                    evals_without_improvement: tracker.bad,
                    world_size: world,
                    optimizer_step: Some(opt.step as usize),
                    scaler: Some(scaler.clone()),
                };
                save_checkpoint(args, inputs, &model, &opt, &state)?;
            }
            if args.eval_steps.is_some_and(|n| step % n == 0)
                && tracker.evaluate(&ctx, split.eval_set(), &mut metrics, step, epoch_f)?
            {
                stopped_early = true;
                break 'epochs;
            }
            if step >= total_steps {
                break;
            }
        }
        epoch += 1;
        if tracker.evaluate(&ctx, split.eval_set(), &mut metrics, step, epoch as f64)? {
            stopped_early = true;
            break;
        }
    }
    bar.finish_and_clear();
    let communication = ddp.exposed_communication();
    let qps = (seen * world) as f64 / (started.elapsed() - tracker.spent).as_secs_f64();
    let checkpoint = args.output_dir.join("final");
    let mut plot = None;
    if is_main {
        checkpoint::save(&checkpoint, &model.vs, &inputs.model_dir)?;
        let png = args.output_dir.join(PLOT_FILE);
        report::plot(&report::Curves::read(&args.output_dir.join(METRICS_FILE))?, &png)?;
        plot = Some(png);
    }
    Ok(TrainSummary {
        steps: step,
        epochs_run: (seen * world) as f64 / split.train_idx.len().max(1) as f64,
        world_size: world,
        precision,
        train_questions_per_second: qps,
        final_train_loss: last_loss,
        final_eval: tracker.last,
        best_eval_loss: tracker.best,
        stopped_early,
        checkpoint,
        best_checkpoint: split.eval_set().map(|_| args.output_dir.join("best")),
        plot,
        ddp_buckets: communication.map(|(b, _)| b),
        ddp_exposed_ms_per_step: communication.map(|(_, t)| t.as_secs_f64() * 1e3),
    })
}
