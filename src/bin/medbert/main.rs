//! The `medbert` command line: a thin layer over the library.

mod train;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use medbert::dist::{self, Backend, DistEnv};
use medbert::prep::{self, PrepArgs};
use medbert::{doctor, hub, settings};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "medbert", version, about = "Fine-tune BERT-family models (BERT, RoBERTa, ELECTRA) on MedMCQA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report libtorch, CUDA, c10d backends and the default model, then run a forward pass.
    Doctor {
        /// Hugging Face model directory of a BERT, RoBERTa or ELECTRA (config.json, weights, tokenizer) or hub id.
        #[arg(long, value_parser = settings::path, env = settings::MODEL_VAR)]
        model: Option<PathBuf>,
    },
    Prep(PrepArgs),
    /// Fine-tune on MedMCQA (flags as the HF Trainer's TrainingArguments).
    Train(Box<medbert::train::TrainArgs>),
    /// Loss and accuracy of a model or checkpoint on labelled questions.
    Eval(train::EvalCli),
    /// Write a CSV of predictions: id, option (1-4), and the four probabilities.
    Predict(train::PredictCli),
    /// Download MedMCQA's parquet files from the Hugging Face hub (HF_ENDPOINT, HF_HOME,
    /// HF_TOKEN apply), check their row counts and write <OUTPUT>/<split>.parquet.
    FetchData {
        /// Directory for train.parquet, validation.parquet, test.parquet.
        #[arg(long, default_value = "data/medmcqa")]
        output: PathBuf,
        /// Hub dataset id, optionally @revision.
        #[arg(long, default_value = medbert::fetch::DEFAULT_REPO)]
        repo: String,
        /// Splits to fetch (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',', default_values = ["train", "validation", "test"])]
        splits: Vec<medbert::fetch::Split>,
    },
    /// Check collectives across the worker group started by medbert-run (or torchrun):
    /// all-reduce, broadcast and barrier, verified on every rank.
    DistCheck {
        #[arg(long, value_enum, default_value = "gloo")]
        backend: Backend,
        /// Elements in the test tensor.
        #[arg(long, default_value_t = 1 << 20)]
        numel: i64,
        /// Rendezvous and collective timeout, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Write each rank's result tensors to DIR/rank<R>.safetensors.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
}

fn main() {
    // .env first, so that a RUST_LOG set there applies to the logger.
    let dotenv = settings::load_dotenv();
    tracing_subscriber::fmt()
        .with_env_filter(match DistEnv::from_env().ok().flatten().is_some_and(|env| !env.is_main()) {
            // Rank 0 alone logs progress; the other workers of a group report only problems.
            true => "warn".into(),
            false => tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        })
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = dotenv.map_err(anyhow::Error::from).and_then(|_| run()) {
        if let Some(preempted @ medbert::Error::Preempted { .. }) = err.downcast_ref() {
            eprintln!("medbert: {preempted}");
            std::process::exit(medbert::train::preempt::PREEMPTED);
        }
        eprintln!("medbert: error: {err:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let matches = settings::both_spellings(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Doctor { model } => {
            print!("{}", doctor::runtime_report());
            match model {
                Some(dir) => print!("{}", doctor::forward_report(&hub::resolve_model(&dir)?)?),
                None => println!(
                    "model:          none given: pass --model DIR or set {} for a forward pass \
                     (scripts/setup.sh writes it to .env)",
                    settings::MODEL_VAR
                ),
            }
            Ok(())
        }
        Command::Prep(args) => {
            let started = std::time::Instant::now();
            let opts = args.into_options()?;
            let report = prep::run(&opts)?;
            print!("{}", prep::summary_table(&report.manifest));
            let what = if report.cache_hit { "cache hit, nothing to do" } else { "written" };
            println!("{} ({what}, {:.1}s)", opts.output.display(), started.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Train(args) => {
            let given = matches.subcommand_matches("train").context("the train subcommand's arguments")?;
            train::run_train(*args, given)
        }
        Command::Eval(cli) => train::run_eval(cli),
        Command::Predict(cli) => train::run_predict(cli),
        Command::FetchData { output, repo, splits } => {
            for file in medbert::fetch::fetch(&repo, &splits, &output)? {
                println!("{}", file.display());
            }
            Ok(())
        }
        Command::DistCheck { backend, numel, timeout, dump } => {
            let check = dist::check_collectives(backend, numel, Duration::from_secs(timeout), dump.as_deref())?;
            println!("{check}");
            anyhow::ensure!(check.passed(), "collective results differ from the expected values");
            Ok(())
        }
    }
}
