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

pub use crate::files::{BPE_VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE};
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

/// The file a model directory's tokenizer comes from: tokenizer.json, else vocab.txt, else
/// vocab.json (an error where merges.txt is not beside it).
pub fn tokenizer_source(model_dir: &Path) -> Result<PathBuf> {
    let source =
        crate::files::first_file(model_dir, &crate::files::TOKENIZER_SOURCES).ok_or_else(|| Error::TokenizerFile {
            path: model_dir.to_path_buf(),
            message: format!("none of {} found", crate::files::TOKENIZER_SOURCES.join(", ")),
        })?;
    let merges = model_dir.join(MERGES_FILE);
    if Vocab::of(&source) == Some(Vocab::ByteLevelBpe) && !merges.is_file() {
        return Err(Error::TokenizerFile {
            path: merges,
            message: format!("not found: a byte-level BPE needs the merges beside its {BPE_VOCAB_FILE}"),
        });
    }
    Ok(source)
}

/// Loads a model directory's tokenizer, truncating longest-first at `max_length`.
/// tokenizer.json is used as it is; a bare vocab.txt becomes the tokenizer transformers'
/// `BertTokenizer` builds from it and the files beside it, a bare vocab.json and merges.txt
/// the one `RobertaTokenizer` builds ([`VocabSettings`]).
pub fn load_tokenizer(model_dir: &Path, max_length: usize) -> Result<Tokenizer> {
    let path = tokenizer_source(model_dir)?;
    let err = |message: String| Error::TokenizerFile { path: path.clone(), message };
    let mut tokenizer = match Vocab::of(&path) {
        None => Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?,
        Some(vocab) => {
            let settings = VocabSettings::read(model_dir, vocab)?;
            if vocab == Vocab::WordPiece && settings.do_lower_case.is_none() {
                warn_if_cased(model_dir, &path)?;
            }
            settings.tokenizer(&path)?
        }
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
/// key is absent. None when the directory has tokenizer.json (its normalizer decides) or a
/// byte-level BPE (which never lowercases).
pub fn lowercase(model_dir: &Path) -> Result<Option<bool>> {
    match Vocab::of(&tokenizer_source(model_dir)?) {
        Some(Vocab::WordPiece) => {
            Ok(Some(VocabSettings::read(model_dir, Vocab::WordPiece)?.do_lower_case.unwrap_or(true)))
        }
        _ => Ok(None),
    }
}

/// A hash of what decides the tokenizer: tokenizer.json, or vocab.txt (vocab.json and
/// merges.txt) with the files beside it that transformers reads.
pub fn tokenizer_sha256(model_dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let source = tokenizer_source(model_dir)?;
    let mut files = vec![source.clone()];
    if let Some(vocab) = Vocab::of(&source) {
        if vocab == Vocab::ByteLevelBpe {
            files.push(model_dir.join(MERGES_FILE));
        }
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

/// A vocabulary file without a tokenizer.json, by the tokenizer transformers builds from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vocab {
    /// vocab.txt: `BertTokenizer` (BERT's, ELECTRA's).
    WordPiece,
    /// vocab.json and merges.txt: `RobertaTokenizer`.
    ByteLevelBpe,
}

impl Vocab {
    /// None for tokenizer.json.
    fn of(source: &Path) -> Option<Vocab> {
        match source.file_name()?.to_str()? {
            VOCAB_FILE => Some(Vocab::WordPiece),
            BPE_VOCAB_FILE => Some(Vocab::ByteLevelBpe),
            _ => None,
        }
    }

    /// The special tokens the tokenizer class knows, by key, with its default names, in the
    /// order transformers adds them.
    fn special_names(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Vocab::WordPiece => &[
                ("unk_token", "[UNK]"),
                ("cls_token", "[CLS]"),
                ("sep_token", "[SEP]"),
                ("pad_token", "[PAD]"),
                ("mask_token", "[MASK]"),
            ],
            Vocab::ByteLevelBpe => &[
                ("bos_token", "<s>"),
                ("eos_token", "</s>"),
                ("unk_token", "<unk>"),
                ("sep_token", "</s>"),
                ("pad_token", "<pad>"),
                ("cls_token", "<s>"),
                ("mask_token", "<mask>"),
            ],
        }
    }
}

/// What transformers 5's tokenizers read beside a vocabulary, the reference:
/// - for vocab.txt, `BertTokenizer`: tokenizer_config.json's `do_lower_case`, `strip_accents`,
///   `tokenize_chinese_chars`; `never_split`, which only transformers 4's Python tokenizer
///   read, is ignored as transformers 5 ignores it;
/// - for vocab.json and merges.txt, `RobertaTokenizer`: `add_prefix_space` and `trim_offsets`;
/// - for both: the special tokens' names (tokenizer_config.json, then special_tokens_map.json,
///   which wins) and additional special tokens, and added_tokens.json's tokens with their ids.
#[derive(Debug)]
struct VocabSettings {
    vocab: Vocab,
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
    add_prefix_space: Option<bool>,
    trim_offsets: Option<bool>,
    /// The special tokens, as named in the files.
    names: std::collections::HashMap<&'static str, String>,
    additional_special: Vec<String>,
    /// added_tokens.json, by id.
    added: Vec<(String, u32)>,
}

impl VocabSettings {
    fn read(model_dir: &Path, vocab: Vocab) -> Result<VocabSettings> {
        let mut settings = VocabSettings {
            vocab,
            do_lower_case: None,
            strip_accents: None,
            tokenize_chinese_chars: None,
            add_prefix_space: None,
            trim_offsets: None,
            names: Default::default(),
            additional_special: Vec::new(),
            added: Vec::new(),
        };
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
            settings.add_prefix_space = flag("add_prefix_space")?.or(settings.add_prefix_space);
            settings.trim_offsets = flag("trim_offsets")?.or(settings.trim_offsets);
            for (key, _) in vocab.special_names() {
                if let Some(value) = json.get(*key).filter(|v| !v.is_null()) {
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
        let default = self.vocab.special_names().iter().find(|(k, _)| *k == key).map_or("", |(_, d)| d);
        self.names.get(key).map_or(default, String::as_str)
    }

    /// The tokenizer transformers builds from `vocab` and these settings, then the special
    /// tokens kept whole wherever they appear in the text, added_tokens.json's tokens (each at
    /// its id) and the additional special tokens.
    fn tokenizer(&self, vocab: &Path) -> Result<Tokenizer> {
        use tokenizers::AddedToken;
        let mut tokenizer = match self.vocab {
            Vocab::WordPiece => self.word_piece(vocab)?,
            Vocab::ByteLevelBpe => self.byte_level_bpe(vocab)?,
        };
        let special: Vec<AddedToken> = self
            .vocab
            .special_names()
            .iter()
            .map(|(key, _)| AddedToken::from(self.name(key).to_string(), true))
            .collect();
        tokenizer.add_special_tokens(&special);
        let added_file = || vocab.with_file_name(crate::files::ADDED_TOKENS_FILE);
        for (token, expected) in &self.added {
            tokenizer.add_tokens(&[AddedToken::from(token.clone(), false)]);
            let given = tokenizer.token_to_id(token);
            if given != Some(*expected) {
                return Err(Error::TokenizerFile {
                    path: added_file(),
                    message: format!(
                        "token {token:?} has id {expected}, but after the vocabulary and the tokens before it it \
                         takes {}",
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

    /// The id of a special token in the tokenizer's vocabulary, or an error naming the file.
    fn special_id(&self, model: &impl tokenizers::Model, key: &str, vocab: &Path) -> Result<(String, u32)> {
        let token = self.name(key).to_string();
        match model.token_to_id(&token) {
            Some(id) => Ok((token, id)),
            None => Err(Error::TokenizerFile {
                path: vocab.to_path_buf(),
                message: format!("{token} ({key}) is not in the vocabulary"),
            }),
        }
    }

    /// `BertTokenizer`'s WordPiece pipeline: BERT's normalizer and pre-tokenizer,
    /// `[CLS] A [SEP] B [SEP]`.
    fn word_piece(&self, vocab: &Path) -> Result<Tokenizer> {
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        let model = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token(self.name("unk_token").into())
            .build()
            .map_err(|e| Error::TokenizerFile { path: vocab.to_path_buf(), message: e.to_string() })?;
        let (cls, sep) = (self.special_id(&model, "cls_token", vocab)?, self.special_id(&model, "sep_token", vocab)?);
        let mut tokenizer = Tokenizer::new(model);
        let lowercase = self.do_lower_case.unwrap_or(true);
        let chinese = self.tokenize_chinese_chars.unwrap_or(true);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, chinese, self.strip_accents, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(sep, cls)));
        Ok(tokenizer)
    }

    /// `RobertaTokenizer`'s byte-level BPE: the merges of merges.txt beside `vocab`, no
    /// normalizer, GPT-2's byte-level pre-tokenizer, `<s> A </s></s> B </s>`.
    fn byte_level_bpe(&self, vocab: &Path) -> Result<Tokenizer> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::processors::roberta::RobertaProcessing;
        let merges = vocab.with_file_name(MERGES_FILE);
        let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy()).build().map_err(|e| {
            Error::TokenizerFile { path: vocab.to_path_buf(), message: format!("{e} (with {})", merges.display()) }
        })?;
        let (cls, sep) = (self.special_id(&model, "cls_token", vocab)?, self.special_id(&model, "sep_token", vocab)?);
        let (prefix_space, trim_offsets) = (self.add_prefix_space.unwrap_or(false), self.trim_offsets.unwrap_or(true));
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_pre_tokenizer(Some(ByteLevel::new(prefix_space, trim_offsets, true)))
            .with_decoder(Some(ByteLevel::default()))
            .with_post_processor(Some(
                RobertaProcessing::new(sep, cls).trim_offsets(trim_offsets).add_prefix_space(prefix_space),
            ));
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
