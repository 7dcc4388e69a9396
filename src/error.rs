use std::path::PathBuf;

/// Every failure the library reports. Variants name the file, tensor or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: invalid model config: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{}: missing tensor `{name}` (expected shape {shape:?})", path.display())]
    MissingTensor {
        path: PathBuf,
        name: String,
        shape: Vec<i64>,
    },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    #[error("{}: cannot read weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },

    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error("{0}")]
    Input(String),

    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },

    #[error("c10d: {0}")]
    Dist(String),

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
