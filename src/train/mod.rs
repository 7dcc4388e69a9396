//! Fine-tuning a multiple-choice encoder (BERT, RoBERTa, ELECTRA) on a prepared cache with the
//! HF Trainer's semantics: AdamW with its parameter groups, the HF Trainer's schedules,
//! clipping by global norm, gradient accumulation, evaluation every N steps and each epoch,
//! early stopping.

pub mod amp;
mod args;
pub mod checkpoint;
pub mod ddp;
pub mod optim;
mod plan;
pub mod preempt;
pub mod report;
mod run;
mod run_dir;
mod setup;

use crate::batch::{collate_to, FixedShapes};
use crate::device::Precision;
use crate::dist::position::{self, Phase as At};
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult};
use crate::model::{upload, ChoiceBatch, MultipleChoiceModel};
pub use amp::GradScaler;
pub use args::{DdpArgs, IntervalStrategy, Resume, TrainArgs, TrainInputs};
use checkpoint::TrainerState;
pub use ddp::Ddp;
use optim::{clip_grad_norm, AdamW};
pub use plan::steps_per_epoch;
use plan::{dropout_seed, Plan, Split};
use preempt::Preemption;
pub use report::TrainSummary;
use report::{MetricsLog, MetricsRecord, Phase, QuestionLog, RankTimes, StepClock};
pub use run::run;
pub use run_dir::{RunDir, ARGS_FILE, METRICS_FILE, PLOT_FILE, SUMMARY_FILE};
use std::time::{Duration, Instant};
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

/// How the training loop ended.
enum Fit {
    /// The planned steps are taken, or early stopping ended the run.
    Done,
    /// At a checkpoint, for the launcher to admit a node.
    StoppedAtCheckpoint,
    /// At the checkpoint of this step, on a warning signal (this process's, if it got one).
    Preempted { step: usize, signal: Option<i32> },
}

/// A run: what set-up built, and `state`, where the run stands (what a checkpoint saves).
struct Trainer<'a> {
    args: &'a TrainArgs,
    inputs: &'a TrainInputs,
    model: MultipleChoiceModel,
    opt: AdamW,
    /// The trainable variables, in the optimizer's order.
    params: Vec<Tensor>,
    run: RunDir,
    /// The processes of the run, for what they agree on (sums, any rank, rank 0's choice).
    comm: Comm,
    /// The gradient reducer.
    ddp: Ddp,
    precision: Precision,
    scaler: GradScaler,
    split: Split,
    plan: Plan,
    state: TrainerState,
    /// training_args.json, also saved in every checkpoint.
    saved_args: Vec<u8>,
    /// The first step whose loss was not finite (-1: none), kept on the device and read only
    /// where the run checks it. Not tracked under fp16, whose scaler skips such steps.
    first_nonfinite: Option<Tensor>,
    metrics: MetricsLog,
    questions: QuestionLog,
    bar: indicatif::ProgressBar,
    started: Instant,
    /// The step this process started at (a resumed run's throughput and ETA count from it).
    first_step: usize,
    /// Time spent evaluating and saving, left out of the training throughput.
    paused: Duration,
    last_eval: Option<EvalResult>,
    last_loss: Option<f64>,
    stopped_early: bool,
    /// The shapes of the training micro-batches so far (questions, sequence, real tokens).
    shapes: std::collections::BTreeSet<(i64, i64, i64)>,
    /// `--step-breakdown`.
    clock: Option<StepClock>,
    /// `--fixed-shapes`.
    fixed_shapes: Option<FixedShapes>,
    /// This rank's step times, for stragglers.
    rank_times: RankTimes,
    /// The warning signals' handlers (None with --no-save-on-signal).
    preemption: Option<Preemption>,
}

/// What one optimizer step leaves on the device, read only when the step is logged.
struct StepOutput {
    /// The mean loss of the accumulation group on this rank.
    loss: Tensor,
    grad_norm: Tensor,
    lr: f64,
    skipped: bool,
}

