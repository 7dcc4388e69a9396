//! `medbert fetch-data` against a loopback stand-in for the hub serving the real dev parquet.

mod common;

use std::process::{Command, Output};

fn fetch(endpoint: &str, hf_home: &std::path::Path, out: &std::path::Path, splits: &str) -> Output {
    Command::new(common::medbert_bin())
        .args(["fetch-data", "--splits", splits, "--output"])
        .arg(out)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .output()
        .expect("run medbert fetch-data")
}

#[cfg_attr(not(medmcqa_dir), ignore = "MEDMCQA_DIR is not set: needs the real MedMCQA data (scripts/test.sh sets it)")]
#[test]
fn fetch_data_downloads_checks_and_lays_out_the_validation_split() {
    let data = common::medmcqa_dir();
    let root = common::scratch("fetch");
    let repo = root.join("server/datasets/openlifescienceai/medmcqa/data");
    std::fs::create_dir_all(&repo).unwrap();
    let parquet = data.join("validation-00000-of-00001.parquet");
    std::fs::copy(&parquet, repo.join("validation-00000-of-00001.parquet")).unwrap();
    // The hub's unlabelled test split (6,150 rows, `cop` -1), replicated with pyarrow.
    common::run_reference("hub_test_split.py", &[&parquet, &repo.join("test-00000-of-00001.parquet")]);
    let server = common::HubServer::start(&root.join("server"));
    let (hf_home, out) = (root.join("hf_home"), root.join("medmcqa"));

    let ok = fetch(&server.endpoint, &hf_home, &out, "validation");
    common::assert_success(&ok);
    assert_eq!(std::fs::read(out.join("validation.parquet")).unwrap(), std::fs::read(&parquet).unwrap());

    let missing = fetch(&server.endpoint, &hf_home, &out, "train");
    let text = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{text}");
    assert!(text.contains("data/train-00000-of-00001.parquet"), "{text}");

    // A file of the wrong size where the train split should be (a fresh cache: not the miss).
    std::fs::copy(&parquet, repo.join("train-00000-of-00001.parquet")).unwrap();
    let wrong = fetch(&server.endpoint, &root.join("hf_home_2"), &out, "train");
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{text}");
    assert!(text.contains("4183 rows, MedMCQA's train split has 182822"), "{text}");
    assert!(!out.join("train.parquet").exists());

    // The unlabelled test split, as the README's predict command uses it.
    let test = fetch(&server.endpoint, &hf_home, &out, "test");
    common::assert_success(&test);
    let csv = root.join("predictions.csv");
    let predicted = Command::new(common::medbert_bin())
        .args(["predict", "--device", "cpu", "--max-length", "16", "--per-device-eval-batch-size", "256", "--model"])
        .arg(common::default_model())
        .arg("--test-file")
        .arg(out.join("test.parquet"))
        .arg("--output")
        .arg(&csv)
        .output()
        .unwrap();
    common::assert_success(&predicted);
    let lines: Vec<String> = std::fs::read_to_string(&csv).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 6151, "a header and one prediction per question");
    assert!(lines[1].starts_with("test-00000,"), "{}", lines[1]);

    // The fetched file is ready for prep: same questions as the official JSONL.
    let prep = |input: &std::path::Path, name: &str| {
        let o = Command::new(common::medbert_bin())
            .args(["prep", "--input"])
            .arg(input)
            .arg("--output")
            .arg(root.join(name))
            .output()
            .unwrap();
        common::assert_success(&o);
        std::fs::read(root.join(name).join(medbert::prep::cache::TOKENS_FILE)).unwrap()
    };
    assert_eq!(prep(&out.join("validation.parquet"), "from-hub"), prep(&data.join("dev.json"), "from-jsonl"));
}

#[test]
fn an_unreachable_hub_leaves_nothing_and_says_what_to_try() {
    let root = common::scratch("fetch-offline");
    let out = root.join("medmcqa");
    // Nothing listens on port 1 of the loopback: the connection is refused at once.
    let refused = fetch("http://127.0.0.1:1", &root.join("hf_home"), &out, "validation");
    let text = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{text}");
    for hint in ["unreachable", "HF_ENDPOINT", "HF_HUB_OFFLINE"] {
        assert!(text.contains(hint), "{hint} missing:\n{text}");
    }
    assert!(!out.exists(), "a failed fetch left {}", out.display());

    let mut offline = Command::new(common::medbert_bin());
    offline.args(["fetch-data", "--splits", "validation", "--output"]).arg(&out);
    let offline = offline.env("HF_HOME", root.join("hf_home")).env("HF_HUB_OFFLINE", "1").output().unwrap();
    let text = String::from_utf8_lossy(&offline.stderr);
    assert_eq!(offline.status.code(), Some(2), "{text}");
    assert!(text.contains("not in the local cache") && text.contains("HF_HUB_OFFLINE"), "{text}");
    assert!(!out.exists());
}
