//! Models by hub id, fetched with hf-hub from a loopback stand-in for the hub.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn eval_with(model: &str, data: &Path, hf_home: &Path, endpoint: &str) -> Output {
    Command::new(common::medbert_bin())
        .args(["eval", "--model", model, "--device", "cpu", "--validation-file"])
        .arg(data)
        .arg("--cache-dir")
        .arg(hf_home.join("prepared"))
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN", "hf_test_token")
        .output()
        .expect("run medbert eval")
}

#[test]
fn a_model_by_hub_id_is_downloaded_cached_and_evaluates_like_the_local_directory() {
    let dir = common::scratch_dir().join("hub");
    let repo = dir.join("server/acme/minilm");
    std::fs::create_dir_all(&repo).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(common::default_model().join(file), repo.join(file)).unwrap();
    }
    // With a classifier, so that evaluation is deterministic.
    let mut tensors = tch::Tensor::read_safetensors(common::default_model().join("model.safetensors")).unwrap();
    tensors.push(("classifier.weight".into(), tch::Tensor::randn([1, 384], tch::kind::FLOAT_CPU) * 0.02));
    tensors.push(("classifier.bias".into(), tch::Tensor::zeros([1], tch::kind::FLOAT_CPU)));
    tch::Tensor::write_safetensors(&tensors, repo.join("model.safetensors")).unwrap();
    // The same model saved in two shards with their index, as save_pretrained writes a model
    // above its shard size (tests/model.rs checks transformers' own shards load).
    let sharded = dir.join("server/acme/sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(repo.join(file), sharded.join(file)).unwrap();
    }
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (k, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        tch::Tensor::write_safetensors(part, sharded.join(&file)).unwrap();
        weight_map.extend(part.iter().map(|(name, _)| (name.clone(), file.clone().into())));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    // A RoBERTa as allenai/biomed_roberta_base is uploaded: its tokenizer is vocab.json with
    // merges.txt, no tokenizer.json (tests/reference/hub_layouts.py builds the replica).
    let layouts = dir.join("layouts");
    common::run_reference("hub_layouts.py", &[Path::new("build"), &layouts, Path::new("biomed_roberta_base")]);
    let roberta = dir.join("server/acme/biomed-roberta");
    std::fs::create_dir_all(&roberta).unwrap();
    for file in ["config.json", "vocab.json", "merges.txt", "pytorch_model.bin"] {
        std::fs::copy(layouts.join("biomed_roberta_base").join(file), roberta.join(file)).unwrap();
    }
    std::fs::create_dir_all(dir.join("server/acme/empty")).unwrap();
    std::fs::copy(common::default_model().join("config.json"), dir.join("server/acme/empty/config.json")).unwrap();
    let data = dir.join("questions.json");
    common::synthetic_task(&data, 24, 7);
    let hf_home = dir.join("hf_home");

    let server = common::HubServer::start(&dir.join("server"));
    let fetched = eval_with("acme/minilm", &data, &hf_home, &server.endpoint);
    common::assert_success(&fetched);
    let snapshot = hf_home.join("hub/models--acme--minilm/snapshots/0123456789abcdef0123456789abcdef01234567");
    assert!(snapshot.join("model.safetensors").is_file(), "no snapshot in {}", snapshot.display());
    let log = std::fs::read_to_string(dir.join("server/requests.log")).unwrap();
    assert!(log.lines().all(|l| l.ends_with("Bearer hf_test_token")), "HF_TOKEN not sent:\n{log}");

    let from_shards = eval_with("acme/sharded", &data, &hf_home, &server.endpoint);
    common::assert_success(&from_shards);
    common::assert_success(&eval_with("acme/biomed-roberta", &data, &hf_home, &server.endpoint));
    let snapshots = hf_home.join("hub/models--acme--biomed-roberta/snapshots");
    let snapshot = std::fs::read_dir(&snapshots).unwrap().next().unwrap().unwrap().path();
    assert!(snapshot.join("merges.txt").is_file(), "vocab.json's merges were not fetched: {}", snapshot.display());
    let missing = eval_with("acme/empty", &data, &hf_home, &server.endpoint);
    let text = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{text}");
    assert!(text.contains("acme/empty") && text.contains("model.safetensors, pytorch_model.bin"), "{text}");
    drop(server);

    // The cache answers without the server, and the model is the local one.
    let cached = eval_with("acme/minilm", &data, &hf_home, "http://127.0.0.1:9");
    common::assert_success(&cached);
    let local = eval_with(repo.to_str().unwrap(), &data, &hf_home, "http://127.0.0.1:9");
    assert!(local.status.success());
    let json = |o: &Output| -> serde_json::Value { serde_json::from_slice(&o.stdout).unwrap() };
    assert_eq!(json(&fetched), json(&local));
    assert_eq!(json(&cached), json(&local));
    assert_eq!(json(&from_shards), json(&local), "the sharded copy evaluates like the whole one");
}
