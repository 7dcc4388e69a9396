//! Checks a file's records and turns them into clean, 0-based-labelled questions.

use super::{clean_text, RawFile, CHOICES, OPTION_FIELDS};
use crate::error::{Error, Loc, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A validated question: text cleaned, label 0-based (None in unlabelled test files).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub options: [String; CHOICES],
    pub label: Option<u8>,
    pub subject: Option<String>,
    pub exp: Option<String>,
}

/// What one file held, for the summary table and the manifest.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileCounts {
    pub questions: usize,
    pub labelled: usize,
    /// Questions with two or more identical option texts (kept).
    pub duplicate_options: usize,
    /// Rows with `choice_type == "multi"` (kept).
    pub multi: usize,
    pub blank_lines: usize,
    /// How often each option is the answer (opa..opd).
    pub answers: [usize; CHOICES],
}

/// Ids seen so far across every input file, to catch duplicates between files too.
#[derive(Default)]
pub struct IdRegistry {
    files: Vec<PathBuf>,
    seen: HashMap<String, (usize, Option<Loc>)>,
}

impl IdRegistry {
    fn check(&mut self, path: &Path, loc: Option<Loc>, id: &str) -> Result<()> {
        if self.files.last().map(PathBuf::as_path) != Some(path) {
            self.files.push(path.to_path_buf());
        }
        let here = self.files.len() - 1;
        if let Some((file, first)) = self.seen.get(id) {
            let at = first.map(|l| format!(":{l}")).unwrap_or_default();
            return Err(Error::data(
                path,
                loc,
                Some("id"),
                format!("duplicate id {id:?} (first at {}{at})", self.files[*file].display()),
            ));
        }
        self.seen.insert(id.to_string(), (here, loc));
        Ok(())
    }
}

/// The answer `cop` gives, if any: None when absent or null, or -1 in the hub's 0-based
/// convention (its loading script writes `cop - 1`, with 0 for the test split's missing
/// answers).
fn answer(cop: Option<i64>, base: i64) -> Option<i64> {
    cop.filter(|&c| !(base == 0 && c == -1))
}

/// The 0-based label of a row whose `cop` is as written under the `base` convention, in a file
/// that is `labelled` (else None); why not, in words.
fn label(cop: Option<i64>, base: i64, labelled: bool) -> std::result::Result<Option<u8>, String> {
    match (labelled, answer(cop, base)) {
        (false, _) => Ok(None),
        (true, None) => {
            let what = cop.map_or_else(|| "missing".to_string(), |c| format!("{c} (no answer)"));
            Err(format!(
                "{what}, but other rows have answers: a file is labelled throughout, or a test split whose every \
                 cop is unanswered"
            ))
        }
        (true, Some(cop)) if !(base..base + CHOICES as i64).contains(&cop) => Err(format!(
            "{cop} is outside {base}..={} (the {base}-based convention; see --cop-base)",
            base + CHOICES as i64 - 1
        )),
        (true, Some(cop)) => Ok(Some((cop - base) as u8)),
    }
}

/// Validates `raw` (read from `path`) under the `cop_base` convention (0 or 1). A file is
/// labelled throughout, or a test split whose every `cop` is unanswered; a mix is refused at
/// its first unanswered row.
pub fn validate(path: &Path, raw: RawFile, cop_base: u8, ids: &mut IdRegistry) -> Result<(Vec<Question>, FileCounts)> {
    if raw.records.is_empty() {
        return Err(Error::data(path, None, None, "no questions in the file"));
    }
    let base = i64::from(cop_base);
    let labelled = raw.records.iter().any(|r| answer(r.cop, base).is_some());
    let mut counts = FileCounts { blank_lines: raw.blank_lines, ..FileCounts::default() };
    let mut out = Vec::with_capacity(raw.records.len());
    for r in raw.records {
        let err = |field: &str, message: String| Error::data(path, r.loc, Some(field), message);
        let id = r.id.trim().to_string();
        if id.is_empty() {
            return Err(err("id", "empty".into()));
        }
        ids.check(path, r.loc, &id)?;
        let question = clean_text(&r.question);
        if question.is_empty() {
            return Err(err("question", "empty".into()));
        }
        let options = r.options.map(|o| clean_text(&o));
        if let Some(i) = options.iter().position(String::is_empty) {
            return Err(err(OPTION_FIELDS[i], "empty".into()));
        }
        let label = label(r.cop, base, labelled).map_err(|message| err("cop", message))?;
        counts.questions += 1;
        if let Some(l) = label {
            counts.labelled += 1;
            counts.answers[usize::from(l)] += 1;
        }
        if (0..CHOICES).any(|i| (i + 1..CHOICES).any(|j| options[i] == options[j])) {
            counts.duplicate_options += 1;
        }
        if r.choice_type.as_deref() == Some("multi") {
            counts.multi += 1;
        }
        out.push(Question {
            id,
            question,
            options,
            label,
            subject: r.subject_name.map(|s| clean_text(&s)).filter(|s| !s.is_empty()),
            exp: r.exp.map(|s| clean_text(&s)).filter(|s| !s.is_empty()),
        });
    }
    Ok((out, counts))
}
