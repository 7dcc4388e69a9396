//! Configuration from the environment and `.env`. Precedence: command-line flag, then the
//! process environment, then `.env` (dotenvy never overrides a variable already set), then
//! the built-in default. Every variable read anywhere is documented in `.env.example`.

use crate::error::{Error, Result};
use std::path::PathBuf;

/// Directory of the default Hugging Face model (config.json, model.safetensors, tokenizer.json).
pub const MODEL_VAR: &str = "MEDBERT_MODEL";

/// Loads `.env` from the current directory or its ancestors into the process environment.
/// A missing file is fine; an unreadable or malformed one is an error naming it.
pub fn load_dotenv() -> Result<Option<PathBuf>> {
    match dotenvy::dotenv() {
        Ok(path) => Ok(Some(path)),
        Err(e) if e.not_found() => Ok(None),
        Err(e) => Err(Error::Input(format!(".env: {e}"))),
    }
}
