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

    #[error("{0}")]
    Input(String),

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

    pub(crate) fn data(
        file: &std::path::Path,
        loc: Option<Loc>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Error::Data { file: file.to_path_buf(), loc, field: field.map(str::to_string), message: message.into() }
    }
}
