//! Configuration from the environment and `.env`. Precedence: command-line flag, then the
//! process environment, then `.env` (dotenvy never overrides a variable already set), then
//! the built-in default. Every variable read anywhere is documented in `.env.example`.

use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Directory of the default Hugging Face model (config.json, model.safetensors, tokenizer.json).
pub const MODEL_VAR: &str = "MEDBERT_MODEL";

/// Accepts every long flag (and alias) of `command` and its subcommands also with underscores,
/// as HfArgumentParser and torchrun do (`--learning_rate` for `--learning-rate`).
pub fn both_spellings(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let dashed: Vec<String> = arg
                .get_long()
                .into_iter()
                .chain(arg.get_all_aliases().unwrap_or_default())
                .filter(|name| name.contains('-'))
                .map(|name| name.replace('-', "_"))
                .collect();
            arg.aliases(dashed)
        })
        .mut_subcommands(both_spellings)
}

/// A path setting's value as a shell would expand it: `~` and a leading `~/` are the home
/// directory (HOME). For the settings `.env` and the environment can give, where no shell
/// expanded it (dotenvy expands `$VAR` and `${VAR}` in `.env`, not `~`); `~user` is left alone.
pub fn path(value: &str) -> std::result::Result<PathBuf, String> {
    expand_home(value, std::env::var_os("HOME").filter(|h| !h.is_empty()))
}

fn expand_home(value: &str, home: Option<std::ffi::OsString>) -> std::result::Result<PathBuf, String> {
    match value.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = home.ok_or_else(|| format!("{value}: `~` stands for HOME, which is not set"))?;
            Ok(PathBuf::from(home).join(rest.trim_start_matches('/')))
        }
        _ => Ok(PathBuf::from(value)),
    }
}

/// Where `eval` keeps the caches of the raw files it prepares unless told otherwise:
/// `$XDG_CACHE_HOME/medbert/prepared`, by default `~/.cache/medbert/prepared`.
pub fn user_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("medbert").join("prepared")
}

/// The variables `load_dotenv` took from `.env` (those the environment did not already set).
static FROM_DOTENV: OnceLock<(PathBuf, HashSet<String>)> = OnceLock::new();

/// Loads `.env` from the current directory or its ancestors into the process environment.
/// A missing file is fine; an unreadable or malformed one is an error naming it.
pub fn load_dotenv() -> Result<Option<PathBuf>> {
    let before: HashSet<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    match dotenvy::dotenv() {
        Ok(path) => {
            let keys = dotenvy::from_path_iter(&path)
                .map(|items| {
                    items.filter_map(|item| item.ok().map(|(k, _)| k)).filter(|k| !before.contains(k)).collect()
                })
                .unwrap_or_default();
            let _ = FROM_DOTENV.set((path.clone(), keys));
            Ok(Some(path))
        }
        Err(e) if e.not_found() => Ok(None),
        Err(e) => Err(Error::Input(format!(".env: {e}"))),
    }
}

/// The `.env` file that set `variable`, when `load_dotenv` took it from there.
pub fn dotenv_source(variable: &str) -> Option<&'static Path> {
    FROM_DOTENV.get().filter(|(_, keys)| keys.contains(variable)).map(|(path, _)| path.as_path())
}

#[cfg(test)]
mod tests {
    use super::expand_home;
    use std::path::PathBuf;

    #[test]
    fn a_leading_tilde_is_home_as_in_a_shell() {
        let home = || Some("/home/ada".into());
        assert_eq!(expand_home("~/.cache/m", home()).unwrap(), PathBuf::from("/home/ada/.cache/m"));
        assert_eq!(expand_home("~", home()).unwrap(), PathBuf::from("/home/ada"));
        for kept in ["~ada/x", "runs/~/x", "acme/model", "/abs/~"] {
            assert_eq!(expand_home(kept, home()).unwrap(), PathBuf::from(kept));
        }
        assert!(expand_home("~/x", None).unwrap_err().contains("HOME"));
    }
}
