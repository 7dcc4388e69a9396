//! The flags of `medbert train`, declared once: clap parses them, serde records them, and the
//! training loop reads them.

use crate::device::PrecisionArg;
use crate::dist::GroupArgs;
use crate::encode::MIN_MAX_LENGTH;
use crate::error::{Error, Problem, Result};
use crate::prep::DataArgs;
use crate::settings;
use crate::train::optim::SchedulerType;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Device;

/// Everything a training run is told, named as the HF Trainer's TrainingArguments; each flag
/// also settable through the environment or .env (MEDBERT_<FLAG>).
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct TrainArgs {
    /// Model to start from: an HF model directory or a hub id (e.g. dmis-lab/biobert-base-cased-v1.2).
    #[arg(long, value_parser = crate::settings::path, env = settings::MODEL_VAR)]
    pub model: PathBuf,
    /// Training data: a raw MedMCQA file (prepared automatically) or a prepared cache.
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_TRAIN_FILE")]
    pub train_file: PathBuf,
    /// Evaluation data, as --train-file.
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_VALIDATION_FILE")]
    pub validation_file: Option<PathBuf>,
    /// Without --validation-file: evaluate on the last N questions of the training file
    /// (file order) and train on the rest.
    #[arg(long, env = "MEDBERT_HOLDOUT")]
    pub holdout: Option<usize>,
    /// Where metrics, the plot, the summary and checkpoints go.
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_OUTPUT_DIR", default_value = "runs/medbert")]
    pub output_dir: PathBuf,
    /// Peak learning rate of AdamW (after warm-up).
    #[arg(long, env = "MEDBERT_LEARNING_RATE", default_value_t = 5e-5)]
    pub learning_rate: f64,
    /// Questions per training micro-batch on each process.
    #[arg(long, env = "MEDBERT_PER_DEVICE_TRAIN_BATCH_SIZE", default_value_t = 16)]
    pub per_device_train_batch_size: usize,
    /// Questions per evaluation batch on each process.
    #[arg(long, env = "MEDBERT_PER_DEVICE_EVAL_BATCH_SIZE", default_value_t = crate::eval::DEFAULT_EVAL_BATCH_SIZE)]
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step (gradients accumulate locally, sync once).
    #[arg(long, env = "MEDBERT_GRADIENT_ACCUMULATION_STEPS", default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Passes over the training data (fractions allowed).
    #[arg(long, env = "MEDBERT_NUM_TRAIN_EPOCHS", default_value_t = 3.0)]
    pub num_train_epochs: f64,
    /// Stop after this many optimizer steps (overrides --num-train-epochs).
    #[arg(long, env = "MEDBERT_MAX_STEPS")]
    pub max_steps: Option<usize>,
    /// AdamW weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, env = "MEDBERT_WEIGHT_DECAY", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// AdamW's beta1 (decay of the first moment).
    #[arg(long, env = "MEDBERT_ADAM_BETA1", default_value_t = 0.9)]
    pub adam_beta1: f64,
    /// AdamW's beta2 (decay of the second moment).
    #[arg(long, env = "MEDBERT_ADAM_BETA2", default_value_t = 0.999)]
    pub adam_beta2: f64,
    /// Learning-rate schedule after the warm-up, as transformers' get_scheduler names them.
    #[arg(long, env = "MEDBERT_LR_SCHEDULER_TYPE", value_enum, default_value = "linear")]
    pub lr_scheduler_type: SchedulerType,
    /// AdamW epsilon.
    #[arg(long, env = "MEDBERT_ADAM_EPSILON", default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Share of the steps spent warming the learning rate up linearly from 0.
    #[arg(long, env = "MEDBERT_WARMUP_RATIO", default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Warm-up steps (overrides --warmup-ratio).
    #[arg(long, env = "MEDBERT_WARMUP_STEPS")]
    pub warmup_steps: Option<usize>,
    /// Clip gradients to this global L2 norm.
    #[arg(long, env = "MEDBERT_MAX_GRAD_NORM", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed of the data order, dropout and the classifier's initialisation.
    #[arg(long, env = "MEDBERT_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Batch questions of similar length (less padding).
    #[arg(long, env = "MEDBERT_GROUP_BY_LENGTH")]
    pub group_by_length: bool,
    /// Pad every training batch to --max-length instead of its longest question (one shape
    /// for every step; slower, as benchmarks against fixed-shape references need).
    #[arg(long, env = "MEDBERT_PAD_TO_MAX_LENGTH")]
    pub pad_to_max_length: bool,
    /// Lay every training micro-batch out in one of a few shapes: the full batch of questions
    /// at --max-length, the real tokens brought up to one of 8 sizes per doubling (at most
    /// 1/8 more) by filler questions that the loss and the gradients never see. For CUDA
    /// graphs, which replay fixed shapes; on CPU it only adds work. The same results as
    /// without (tested with dropout off; dropout draws other masks for other shapes).
    #[arg(long, env = "MEDBERT_FIXED_SHAPES")]
    pub fixed_shapes: bool,
    /// Time each phase of every optimizer step (forward, backward, the all-reduce wait after
    /// backward, the optimizer) and report the means in summary.json. On CUDA the device is
    /// synchronised at each phase boundary, which costs some throughput.
    #[arg(long, env = "MEDBERT_STEP_BREAKDOWN")]
    pub step_breakdown: bool,
    /// The evaluation metric that picks best/ and drives --patience: loss or accuracy (also
    /// spelled eval_loss, eval_accuracy, as the HF Trainer names them).
    #[arg(long, env = "MEDBERT_METRIC_FOR_BEST_MODEL", default_value = "loss")]
    pub metric_for_best_model: String,
    /// Whether a higher --metric-for-best-model is better (default: false for loss, true for
    /// accuracy).
    #[arg(long, env = "MEDBERT_GREATER_IS_BETTER")]
    pub greater_is_better: Option<bool>,
    /// Make final/ the best checkpoint (best/) instead of the last weights.
    #[arg(long, env = "MEDBERT_LOAD_BEST_MODEL_AT_END")]
    pub load_best_model_at_end: bool,
    /// Stop after this many evaluations without a better --metric-for-best-model.
    #[arg(long, env = "MEDBERT_PATIENCE")]
    pub patience: Option<usize>,
    /// Evaluate every N optimizer steps (with --eval-strategy steps; default --logging-steps).
    #[arg(long, env = "MEDBERT_EVAL_STEPS")]
    pub eval_steps: Option<usize>,
    /// When to evaluate: no, steps (every --eval-steps) or epoch (at the end of each); the
    /// end of training evaluates too unless no. Default: steps when --eval-steps is given,
    /// else epoch.
    #[arg(long, env = "MEDBERT_EVAL_STRATEGY", value_enum)]
    pub eval_strategy: Option<IntervalStrategy>,
    /// When to write a resumable checkpoint-<step>: no, steps (every --save-steps) or epoch.
    /// Default: steps when --save-steps is given, else no.
    #[arg(long, env = "MEDBERT_SAVE_STRATEGY", value_enum)]
    pub save_strategy: Option<IntervalStrategy>,
    /// Write a metrics.jsonl line every N optimizer steps.
    #[arg(long, env = "MEDBERT_LOGGING_STEPS", default_value_t = 10)]
    pub logging_steps: usize,
    /// Where the logged metrics also go, besides metrics.jsonl: none, or tensorboard (event
    /// files in --logging-dir); all is every integration built in. A comma-separated list.
    #[arg(long, env = "MEDBERT_REPORT_TO", value_enum, value_delimiter = ',', default_value = "none")]
    pub report_to: Vec<ReportTo>,
    /// TensorBoard's log directory (default: <output-dir>/runs/<date>_<host>, as the HF Trainer).
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_LOGGING_DIR")]
    pub logging_dir: Option<PathBuf>,
    /// Debugging: every process appends the training questions of each optimizer step
    /// (indices into the training data) to questions-rank<R>.jsonl in --output-dir.
    #[arg(long, env = "MEDBERT_RECORD_QUESTIONS")]
    pub record_questions: bool,
    /// Save a resumable checkpoint-<step> (weights, optimizer moments, position) every N steps.
    #[arg(long, env = "MEDBERT_SAVE_STEPS")]
    pub save_steps: Option<usize>,
    /// Keep only the newest K checkpoint-<step> directories.
    #[arg(long, env = "MEDBERT_SAVE_TOTAL_LIMIT")]
    pub save_total_limit: Option<usize>,
    /// Continue from the newest checkpoint-<step> in --output-dir, at the exact next batch. What
    /// changes the data order (data, seed, max length, group-by-length, holdout; with
    /// group-by-length also batch size and accumulation) must match the saved
    /// training_args.json; other changes are allowed and listed. Another number of processes
    /// goes on from the first question of the epoch's order no step took, with the
    /// checkpoint's global batch (the accumulation chosen for it) unless the batch flags differ
    /// from the checkpoint's. A run restarted by medbert-run --max-restarts resumes by itself
    /// when a checkpoint exists.
    #[arg(long, env = "MEDBERT_RESUME")]
    pub resume: bool,
    /// Continue from this checkpoint-<step> directory (as --resume, from a given checkpoint).
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_RESUME_FROM_CHECKPOINT", value_name = "DIR")]
    pub resume_from_checkpoint: Option<PathBuf>,
    /// Train into an --output-dir that holds another run, deleting that run's files first
    /// (metrics, checkpoints, best/, final/, summary); prepared caches are kept.
    #[arg(long, env = "MEDBERT_OVERWRITE_OUTPUT_DIR")]
    pub overwrite_output_dir: bool,
    /// On SIGTERM, SIGUSR1 or SIGINT (a cluster's warning before it stops the job) the run
    /// finishes its optimizer step, saves a checkpoint-<step> where every process agrees to
    /// stop, and exits with status 75, for --resume to go on at the next batch; a second signal
    /// ends it at once. This flag turns that off: the first signal ends the run at once.
    #[arg(long, env = "MEDBERT_NO_SAVE_ON_SIGNAL")]
    pub no_save_on_signal: bool,
    /// Seconds after the first signal within which that checkpoint must be saved; past them the
    /// run ends without it, as on a second signal (below Kubernetes' default grace period of
    /// 30 s, after which it sends SIGKILL).
    #[arg(long, env = "MEDBERT_SAVE_ON_SIGNAL_TIMEOUT", default_value_t = 25.0, value_name = "SECONDS")]
    pub save_on_signal_timeout: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub arithmetic: PrecisionArg,
    #[command(flatten)]
    pub ddp: DdpArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Data-parallel training settings.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct DdpArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Gradient bucket size for the all-reduce, in MiB (PyTorch DDP's bucket_cap_mb).
    #[arg(long, env = "MEDBERT_DDP_BUCKET_CAP_MB", default_value_t = super::ddp::DEFAULT_BUCKET_CAP_MB)]
    pub ddp_bucket_cap_mb: f64,
    /// Start each bucket's all-reduce from autograd hooks while backward runs (true), or all
    /// buckets after backward (false). auto: true on CUDA, where NCCL runs on its own stream
    /// beside the compute (PyTorch DDP always overlaps); on CPU true only when this process
    /// has more cores (the node's cores over its processes) than compute threads, since
    /// Gloo's threads need a core of their own: sharing the compute's cores, overlap made
    /// backward slower than the wait it hid (scripts/bench-ddp.sh measures both).
    #[arg(long, env = "MEDBERT_DDP_OVERLAP", value_enum, default_value = "auto")]
    pub ddp_overlap: Overlap,
    /// Every N optimizer steps, check that all ranks hold bitwise identical parameters
    /// (an error naming the step otherwise).
    #[arg(long, env = "MEDBERT_VERIFY_SYNC")]
    pub verify_sync: Option<usize>,
}

/// `--ddp-overlap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    Auto,
    True,
    False,
}

