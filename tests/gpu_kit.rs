//! The GPU check kit builds within its size limit and its CPU run passes, so the kit that is
//! run on CUDA machines cannot rot unnoticed (docs/gpu.md).

mod common;

use std::process::Command;

/// The environment cargo gives the crates it builds and runs (a test among them), by name or
/// prefix; CARGO itself and the user's CARGO_HOME, CARGO_TARGET_DIR, ... stay.
const CARGO_SET: [&str; 8] = [
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn the_gpu_kit_builds_and_its_cpu_check_passes() {
    let data = common::medmcqa_dir();
    let dir = common::scratch("kit");
    let kit = dir.join("gpu-kit");
    // gpu-kit.sh runs `cargo build`: without the variables cargo set for this test, which ring's
    // build script watches (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...), so that the build finds
    // the suite's binaries up to date instead of rebuilding ring, rustls, ureq, hf-hub and
    // medbert here (45 s) and again at the next `cargo test` (80 s).
    let mut build = Command::new("bash");
    build.arg(common::manifest_dir().join("scripts/gpu-kit.sh")).arg(&kit).env("MEDMCQA_DIR", &data);
    for (name, _) in std::env::vars().filter(|(name, _)| CARGO_SET.iter().any(|set| name.starts_with(set))) {
        build.env_remove(name);
    }
    let out = build.output().expect("run scripts/gpu-kit.sh");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gpu-kit.sh: {said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("MiB (limit 60 MiB)"), "{said}");
    for file in ["check.sh", "check.py", "trainer_bench.py", "bin/medbert", "bin/medbert-run", "data/dev.json"] {
        assert!(kit.join(file).is_file(), "the kit lacks {file}");
    }

    let out = Command::new("bash")
        .arg(kit.join("check.sh"))
        .args(["--cpu", "--work"])
        .arg(dir.join("work"))
        .env("PYTHON", common::venv_python())
        .env_remove("OUT")
        .output()
        .expect("run the kit's check.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check.sh --cpu failed:\n{log}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(kit.join("gpu-report.md")).expect("the report next to the script");
    assert!(!report.contains("**FAIL**"), "{report}");
    for step in
        ["a. doctor", "b. logits bert-base fp32", "b. logits minilm fp32", "c. train fp32", "d. DDP", "e. speed"]
    {
        assert!(report.contains(&format!("| {step}")), "no row for {step}:\n{report}");
    }
}
