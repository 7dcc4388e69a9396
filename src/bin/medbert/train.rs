//! `medbert train`, `eval` and `predict`: flags named like the HF Trainer's TrainingArguments,
//! each also settable through the environment or .env (MEDBERT_<FLAG>).

use anyhow::Result;
use clap::Args;
use medbert::batch::collate;
use medbert::dist::{in_turn, Backend, DistEnv, ProcessGroup};
use medbert::model::MultipleChoiceModel;
use medbert::prep::cache::PreparedCache;
use medbert::prep::{self, PrepOptions};
use medbert::train::{self, evaluate_sharded, Ddp, Precision, Resume, TrainArgs};
use medbert::{hub, settings};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Longest sequence in tokens when raw files are prepared.
    #[arg(long, env = "MEDBERT_MAX_LENGTH", default_value_t = 128)]
    pub max_length: usize,
    /// Device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N.
    #[arg(long, env = "MEDBERT_DEVICE", default_value = "auto")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct TrainCli {
    /// Model to start from: an HF model directory or a hub id (e.g. dmis-lab/biobert-base-cased-v1.2).
    #[arg(long, env = settings::MODEL_VAR)]
    pub model: PathBuf,
    /// Training data: a raw MedMCQA file (prepared automatically) or a prepared cache.
    #[arg(long, env = "MEDBERT_TRAIN_FILE")]
    pub train_file: PathBuf,
    /// Evaluation data, as --train-file.
    #[arg(long, env = "MEDBERT_VALIDATION_FILE")]
    pub validation_file: Option<PathBuf>,
    /// Without --validation-file: evaluate on the last N questions of the training file
    /// (file order) and train on the rest.
    #[arg(long, env = "MEDBERT_HOLDOUT")]
    pub holdout: Option<usize>,
    /// Where metrics, the plot, the summary and checkpoints go.
    #[arg(long, env = "MEDBERT_OUTPUT_DIR", default_value = "runs/medbert")]
    pub output_dir: PathBuf,
    /// Peak learning rate of AdamW (after warm-up).
    #[arg(long, env = "MEDBERT_LEARNING_RATE", default_value_t = 5e-5)]
    pub learning_rate: f64,
    /// Questions per training micro-batch on each process.
    #[arg(long, env = "MEDBERT_PER_DEVICE_TRAIN_BATCH_SIZE", default_value_t = 16)]
    pub per_device_train_batch_size: usize,
    /// Questions per evaluation batch on each process.
    #[arg(long, env = "MEDBERT_PER_DEVICE_EVAL_BATCH_SIZE", default_value_t = 32)]
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
    /// Stop after this many evaluations without a lower evaluation loss.
    #[arg(long, env = "MEDBERT_PATIENCE")]
    pub patience: Option<usize>,
    /// Evaluate every N optimizer steps (and at the end of each epoch).
    #[arg(long, env = "MEDBERT_EVAL_STEPS")]
    pub eval_steps: Option<usize>,
    /// Write a metrics.jsonl line every N optimizer steps.
    #[arg(long, env = "MEDBERT_LOGGING_STEPS", default_value_t = 10)]
    pub logging_steps: usize,
    /// Save a resumable checkpoint-<step> (weights, optimizer moments, position) every N steps.
    #[arg(long, env = "MEDBERT_SAVE_STEPS")]
    pub save_steps: Option<usize>,
    /// Keep only the newest K checkpoint-<step> directories.
    #[arg(long, env = "MEDBERT_SAVE_TOTAL_LIMIT")]
    pub save_total_limit: Option<usize>,
    /// Continue from the newest checkpoint-<step> in --output-dir, at the exact next batch
    /// (same flags, data and number of processes as the interrupted run). A run restarted by
    /// medbert-run --max-restarts resumes by itself when a checkpoint exists.
    #[arg(long, env = "MEDBERT_RESUME")]
    pub resume: bool,
    /// Arithmetic: auto is bf16 autocast on CUDA devices that support it (fp16 with a dynamic
    /// loss scaler on older ones) and fp32 on CPU.
    #[arg(long, env = "MEDBERT_PRECISION", value_enum, default_value = "auto")]
    pub precision: Precision,
    #[command(flatten)]
    pub ddp: DdpArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// The worker group, joined when the launcher (medbert-run or torchrun) sets WORLD_SIZE.