impl Overlap {
    /// Whether all-reduces start during backward, on `device`, for a process with
    /// `cores_per_process` cores and `compute_threads` threads of its own.
    pub fn resolve(self, device: Device, cores_per_process: usize, compute_threads: usize) -> bool {
        match self {
            Overlap::True => true,
            Overlap::False => false,
            Overlap::Auto => device.is_cuda() || cores_per_process > compute_threads,
        }
    }
}

/// When something happens during training (`--eval-strategy`, `--save-strategy`), as the HF
/// Trainer's IntervalStrategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalStrategy {
    No,
    Steps,
    Epoch,
}

/// An integration that receives the logged metrics (`--report-to`), as the HF Trainer names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    None,
    Tensorboard,
    All,
}

/// Whether an optimizer step is due for something happening on `strategy` (with `every` for
/// steps), given that it ended an epoch or the run.
fn due(strategy: IntervalStrategy, every: usize, step: usize, epoch_done: bool, finished: bool) -> bool {
    match strategy {
        IntervalStrategy::No => false,
        IntervalStrategy::Steps => step.is_multiple_of(every.max(1)) || finished,
        IntervalStrategy::Epoch => epoch_done || finished,
    }
}

impl TrainArgs {
    /// --metric-for-best-model without its `eval_` prefix.
    pub fn best_metric(&self) -> &str {
        self.metric_for_best_model.strip_prefix("eval_").unwrap_or(&self.metric_for_best_model)
    }

