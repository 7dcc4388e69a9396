//! `medbert prep`: MedMCQA files to an encoded cache that every rank memory-maps.
//!
//! Decide first (the fingerprint of inputs, tokenizer and options; a cache with the same
//! fingerprint is a hit and nothing else happens), then do (read, validate, clean, encode,
//! write atomically).

mod args;
pub mod cache;

use crate::data::{self, FileCounts, Format, IdRegistry, Question, CHOICES};
use crate::encode::{self, EncodeSettings, Encoder, Sequences};
use crate::error::{Error, Result};
pub use args::{ContextField, DataArgs, PrepArgs};
use cache::{Arrays, InputInfo, LengthStats, Manifest, CACHE_VERSION};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Everything `prep` needs to know.
#[derive(Clone, Debug)]
pub struct PrepOptions {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub model_dir: PathBuf,
    /// Forces one layout for every input; None detects it from the extension.
    pub format: Option<Format>,
    /// Forces one `cop` convention for every input; None uses the format's default.
    pub cop_base: Option<u8>,
    pub max_length: usize,
    pub pair: bool,
    pub context_exp: bool,
    /// Lemmatise the text with WordNet from this dictionary directory (off when None).
    pub lemmatize: Option<PathBuf>,
    /// Show a progress bar (the caller decides; off for non-main ranks and tests).
    pub progress: bool,
}

impl PrepOptions {
    /// The defaults: formats and conventions from the files, `[CLS] question option [SEP]`,
    /// no lemmas, no progress bar.
    pub fn new(inputs: Vec<PathBuf>, output: PathBuf, model_dir: PathBuf, max_length: usize) -> Self {
        PrepOptions {
            inputs,
            output,
            model_dir,
            format: None,
            cop_base: None,
            max_length,
            pair: false,
            context_exp: false,
            lemmatize: None,
            progress: false,
        }
    }
}

/// What `prep` did.
#[derive(Debug)]
pub struct PrepReport {
    pub manifest: Manifest,
    pub cache_hit: bool,
}

