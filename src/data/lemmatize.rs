//! Optional WordNet lemmatisation (morphy), off by default: BERT's word pieces already share
//! stems, and replacing words by lemmas usually costs accuracy. Each alphabetic word becomes
//! its first WordNet lemma, trying noun, verb, adjective, adverb in that order (NLTK's
//! default noun-first behaviour); words WordNet does not know stay as they are.

use crate::error::{Error, Result};
use std::path::Path;
use wordnet_db::{LoadMode, WordNet};
use wordnet_morphy::Morphy;
use wordnet_types::Pos;

/// Debian's wordnet-base puts the WordNet 3.0 dictionary here.
pub const DEFAULT_WORDNET_DIR: &str = "/usr/share/wordnet";

pub struct Lemmatizer {
    wordnet: WordNet,
    morphy: Morphy,
}

impl Lemmatizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let err = |e: anyhow::Error| {
            Error::Input(format!(
                "{}: cannot load WordNet ({e:#}); install Debian's wordnet-base or pass --wordnet-dir",
                dir.display()
            ))
        };
        let wordnet = WordNet::load_with_mode(dir, LoadMode::Mmap).map_err(err)?;
        let morphy = Morphy::load(dir).map_err(err)?;
        Ok(Lemmatizer { wordnet, morphy })
    }

    fn lemma(&self, word: &str) -> Option<String> {
        let exists = |pos, lemma: &str| self.wordnet.lemma_exists(pos, lemma);
        [Pos::Noun, Pos::Verb, Pos::Adj, Pos::Adv]
            .into_iter()
            .find_map(|pos| self.morphy.lemmas_for(pos, word, exists).into_iter().next())
            .map(|c| c.lemma.into_owned())
    }

    /// `text` with every alphabetic word replaced by its lemma; everything else kept.
    pub fn lemmatize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            if !word.is_empty() {
                match self.lemma(word) {
                    Some(lemma) if lemma != word.to_lowercase() => out.push_str(&lemma),
                    _ => out.push_str(word),
                }
                word.clear();
            }
        };
        for c in text.chars() {
            if c.is_alphabetic() {
                word.push(c);
            } else {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
        flush(&mut word, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordnet_lemmas_noun_first() {
        let dir = Path::new(DEFAULT_WORDNET_DIR);
        let l = Lemmatizer::load(dir).expect("WordNet from Debian's wordnet-base (scripts/setup.sh installs it)");
        assert_eq!(l.lemmatize("Kidneys were enlarged, with lesions."), "kidney be enlarge, with lesion.");
        assert_eq!(l.lemmatize("running 5 mg/kg of xyzzy"), "running 5 mg/kg of xyzzy");
    }

    #[test]
    fn a_missing_dictionary_is_a_clear_error() {
        let err = Lemmatizer::load(Path::new("/nonexistent/wordnet")).err().expect("load fails").to_string();
        assert!(err.contains("/nonexistent/wordnet") && err.contains("wordnet-base"), "{err}");
    }
}