    /// --output-dir, with its layout.
    pub fn run_dir(&self) -> super::RunDir {
        super::RunDir::new(&self.output_dir)
    }

    /// The TensorBoard log directory when --report-to asks for TensorBoard: --logging-dir, or
    /// the HF Trainer's default (`runs/<Mon><DD>_<HH>-<MM>-<SS>_<host>` in --output-dir).
    pub fn tensorboard_dir(&self) -> Option<PathBuf> {
        if !self.report_to.iter().any(|r| matches!(r, ReportTo::Tensorboard | ReportTo::All)) {
            return None;
        }
        Some(self.logging_dir.clone().unwrap_or_else(|| {
            let time = chrono::Local::now().format("%b%d_%H-%M-%S");
            self.run_dir().tensorboard(&format!("{time}_{}", crate::tensorboard::hostname()))
        }))
    }

    /// Questions per optimizer step over `world` processes.
    pub fn global_batch(&self, world: usize) -> usize {
        self.per_device_train_batch_size * self.gradient_accumulation_steps * world
    }

    /// --greater-is-better, or the HF Trainer's default for the metric.
    pub fn greater_is_better(&self) -> bool {
        self.greater_is_better.unwrap_or(!self.best_metric().ends_with("loss"))
    }

    pub fn eval_strategy(&self) -> IntervalStrategy {
        self.eval_strategy.unwrap_or(match self.eval_steps {
            Some(_) => IntervalStrategy::Steps,
            None => IntervalStrategy::Epoch,
        })
    }

