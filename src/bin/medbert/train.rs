//! `medbert train`, `eval` and `predict`: parse, call the library, print. Flags are named like
//! the HF Trainer's TrainingArguments (`train`'s are declared once, in the library's
//! `TrainArgs`; `eval`'s and `predict`'s in `infer::InferenceArgs`).

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use medbert::dist::GroupArgs;
use medbert::error::Problem;
use medbert::infer::{self, InferenceArgs};
use medbert::train::{self, TrainArgs};
use medbert::{settings, Error};
use std::path::PathBuf;

/// The library's refusal of `problems` in the words of this command line: each flag, its value
/// and where that came from (the command line, an environment variable, a `.env` file, or the
/// default).
fn refusal(problems: &[Problem], given: &ArgMatches) -> anyhow::Error {
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
    anyhow::anyhow!("invalid arguments, nothing was done:\n  {}", lines.join("\n  "))
}

pub fn run_train(args: TrainArgs, given: &ArgMatches) -> Result<()> {
    match train::run(&args) {
        Ok(Some(summary)) => print!("{}", summary.table()),
        Ok(None) => {}
        Err(Error::Arguments { problems }) => return Err(refusal(&problems, given)),
        Err(e) => return Err(e.into()),
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
