//! docs/cli.md is the flag reference, generated from the binaries' own `--help` (clap), never
//! written by hand. This test regenerates it and fails when the file is out of date;
//! `MEDBERT_UPDATE_DOCS=1 cargo test --release --test cli_docs` rewrites it.

mod common;

use std::process::Command;

const MEDBERT_COMMANDS: [&str; 7] = ["doctor", "fetch-data", "prep", "train", "eval", "predict", "dist-check"];

fn help(binary: &str, args: &[&str]) -> String {
    // No .env above a temporary directory and no inherited variables: the help shows the
    // defaults, not this machine's settings.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} {args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn generate() -> String {
    let mut doc = String::from(
        "# Command-line reference\n\nGenerated from the binaries' `--help` by `tests/cli_docs.rs` \
         (`MEDBERT_UPDATE_DOCS=1 cargo test --release --test cli_docs`); do not edit by hand.\n",
    );
    let mut section = |title: String, text: String| {
        doc.push_str(&format!("\n## `{title}`\n\n```text\n{}\n```\n", text.trim_end()));
    };
    section("medbert-run".into(), help(env!("CARGO_BIN_EXE_medbert-run"), &[]));
    section("medbert".into(), help(common::medbert_bin(), &[]));
    for command in MEDBERT_COMMANDS {
        section(format!("medbert {command}"), help(common::medbert_bin(), &[command]));
    }
    doc
}

#[test]
fn docs_cli_md_is_the_current_help() {
    let path = common::manifest_dir().join("docs/cli.md");
    let fresh = generate();
    if std::env::var_os("MEDBERT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "docs/cli.md is out of date: run MEDBERT_UPDATE_DOCS=1 cargo test --release --test cli_docs"
    );
}
