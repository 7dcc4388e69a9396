//! MedMCQA files: reading the three formats (JSON Lines, parquet, CSV), validating them and
//! cleaning their text. Every error names the file, the line or row, and the field.

mod clean;
mod lemmatize;
mod read;
mod validate;

pub use clean::clean_text;
pub use lemmatize::{Lemmatizer, DEFAULT_WORDNET_DIR};
pub use read::{read_file, Format};
pub use validate::{validate, FileCounts, IdRegistry, Question};

use crate::error::Loc;

/// Options per question: every question has exactly this many (MedMCQA's four).
pub const CHOICES: usize = 4;

/// Options per question, in the order opa, opb, opc, opd.
pub const OPTION_FIELDS: [&str; CHOICES] = ["opa", "opb", "opc", "opd"];

/// One question as read from a file, before validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub loc: Option<Loc>,
    pub id: String,
    pub question: String,
    pub options: [String; CHOICES],
    /// The correct option as written in the file (its base depends on the convention).
    pub cop: Option<i64>,
    pub choice_type: Option<String>,
    pub exp: Option<String>,
    pub subject_name: Option<String>,
    pub topic_name: Option<String>,
}

/// A file's records and what the reader noticed on the way.
#[derive(Debug, Default)]
pub struct RawFile {
    pub records: Vec<Record>,
    /// JSONL lines holding only whitespace (no record, nothing lost).
    pub blank_lines: usize,
}
