//! A run's set-up, in the order it happens: the run directory claimed and the data split;
//! the checkpoint to resume from chosen and the effective configuration recorded; the model
//! built with its optimizer and gradient reducer; the run's state restored; the logs opened.

use super::checkpoint::{self, TrainerState};
use super::optim::AdamW;
use super::plan::{BatchChoice, Layout, Plan, Split};
use super::preempt::Preemption;
use super::report::{MetricsLog, QuestionLog, RankTimes, StepClock};
use super::run_dir::{self, SavedArgs};
use super::{Ddp, GradScaler, RunDir, TrainArgs, TrainInputs, Trainer};
use crate::batch::FixedShapes;
use crate::device::Precision;
use crate::dist::Comm;
use crate::error::Result;
use crate::model::MultipleChoiceModel;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

impl<'a> Trainer<'a> {
    pub(super) fn set_up(args: &'a TrainArgs, inputs: &'a TrainInputs, comm: Comm) -> Result<Self> {
        crate::dist::position::open_from_env()?;
        crate::dist::position::enter(0, crate::dist::position::Phase::SettingUp);
        let precision = args.arithmetic.precision.resolve(inputs.device)?;
        tch::manual_seed(args.seed as i64);
        let (run, split) = open_run_dir(args, inputs, &comm)?;
        // On a terminal a bar; elsewhere (a log file, medbert-run's pipes) a line per logged step.
        let on_terminal = std::io::stderr().is_terminal();
        let cores = crate::dist::threads_per_worker(crate::dist::cores(), inputs.local_world_size);
        let overlap = args.ddp.ddp_overlap.resolve(inputs.device, cores, tch::get_num_threads().max(1) as usize);
        let resolved = serde_json::json!({"inputs": inputs, "precision": precision, "ddp_overlap": overlap,
            "ddp_backend": comm.backend().map(|b| b.name()), "tensorboard_dir": args.tensorboard_dir(),
            "progress": if on_terminal { "bar" } else { "a log line per logging step" }});
        let (resume_from, saved_args, batch_flags_changed) =
            resume_and_record(args, inputs, resolved, &run, &comm, &split)?;
        let (model, mut opt, ddp) = build_model(args, inputs, resume_from.as_deref(), &comm, overlap)?;
        let from = resume_from.as_deref();
        let (mut state, scaler, layout, resumed) =
            restore(args, from, &comm, &mut opt, precision, batch_flags_changed)?;
        let plan = Plan::new(args, &split, &comm, layout, &state)?;
        if let (Some(resumed), true) = (resumed, comm.is_main()) {
            resumed.announce(args, &plan, &state);
        }
        state.total_steps = Some(plan.total_steps);
        let resumed_at = resume_from.as_ref().map(|_| state.step);
        let (metrics, questions) = open_logs(args, &run, &comm, resumed_at)?;
        let show_bar = comm.is_main() && on_terminal;
        let bar = crate::progress::bar(plan.total_steps, show_bar, "{bar:30} {pos}/{len} steps {msg} eta {eta}");
        bar.set_position(state.step as u64);
        let params = opt.variables().map(|(_, v)| v.shallow_clone()).collect();
        let max_length = split.train.manifest.encoding.max_length;
        let fixed_shapes = args.fixed_shapes.then(|| FixedShapes::new(args.per_device_train_batch_size, max_length));
        let rank_times = RankTimes::new(comm.world_size(), inputs.local_world_size);
        Ok(Trainer {
            args,
            inputs,
            model,
            opt,
            params,
            run,
            comm,
            ddp,
            precision,
            scaler,
            split,
            plan,
            first_step: state.step,
            state,
            saved_args,
            first_nonfinite: (precision != Precision::Fp16).then(|| Tensor::full([], -1, (Kind::Int64, inputs.device))),
            metrics,
            questions,
            bar,
            started: Instant::now(),
            paused: Duration::ZERO,
            last_eval: None,
            last_loss: None,
            stopped_early: false,
            shapes: Default::default(),
            clock: args.step_breakdown.then(|| StepClock::new(inputs.device)),
            fixed_shapes,
            rank_times,
            preemption: match args.no_save_on_signal {
                true => None,
                false => Some(Preemption::install(Duration::from_secs_f64(args.save_on_signal_timeout))?),
            },
        })
    }
}