    pub fn save_strategy(&self) -> IntervalStrategy {
        self.save_strategy.unwrap_or(match self.save_steps {
            Some(_) => IntervalStrategy::Steps,
            None => IntervalStrategy::No,
        })
    }

    /// Whether `step` evaluates (the end of training does unless the strategy is no).
    pub fn eval_due(&self, step: usize, epoch_done: bool, finished: bool) -> bool {
        let every = self.eval_steps.unwrap_or(self.logging_steps);
        due(self.eval_strategy(), every, step, epoch_done, finished)
    }

    /// Whether `step` writes a resumable checkpoint (not merely because training ended).
    pub fn save_due(&self, step: usize, epoch_done: bool) -> bool {
        due(self.save_strategy(), self.save_steps.unwrap_or(0), step, epoch_done, false)
    }
}

/// The clap id of a [`TrainArgs`] field (its own name: flattened groups add no prefix) for a
/// [`Problem`]; the compiler checks that the field exists, so a renamed flag cannot leave a
/// refusal that names no flag.
macro_rules! flag_id {
    ($($path:ident).+) => {{
        const _: fn(&TrainArgs) = |args| {
            let _ = &args.$($path).+;
        };
        flag_id!(@last $($path)+)
    }};
    (@last $last:ident) => {
        stringify!($last)
    };
    (@last $first:ident $($rest:ident)+) => {
        flag_id!(@last $($rest)+)
    };
}

