//! `medbert train`, `eval` and `predict`: flags named like the HF Trainer's TrainingArguments
//! (`train`'s are declared once, in the library's `TrainArgs`).

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use medbert::batch::collate;
use medbert::dist::{in_turn, DistEnv, GroupArgs};
use medbert::model::{BertConfig, MultipleChoiceModel, CONFIG_FILE};
use medbert::prep::cache::PreparedCache;
use medbert::prep::{self, PrepOptions};
use medbert::train::{self, evaluate, DataArgs, Ddp, Precision, Problem, Resume, TrainArgs, TrainInputs};
use medbert::{hub, settings};
use std::path::{Path, PathBuf};

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

/// Refuses `problems` (none: nothing to do), naming each flag, its value and where that came
/// from: the command line, an environment variable, a `.env` file, or the default.
fn refuse(problems: &[Problem], given: &ArgMatches) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let command = TrainArgs::augment_args(clap::Command::new("train"));
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            let arg = command.get_arguments().find(|a| a.get_id() == p.arg);
            let flag = arg.and_then(|a| a.get_long()).map_or_else(|| p.arg.replace('_', "-"), str::to_string);
            let env = arg.and_then(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            let value = given
                .get_raw(p.arg)
                .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let source = match given.value_source(p.arg) {
                Some(ValueSource::CommandLine) => "on the command line".to_string(),
                Some(ValueSource::EnvVariable) => match settings::dotenv_source(&env) {
                    Some(file) => format!("from {env} in {}", file.display()),
                    None => format!("from the environment variable {env}"),
                },
                _ => "the default".to_string(),
            };
            format!("--{flag} {value} ({source}): {}", p.message)
        })
        .collect();
    anyhow::bail!("invalid arguments, nothing was done:\n  {}", lines.join("\n  "))
}

pub fn run_train(args: TrainArgs, given: &ArgMatches) -> Result<()> {
    refuse(&args.problems(), given)?;
    let env = DistEnv::from_env()?;
    let local_rank = env.as_ref().map_or(0, |e| e.local_rank);
    let device = args.data.device.resolve(local_rank)?;
    let model_dir = hub::resolve_model(&args.model)?;
    let positions = BertConfig::from_file(&model_dir.join(CONFIG_FILE))?.max_position_embeddings;
    if args.data.max_length as i64 > positions {
        let message = format!("must not exceed the model's {positions} positions (max_position_embeddings)");
        refuse(&[Problem { arg: "max_length", message }], given)?;
    }
    let pg = args.ddp.group.join(env.as_ref(), device)?;
    let cache_root = args.output_dir.join("prepared");
    let max_length = args.data.max_length;
    let (train_cache, eval_cache) = in_turn(pg.as_ref(), local_rank, || {
        let train = cache_for(&args.train_file, &cache_root, &model_dir, max_length)?;
        let eval =
            args.validation_file.as_deref().map(|p| cache_for(p, &cache_root, &model_dir, max_length)).transpose()?;
        anyhow::Ok((train, eval))
    })?;
    let inputs = TrainInputs {
        model_dir,
        train_cache,
        eval_cache,
        device,
        resume: Resume::from_flags(
            args.resume,
            args.resume_from_checkpoint.as_deref(),
            env.as_ref().is_some_and(DistEnv::restarted),
        ),
    };
    let is_main = pg.as_ref().is_none_or(|pg| pg.rank() == 0);
    let summary = train::train(&args, &inputs, pg)?;
    if is_main {
        print!("{}", summary.table());
        medbert::atomic::write_file(
            &args.output_dir.join(train::SUMMARY_FILE),
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
    /// Where prepared caches of raw files go: by default `prepared/` beside predict's
    /// --output, and for eval $XDG_CACHE_HOME/medbert/prepared (~/.cache/medbert/prepared).
    #[arg(long, env = "MEDBERT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Autocast for the forward pass: auto is bf16 on a CUDA device of compute capability
    /// 8.0+, fp16 on older ones, fp32 on CPU.
    #[arg(long, value_enum, default_value_t = Precision::Auto, env = "MEDBERT_PRECISION")]
    pub precision: Precision,
    #[command(flatten)]
    pub data: DataArgs,
}

impl InferenceArgs {
    /// The model on its device and the cache of `file` (prepared under --cache-dir, else
    /// under `default_cache`).
    fn load(
        &self,
        file: &Path,
        default_cache: PathBuf,
        env: Option<&DistEnv>,
    ) -> Result<(MultipleChoiceModel, PreparedCache)> {
        let device = self.data.device.resolve(env.map_or(0, |e| e.local_rank))?;
        let dir = hub::resolve_model(&self.model)?;
        let root = self.cache_dir.clone().unwrap_or(default_cache);
        let cache = PreparedCache::open(&cache_for(file, &root, &dir, self.data.max_length)?)?;
        let (model, report) = MultipleChoiceModel::from_dir(&dir, device)?;
        if env.is_none_or(|e| e.rank == 0) {
            report.log(&dir, false);
        }
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
    let local_rank = env.as_ref().map_or(0, |e| e.local_rank);
    let pg = cli.group.join(env.as_ref(), cli.common.data.device.resolve(local_rank)?)?;
    let (model, cache) = in_turn(pg.as_ref(), local_rank, || {
        cli.common.load(&cli.validation_file, settings::user_cache_dir(), env.as_ref())
    })?;
    cache.require_answers("evaluation")?;
    let ddp = Ddp::from_group(pg);
    let precision = cli.common.precision.resolve(model.vs.device())?;
    let r = evaluate(&model, &cache, None, cli.common.per_device_eval_batch_size, precision, &ddp)?;
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
    let beside = cli.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("prepared");
    let (model, cache) = cli.common.load(&cli.test_file, beside, None)?;
    let device = model.vs.device();
    let precision = cli.common.precision.resolve(device)?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    let header = ["id", "prediction", "p_opa", "p_opb", "p_opc", "p_opd"];
    csv.write_record(header.into_iter().chain(["logit_opa", "logit_opb", "logit_opc", "logit_opd"]))?;
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
            let mut row = vec![cache.id(q)?.to_string(), (best + 1).to_string()];
            row.extend(p.iter().map(|v| format!("{v:.6}")));
            row.extend(l.iter().map(|v| v.to_string()));
            csv.write_record(&row)?;
        }
    }
    let bytes = csv.into_inner().map_err(|e| anyhow::anyhow!("predictions CSV: {e}"))?;
    medbert::atomic::write_file(&cli.output, &bytes)?;
    println!("{} ({} questions)", cli.output.display(), cache.len());
    Ok(())
}
