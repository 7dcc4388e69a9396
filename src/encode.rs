//! Turning one question and its options into model input with an HF tokenizer, in the
//! MedMCQA paper's format: each option becomes `[CLS] question option [SEP]`.

use crate::error::{Error, Result};
use crate::model::ChoiceBatch;
use std::path::Path;
use tch::Tensor;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Loads `tokenizer.json` from a model directory, truncating longest-first at `max_length`.
pub fn load_tokenizer(model_dir: &Path, max_length: usize) -> Result<Tokenizer> {
    let path = model_dir.join(TOKENIZER_FILE);
    let err = |message: String| Error::Tokenizer {
        path: path.clone(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
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

/// Encodes questions (each with its options) into one batch padded to its longest sequence.
pub fn encode_questions(
    tokenizer: &Tokenizer,
    questions: &[(&str, &[&str])],
) -> Result<ChoiceBatch> {
    let choices = questions.first().map_or(0, |(_, opts)| opts.len());
    let mut rows = Vec::new();
    for (question, options) in questions {
        if options.len() != choices {
            return Err(Error::Input(format!(
                "every question needs {choices} options, one has {}",
                options.len()
            )));
        }
        for option in *options {
            let enc = tokenizer
                .encode(format!("{question} {option}"), true)
                .map_err(|e| Error::Input(format!("tokenizer: {e}")))?;
            rows.push((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()));
        }
    }
    let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let (mut ids, mut mask, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for (row_ids, row_types) in &rows {
        let pad = seq - row_ids.len();
        ids.extend(
            row_ids
                .iter()
                .map(|&x| i64::from(x))
                .chain(std::iter::repeat(0).take(pad)),
        );
        mask.extend(
            std::iter::repeat(1i64)
                .take(row_ids.len())
                .chain(std::iter::repeat(0).take(pad)),
        );
        types.extend(
            row_types
                .iter()
                .map(|&x| i64::from(x))
                .chain(std::iter::repeat(0).take(pad)),
        );
    }
    let shape = [questions.len() as i64, choices as i64, seq as i64];
    Ok(ChoiceBatch {
        input_ids: Tensor::from_slice(&ids).view(shape),
        attention_mask: Tensor::from_slice(&mask).view(shape),
        token_type_ids: Tensor::from_slice(&types).view(shape),
    })
}