impl TrainArgs {
    /// Every value that is out of range, checked before any work is done (the model's own
    /// limits, such as its longest sequence, are checked once it is known).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |arg: &'static str, ok: bool, message: &str| {
            if !ok {
                out.push(Problem { arg, message: message.to_string() });
            }
        };
        let finite_at_least = |v: f64, min: f64| v.is_finite() && v >= min;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let at_least_one = |v: Option<usize>| v.is_none_or(|v| v >= 1);
        check(flag_id!(learning_rate), finite_at_least(self.learning_rate, 0.0), "must be a finite number, 0 or more");
        check(flag_id!(per_device_train_batch_size), self.per_device_train_batch_size >= 1, "must be at least 1");
        check(flag_id!(per_device_eval_batch_size), self.per_device_eval_batch_size >= 1, "must be at least 1");
        check(
            flag_id!(gradient_accumulation_steps),
            (1..=super::plan::MAX_MICRO_STEPS).contains(&self.gradient_accumulation_steps),
            &format!("must be between 1 and {}", super::plan::MAX_MICRO_STEPS),
        );
        check(flag_id!(num_train_epochs), positive(self.num_train_epochs), "must be a finite number above 0");
        check(flag_id!(max_steps), at_least_one(self.max_steps), "must be at least 1");
        check(flag_id!(weight_decay), finite_at_least(self.weight_decay, 0.0), "must be a finite number, 0 or more");
        check(flag_id!(adam_epsilon), positive(self.adam_epsilon), "must be a finite number above 0");
        check(flag_id!(adam_beta1), (0.0..1.0).contains(&self.adam_beta1), "must be at least 0 and below 1");
        check(flag_id!(adam_beta2), (0.0..1.0).contains(&self.adam_beta2), "must be at least 0 and below 1");
        check(
            flag_id!(learning_rate),
            self.lr_scheduler_type != SchedulerType::Polynomial || self.learning_rate > 1e-7,
            "must be above 1e-7, the polynomial schedule's end",
        );
        check(flag_id!(warmup_ratio), (0.0..=1.0).contains(&self.warmup_ratio), "must be between 0 and 1");
        check(flag_id!(max_grad_norm), positive(self.max_grad_norm), "must be a finite number above 0");
        check(
            flag_id!(save_on_signal_timeout),
            positive(self.save_on_signal_timeout),
            "must be a finite number above 0",
        );
        check(flag_id!(holdout), at_least_one(self.holdout), "must be at least 1");
        check(flag_id!(patience), at_least_one(self.patience), "must be at least 1");
        check(flag_id!(eval_steps), at_least_one(self.eval_steps), "must be at least 1");
        check(flag_id!(logging_steps), self.logging_steps >= 1, "must be at least 1");
        check(flag_id!(save_steps), at_least_one(self.save_steps), "must be at least 1");
        check(flag_id!(save_total_limit), at_least_one(self.save_total_limit), "must be at least 1");
        let least = format!("must be at least {MIN_MAX_LENGTH}");
        check(flag_id!(data.max_length), self.data.max_length >= MIN_MAX_LENGTH, &least);
        check(flag_id!(ddp.ddp_bucket_cap_mb), positive(self.ddp.ddp_bucket_cap_mb), "must be a finite number above 0");
        check(flag_id!(ddp.group.ddp_timeout), self.ddp.group.ddp_timeout >= 1, "must be at least 1 second");
        check(flag_id!(ddp.verify_sync), at_least_one(self.ddp.verify_sync), "must be at least 1");
        check(flag_id!(output_dir), !self.output_dir.is_file(), "is a file, not a directory");
        check(
            flag_id!(metric_for_best_model),
            crate::eval::EvalResult::METRICS.contains(&self.best_metric()),
            "must be one of the evaluation's metrics: loss, accuracy (or eval_loss, eval_accuracy)",
        );
        check(
            flag_id!(save_strategy),
            self.save_strategy() != IntervalStrategy::Steps || self.save_steps.is_some(),
            "steps needs --save-steps",
        );
        out
    }

    /// Refuses the flags' [`problems`](Self::problems), then those with the model in
    /// `model_dir` (a `--max-length` beyond its positions): every check of the flags, made
    /// before any work is done, whoever calls the library.
    pub fn check(&self, model_dir: Option<&Path>) -> Result<()> {
        let mut problems = self.problems();
        if let (true, Some(dir)) = (problems.is_empty(), model_dir) {
            let config = crate::model::ModelConfig::from_file(&dir.join(crate::files::CONFIG_FILE))?;
            let positions = config.max_length();
            if self.data.max_length as i64 > positions {
                let message = match config.family {
                    crate::model::Family::Roberta => format!(
                        "must not exceed the model's {positions} positions (max_position_embeddings less \
                         pad_token_id + 1, where RoBERTa's positions start)"
                    ),
                    _ => format!("must not exceed the model's {positions} positions (max_position_embeddings)"),
                };
                problems.push(Problem { arg: flag_id!(data.max_length), message });
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(Error::Arguments { problems }),
        }
    }
}