/// Picks the checkpoint this run resumes from (checked against the arguments saved with it)
/// and records the run's effective configuration: printed and saved as training_args.json by
/// rank 0. Returns the checkpoint, that file's contents (saved in every checkpoint too), and
/// whether the batch flags differ from the checkpoint's.
fn resume_and_record(
    args: &TrainArgs,
    inputs: &TrainInputs,
    resolved: serde_json::Value,
    run: &RunDir,
    comm: &Comm,
    split: &Split,
) -> Result<(Option<PathBuf>, Vec<u8>, bool)> {
    let eval_data = split.eval_cache().map(|c| c.manifest.fingerprint.as_str());
    let saved = SavedArgs::new(args, resolved, comm.world_size(), &split.train.manifest.fingerprint, eval_data)?;
    let resume_from = checkpoint::to_resume(run, &inputs.resume, comm)?;
    let mut batch_flags_changed = false;
    if let Some(dir) = &resume_from {
        batch_flags_changed = run_dir::check_resume(dir, run, &saved, comm.is_main())?.batch_flags_changed();
    }
    let saved_args = saved.to_json()?;
    if comm.is_main() {
        eprintln!("effective configuration:\n{}", String::from_utf8_lossy(&saved_args));
        crate::atomic::write_file(&run.args(), &saved_args)?;
    }
    Ok((resume_from, saved_args, batch_flags_changed))
}

/// How a resumed run took over from its checkpoint: resharded or not, and its global batch.
struct Resumed {
    reshard: Option<checkpoint::Reshard>,
    choice: BatchChoice,
    /// The steps the checkpoint's run planned in all, where it recorded them.
    planned: Option<usize>,
}

impl Resumed {
    /// Says how the resume goes on (rank 0): on how many processes, from which question of
    /// the epoch, with which global batch and why, and for how many steps.
    fn announce(&self, args: &TrainArgs, plan: &Plan, state: &TrainerState) {
        let Some(reshard) = &self.reshard else { return };
        let ((world_was, batch_was), (world, batch)) = (reshard.from, reshard.to);
        let layout = plan.layout;
        if world_was != world {
            tracing::warn!(
                "resuming on {world} process(es), the checkpoint was written by {world_was}: the epoch goes on from \
                 question {} of its order, shared among {world}",
                state.epoch_start
            );
        }
        let each = format!("{} micro-batch(es) of {} on each process", layout.accumulation, layout.micro_batch);
        let steps = match (args.max_steps, self.planned) {
            (Some(max), _) => format!("--max-steps keeps {max} steps in all"),
            (None, Some(was)) if was != plan.total_steps => format!(
                "the steps left are planned anew so that every question of the epochs is trained: {} in all, not \
                 {was} (the learning-rate schedule spans them)",
                plan.total_steps
            ),
            (None, _) => format!("{} steps in all", plan.total_steps),
        };
        let (b, a) = (args.per_device_train_batch_size, args.gradient_accumulation_steps);
        match self.choice {
            BatchChoice::AsFlagged => {}
            BatchChoice::Kept => tracing::warn!(
                "the global batch stays the checkpoint's {batch} questions per optimizer step: {each}, chosen for \
                 {world} process(es) (batch flags that differ from the checkpoint's would win); {steps}"
            ),
            BatchChoice::Nearest => tracing::warn!(
                "the checkpoint's {batch_was} questions per optimizer step cannot be shared equally among {world} \
                 processes: the global batch changes from {batch_was} to {batch} ({each}); {steps}"
            ),
            BatchChoice::Flags => tracing::warn!(
                "--per-device-train-batch-size {b} and --gradient-accumulation-steps {a} differ from the \
                 checkpoint's: the global batch changes from {batch_was} to {batch} questions per optimizer step; \
                 {steps}"
            ),
        }
    }
}

