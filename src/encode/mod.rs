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
/// tokenizer.json is used as it is; a bare vocab.txt becomes the tokenizer transformers'
/// `BertTokenizer` builds from it and the files beside it ([`VocabSettings`]).
pub fn load_tokenizer(model_dir: &Path, max_length: usize) -> Result<Tokenizer> {
    let path = tokenizer_source(model_dir)?;
    let err = |message: String| Error::TokenizerFile { path: path.clone(), message };
    let mut tokenizer = if path.ends_with(TOKENIZER_FILE) {
        Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?
    } else {
        let settings = VocabSettings::read(model_dir)?;
        if settings.do_lower_case.is_none() {
            warn_if_cased(model_dir, &path)?;
        }
        settings.tokenizer(&path)?
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
    Ok(Some(VocabSettings::read(model_dir)?.do_lower_case.unwrap_or(true)))
}

/// A hash of what decides the tokenizer: tokenizer.json, or vocab.txt with the files beside it
/// that `BertTokenizer` reads.
pub fn tokenizer_sha256(model_dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let source = tokenizer_source(model_dir)?;
    let mut files = vec![source.clone()];
    if !source.ends_with(TOKENIZER_FILE) {
        files.extend(crate::files::VOCAB_SETTINGS_FILES.iter().map(|f| model_dir.join(f)).filter(|p| p.is_file()));
    }
    let mut hasher = Sha256::new();
    for (k, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // A single file hashes as itself (caches made before the other files counted keep
        // their fingerprint); the others are framed by name and length.
        if k > 0 {
            hasher.update(format!("\n{} {}\n", path.file_name().unwrap_or_default().to_string_lossy(), bytes.len()));
        }
        hasher.update(&bytes);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// What transformers' `BertTokenizer` (5.x, the reference) reads beside a vocab.txt:
/// tokenizer_config.json's `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` and the
/// special tokens' names, special_tokens_map.json's names and additional special tokens
/// (the map wins), and added_tokens.json's tokens with their ids. `never_split`, which only
/// transformers 4's Python tokenizer read, is ignored as transformers 5 ignores it.
#[derive(Debug, Default)]
struct VocabSettings {
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
    /// unk, cls, sep, pad and mask, as named in the files.
    names: std::collections::HashMap<&'static str, String>,
    additional_special: Vec<String>,
    /// added_tokens.json, by id.
    added: Vec<(String, u32)>,
}

const SPECIAL_NAMES: [(&str, &str); 5] = [
    ("unk_token", "[UNK]"),
    ("cls_token", "[CLS]"),
    ("sep_token", "[SEP]"),
    ("pad_token", "[PAD]"),
    ("mask_token", "[MASK]"),
];

impl VocabSettings {
    fn read(model_dir: &Path) -> Result<VocabSettings> {
        let mut settings = VocabSettings::default();
        for file in [TOKENIZER_CONFIG_FILE, crate::files::SPECIAL_TOKENS_MAP_FILE] {
            let Some((path, json)) = read_json(&model_dir.join(file))? else { continue };
            let err = |key: &str, what: &str, found: &serde_json::Value| Error::TokenizerFile {
                path: path.clone(),
                message: format!("field `{key}`: expected {what}, found {found}"),
            };
            let flag = |key: &str| match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(err(key, "true, false or null", other)),
            };
            settings.do_lower_case = flag("do_lower_case")?.or(settings.do_lower_case);
            settings.strip_accents = flag("strip_accents")?.or(settings.strip_accents);
            settings.tokenize_chinese_chars = flag("tokenize_chinese_chars")?.or(settings.tokenize_chinese_chars);
            for (key, _) in SPECIAL_NAMES {
                if let Some(value) = json.get(key).filter(|v| !v.is_null()) {
                    let name = token_content(value).ok_or_else(|| err(key, "a token", value))?;
                    settings.names.insert(key, name);
                }
            }
            if let Some(list) = json.get("additional_special_tokens").filter(|v| !v.is_null()) {
                let tokens = list.as_array().ok_or_else(|| err("additional_special_tokens", "a list", list))?;
                settings.additional_special = tokens
                    .iter()
                    .map(|t| token_content(t).ok_or_else(|| err("additional_special_tokens", "tokens", t)))
                    .collect::<Result<_>>()?;
            }
        }
        if let Some((path, json)) = read_json(&model_dir.join(crate::files::ADDED_TOKENS_FILE))? {
            let map = json.as_object().ok_or_else(|| Error::TokenizerFile {
                path: path.clone(),
                message: format!("expected an object of tokens and their ids, found {json}"),
            })?;
            for (token, id) in map {
                let id = id.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| Error::TokenizerFile {
                    path: path.clone(),
                    message: format!("token {token:?}: expected an id, found {id}"),
                })?;
                settings.added.push((token.clone(), id));
            }
            settings.added.sort_by_key(|(_, id)| *id);
        }
        Ok(settings)
    }

    fn name(&self, key: &str) -> &str {
        let default = SPECIAL_NAMES.iter().find(|(k, _)| *k == key).map_or("", |(_, d)| d);
        self.names.get(key).map_or(default, String::as_str)
    }

    /// The WordPiece pipeline `BertTokenizer` builds: BERT's normalizer and pre-tokenizer,
    /// `[CLS] A [SEP] B [SEP]`, the special tokens kept whole wherever they appear in the text,
    /// then added_tokens.json's tokens (matched on the normalized text, each at its id) and
    /// the additional special tokens.
    fn tokenizer(&self, vocab: &Path) -> Result<Tokenizer> {
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        use tokenizers::{AddedToken, Model};
        let err = |message: String| Error::TokenizerFile { path: vocab.to_path_buf(), message };
        let model = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token(self.name("unk_token").into())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let id = |token: &str| model.token_to_id(token).ok_or_else(|| err(format!("{token} is not in the vocabulary")));
        let (cls, sep) = (self.name("cls_token").to_string(), self.name("sep_token").to_string());
        let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
        let mut tokenizer = Tokenizer::new(model);
        let lowercase = self.do_lower_case.unwrap_or(true);
        let chinese = self.tokenize_chinese_chars.unwrap_or(true);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, chinese, self.strip_accents, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
        let special: Vec<AddedToken> =
            SPECIAL_NAMES.iter().map(|(key, _)| AddedToken::from(self.name(key).to_string(), true)).collect();
        tokenizer.add_special_tokens(&special);
        let added_file = || vocab.with_file_name(crate::files::ADDED_TOKENS_FILE);
        for (token, expected) in &self.added {
            tokenizer.add_tokens(&[AddedToken::from(token.clone(), false)]);
            let given = tokenizer.token_to_id(token);
            if given != Some(*expected) {
                return Err(Error::TokenizerFile {
                    path: added_file(),
                    message: format!(
                        "token {token:?} has id {expected}, but after the vocabulary and the tokens before it it                          takes {}",
                        given.map_or("none".to_string(), |g| g.to_string())
                    ),
                });
            }
        }
        let additional: Vec<AddedToken> =
            self.additional_special.iter().map(|t| AddedToken::from(t.clone(), true)).collect();
        tokenizer.add_special_tokens(&additional);
        Ok(tokenizer)
    }
}

/// A special token as the files write it: a string, or `{"content": ...}`.
fn token_content(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A JSON file, None when it does not exist.
fn read_json(path: &Path) -> Result<Option<(PathBuf, serde_json::Value)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let json = serde_json::from_str(&text)
        .map_err(|e| Error::TokenizerFile { path: path.to_path_buf(), message: format!("invalid JSON: {e}") })?;
    Ok(Some((path.to_path_buf(), json)))
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
