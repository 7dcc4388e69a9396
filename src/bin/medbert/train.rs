//! `medbert train`, `eval` and `predict`: flags named like the HF Trainer's TrainingArguments,
//! each also settable through the environment or .env (MEDBERT_<FLAG>).

use anyhow::Result;
use clap::Args;
use medbert::batch::collate;
use medbert::model::MultipleChoiceModel;
use medbert::prep::cache::PreparedCache;
use medbert::prep::{self, PrepOptions};
use medbert::train::{self, evaluate, TrainArgs};
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
    #[arg(long, env = "MEDBERT_OUTPUT_DIR", default_value = "runs/medbert")]
    pub output_dir: PathBuf,
    #[arg(long, env = "MEDBERT_LEARNING_RATE", default_value_t = 5e-5)]
    pub learning_rate: f64,
    #[arg(long, env = "MEDBERT_PER_DEVICE_TRAIN_BATCH_SIZE", default_value_t = 16)]
    pub per_device_train_batch_size: usize,
    #[arg(long, env = "MEDBERT_PER_DEVICE_EVAL_BATCH_SIZE", default_value_t = 32)]
    pub per_device_eval_batch_size: usize,
    #[arg(long, env = "MEDBERT_GRADIENT_ACCUMULATION_STEPS", default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    #[arg(long, env = "MEDBERT_NUM_TRAIN_EPOCHS", default_value_t = 3.0)]
    pub num_train_epochs: f64,
    /// Stop after this many optimizer steps (overrides --num-train-epochs).
    #[arg(long, env = "MEDBERT_MAX_STEPS")]
    pub max_steps: Option<usize>,
    #[arg(long, env = "MEDBERT_WEIGHT_DECAY", default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, env = "MEDBERT_WARMUP_RATIO", default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Warm-up steps (overrides --warmup-ratio).
    #[arg(long, env = "MEDBERT_WARMUP_STEPS")]
    pub warmup_steps: Option<usize>,
    #[arg(long, env = "MEDBERT_MAX_GRAD_NORM", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, env = "MEDBERT_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Batch questions of similar length (less padding).
    #[arg(long, env = "MEDBERT_GROUP_BY_LENGTH")]
    pub group_by_length: bool,
    /// Stop after this many evaluations without a lower evaluation loss.
    #[arg(long, env = "MEDBERT_PATIENCE")]
    pub patience: Option<usize>,
    /// Evaluate every N optimizer steps (and at the end of each epoch).
    #[arg(long, env = "MEDBERT_EVAL_STEPS")]
    pub eval_steps: Option<usize>,
    #[arg(long, env = "MEDBERT_LOGGING_STEPS", default_value_t = 10)]
    pub logging_steps: usize,
    /// Save a resumable checkpoint-<step> (weights, optimizer moments, position) every N steps.
    #[arg(long, env = "MEDBERT_SAVE_STEPS")]
    pub save_steps: Option<usize>,
    /// Keep only the newest K checkpoint-<step> directories.
    #[arg(long, env = "MEDBERT_SAVE_TOTAL_LIMIT")]
    pub save_total_limit: Option<usize>,
    /// Continue from the newest checkpoint-<step> in --output-dir, at the exact next batch
    /// (same flags and data as the interrupted run).
    #[arg(long, env = "MEDBERT_RESUME")]
    pub resume: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Resolves `--device`.
pub fn device(spec: &str) -> Result<tch::Device> {
    let local_rank = std::env::var("LOCAL_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
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
    let device = device(&cli.data.device)?;
    cli.model = hub::resolve_model(&cli.model)?;
    let cache_root = cli.output_dir.join("prepared");
    let train_cache = cache_for(&cli.train_file, &cache_root, &cli.model, cli.data.max_length)?;
    let eval_cache = cli
        .validation_file
        .as_deref()
        .map(|p| cache_for(p, &cache_root, &cli.model, cli.data.max_length))
        .transpose()?;
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
        patience: cli.patience,
        eval_steps: cli.eval_steps,
        logging_steps: cli.logging_steps,
        device,
        progress: true,
        save_steps: cli.save_steps,
        save_total_limit: cli.save_total_limit,
        resume: cli.resume,
    };
    eprintln!("effective configuration:\n{}", serde_json::to_string_pretty(&args)?);
    let summary = train::train(&args)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// What `eval` and `predict` share: the model, batch size, where raw files are prepared.
#[derive(Args, Debug)]
pub struct InferenceArgs {
    /// A checkpoint, a model directory or a hub id.
    #[arg(long, env = settings::MODEL_VAR)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub per_device_eval_batch_size: usize,
    /// Where prepared caches of raw files go.
    #[arg(long, default_value = "runs/medbert/prepared")]
    pub cache_dir: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
}

impl InferenceArgs {
    /// The model on its device and the cache of `file`.
    fn load(&self, file: &Path) -> Result<(MultipleChoiceModel, PreparedCache)> {
        let device = device(&self.data.device)?;
        let dir = hub::resolve_model(&self.model)?;
        let cache = PreparedCache::open(&cache_for(file, &self.cache_dir, &dir, self.data.max_length)?)?;
        let (model, _) = MultipleChoiceModel::from_dir(&dir, device)?;
        Ok((model, cache))
    }
}

#[derive(Args, Debug)]
pub struct EvalCli {
    /// A raw MedMCQA file or a prepared cache.
    #[arg(long)]
    pub validation_file: PathBuf,
    #[command(flatten)]
    pub common: InferenceArgs,
}

pub fn run_eval(cli: EvalCli) -> Result<()> {
    let (model, cache) = cli.common.load(&cli.validation_file)?;
    let r = evaluate(&model, &cache, None, cli.common.per_device_eval_batch_size)?;
    println!("{}", serde_json::json!({"questions": r.questions, "accuracy": r.accuracy(), "loss": r.loss()}));
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
    let (model, cache) = cli.common.load(&cli.test_file)?;
    let device = model.vs.device();
    let mut csv = String::from("id,prediction,p_opa,p_opb,p_opc,p_opd\n");
    let all: Vec<usize> = (0..cache.len()).collect();
    for chunk in all.chunks(cli.common.per_device_eval_batch_size.max(1)) {
        let (batch, _) = collate(&cache, chunk, device)?;
        let probs =
            tch::no_grad(|| model.forward(&batch, false))?.softmax(-1, tch::Kind::Float).to_device(tch::Device::Cpu);
        let probs: Vec<Vec<f32>> = Vec::try_from(&probs)?;
        for (&q, p) in chunk.iter().zip(probs) {
            let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
            csv.push_str(&format!("{},{},{:.6},{:.6},{:.6},{:.6}\n", cache.id(q)?, best + 1, p[0], p[1], p[2], p[3]));
        }
    }
    medbert::atomic::write_file(&cli.output, csv.as_bytes())?;
    println!("{} ({} questions)", cli.output.display(), cache.len());
    Ok(())
}