#[derive(Args, Debug)]
pub struct GroupArgs {
    /// Collective backend: auto is NCCL on CUDA, Gloo on CPU.
    #[arg(long, env = "MEDBERT_DDP_BACKEND", value_enum, default_value = "auto")]
    pub ddp_backend: BackendChoice,
    /// Rendezvous and collective timeout, in seconds.
    #[arg(long, env = "MEDBERT_DDP_TIMEOUT", default_value_t = 1800)]
    pub ddp_timeout: u64,
}

/// Data-parallel training settings.
#[derive(Args, Debug)]
pub struct DdpArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Gradient bucket size for the all-reduce, in MiB (PyTorch DDP's bucket_cap_mb).
    #[arg(long, env = "MEDBERT_DDP_BUCKET_CAP_MB", default_value_t = medbert::train::ddp::DEFAULT_BUCKET_CAP_MB)]
    pub ddp_bucket_cap_mb: f64,
    /// Start each bucket's all-reduce from autograd hooks while backward runs (false: all
    /// buckets after backward, for comparison).
    #[arg(long, env = "MEDBERT_DDP_OVERLAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub ddp_overlap: bool,
    /// Every N optimizer steps, check that all ranks hold bitwise identical parameters
    /// (an error naming the step otherwise).
    #[arg(long, env = "MEDBERT_VERIFY_SYNC")]
    pub verify_sync: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Gloo,
    Nccl,
}

impl GroupArgs {
    /// The process group of this worker when a launcher started it; None for a plain run.
    fn join(&self, env: Option<&DistEnv>, device: tch::Device) -> Result<Option<ProcessGroup>> {
        // Under a launcher a group is formed even for one process, as torchrun + DDP does, so
        // that `--nproc-per-node 1` runs the same collectives as a larger group.
        let Some(env) = env else { return Ok(None) };
        let backend = match (self.ddp_backend, device.is_cuda()) {
            (BackendChoice::Gloo, _) | (BackendChoice::Auto, false) => Backend::Gloo,
            (BackendChoice::Nccl, _) | (BackendChoice::Auto, true) => Backend::Nccl,
        };
        anyhow::ensure!(
            Backend::compiled().contains(&backend),
            "--ddp-backend {}: this binary was built without it (`medbert doctor` says why)",
            backend.name()
        );
        anyhow::ensure!(
            backend != Backend::Nccl || device.is_cuda(),
            "--ddp-backend nccl needs --device cuda; this run is on {device:?}"
        );
        Ok(Some(ProcessGroup::init(env, backend, std::time::Duration::from_secs(self.ddp_timeout))?))
    }
}

