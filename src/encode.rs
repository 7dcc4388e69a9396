//! Turning one question and its options into model input with an HF tokenizer, in the
//! MedMCQA paper's format: each option becomes `[CLS] question option [SEP]`.

use crate::batch::{pad, Tokens};
use crate::error::{Error, Result};
use crate::model::ChoiceBatch;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const VOCAB_FILE: &str = "vocab.txt";

/// The file a model directory's tokenizer comes from: tokenizer.json, else vocab.txt.
pub fn tokenizer_source(model_dir: &Path) -> Result<PathBuf> {
    crate::model::first_file(model_dir, &[TOKENIZER_FILE, VOCAB_FILE]).ok_or_else(|| Error::Tokenizer {
        path: model_dir.to_path_buf(),
        message: format!("neither {TOKENIZER_FILE} nor {VOCAB_FILE} found"),
    })
}

/// Loads a model directory's tokenizer, truncating longest-first at `max_length`.
/// tokenizer.json is used as it is; a bare vocab.txt becomes the standard BERT WordPiece
/// pipeline, lower-casing unless tokenizer_config.json says `"do_lower_case": false`.
pub fn load_tokenizer(model_dir: &Path, max_length: usize) -> Result<Tokenizer> {
    let path = tokenizer_source(model_dir)?;
    let err = |message: String| Error::Tokenizer { path: path.clone(), message };
    let mut tokenizer = if path.ends_with(TOKENIZER_FILE) {
        Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?
    } else {
        wordpiece_tokenizer(&path, lower_case(model_dir)).map_err(err)?
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

fn lower_case(model_dir: &Path) -> bool {
    std::fs::read_to_string(model_dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("do_lower_case").and_then(serde_json::Value::as_bool))
        .unwrap_or(true)
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

/// Encodes questions (each with its options) into one batch padded to its longest sequence.
pub fn encode_questions(tokenizer: &Tokenizer, questions: &[(&str, &[&str])]) -> Result<ChoiceBatch> {
    let choices = questions.first().map_or(0, |(_, opts)| opts.len());
    let (mut input_ids, mut token_type_ids, mut offsets) = (Vec::new(), Vec::new(), vec![0i64]);
    for (question, options) in questions {
        if options.len() != choices {
            return Err(Error::Input(format!("every question needs {choices} options, one has {}", options.len())));
        }
        for option in *options {
            let enc = tokenizer
                .encode(format!("{question} {option}"), true)
                .map_err(|e| Error::Input(format!("tokenizer: {e}")))?;
            input_ids.extend(enc.get_ids().iter().map(|&t| t as i32));
            token_type_ids.extend(enc.get_type_ids().iter().map(|&t| t as u8));
            offsets.push(input_ids.len() as i64);
        }
    }
    let tokens = Tokens { input_ids: &input_ids, token_type_ids: &token_type_ids, offsets: &offsets };
    let all: Vec<usize> = (0..questions.len()).collect();
    Ok(pad(&tokens, &all, choices, 0))
}