impl<'a> Trainer<'a> {
    /// Epochs of accumulation groups, one optimizer step each, from where `state` stands. A
    /// step that ends an epoch or the run evaluates (as do `--eval-steps`), and its checkpoint
    /// is written after that evaluation, so a resume neither repeats nor loses one.
    fn fit(&mut self) -> Result<Fit> {
        let accumulation = self.plan.layout.accumulation;
        while self.state.step < self.plan.total_steps {
            let from = self.state.epoch_start;
            let (batches, in_epoch) =
                (self.plan.batches(&self.split, self.state.epoch, from), self.plan.steps_in_epoch(from));
            for group in batches.chunks(accumulation).take(in_epoch).skip(self.state.group) {
                let out = self.optimizer_step(group)?;
                self.questions.write(self.state.step, self.state.epoch, group)?;
                self.log_step(out)?;
                let finished = self.state.step >= self.plan.total_steps;
                let epoch_done = self.state.group == in_epoch;
                let step = self.state.step;
                let stop = self.args.eval_due(step, epoch_done, finished) && self.evaluate_and_track_best()?;
                if epoch_done {
                    self.next_epoch();
                }
                self.verify_sync()?;
                let saved = self.args.save_due(step, epoch_done);
                if saved {
                    self.save_checkpoint()?;
                    if !(stop || finished) && self.stop_for_a_joining_node()? {
                        return Ok(Fit::StoppedAtCheckpoint);
                    }
                }
                if stop || finished {
                    return Ok(Fit::Done);
                }
                if self.signalled()? {
                    if !saved {
                        self.save_checkpoint()?;
                    }
                    // No process exits before the checkpoint is whole.
                    self.comm.barrier()?;
                    let signal = self.preemption.as_ref().and_then(Preemption::received);
                    return Ok(Fit::Preempted { step, signal });
                }
            }
            if self.state.group != 0 || self.state.epoch_start != 0 {
                self.next_epoch();
            }
        }
        Ok(Fit::Done)
    }

    /// Whether any rank got a warning signal (every rank asks at every step, so every rank
    /// gets the same answer at the same step).
    fn signalled(&self) -> Result<bool> {
        match &self.preemption {
            Some(p) => self.comm.any(p.received().is_some()),
            None => Ok(false),
        }
    }

    /// Whether the launcher asked the group to stop at this checkpoint to admit a node; if so
    /// every rank has stopped and the launcher is told (the next round resumes from it).
    fn stop_for_a_joining_node(&self) -> Result<bool> {
        if !self.comm.launcher_asks_to_stop()? {
            return Ok(false);
        }
        let step = self.state.step;
        if self.comm.is_main() {
            tracing::info!(
                "stopped at checkpoint-{step} for a node that joins: the launcher starts the next round, which \
                 resumes from it"
            );
        }
        self.comm.tell_launcher_stopped(step)?;
        Ok(true)
    }

    fn next_epoch(&mut self) {
        (self.state.epoch, self.state.epoch_start, self.state.group) = (self.state.epoch + 1, 0, 0);
    }

    /// Forward and backward of each micro-batch of `group` (gradients accumulate locally), the
    /// gradients averaged over the ranks once, unscaled, clipped and applied.
    fn optimizer_step(&mut self, group: &[Vec<usize>]) -> Result<StepOutput> {
        let device = self.inputs.device;
        let pad_to = if self.args.pad_to_max_length { self.split.train.manifest.encoding.max_length } else { 0 };
        let n = group.len() as f64;
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        if let Some(clock) = &mut self.clock {
            clock.start();
        }
        let step = self.state.step + 1;
        self.rank_times.step_started();
        for (m, micro) in group.iter().enumerate() {
            position::enter(step, At::Data);
            tch::manual_seed(dropout_seed(self.args.seed, self.state.step, m, self.comm.rank()));
            // Collated on the CPU; the model and `upload` move it without waiting.
            let (x, y) = collate_to(&self.split.train, micro, pad_to)?;
            let (x, y) = match &self.fixed_shapes {
                Some(shapes) => shapes.apply(&x, &y)?,
                None => (x, y),
            };
            let size = x.input_ids.size();
            self.shapes.insert((size[0], size[2], x.attention_mask.sum(Kind::Int64).int64_value(&[])));
            let y = upload(&y, device);
            if m + 1 == group.len() {
                self.ddp.prepare_sync();
            }
            position::enter(step, At::Forward);
            let (micro_loss, _) = self.precision.autocast(|| batch_loss(&self.model, &x, &y, true))?;
            self.lap(Phase::Forward);
            position::enter(step, At::Backward);
            self.scaler.scale(&(&micro_loss / n)).backward();
            self.lap(Phase::Backward);
            loss += micro_loss.detach().to_kind(Kind::Float) / n;
            self.state.seen += micro.len();
        }
        if let Some(first) = &mut self.first_nonfinite {
            let bad = loss.isfinite().logical_not().logical_and(&first.lt(0));
            *first = first.full_like(self.state.step as i64 + 1).where_self(&bad, first);
        }
        position::enter(step, At::AllReduce);
        self.rank_times.wait_started();
        self.ddp.average_gradients()?;
        self.rank_times.wait_ended();
        self.lap(Phase::AllReduce);
        position::enter(step, At::Optimizer);
        let skipped = self.scaler.unscale(self.params.iter())?;
        let grad_norm = clip_grad_norm(self.params.iter(), self.args.max_grad_norm)?;
        let lr = self.plan.schedule.lr(self.state.step);
        if !skipped {
            self.opt.step(lr)?;
        }
        self.scaler.update(skipped);
        self.opt.zero_grad()?;
        self.lap(Phase::Optimizer);
        if let Some(clock) = &mut self.clock {
            clock.step_done();
        }
        self.state.step += 1;
        self.state.group += 1;
        Ok(StepOutput { loss, grad_norm, lr, skipped })
    }

