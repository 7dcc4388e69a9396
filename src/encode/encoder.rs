//! The encoder behind every model input: each piece of a question's text tokenized once.
//!
//! A question's four inputs share its text, so the question, each option (and the context)
//! are tokenized once and then joined by the tokenizer's own truncation and post-processor
//! (`post_process`): the result is what `encode` gives for the joined text, at a fraction of
//! the work. Joining `question` and `option` as one sequence is exact only when the
//! pre-tokenizer splits at the space between them (BERT's does); for any other tokenizer the
//! joined text is tokenized whole.

use super::Layout;
use crate::data::{Question, CHOICES};
use crate::error::{Error, Result};
use rayon::prelude::*;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{EncodeInput, Encoding, Tokenizer};

pub struct Encoder<'t> {
    /// Truncates at max_length and adds special tokens.
    full: &'t Tokenizer,
    /// The same tokenizer without truncation, for the pieces.
    pieces: Tokenizer,
    layout: Layout,
    /// Whether question and option may be tokenized apart and concatenated.
    split: bool,
    /// For the joined layout: the special tokens around one truncated sequence, read off
    /// the tokenizer and checked against it (None falls back to `post_process`).
    template: Option<Template>,
}

/// `prefix + content[..budget] + suffix`, with the template's type ids.
#[derive(Debug, PartialEq)]
struct Template {
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    prefix_types: Vec<u32>,
    suffix_types: Vec<u32>,
    content_type: u32,
    budget: usize,
}

impl Template {
    /// Reads the template off `full` for one sequence, then checks it reproduces `full` on
    /// probes, truncation included.
    fn probe(full: &Tokenizer, pieces: &Tokenizer) -> Option<Template> {
        let max_length = full.get_truncation()?.max_length;
        let whole = full.encode("medbert", true).ok()?;
        let part = pieces.encode("medbert", false).ok()?;
        let (w, p) = (whole.get_ids(), part.get_ids());
        let at = (0..=w.len().checked_sub(p.len())?).find(|&i| w[i..i + p.len()] == *p)?;
        let end = at + p.len();
        let types = whole.get_type_ids();
        let t = Template {
            prefix: w[..at].to_vec(),
            suffix: w[end..].to_vec(),
            prefix_types: types[..at].to_vec(),
            suffix_types: types[end..].to_vec(),
            content_type: *types.get(at)?,
            budget: max_length.checked_sub(w.len() - p.len())?,
        };
        let long = "the patient presents with fever and a rash ".repeat(max_length);
        for text in ["Vitamin C", "Which of the following is not true? None of the above", long.as_str()] {
            let (whole, part) = (full.encode(text, true).ok()?, pieces.encode(text, false).ok()?);
            let got = t.apply(part.get_ids());
            if got.ids.iter().map(|&i| i as u32).ne(whole.get_ids().iter().copied())
                || got.type_ids.iter().map(|&i| u32::from(i)).ne(whole.get_type_ids().iter().copied())
            {
                return None;
            }
        }
        Some(t)
    }

    fn apply(&self, content: &[u32]) -> Encoded {
        let kept = &content[..content.len().min(self.budget)];
        let ids = self.prefix.iter().chain(kept).chain(&self.suffix).map(|&t| t as i32).collect();
        let type_ids = self
            .prefix_types
            .iter()
            .copied()
            .chain(std::iter::repeat_n(self.content_type, kept.len()))
            .chain(self.suffix_types.iter().copied())
            .map(|t| t as u8)
            .collect();
        Encoded { ids, type_ids, truncated: content.len() > self.budget }
    }
}

impl<'t> Encoder<'t> {
    pub fn new(full: &'t Tokenizer, layout: Layout) -> Result<Self> {
        let mut pieces = full.clone();
        pieces.with_truncation(None).map_err(|e| Error::Encoding(e.to_string()))?;
        let split = matches!(full.get_pre_tokenizer(), Some(PreTokenizerWrapper::BertPreTokenizer(_)));
        let template = (split && layout == Layout::Joined).then(|| Template::probe(full, &pieces)).flatten();
        Ok(Encoder { full, pieces, layout, split, template })
    }

