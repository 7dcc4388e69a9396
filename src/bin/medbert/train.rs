//! `medbert train`, `eval` and `predict`: parse, call the library, print. Flags are named like
//! the HF Trainer's TrainingArguments (`train`'s are declared once, in the library's
//! `TrainArgs`; `eval`'s and `predict`'s in `infer::InferenceArgs`).

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use medbert::dist::GroupArgs;
use medbert::infer::{self, InferenceArgs};
use medbert::model::{BertConfig, CONFIG_FILE};
use medbert::train::{self, Problem, TrainArgs};
use medbert::{hub, settings};
use std::path::PathBuf;

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
    let model_dir = hub::resolve_model(&args.model)?;
    let positions = BertConfig::from_file(&model_dir.join(CONFIG_FILE))?.max_position_embeddings;
    if args.data.max_length as i64 > positions {
        let message = format!("must not exceed the model's {positions} positions (max_position_embeddings)");
        refuse(&[Problem { arg: "max_length", message }], given)?;
    }
    if let Some(summary) = train::run(&args, model_dir)? {
        print!("{}", summary.table());
    }
    Ok(())
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
    if let Some(r) = infer::evaluate_file(&cli.common, &cli.validation_file, &cli.group)? {
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
    let questions = infer::predict(&cli.common, &cli.test_file, &cli.output)?;
    println!("{} ({questions} questions)", cli.output.display());
    Ok(())
}