    /// `--step-breakdown`: `phase` ran since the last lap.
    fn lap(&mut self, phase: Phase) {
        if let Some(clock) = &mut self.clock {
            clock.lap(phase);
        }
    }

    fn log_step(&mut self, out: StepOutput) -> Result<()> {
        let step = self.state.step;
        if step.is_multiple_of(self.args.logging_steps.max(1)) || step == self.plan.total_steps {
            self.check_finite()?;
            // Every rank takes this collective: whether a step logs depends on its number alone.
            let mut loss = [out.loss.double_value(&[]) / self.comm.world_size() as f64];
            self.comm.sum(&mut loss)?;
            let qps = self.questions_per_second();
            let spread = match self.rank_times.window(&self.comm)? {
                Some(w) => format!(
                    " compute {:.0}-{:.0} ms/step (slowest rank {})",
                    w.fastest_ms, w.slowest_ms, w.slowest_rank
                ),
                None => String::new(),
            };
            self.last_loss = Some(loss[0]);
            self.bar.set_message(format!("loss {:.4} lr {:.2e} {qps:.1} q/s", loss[0], out.lr));
            if self.bar.is_hidden() && self.comm.is_main() {
                let grad_norm = out.grad_norm.double_value(&[]);
                tracing::info!(
                    "step {step}/{} epoch {:.2} loss {:.4} lr {:.2e} grad_norm {grad_norm:.3} {qps:.1} q/s{spread} eta {}",
                    self.plan.total_steps,
                    self.epoch(),
                    loss[0],
                    out.lr,
                    indicatif::HumanDuration(self.eta())
                );
            }
            self.metrics.write(MetricsRecord {
                step,
                epoch: self.epoch(),
                loss: Some(loss[0]),
                learning_rate: Some(out.lr),
                grad_norm: Some(out.grad_norm.double_value(&[])),
                questions_per_second: Some(qps),
                skipped_step: Some(out.skipped),
                ..MetricsRecord::default()
            })?;
        }
        self.bar.inc(1);
        Ok(())
    }

    /// `--verify-sync`, when this step is due for it.
    fn verify_sync(&self) -> Result<()> {
        let step = self.state.step;
        match self.args.ddp.verify_sync.is_some_and(|n| step.is_multiple_of(n)) {
            true => self.ddp.verify_sync(step, &self.opt.variables().collect::<Vec<_>>()),
            false => Ok(()),
        }
    }

    /// `checkpoint-<step>` with everything a resume needs (rank 0), once every rank agrees that
    /// no loss so far was NaN or infinite; the oldest beyond --save-total-limit go.
    fn save_checkpoint(&mut self) -> Result<()> {
        let step = self.state.step;
        self.check_finite()?;
        if !self.comm.is_main() {
            return Ok(());
        }
        position::enter(step, At::Saving);
        let started = Instant::now();
        let state = TrainerState {
            optimizer_step: Some(self.opt.step as usize),
            scaler: Some(self.scaler.clone()),
            ..self.state.clone()
        };
        let dir = self.run.checkpoint(step);
        checkpoint::save_resumable(&dir, &self.model.vs, &self.inputs.model_dir, &state, &self.opt, &self.saved_args)?;
        if let Some(keep) = self.args.save_total_limit {
            checkpoint::prune(&self.run, keep)?;
        }
        self.paused += started.elapsed();
        Ok(())
    }

    /// Evaluates on every rank (each its share, results summed), logs, keeps the best
    /// checkpoint in `best/`, and says whether patience ran out (the same answer on every rank).
    fn evaluate_and_track_best(&mut self) -> Result<bool> {
        let Some((cache, questions)) = self.split.eval_set() else { return Ok(false) };
        position::enter(self.state.step, At::Evaluation);
        let started = Instant::now();
        let batch = self.args.per_device_eval_batch_size;
        let r = evaluate(&self.model, cache, questions, batch, self.precision, &self.comm)?;
        self.metrics.write(MetricsRecord {
            step: self.state.step,
            epoch: self.epoch(),
            eval_loss: Some(r.loss()),
            eval_accuracy: Some(r.accuracy()),
            eval_questions: Some(r.questions),
            eval_runtime: Some(started.elapsed().as_secs_f64()),
            per_subject: Some(r.per_subject.clone()),
            ..MetricsRecord::default()
        })?;
        if self.comm.is_main() {
            tracing::info!(step = self.state.step, loss = r.loss(), accuracy = r.accuracy(), "evaluation");
        }
        let value = r.metric(self.args.best_metric()).unwrap_or(f64::NAN);
        let greater = self.args.greater_is_better();
        if self.state.best_metric.is_none_or(|best| if greater { value > best } else { value < best }) {
            (self.state.best_metric, self.state.best_step) = (Some(value), Some(self.state.step));
            self.state.evals_without_improvement = 0;
            if self.comm.is_main() {
                checkpoint::save(&self.run.best(), &self.model.vs, &self.inputs.model_dir)?;
            }
        } else {
            self.state.evals_without_improvement += 1;
        }
        self.last_eval = Some(r);
        self.paused += started.elapsed();
        self.stopped_early = self.args.patience.is_some_and(|p| self.state.evals_without_improvement >= p);
        Ok(self.stopped_early)
    }

