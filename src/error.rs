use std::path::PathBuf;

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
    Tokenizer { path: PathBuf, message: String },

    /// Something the user gave us (a flag, a file, a directory) that cannot be used.
    #[error("{0}")]
    Input(String),

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

    /// The tokenizer failed on text it was given.
    #[error("tokenizer: {0}")]
    Tokenize(String),

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

    #[error(transparent)]
    Torch(#[from] tch::TchError),
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
    fn a_worker_that_cannot_start_names_its_program_rank_and_cause() {
        let source = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = Error::Spawn { program: "trainr".into(), rank: 3, source };
        assert_eq!(err.to_string(), "cannot start \"trainr\" for rank 3");
        assert_eq!(err.source().map(|s| s.to_string()), Some("entity not found".to_string()));
    }
}
