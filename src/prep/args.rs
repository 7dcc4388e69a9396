//! `medbert prep`'s flags, declared once and turned into [`PrepOptions`].

use super::PrepOptions;
use crate::data::Format;
use crate::error::Result;
use crate::settings;
use std::path::PathBuf;

/// Validate MedMCQA files and encode them into a cache that training memory-maps.
///
/// Reads the official JSON Lines release (cop 1-based), the hub's parquet files (cop
/// 0-based) and CSV (cop 1-based). Same inputs, tokenizer and options again: a cache hit
/// that does no work.
#[derive(Clone, Debug, clap::Args)]
pub struct PrepArgs {
    /// A MedMCQA file (.json/.jsonl, .parquet, .csv); repeat for several.
    #[arg(long = "input", required = true)]
    pub inputs: Vec<PathBuf>,
    /// The cache directory to create (replaced atomically when the inputs changed).
    #[arg(long)]
    pub output: PathBuf,
    /// Model directory or hub id whose tokenizer encodes the text (tokenizer.json or vocab.txt).
    #[arg(long, value_parser = crate::settings::path, env = settings::MODEL_VAR)]
    pub model: PathBuf,
    /// Layout of every input; default: from each file's extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Convention of `cop` for every input (0: 0..3, 1: 1..4); default: by format.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub cop_base: Option<u8>,
    /// Longest sequence in tokens; longer ones are truncated longest-first.
    #[arg(long, default_value_t = crate::encode::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Encode `[CLS] question [SEP] option [SEP]` instead of `[CLS] question option [SEP]`.
    #[arg(long)]
    pub pair: bool,
    /// Use a field as context: `[CLS] exp [SEP] question option [SEP]`. Warning: `exp`
    /// often states the answer.
    #[arg(long, value_enum)]
    pub context: Option<ContextField>,
    /// Replace words by their WordNet lemmas (off by default; usually harmful to BERT).
    #[arg(long)]
    pub lemmatize: bool,
    /// WordNet dictionary for --lemmatize (Debian's wordnet-base).
    #[arg(long, value_parser = crate::settings::path, env = "MEDBERT_WORDNET_DIR", default_value = crate::data::DEFAULT_WORDNET_DIR)]
    pub wordnet_dir: PathBuf,
}

/// A field of the question used as context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ContextField {
    Exp,
}

impl PrepArgs {
    /// The options these flags ask for, `--model` resolved to a local directory (a hub id
    /// downloaded); with a progress bar.
    pub fn into_options(self) -> Result<PrepOptions> {
        Ok(PrepOptions {
            model_dir: crate::hub::resolve_model(&self.model)?,
            inputs: self.inputs,
            output: self.output,
            format: self.format,
            cop_base: self.cop_base,
            max_length: self.max_length,
            pair: self.pair,
            context_exp: self.context == Some(ContextField::Exp),
            lemmatize: self.lemmatize.then_some(self.wordnet_dir),
            progress: true,
        })
    }
}

/// What every command that runs the model on MedMCQA files shares: the device, and the longest
/// sequence raw files are prepared to.
#[derive(Clone, Debug, serde::Serialize, clap::Args)]
pub struct DataArgs {
    /// Longest sequence in tokens when raw files are prepared.
    #[arg(long, env = "MEDBERT_MAX_LENGTH", default_value_t = crate::encode::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N.
    #[arg(long, env = "MEDBERT_DEVICE", default_value = "auto")]
    pub device: crate::device::DeviceSpec,
}