/// The run directory claimed for this run (rank 0 decides) and its data opened and split.
fn open_run_dir(args: &TrainArgs, inputs: &TrainInputs, comm: &Comm) -> Result<(RunDir, Split)> {
    let run = args.run_dir();
    run.claim(&inputs.resume, args.overwrite_output_dir, comm)?;
    Ok((run, Split::open(inputs, args.holdout)?))
}

/// metrics.jsonl (rank 0, and TensorBoard's events when asked) and `--record-questions`' files,
/// cut back to `resumed_at` on a resume.
fn open_logs(
    args: &TrainArgs,
    run: &RunDir,
    comm: &Comm,
    resumed_at: Option<usize>,
) -> Result<(MetricsLog, QuestionLog)> {
    let metrics = MetricsLog::open(&run.metrics(), comm.is_main(), resumed_at, args.tensorboard_dir().as_deref())?;
    let questions = QuestionLog::open(run, comm.rank(), comm.world_size(), args.record_questions, resumed_at)?;
    Ok((metrics, questions))
}

/// The model from the checkpoint `from` (else the run's model) on the run's device, its
/// optimizer, and the gradient reducer over its variables; rank 0 logs what the load
/// initialised.
fn build_model(
    args: &TrainArgs,
    inputs: &TrainInputs,
    from: Option<&Path>,
    comm: &Comm,
    overlap: bool,
) -> Result<(MultipleChoiceModel, AdamW, Ddp)> {
    let model_dir = from.unwrap_or(&inputs.model_dir);
    let (model, report) = MultipleChoiceModel::from_dir(model_dir, inputs.device)?;
    let opt = AdamW::new(&model.vs, args.weight_decay, (args.adam_beta1, args.adam_beta2), args.adam_epsilon);
    let mut ddp = Ddp::new(comm);
    ddp.attach(&opt.variables().collect::<Vec<_>>(), args.ddp.ddp_bucket_cap_mb, overlap)?;
    if comm.is_main() {
        report.log(model_dir, true);
    }
    Ok((model, opt, ddp))
}

/// Where the run stands: at the start, or as the checkpoint `from` left it (the optimizer's
/// and the loss scaler's state restored too) resharded for this world size, and the layout of
/// its steps (the checkpoint's global batch kept unless `batch_flags_changed`).
fn restore(
    args: &TrainArgs,
    from: Option<&Path>,
    comm: &Comm,
    opt: &mut AdamW,
    precision: Precision,
    batch_flags_changed: bool,
) -> Result<(TrainerState, GradScaler, Layout, Option<Resumed>)> {
    let mut scaler = GradScaler::new(precision == Precision::Fp16);
    let world = comm.world_size();
    let flagged = Layout::from_flags(args, world);
    let Some(dir) = from else {
        let fresh =
            TrainerState { world_size: world, global_batch: Some(flagged.global_batch()), ..TrainerState::default() };
        return Ok((fresh, scaler, flagged, None));
    };
    let mut state = checkpoint::restore(dir, opt, &mut scaler)?;
    if comm.is_main() {
        tracing::info!(checkpoint = %dir.display(), step = state.step, epoch = state.epoch, "resuming");
    }
    let trained = state.trained_batch(dir, world, flagged.global_batch())?;
    let (layout, choice) = Layout::resumed(args, world, trained, batch_flags_changed);
    let planned = state.total_steps;
    let reshard = state.reshard(trained, world, layout.global_batch());
    Ok((state, scaler, layout, Some(Resumed { reshard, choice, planned })))
}
