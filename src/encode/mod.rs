//! Questions to model input, in one place for `prep`, `doctor` and the tests: the model's
//! tokenizer, the layouts of a question's inputs, the settings a cache records, and the
//! encoder (`encoder.rs`).

mod encoder;

pub use encoder::{Encoded, Encoder};

use crate::data::{Question, CHOICES};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

pub use crate::files::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE};
/// The shortest `--max-length`: room for [CLS], [SEP] and a few tokens of each text.
pub const MIN_MAX_LENGTH: usize = 8;
/// `--max-length` when not given: MedMCQA's questions with an option fit in it nearly always.
pub const DEFAULT_MAX_LENGTH: usize = 128;

/// How a question's model inputs are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[CLS] question option [SEP]` (the MedMCQA paper's).
    Joined,
    /// `[CLS] question [SEP] option [SEP]`.
    Pair,
    /// `[CLS] exp [SEP] question option [SEP]`.
    ContextExp,
}

/// How a cache was encoded; part of its fingerprint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncodeSettings {
    pub tokenizer: PathBuf,
    pub tokenizer_sha256: String,
    pub max_length: usize,
    /// `[CLS] question [SEP] option [SEP]` instead of `[CLS] question option [SEP]`.
    pub pair: bool,
    /// `exp` as the first segment: `[CLS] exp [SEP] question option [SEP]`.
    pub context_exp: bool,
    /// Text lemmatised with WordNet before encoding.
    #[serde(default)]
    pub lemmatize: bool,
    /// Whether a bare vocab.txt lowercases (tokenizer_config.json's `do_lower_case`, true
    /// by default); None for tokenizer.json, whose normalizer says it.
    #[serde(default)]
    pub lowercase: Option<bool>,
}

impl EncodeSettings {
    pub fn layout(&self) -> Layout {
        match (self.pair, self.context_exp) {
            (true, _) => Layout::Pair,
            (false, true) => Layout::ContextExp,
            (false, false) => Layout::Joined,
        }
    }
}

/// The file a model directory's tokenizer comes from: tokenizer.json, else vocab.txt.
pub fn tokenizer_source(model_dir: &Path) -> Result<PathBuf> {
    crate::files::first_file(model_dir, &[TOKENIZER_FILE, VOCAB_FILE]).ok_or_else(|| Error::TokenizerFile {
        path: model_dir.to_path_buf(),
        message: format!("neither {TOKENIZER_FILE} nor {VOCAB_FILE} found"),
    })
}

/// Loads a model directory's tokenizer, truncating longest-first at `max_length`.
/// tokenizer.json is used as it is; a bare vocab.txt becomes the standard BERT WordPiece
/// pipeline, lower-casing unless tokenizer_config.json says `"do_lower_case": false`
/// ([`lowercase`]).
pub fn load_tokenizer(model_dir: &Path, max_length: usize) -> Result<Tokenizer> {
    let path = tokenizer_source(model_dir)?;
    let err = |message: String| Error::TokenizerFile { path: path.clone(), message };
    let mut tokenizer = if path.ends_with(TOKENIZER_FILE) {
        Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?
    } else {
        let set = do_lower_case(model_dir)?;
        if set.is_none() {
            warn_if_cased(model_dir, &path)?;
        }
        wordpiece_tokenizer(&path, set.unwrap_or(true)).map_err(err)?
    };
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        }))
        .map_err(|e| err(e.to_string()))?;
    Ok(tokenizer)
}

/// Whether the model directory's bare vocab.txt lowercases text, as transformers'
/// `BertTokenizer` decides: tokenizer_config.json's `do_lower_case`, true when the file or the
/// key is absent. None when the directory has tokenizer.json (its normalizer decides).
pub fn lowercase(model_dir: &Path) -> Result<Option<bool>> {
    if tokenizer_source(model_dir)?.ends_with(TOKENIZER_FILE) {
        return Ok(None);
    }
    Ok(Some(do_lower_case(model_dir)?.unwrap_or(true)))
}

/// tokenizer_config.json's `do_lower_case`, None when the file or the key is absent.
fn do_lower_case(model_dir: &Path) -> Result<Option<bool>> {
    let path = model_dir.join(TOKENIZER_CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let err = |message: String| Error::TokenizerFile { path: path.clone(), message };
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    match config.get("do_lower_case") {
        None => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(err(format!("field `do_lower_case`: expected true or false, found {other}"))),
    }
}

/// Warns that a cased vocabulary is being lowercased, for a directory whose tokenizer config
/// does not say (BioBERT's hub layout has none), naming the line that keeps case.
fn warn_if_cased(model_dir: &Path, vocab: &Path) -> Result<()> {
    let text = std::fs::read_to_string(vocab).map_err(|e| Error::io(vocab, e))?;
    let tokens = text.lines().count();
    let cased = text.lines().filter(|t| !t.starts_with('[') && t.chars().any(char::is_uppercase)).count();
    if cased * 100 > tokens {
        tracing::warn!(
            "{}: a cased vocabulary ({cased} of {tokens} tokens have capitals) is lowercased, as transformers does \
             when no {TOKENIZER_CONFIG_FILE} says otherwise; if the model was trained on cased text, put \
             {{\"do_lower_case\": false}} in {}",
            vocab.display(),
            model_dir.join(TOKENIZER_CONFIG_FILE).display()
        );
    }
    Ok(())
}

fn wordpiece_tokenizer(vocab: &Path, lowercase: bool) -> std::result::Result<Tokenizer, String> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    use tokenizers::Model;
    let model =
        WordPiece::from_file(&vocab.to_string_lossy()).unk_token("[UNK]".into()).build().map_err(|e| e.to_string())?;
    let id = |token: &str| model.token_to_id(token).ok_or_else(|| format!("{token} is not in the vocabulary"));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    Ok(tokenizer)
}

/// Unpadded token arrays: sequence `s` is `input_ids[offsets[s]..offsets[s + 1]]`, and
/// sequence `CHOICES * q + c` is option `c` of question `q`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequences {
    pub input_ids: Vec<i32>,
    pub token_type_ids: Vec<u8>,
    pub offsets: Vec<i64>,
}

impl Sequences {
    /// Appends one sequence (to an empty value or one whose offsets start with 0).
    pub fn push(&mut self, e: &Encoded) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.input_ids.extend_from_slice(&e.ids);
        self.token_type_ids.extend_from_slice(&e.type_ids);
        self.offsets.push(self.input_ids.len() as i64);
    }
}

/// Encodes questions, each with its four options, in the joined layout (as `prep` does by
/// default), ready for `batch::pad`.
pub fn encode_questions(tokenizer: &Tokenizer, questions: &[(&str, &[&str])]) -> Result<Sequences> {
    let questions = questions
        .iter()
        .map(|&(question, options)| {
            let options: [String; CHOICES] =
                options.iter().map(|o| o.to_string()).collect::<Vec<_>>().try_into().map_err(|o: Vec<String>| {
                    Error::Input(format!("every question needs {CHOICES} options, one has {}", o.len()))
                })?;
            Ok(Question { question: question.to_string(), options, ..Question::default() })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = Sequences::default();
    for e in Encoder::new(tokenizer, Layout::Joined)?.encode(&questions)? {
        out.push(&e);
    }
    Ok(out)
}
