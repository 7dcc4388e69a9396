use std::path::PathBuf;

/// One flag that cannot be used: its id (the field's name, as clap names the argument) and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub arg: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--{} {}", self.arg.replace('_', "-"), self.message)
    }
}

/// Every failure the library reports. Variants name the file, tensor or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{}: invalid model config: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{}: missing tensor `{name}` (expected shape {shape:?})", path.display())]
    MissingTensor { path: PathBuf, name: String, shape: Vec<i64> },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },

    #[error("{}: cannot read weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },

    #[error("{}: tokenizer: {message}", path.display())]
    TokenizerFile { path: PathBuf, message: String },

    /// Something the user gave us (a flag, a file, a directory) that cannot be used.
    #[error("{0}")]
    Input(String),

    /// Flags that cannot be used together or with this model, found before any work is done.
    #[error("invalid arguments, nothing was done:{}", problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Arguments { problems: Vec<Problem> },

    /// A file we write could not be encoded (JSON, safetensors, CSV); the cause is the source.
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{}: cannot draw the plot: {message}", path.display())]
    Plot { path: PathBuf, message: String },

    #[error("hub {repo}: {message}")]
    Hub { repo: String, message: String },

    #[error("cannot start {program:?} for rank {rank}")]
    Spawn {
        program: String,
        rank: usize,
        #[source]
        source: std::io::Error,
    },

    #[error("waiting for rank {rank}")]
    Wait {
        rank: usize,
        #[source]
        source: std::io::Error,
    },

    /// The training loss became NaN or infinite (at `step` when this rank saw it first).
    #[error("the training loss is not finite (NaN or infinite){}: the run stopped without saving after it, so the \
             last checkpoint is the last good one; a lower --learning-rate or --max-grad-norm, or fp32, usually helps",
        step.map(|s| format!(" at step {s} on rank {rank}")).unwrap_or_else(|| " on another rank".into()))]
    NonFinite { step: Option<usize>, rank: usize },

    /// A warning signal stopped training at a saved checkpoint (the process exits with
    /// `train::preempt::PREEMPTED`).
    #[error("stopped by {} after step {step}: {} is saved; --resume goes on at its next batch",
        signal.map_or_else(|| "a warning signal to another process of the group".to_string(), crate::train::preempt::name),
        checkpoint.display())]
    Preempted { step: usize, signal: Option<i32>, checkpoint: PathBuf },

    /// The tokenizer failed on text it was given.
    #[error("tokenizer: {0}")]
    Encoding(String),

    /// A batch that does not fit the model or the cache (a caller's mistake, not the user's).
    #[error("batch: {0}")]
    Batch(String),

    /// Bad input data: the file, where in it (line or row) when known, and the field.
    #[error("{}{}{}: {message}", file.display(),
        loc.map(|l| format!(":{l}")).unwrap_or_default(),
        field.as_ref().map(|f| format!(": field `{f}`")).unwrap_or_default())]
    Data { file: PathBuf, loc: Option<Loc>, field: Option<String>, message: String },

    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },

    #[error("c10d: {0}")]
    Dist(String),

    #[error("{0}")]
    Hook(String),

    /// A safetensors file tch read or wrote; the cause is the source.
    #[error("{}: safetensors file", path.display())]
    Safetensors {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(transparent)]
    Torch(tch::TchError),
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        match e {
            tch::TchError::SafeTensorError { path, err } => {
                Error::Safetensors { path: path.into(), source: safetensors_cause(err) }
            }
            other => Error::Torch(other),
        }
    }
}