    /// An error on every rank, naming the step where it can, once a training loss was NaN or
    /// infinite: nothing after it is saved, so the last checkpoint stays the last good one.
    fn check_finite(&self) -> Result<()> {
        let Some(first) = &self.first_nonfinite else { return Ok(()) };
        let local = first.int64_value(&[]);
        // Every rank checks at the same steps, so every rank takes this collective.
        match self.comm.any(local >= 0)? {
            true => Err(Error::NonFinite { step: usize::try_from(local).ok(), rank: self.comm.rank() }),
            false => Ok(()),
        }
    }

    /// Epochs done, with the share of the current epoch's questions that steps took (1 once
    /// its last step is taken).
    fn epoch(&self) -> f64 {
        let (from, len) = (self.state.epoch_start, self.plan.epoch_len().max(1));
        let fraction = match self.state.group == self.plan.steps_in_epoch(from) {
            true => 1.0,
            false => (from + self.state.group * self.plan.layout.global_batch()).min(len) as f64 / len as f64,
        };
        self.state.epoch as f64 + fraction
    }

    /// The time the remaining steps will take at this process's pace so far.
    fn eta(&self) -> Duration {
        let done = (self.state.step - self.first_step).max(1) as u32;
        let left = self.plan.total_steps.saturating_sub(self.state.step) as u32;
        (self.started.elapsed().saturating_sub(self.paused)) / done * left
    }

    /// Questions per second over all ranks, evaluation and checkpointing left out.
    fn questions_per_second(&self) -> f64 {
        (self.state.seen * self.comm.world_size()) as f64 / (self.started.elapsed() - self.paused).as_secs_f64()
    }

    /// Writes `final/` and the plot (rank 0) and reports.
    fn finish(mut self) -> Result<TrainSummary> {
        self.bar.finish_and_clear();
        self.check_finite()?;
        let runtime = self.started.elapsed().as_secs_f64();
        self.metrics.write(MetricsRecord {
            step: self.state.step,
            epoch: self.epoch(),
            train_runtime: Some(runtime),
            train_questions_per_second: Some(self.questions_per_second()),
            ..MetricsRecord::default()
        })?;
        let communication = self.ddp.exposed_communication();
        let per_rank_step_ms = self.rank_times.summary(&self.comm)?;
        let checkpoint = self.run.last();
        let mut plot = None;
        let best = self.run.best();
        let baselines = self.split.baselines()?.unwrap_or_default();
        if self.comm.is_main() {
            match self.args.load_best_model_at_end && self.state.best_metric.is_some() {
                true => checkpoint::copy(&best, &checkpoint)?,
                false => checkpoint::save(&checkpoint, &self.model.vs, &self.inputs.model_dir)?,
            }
            let png = self.run.plot();
            report::plot(&report::Curves::read(&self.run.metrics())?, &baselines, &png)?;
            plot = Some(png);
        }
        let world = self.comm.world_size();
        Ok(TrainSummary {
            steps: self.state.step,
            epochs_run: (self.state.seen * world) as f64 / self.split.train_idx.len().max(1) as f64,
            world_size: world,
            precision: self.precision,
            train_questions_per_second: self.questions_per_second(),
            final_train_loss: self.last_loss,
            final_eval_loss: self.last_eval.as_ref().map(EvalResult::loss),
            final_eval_accuracy: self.last_eval.as_ref().map(EvalResult::accuracy),
            baselines,
            final_eval: self.last_eval,
            metric_for_best_model: self.args.best_metric().to_string(),
            best_metric: self.state.best_metric,
            best_step: self.state.best_step,
            train_runtime: runtime,
            stopped_early: self.stopped_early,
            checkpoint,
            best_checkpoint: self.state.best_metric.map(|_| best),
            plot,
            ddp_buckets: communication.map(|(b, _)| b),
            ddp_exposed_ms_per_step: communication.map(|(_, t)| t.as_secs_f64() * 1e3),
            per_rank_step_ms,
            batch_shapes: self.shapes.len(),
            step_breakdown_ms: self.clock.as_ref().map(StepClock::means),
        })
    }
}