/// Resolves `--device`; `auto` and `cuda` are this worker's GPU (its local rank).
pub fn device(spec: &str, env: Option<&DistEnv>) -> Result<tch::Device> {
    let local_rank = env.map_or(0, |e| e.local_rank);
    let cuda = |n: usize| -> Result<tch::Device> {
        let count = tch::Cuda::device_count() as usize;
        anyhow::ensure!(n < count, "--device cuda:{n}: {count} CUDA device(s) visible");
        Ok(tch::Device::Cuda(n))
    };
    match spec {
        "auto" if tch::Cuda::is_available() => cuda(local_rank),
        "auto" | "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda(local_rank),
        s => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(n)) => cuda(n),
            _ => anyhow::bail!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

/// A prepared cache for `path`: used as is when it is one, else prepared under `cache_root`.
fn cache_for(path: &Path, cache_root: &Path, model: &Path, max_length: usize) -> Result<PathBuf> {
    if path.join(prep::cache::MANIFEST_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let stem = path.file_stem().map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    let output = cache_root.join(stem);
    let opts = PrepOptions::new(vec![path.to_path_buf()], output.clone(), model.to_path_buf(), max_length);
    let report = prep::run(&opts)?;
    tracing::info!(cache = %output.display(), hit = report.cache_hit, questions = report.manifest.questions, "prepared");
    Ok(output)
}

pub fn run_train(mut cli: TrainCli) -> Result<()> {
    let env = DistEnv::from_env()?;
    // A worker group restarted by the launcher (torchrun's contract) picks up where it stopped.
    let restarted = env.as_ref().is_some_and(DistEnv::restarted);
    let device = device(&cli.data.device, env.as_ref())?;
    cli.model = hub::resolve_model(&cli.model)?;
    let pg = cli.ddp.group.join(env.as_ref(), device)?;
    let cache_root = cli.output_dir.join("prepared");
    let (train_cache, eval_cache) = in_turn(pg.as_ref(), env.as_ref().map_or(0, |e| e.local_rank), || {
        let train = cache_for(&cli.train_file, &cache_root, &cli.model, cli.data.max_length)?;
        let eval = cli
            .validation_file
            .as_deref()
            .map(|p| cache_for(p, &cache_root, &cli.model, cli.data.max_length))
            .transpose()?;
        anyhow::Ok((train, eval))
    })?;
    let args = TrainArgs {
        model_dir: cli.model,
        train_cache,
        eval_cache,
        holdout: cli.holdout,
        output_dir: cli.output_dir,
        learning_rate: cli.learning_rate,
        per_device_train_batch_size: cli.per_device_train_batch_size,
        per_device_eval_batch_size: cli.per_device_eval_batch_size,
        gradient_accumulation_steps: cli.gradient_accumulation_steps,
        num_train_epochs: cli.num_train_epochs,
        max_steps: cli.max_steps,
        weight_decay: cli.weight_decay,
        warmup_ratio: cli.warmup_ratio,
        warmup_steps: cli.warmup_steps,
        max_grad_norm: cli.max_grad_norm,
        seed: cli.seed,
        group_by_length: cli.group_by_length,
        pad_to_max_length: cli.pad_to_max_length,
        patience: cli.patience,
        eval_steps: cli.eval_steps,
        logging_steps: cli.logging_steps,
        device,
        precision: cli.precision,
        progress: true,
        save_steps: cli.save_steps,
        save_total_limit: cli.save_total_limit,
        resume: match (cli.resume, restarted) {
            (true, _) => Resume::Required,
            (false, true) => Resume::IfAny,
            (false, false) => Resume::No,
        },
        adam_epsilon: cli.adam_epsilon,
        ddp_bucket_cap_mb: cli.ddp.ddp_bucket_cap_mb,
        ddp_overlap: cli.ddp.ddp_overlap,
        verify_sync: cli.ddp.verify_sync,
    };
    let is_main = pg.as_ref().is_none_or(|pg| pg.rank() == 0);
    if is_main {
        eprintln!("effective configuration:\n{}", serde_json::to_string_pretty(&args)?);
    }
    let summary = train::train(&args, pg)?;
    if is_main {
        print!("{}", summary.table());
        medbert::atomic::write_file(
            &args.output_dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// What `eval` and `predict` share: the model, batch size, where raw files are prepared.
#[derive(Args, Debug)]
pub struct InferenceArgs {
    /// A checkpoint, a model directory or a hub id.
    #[arg(long, env = settings::MODEL_VAR)]
    pub model: PathBuf,
    /// Questions per batch on each process.
    #[arg(long, default_value_t = 32)]
    pub per_device_eval_batch_size: usize,
    /// Where prepared caches of raw files go.
    #[arg(long, default_value = "runs/medbert/prepared")]
    pub cache_dir: PathBuf,
    /// Autocast for the forward pass: auto is bf16 on a CUDA device of compute capability
    /// 8.0+, fp16 on older ones, fp32 on CPU.
    #[arg(long, value_enum, default_value_t = Precision::Auto, env = "MEDBERT_PRECISION")]
    pub precision: Precision,
    #[command(flatten)]
    pub data: DataArgs,
}

impl InferenceArgs {
    /// The model on its device and the cache of `file`.
    fn load(&self, file: &Path, env: Option<&DistEnv>) -> Result<(MultipleChoiceModel, PreparedCache)> {
        let device = device(&self.data.device, env)?;
        let dir = hub::resolve_model(&self.model)?;
        let cache = PreparedCache::open(&cache_for(file, &self.cache_dir, &dir, self.data.max_length)?)?;
        let (model, _) = MultipleChoiceModel::from_dir(&dir, device)?;
        Ok((model, cache))
    }
}

/// Under medbert-run, every worker evaluates its share and the counts are summed exactly.
#[derive(Args, Debug)]
pub struct EvalCli {
    /// A raw MedMCQA file or a prepared cache.
    #[arg(long)]
    pub validation_file: PathBuf,
    #[command(flatten)]
    pub common: InferenceArgs,
    #[command(flatten)]
    pub group: GroupArgs,
}

pub fn run_eval(cli: EvalCli) -> Result<()> {
    let env = DistEnv::from_env()?;
    let pg = cli.group.join(env.as_ref(), device(&cli.common.data.device, env.as_ref())?)?;
    let local_rank = env.as_ref().map_or(0, |e| e.local_rank);
    let (model, cache) = in_turn(pg.as_ref(), local_rank, || cli.common.load(&cli.validation_file, env.as_ref()))?;
    let ddp = Ddp::from_group(pg);
    let precision = cli.common.precision.resolve(model.vs.device())?;
    let r = evaluate_sharded(&model, &cache, None, cli.common.per_device_eval_batch_size, precision, &ddp)?;
    if ddp.is_main() {
        println!(
            "{}",
            serde_json::json!({"questions": r.questions, "correct": r.correct, "accuracy": r.accuracy(),
                "loss": r.loss(), "per_subject": r.per_subject})
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PredictCli {
    /// A raw MedMCQA file (labels not needed) or a prepared cache.
    #[arg(long)]
    pub test_file: PathBuf,
    /// The CSV to write: id, predicted option (1-4), and the four probabilities.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub common: InferenceArgs,
}

pub fn run_predict(cli: PredictCli) -> Result<()> {
    let (model, cache) = cli.common.load(&cli.test_file, None)?;
    let device = model.vs.device();
    let precision = cli.common.precision.resolve(device)?;
    let mut csv = String::from("id,prediction,p_opa,p_opb,p_opc,p_opd,logit_opa,logit_opb,logit_opc,logit_opd\n");
    let all: Vec<usize> = (0..cache.len()).collect();
    for chunk in all.chunks(cli.common.per_device_eval_batch_size.max(1)) {
        let (batch, _) = collate(&cache, chunk)?;
        let logits = tch::no_grad(|| precision.autocast(|| model.forward(&batch, false)))?
            .to_kind(tch::Kind::Float)
            .to_device(tch::Device::Cpu);
        let probs: Vec<Vec<f32>> = Vec::try_from(&logits.softmax(-1, tch::Kind::Float))?;
        let logits: Vec<Vec<f32>> = Vec::try_from(&logits)?;
        for ((&q, p), l) in chunk.iter().zip(probs).zip(logits) {
            let best = (0..p.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap_or(0);
            let probs = p.iter().map(|v| format!(",{v:.6}"));
            let row: String = probs.chain(l.iter().map(|v| format!(",{v}"))).collect();
            csv.push_str(&format!("{},{}{row}\n", cache.id(q)?, best + 1));
        }
    }
    medbert::atomic::write_file(&cli.output, csv.as_bytes())?;
    println!("{} ({} questions)", cli.output.display(), cache.len());
    Ok(())
}