/// What went wrong with a safetensors file, as a sentence: safetensors 0.3 displays its errors
/// as Debug dumps (`IoError(Os { code: 28, kind: StorageFull, .. })`), so the I/O or JSON
/// error inside is the cause as it is, and the rest is said in words.
pub(crate) fn safetensors_cause(e: safetensors::SafeTensorError) -> Box<dyn std::error::Error + Send + Sync> {
    use safetensors::SafeTensorError as E;
    let words = match e {
        E::IoError(e) => return Box::new(e),
        E::JsonError(e) => return Box::new(e),
        E::InvalidHeader => "the header is not UTF-8 text".to_string(),
        E::InvalidHeaderStart => "the header does not start with '{'".to_string(),
        E::InvalidHeaderDeserialization => "the header is not valid safetensors JSON".to_string(),
        E::HeaderTooLarge => "the header is larger than 100 MB".to_string(),
        E::HeaderTooSmall => "the file is shorter than the 8-byte header length".to_string(),
        E::InvalidHeaderLength => "the header length runs past the end of the file".to_string(),
        E::TensorNotFound(name) => format!("no tensor `{name}`"),
        E::TensorInvalidInfo => "a tensor's shape, dtype and offsets disagree".to_string(),
        E::InvalidOffset(name) => format!("tensor `{name}` has invalid offsets"),
        E::InvalidTensorView(dtype, shape, bytes) => {
            format!("{bytes} bytes do not hold a {dtype:?} tensor of shape {shape:?}")
        }
        E::MetadataIncompleteBuffer => "the tensors do not cover the data exactly".to_string(),
        E::ValidationOverflow => "a tensor's size overflows".to_string(),
    };
    words.into()
}

/// A tch error's message, with safetensors' causes said as [`safetensors_cause`] says them.
pub(crate) fn torch_message(e: tch::TchError) -> String {
    match e {
        tch::TchError::SafeTensorError { err, .. } => safetensors_cause(err).to_string(),
        other => other.to_string(),
    }
}

/// A position in an input file: a JSONL line, or a data row of a table (both 1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Line(u64),
    Row(u64),
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Row(n) => write!(f, "row {n}"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), error: source }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Write { path: path.into(), source: Box::new(source) }
    }

    /// Writing a safetensors file failed; the cause as [`safetensors_cause`] says it.
    pub(crate) fn write_safetensors(path: impl Into<PathBuf>, source: safetensors::SafeTensorError) -> Self {
        Error::Write { path: path.into(), source: safetensors_cause(source) }
    }

    pub(crate) fn data(
        file: &std::path::Path,
        loc: Option<Loc>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Error::Data { file: file.to_path_buf(), loc, field: field.map(str::to_string), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_write_error_names_the_file_and_keeps_its_cause() {
        let cause = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let err = Error::write("/runs/x/trainer_state.json", cause);
        assert_eq!(err.to_string(), "/runs/x/trainer_state.json: cannot write");
        assert!(err.source().is_some_and(|s| s.to_string().contains("EOF")), "{:?}", err.source());
    }

    #[test]
    fn a_full_disk_under_safetensors_reads_as_a_sentence() {
        let full = std::io::Error::from_raw_os_error(28);
        let err = Error::write_safetensors("/runs/x/model.safetensors", safetensors::SafeTensorError::IoError(full));
        let cause = err.source().map(|s| s.to_string()).unwrap_or_default();
        assert_eq!(cause, "No space left on device (os error 28)");
        let header = Error::write_safetensors("/x", safetensors::SafeTensorError::HeaderTooSmall);
        assert!(!header.source().unwrap().to_string().contains("HeaderTooSmall"));
        let tch = tch::TchError::SafeTensorError {
            path: "/y.safetensors".into(),
            err: safetensors::SafeTensorError::IoError(std::io::Error::from_raw_os_error(28)),
        };
        let err = Error::from(tch);
        assert_eq!(err.to_string(), "/y.safetensors: safetensors file");
        assert_eq!(err.source().unwrap().to_string(), "No space left on device (os error 28)");
    }

    #[test]
    fn a_worker_that_cannot_start_names_its_program_rank_and_cause() {
        let source = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = Error::Spawn { program: "trainr".into(), rank: 3, source };
        assert_eq!(err.to_string(), "cannot start \"trainr\" for rank 3");
        assert_eq!(err.source().map(|s| s.to_string()), Some("entity not found".to_string()));
    }
}