    /// Texts to tokenize for one question, in the order `assemble` reads them.
    fn texts<'q>(&self, q: &'q Question) -> Vec<EncodeInput<'q>> {
        let exp = || q.exp.as_deref().unwrap_or("").into();
        if self.split || self.layout == Layout::Pair {
            let mut texts: Vec<EncodeInput> = vec![q.question.as_str().into()];
            texts.extend(q.options.iter().map(|o| o.as_str().into()));
            if self.layout == Layout::ContextExp {
                texts.push(exp());
            }
            texts
        } else {
            let mut texts: Vec<EncodeInput> = q.options.iter().map(|o| format!("{} {o}", q.question).into()).collect();
            if self.layout == Layout::ContextExp {
                texts.push(exp());
            }
            texts
        }
    }

    /// The model input for option `c` from the question's tokenized texts.
    fn assemble(&self, t: &[Encoding], c: usize) -> tokenizers::Result<Encoding> {
        let joined = || {
            if self.split {
                let mut e = t[0].clone();
                e.merge_with(t[1 + c].clone(), true);
                e
            } else {
                t[c].clone()
            }
        };
        match self.layout {
            Layout::Joined => self.full.post_process(joined(), None, true),
            Layout::Pair => self.full.post_process(t[0].clone(), Some(t[1 + c].clone()), true),
            Layout::ContextExp => {
                let context = t.last().cloned().unwrap_or_default();
                self.full.post_process(context, Some(joined()), true)
            }
        }
    }

    /// The four encoded inputs of each question, question by question.
    pub fn encode(&self, questions: &[Question]) -> Result<Vec<Encoded>> {
        if questions.is_empty() {
            return Ok(Vec::new());
        }
        match &self.template {
            Some(t) => self.encode_joined(questions, t),
            None => self.encode_pieces(questions),
        }
    }

    /// The joined layout in one tokenizer call per question: `question opa opb opc opd` is
    /// tokenized once and cut at the pieces' byte ranges (tokens never cross the spaces).
    fn encode_joined(&self, questions: &[Question], t: &Template) -> Result<Vec<Encoded>> {
        let mut texts = Vec::with_capacity(questions.len());
        let mut bounds = Vec::with_capacity(questions.len());
        for q in questions {
            let mut text = q.question.clone();
            let mut ends = [0usize; CHOICES + 1];
            ends[0] = text.len();
            for (c, o) in q.options.iter().enumerate() {
                text.push(' ');
                text.push_str(o);
                ends[c + 1] = text.len();
            }
            texts.push(text);
            bounds.push(ends);
        }
        let tokenized = self.pieces.encode_batch(texts, false).map_err(|e| Error::Encoding(e.to_string()))?;
        let per_question: Vec<Vec<Encoded>> = tokenized
            .into_par_iter()
            .zip(bounds)
            .map(|(enc, ends)| {
                let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
                let mut cuts = [0usize; CHOICES + 2];
                let mut piece = 0;
                for (i, (start, _)) in offsets.iter().enumerate() {
                    while piece <= CHOICES && *start >= ends[piece] {
                        piece += 1;
                        cuts[piece] = i;
                    }
                }
                cuts[piece + 1..].fill(ids.len());
                let question = &ids[..cuts[1]];
                (0..CHOICES)
                    .map(|c| {
                        let content: Vec<u32> =
                            question.iter().chain(&ids[cuts[c + 1]..cuts[c + 2]]).copied().collect();
                        t.apply(&content)
                    })
                    .collect()
            })
            .collect();
        Ok(per_question.into_iter().flatten().collect())
    }

    /// Any layout: each piece tokenized alone, joined by the tokenizer's `post_process`.
    fn encode_pieces(&self, questions: &[Question]) -> Result<Vec<Encoded>> {
        let per_question = self.texts(&questions[0]).len();
        let texts: Vec<EncodeInput> = questions.iter().flat_map(|q| self.texts(q)).collect();
        let tokenized = self.pieces.encode_batch_fast(texts, false).map_err(|e| Error::Encoding(e.to_string()))?;
        let assembled: tokenizers::Result<Vec<Vec<Encoded>>> = tokenized
            .into_par_iter()
            .chunks(per_question)
            .map(|t| (0..CHOICES).map(|c| self.assemble(&t, c).map(Encoded::from)).collect())
            .collect();
        Ok(assembled.map_err(|e| Error::Encoding(e.to_string()))?.into_iter().flatten().collect())
    }
}

/// What the cache keeps of one encoded input.
pub struct Encoded {
    pub ids: Vec<i32>,
    pub type_ids: Vec<u8>,
    pub truncated: bool,
}

impl From<Encoding> for Encoded {
    fn from(e: Encoding) -> Self {
        Encoded {
            ids: e.get_ids().iter().map(|&t| t as i32).collect(),
            type_ids: e.get_type_ids().iter().map(|&t| t as u8).collect(),
            truncated: !e.get_overflowing().is_empty(),
        }
    }
}