/// A planned input: where, in which layout and convention, with which content hash.
struct PlannedInput {
    path: PathBuf,
    format: Format,
    cop_base: u8,
    sha256: String,
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Hash of everything that determines the cache's content (not where the files live).
fn fingerprint(inputs: &[PlannedInput], settings: &EncodeSettings) -> String {
    let mut h = Sha256::new();
    h.update(format!("medbert-prep v{CACHE_VERSION}\n"));
    for i in inputs {
        h.update(format!("input {} {:?} {}\n", i.sha256, i.format, i.cop_base));
    }
    h.update(format!(
        "tokenizer {} lowercase {:?} max_length {} pair {} context_exp {} lemmatize {}\n",
        settings.tokenizer_sha256,
        settings.lowercase,
        settings.max_length,
        settings.pair,
        settings.context_exp,
        settings.lemmatize
    ));
    format!("{:x}", h.finalize())
}

/// A prepared cache for `path`: `path` itself when it is one, else `path` prepared (with the
/// defaults) under `cache_root`, named after its stem; reused while inputs and tokenizer are
/// unchanged.
pub fn prepared(path: &Path, cache_root: &Path, model: &Path, max_length: usize) -> Result<PathBuf> {
    if path.join(cache::MANIFEST_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let stem = path.file_stem().map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    let output = cache_root.join(stem);
    let opts = PrepOptions::new(vec![path.to_path_buf()], output.clone(), model.to_path_buf(), max_length);
    let report = run(&opts)?;
    tracing::info!(cache = %output.display(), hit = report.cache_hit, questions = report.manifest.questions, "prepared");
    Ok(output)
}

/// Prepares `opts.inputs` into `opts.output`: nothing when a cache with the same fingerprint
/// is there, else the whole cache, written atomically.
pub fn run(opts: &PrepOptions) -> Result<PrepReport> {
    match decide(opts)? {
        Decision::Hit(manifest) => {
            tracing::info!(cache = %opts.output.display(), "cache hit: inputs, tokenizer and options unchanged");
            Ok(PrepReport { manifest, cache_hit: true })
        }
        Decision::Build(plan) => build(opts, plan),
    }
}

/// What a build will read and how it will encode it, under which fingerprint.
struct Plan {
    inputs: Vec<PlannedInput>,
    settings: EncodeSettings,
    fingerprint: String,
}

enum Decision {
    /// The cache at the output has this fingerprint already.
    Hit(Manifest),
    Build(Plan),
}

/// Checks the options, hashes the inputs and the tokenizer, and compares the fingerprint
/// with the cache already at the output; reads no question.
fn decide(opts: &PrepOptions) -> Result<Decision> {
    if opts.inputs.is_empty() {
        return Err(Error::Input("prep needs at least one --input file".into()));
    }
    if opts.pair && opts.context_exp {
        return Err(Error::Input("--pair and --context exp both use the second segment; choose one".into()));
    }
    if opts.max_length < encode::MIN_MAX_LENGTH {
        let least = encode::MIN_MAX_LENGTH;
        return Err(Error::Input(format!("--max-length {} is too short (at least {least})", opts.max_length)));
    }
    let mut inputs = Vec::new();
    for path in &opts.inputs {
        let format = match opts.format {
            Some(f) => f,
            None => Format::detect(path)?,
        };
        let cop_base = opts.cop_base.unwrap_or_else(|| format.default_cop_base());
        inputs.push(PlannedInput { path: path.clone(), format, cop_base, sha256: sha256_file(path)? });
    }
    let tokenizer_path = encode::tokenizer_source(&opts.model_dir)?;
    let settings = EncodeSettings {
        tokenizer_sha256: encode::tokenizer_sha256(&opts.model_dir)?,
        tokenizer: tokenizer_path,
        max_length: opts.max_length,
        pair: opts.pair,
        context_exp: opts.context_exp,
        lemmatize: opts.lemmatize.is_some(),
        lowercase: encode::lowercase(&opts.model_dir)?,
    };
    let fingerprint = fingerprint(&inputs, &settings);
    if let Ok(existing) = cache::read_manifest(&opts.output) {
        if existing.fingerprint == fingerprint && opts.output.join(cache::TOKENS_FILE).is_file() {
            return Ok(Decision::Hit(existing));
        }
    }
    Ok(Decision::Build(Plan { inputs, settings, fingerprint }))
}

/// Reads, validates, cleans (and lemmatises) every input, encodes it, and writes the cache.
fn build(opts: &PrepOptions, plan: Plan) -> Result<PrepReport> {
    let Plan { inputs: planned, settings, fingerprint } = plan;
    if opts.context_exp {
        tracing::warn!("--context exp: MedMCQA explanations often state the answer (\"Ans. is b\"); this leaks labels");
    }
    let mut ids = IdRegistry::default();
    let mut questions: Vec<Question> = Vec::new();
    let mut inputs = Vec::new();
    for p in planned {
        let started = std::time::Instant::now();
        let raw = data::read_file(&p.path, p.format)?;
        let (qs, counts) = data::validate(&p.path, raw, p.cop_base, &mut ids)?;
        tracing::info!(file = %p.path.display(), questions = qs.len(), secs = started.elapsed().as_secs_f64(), "read and validated");
        questions.extend(qs);
        inputs.push(InputInfo { path: p.path, format: p.format, cop_base: p.cop_base, sha256: p.sha256, counts });
    }

    if let Some(dir) = &opts.lemmatize {
        tracing::warn!("--lemmatize: WordNet lemmas usually hurt BERT, whose word pieces already share stems");
        let lemmatizer = data::Lemmatizer::load(dir)?;
        questions.par_iter_mut().for_each(|q| {
            q.question = lemmatizer.lemmatize(&q.question);
            for o in &mut q.options {
                *o = lemmatizer.lemmatize(o);
            }
            q.exp = q.exp.as_deref().map(|e| lemmatizer.lemmatize(e));
        });
    }
    let tokenizer = encode::load_tokenizer(&opts.model_dir, opts.max_length)?;
    let started = std::time::Instant::now();
    let (arrays, subjects, lengths) = encode_all(&tokenizer, &questions, &settings, opts.progress)?;
    tracing::info!(sequences = lengths.sequences, secs = started.elapsed().as_secs_f64(), "encoded");
    let manifest = Manifest {
        version: CACHE_VERSION,
        fingerprint,
        medbert_version: env!("CARGO_PKG_VERSION").to_string(),
        inputs,
        encoding: settings,
        questions: questions.len(),
        subjects,
        lengths,
    };
    let started = std::time::Instant::now();
    cache::write(&opts.output, &manifest, &arrays)?;
    tracing::info!(cache = %opts.output.display(), secs = started.elapsed().as_secs_f64(), "written");
    Ok(PrepReport { manifest, cache_hit: false })
}

const CHUNK: usize = 2048;

fn encode_all(
    tokenizer: &Tokenizer,
    questions: &[Question],
    settings: &EncodeSettings,
    progress: bool,
) -> Result<(Arrays, Vec<String>, LengthStats)> {
    let encoder = Encoder::new(tokenizer, settings.layout())?;
    let subjects: Vec<String> = {
        let set: std::collections::BTreeSet<&String> = questions.iter().filter_map(|q| q.subject.as_ref()).collect();
        set.into_iter().cloned().collect()
    };
    let mut a = Arrays {
        tokens: Sequences { offsets: vec![0], ..Sequences::default() },
        id_offsets: vec![0],
        labels: Vec::with_capacity(questions.len()),
        subjects: Vec::with_capacity(questions.len()),
        ..Arrays::default()
    };
    let mut lengths: Vec<u32> = Vec::with_capacity(questions.len() * CHOICES);
    let mut truncated = 0usize;
    let bar = crate::progress::bar(
        questions.len(),
        progress,
        "encoding {bar:40} {pos}/{len} questions, {per_sec}, eta {eta}",
    );
    for chunk in questions.chunks(CHUNK) {
        let encodings = encoder.encode(chunk)?;
        for enc in &encodings {
            a.tokens.push(enc);
            lengths.push(enc.ids.len() as u32);
            truncated += usize::from(enc.truncated);
        }
        for q in chunk {
            a.labels.push(q.label.map_or(-1, i64::from));
            a.subjects.push(q.subject.as_ref().and_then(|s| subjects.binary_search(s).ok()).map_or(-1, |i| i as i32));
            a.id_bytes.extend_from_slice(q.id.as_bytes());
            a.id_offsets.push(a.id_bytes.len() as i64);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    lengths.sort_unstable();
    let pct = |p: f64| lengths.get(((lengths.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let stats = LengthStats {
        sequences: lengths.len(),
        p50: pct(0.5),
        p95: pct(0.95),
        max: lengths.last().copied().unwrap_or(0),
        truncated,
        truncated_share: truncated as f64 / lengths.len().max(1) as f64,
    };
    Ok((a, subjects, stats))
}

/// The run's summary: one row per input file and a total, then the length statistics.
pub fn summary_table(m: &Manifest) -> String {
    use std::fmt::Write;
    let mut rows: Vec<(String, &FileCounts, String)> = m
        .inputs
        .iter()
        .map(|i| {
            let name = i.path.file_name().map_or_else(|| i.path.display().to_string(), |n| n.to_string_lossy().into());
            (name, &i.counts, format!("{:?}/{}", i.format, i.cop_base).to_lowercase())
        })
        .collect();
    let mut total = FileCounts::default();
    for (_, c, _) in &rows {
        total.questions += c.questions;
        total.labelled += c.labelled;
        total.duplicate_options += c.duplicate_options;
        total.multi += c.multi;
        total.blank_lines += c.blank_lines;
        for k in 0..4 {
            total.answers[k] += c.answers[k];
        }
    }
    rows.push(("total".into(), &total, String::new()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36} {:>12} {:>10} {:>9} {:>9} {:>7} {:>6}  answers a/b/c/d",
        "file", "format/base", "questions", "labelled", "dup-opts", "multi", "blank"
    );
    for (name, c, fmt) in rows {
        let _ = writeln!(
            out,
            "{:<36} {:>12} {:>10} {:>9} {:>9} {:>7} {:>6}  {}/{}/{}/{}",
            name,
            fmt,
            c.questions,
            c.labelled,
            c.duplicate_options,
            c.multi,
            c.blank_lines,
            c.answers[0],
            c.answers[1],
            c.answers[2],
            c.answers[3]
        );
    }
    let l = &m.lengths;
    let _ = writeln!(
        out,
        "tokens per sequence (max length {}): p50 {}, p95 {}, max {}; truncated {} of {} ({:.2}%)",
        m.encoding.max_length,
        l.p50,
        l.p95,
        l.max,
        l.truncated,
        l.sequences,
        l.truncated_share * 100.0
    );
    out
}
