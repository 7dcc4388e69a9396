//! Models (and datasets) by Hugging Face hub id, downloaded and cached with the hf-hub crate.
//! HF_HOME places the cache (default ~/.cache/huggingface), HF_ENDPOINT the server, HF_TOKEN
//! (else the token file `huggingface-cli login` writes) authorises gated repositories.

use crate::error::{Error, Result};
use crate::files::{
    first_file, is_shard_index, read_shard_index, CONFIG_FILE, MERGES_FILE, TOKENIZER_SOURCES, WEIGHTS_FILES,
};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Files a model needs, in order of preference within each group; one of each group is required.
const MODEL_FILES: [&[&str]; 3] = [&[CONFIG_FILE], &WEIGHTS_FILES, &TOKENIZER_SOURCES];
/// Fetched when present: the merges a vocab.json needs, and the tokenizer settings, so that
/// checkpoints carry them on.
const OPTIONAL_FILES: [&str; 4] = {
    let [a, b, c] = crate::files::VOCAB_SETTINGS_FILES;
    [MERGES_FILE, a, b, c]
};

/// Whether `spec` reads as a hub id (`name` or `owner/name`, optionally `@revision`) rather than
/// a path.
pub fn is_hub_id(spec: &str) -> bool {
    let id = spec.split_once('@').map_or(spec, |(id, _)| id);
    let parts: Vec<&str> = id.split('/').collect();
    !id.starts_with('.')
        && (1..=2).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// A local model directory for `spec`: the directory itself when it exists, else the hub
/// snapshot of the id `spec` names (downloaded on first use).
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    let text = spec.to_string_lossy();
    if spec.exists() || !is_hub_id(&text) {
        return Err(Error::Input(format!("model {}: not a model directory or a hub id", spec.display())));
    }
    download_model(&text)
}

fn api() -> Result<Api> {
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    builder.build().map_err(|e| Error::Hub { repo: "(client)".into(), message: e.to_string() })
}

fn repo(spec: &str, kind: RepoType) -> Repo {
    match spec.split_once('@') {
        Some((id, revision)) => Repo::with_revision(id.to_string(), kind, revision.to_string()),
        None => Repo::new(spec.to_string(), kind),
    }
}

fn not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)))
}

/// Whether the hub could not be reached at all (name resolution, connection, TLS).
fn unreachable(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(r) => matches!(**r, ureq::Error::Transport(_)),
        ApiError::TooManyRetries(inner) => unreachable(inner),
        _ => false,
    }
}

/// HF_HUB_OFFLINE set to 1, true, yes or on (as huggingface_hub reads it).
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
}

/// Downloads `files` of a hub repository: the first present file of each group (an error
/// naming the repository and the group when none is), plus whichever `optional` ones exist.
/// Returns the snapshot directory.
pub fn download(spec: &str, kind: RepoType, groups: &[&[&str]], optional: &[&str]) -> Result<PathBuf> {
    // Everything required already cached: no network at all (works offline).
    let cached = Cache::from_env().repo(repo(spec, kind));
    let from_cache: Option<Vec<PathBuf>> = groups
        .iter()
        .map(|group| group.iter().find_map(|file| cached.get(file).and_then(|p| snapshot_of(&p, file))))
        .collect();
    if let Some(dir) = from_cache.and_then(|dirs| dirs.last().cloned()) {
        return Ok(dir);
    }
    if offline() {
        return Err(Error::Hub {
            repo: spec.to_string(),
            message: format!(
                "not in the local cache ({}), and HF_HUB_OFFLINE forbids downloading",
                Cache::from_env().path().display()
            ),
        });
    }
    let repo = api()?.repo(repo(spec, kind));
    let hub_err = |file: &str, e: ApiError| {
        let message = match unreachable(&e) {
            true => format!(
                "the hub at {} is unreachable ({e}): check the network, set HF_ENDPOINT to a mirror you can reach, \
                 or set HF_HUB_OFFLINE=1 to use only files already in the cache (HF_HOME)",
                endpoint()
            ),
            false => format!("{file}: {e}"),
        };
        Error::Hub { repo: spec.to_string(), message }
    };
    let mut snapshot = None;
    for group in groups {
        let mut found = None;
        for file in *group {
            match repo.get(file) {
                Ok(path) => {
                    found = Some((path, *file));
                    break;
                }
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(hub_err(file, e)),
            }
        }
        let (path, file) = found.ok_or_else(|| Error::Hub {
            repo: spec.to_string(),
            message: format!("none of {} exists", group.join(", ")),
        })?;
        snapshot = snapshot_of(&path, file);
    }
    for file in optional {
        match repo.get(file) {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(hub_err(file, e)),
        }
    }
    snapshot.ok_or_else(|| Error::Hub { repo: spec.to_string(), message: "nothing to download".into() })
}

/// The snapshot directory holding `path`, the local copy of repository file `file` (which may
/// sit in subdirectories, as `data/x.parquet`).
fn snapshot_of(path: &Path, file: &str) -> Option<PathBuf> {
    path.ancestors().nth(Path::new(file).components().count()).map(Path::to_path_buf)
}

/// A model's files; for a model saved in shards, the shards its index names too.
fn download_model(spec: &str) -> Result<PathBuf> {
    tracing::info!(model = spec, "fetching from the hub");
    let dir = download(spec, RepoType::Model, &MODEL_FILES, &OPTIONAL_FILES)?;
    match first_file(&dir, &WEIGHTS_FILES) {
        Some(index) if is_shard_index(&index) => {
            let shards: Vec<String> = read_shard_index(&index)?.into_keys().collect();
            let names: Vec<&str> = shards.iter().map(String::as_str).collect();
            let groups: Vec<&[&str]> = names.iter().map(std::slice::from_ref).collect();
            download(spec, RepoType::Model, &groups, &[])
        }
        _ => Ok(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::is_hub_id;

    #[test]
    fn hub_ids_and_paths() {
        for id in ["bert-base-uncased", "dmis-lab/biobert-base-cased-v1.2", "allenai/scibert_scivocab_uncased@main"] {
            assert!(is_hub_id(id), "{id}");
        }
        for path in ["./model", "/opt/model", "a/b/c", "runs/x/", "", "../m"] {
            assert!(!is_hub_id(path), "{path}");
        }
    }
}
