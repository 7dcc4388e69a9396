//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The embedded default model, from the environment or the `.env` that setup.sh wrote.
pub fn default_model() -> PathBuf {
    medbert::settings::load_dotenv().expect(".env is readable");
    let dir = std::env::var_os(medbert::settings::MODEL_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .expect("MEDBERT_MODEL is not set: run scripts/setup.sh (or scripts/test.sh) first");
    assert!(dir.join("model.safetensors").is_file(), "{} has no model.safetensors", dir.display());
    dir
}

/// The venv's Python, which carries the reference implementation (torch, transformers).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("MEDBERT_VENV").map_or_else(|| manifest_dir().join(".venv"), PathBuf::from);
    let python = venv.join("bin/python");
    assert!(python.is_file(), "{} missing: run scripts/setup.sh first", python.display());
    python
}

/// Runs a reference script from tests/reference with the venv's Python; panics with its
/// stderr on failure.
pub fn run_reference(script: &str, args: &[&Path]) {
    let out = Command::new(venv_python())
        .arg(manifest_dir().join("tests/reference").join(script))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("start the venv's python");
    assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A directory that lives as long as the test process.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir")).path()
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

pub fn medbert_bin() -> &'static str {
    env!("CARGO_BIN_EXE_medbert")
}

/// The real MedMCQA data directory from MEDMCQA_DIR. `None` (after saying the test is
/// skipped, and why) when the variable is unset; a panic when it is set but unreadable.
pub fn medmcqa_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("MEDMCQA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from) else {
        eprintln!("{test}: skipped: MEDMCQA_DIR is not set (scripts/test.sh and CI set it to ../shared/data/medmcqa)");
        return None;
    };
    for file in ["dev.json", "validation-00000-of-00001.parquet"] {
        let path = dir.join(file);
        assert!(std::fs::metadata(&path).is_ok(), "MEDMCQA_DIR is set but {} is unreadable", path.display());
    }
    Some(dir)
}