/// What the caller settles before training: the model and the data as local paths (hub ids
/// downloaded, raw files prepared), the device, and whether the run resumes.
#[derive(Clone, Debug, Serialize)]
pub struct TrainInputs {
    pub model_dir: PathBuf,
    pub train_cache: PathBuf,
    pub eval_cache: Option<PathBuf>,
    #[serde(serialize_with = "device_name")]
    pub device: Device,
    pub resume: Resume,
    /// The processes on this node (LOCAL_WORLD_SIZE; 1 without a launcher), which share its cores.
    pub local_world_size: usize,
}

/// Whether a run continues from a `checkpoint-<step>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resume {
    /// Start from the model.
    No,
    /// From the newest checkpoint; none is an error (`--resume`).
    Required,
    /// From the newest checkpoint when there is one, else from the given checkpoint or the
    /// model (a restart by the launcher).
    IfAny(Option<PathBuf>),
    /// From this checkpoint (`--resume-from-checkpoint`).
    From(PathBuf),
}

impl Resume {
    /// `--resume`, `--resume-from-checkpoint`, or a worker group the launcher restarted (which
    /// picks up where it stopped).
    pub fn from_flags(resume: bool, from: Option<&Path>, restarted: bool) -> Resume {
        match (resume, from, restarted) {
            (_, from, true) => Resume::IfAny(from.map(Path::to_path_buf)),
            (_, Some(dir), false) => Resume::From(dir.to_path_buf()),
            (true, None, false) => Resume::Required,
            (false, None, false) => Resume::No,
        }
    }

    pub fn is_resuming(&self) -> bool {
        *self != Resume::No
    }
}

fn device_name<S: serde::Serializer>(d: &Device, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{d:?}").to_lowercase())
}

#[cfg(test)]
mod overlap_tests {
    use super::*;

    #[test]
    fn overlap_is_automatic_on_cuda_and_on_cpu_only_with_a_core_to_spare() {
        assert!(Overlap::Auto.resolve(Device::Cuda(0), 1, 8));
        assert!(!Overlap::Auto.resolve(Device::Cpu, 1, 1), "2 cores, 2 processes of 1 thread");
        assert!(!Overlap::Auto.resolve(Device::Cpu, 8, 8), "16 cores, 2 processes of 8 threads");
        assert!(Overlap::Auto.resolve(Device::Cpu, 8, 7), "a core left to Gloo");
        assert!(Overlap::True.resolve(Device::Cpu, 1, 1) && !Overlap::False.resolve(Device::Cuda(0), 1, 1));
    }
}
