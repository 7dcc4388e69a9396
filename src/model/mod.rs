//! `BertForMultipleChoice` built from a Hugging Face model directory: our own BERT graph
//! (bert.rs) under transformers' parameter names, and the weight loader.
//!
//! Checkpoint names follow transformers: a `BertForMultipleChoice` checkpoint carries
//! `bert.*` and `classifier.*`; a bare `BertModel` checkpoint (most pretrained models) has
//! no `bert.` prefix. Both load; a classifier absent from the file keeps transformers'
//! initialisation (normal with std `initializer_range`, bias zero).

pub mod bert;
pub mod config;
mod torch_pickle;

use crate::error::{Error, Result};
use bert::BertModel;
pub use config::{Activation, BertConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::{self, Module};
use tch::{Device, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// PyTorch's pickle checkpoint, read when a directory has no safetensors file.
pub const PICKLE_WEIGHTS_FILE: &str = "pytorch_model.bin";

/// The first of `names` that is a file in `dir`.
pub(crate) fn first_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

/// The weights file of an HF model directory: model.safetensors, else pytorch_model.bin.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    first_file(dir, &[WEIGHTS_FILE, PICKLE_WEIGHTS_FILE]).ok_or_else(|| Error::Weights {
        path: dir.to_path_buf(),
        message: format!("neither {WEIGHTS_FILE} nor {PICKLE_WEIGHTS_FILE} found"),
    })
}
const CLASSIFIER_PREFIX: &str = "classifier.";

/// `t` on `device`. From the CPU to a GPU through pinned memory and without waiting, as a
/// DataLoader with `pin_memory=True` and `.to(device, non_blocking=True)` do, so the host can
/// queue the next step while the GPU still runs this one.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    match (t.device(), device) {
        (from, to) if from == to => t.shallow_clone(),
        (Device::Cpu, Device::Cuda(_)) => t.pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}

/// The named tensors of a weights file, on the CPU: safetensors, or what `torch.save` writes
/// (`.bin`, `.pt`: a zip archive holding a pickled state dict).
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let pickle = matches!(path.extension().and_then(|e| e.to_str()), Some("bin" | "pt"));
    match pickle {
        true => torch_pickle::read_state_dict(path),
        false => Tensor::read_safetensors(path).map_err(|e| e.to_string()),
    }
    .map_err(|message| Error::Weights { path: path.to_path_buf(), message })
}

/// One batch of multiple-choice input, each tensor of shape [batch, choices, seq], int64.
pub struct ChoiceBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// What a weight load did, for a one-time report.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Model variables absent from the checkpoint and freshly initialised (the classifier).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model has no place for (e.g. `embeddings.position_ids`).
    pub unexpected: Vec<String>,
}

/// `BertForMultipleChoice`: each (question, option) sequence through BERT, the pooled [CLS]
/// through dropout and a one-unit `classifier`, the scores of a question's options as logits.
pub struct BertForMultipleChoice {
    bert: BertModel,
    classifier: nn::Linear,
    dropout: f64,
}

impl BertForMultipleChoice {
    pub fn new(p: nn::Path, c: &BertConfig) -> Self {
        BertForMultipleChoice {
            bert: BertModel::new(&p / "bert", c),
            classifier: bert::linear(&p / "classifier", c, c.hidden_size, 1),
            dropout: c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
        }
    }

    /// Logits [batch, choices] from inputs of shape [batch, choices, seq].
    pub fn forward(&self, batch: &ChoiceBatch, train: bool) -> Tensor {
        let shape = batch.input_ids.size();
        let flat = |t: &Tensor| t.view([-1, shape[2]]);
        let pooled = self.bert.pooled(
            &flat(&batch.input_ids),
            &flat(&batch.attention_mask),
            &flat(&batch.token_type_ids),
            train,
        );
        self.classifier.forward(&pooled.dropout(self.dropout, train)).view([shape[0], shape[1]])
    }
}

/// The model, its variables and its config, on one device.
pub struct MultipleChoiceModel {
    pub vs: nn::VarStore,
    pub net: BertForMultipleChoice,
    pub config: BertConfig,
}

impl MultipleChoiceModel {
    /// A model with freshly initialised weights (transformers' initialisation).
    pub fn new(config: BertConfig, device: Device) -> Result<Self> {
        config.check().map_err(|message| Error::Config { path: PathBuf::from(CONFIG_FILE), message })?;
        let vs = nn::VarStore::new(device);
        let net = BertForMultipleChoice::new(vs.root(), &config);
        Ok(MultipleChoiceModel { vs, net, config })
    }

    /// Loads `config.json` and the weights (model.safetensors or pytorch_model.bin) from an
    /// HF model directory.
    pub fn from_dir(dir: &Path, device: Device) -> Result<(Self, LoadReport)> {
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        let mut model = MultipleChoiceModel::new(config, device)?;
        let report = model.load_weights(&weights_file(dir)?)?;
        Ok((model, report))
    }

    /// Copies an HF checkpoint (safetensors, or PyTorch's pickle format for `.bin`/`.pt`)
    /// into the variables.
    pub fn load_weights(&mut self, path: &Path) -> Result<LoadReport> {
        copy_into(&self.vs.variables(), read_tensors(path)?, path)
    }

    /// Logits of shape [batch, choices] on the model's device, from a batch on that device or
    /// on the CPU. `train` turns dropout on.
    pub fn forward(&self, batch: &ChoiceBatch, train: bool) -> Result<Tensor> {
        let shape = batch.input_ids.size();
        if shape.len() != 3 {
            return Err(Error::Batch(format!("input_ids must be [batch, choices, seq], got {shape:?}")));
        }
        for (name, t) in [("attention_mask", &batch.attention_mask), ("token_type_ids", &batch.token_type_ids)] {
            if t.size() != shape {
                return Err(Error::Batch(format!("{name} has shape {:?}, input_ids {shape:?}", t.size())));
            }
        }
        let max_positions = self.config.max_position_embeddings;
        if shape[2] > max_positions {
            return Err(Error::Input(format!(
                "sequence length {} exceeds the model's {max_positions} positions",
                shape[2]
            )));
        }
        let (want, got) = (self.vs.device(), batch.input_ids.device());
        if want != got && got != Device::Cpu {
            return Err(Error::Batch(format!("batch is on {got:?} but the model is on {want:?}")));
        }
        Ok(self.net.forward(batch, train))
    }
}

/// Maps a checkpoint name to the model's: adds the `bert.` prefix of a bare encoder and
/// renames the legacy LayerNorm `gamma`/`beta` as transformers does.
fn model_name(name: &str) -> String {
    let name = match name.strip_suffix(".gamma") {
        Some(stem) => format!("{stem}.weight"),
        None => match name.strip_suffix(".beta") {
            Some(stem) => format!("{stem}.bias"),
            None => name.to_string(),
        },
    };
    if name.starts_with("bert.") || name.starts_with(CLASSIFIER_PREFIX) {
        name
    } else {
        format!("bert.{name}")
    }
}

fn copy_into(variables: &HashMap<String, Tensor>, tensors: Vec<(String, Tensor)>, path: &Path) -> Result<LoadReport> {
    let mut by_name: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
    for (name, tensor) in tensors {
        by_name.insert(model_name(&name), (name, tensor));
    }
    let mut report = LoadReport::default();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    tch::no_grad(|| -> Result<()> {
        for name in names {
            let mut var = variables[name].shallow_clone();
            match by_name.remove(name) {
                Some((_, src)) => {
                    if src.size() != var.size() {
                        return Err(Error::ShapeMismatch {
                            path: path.to_path_buf(),
                            name: name.clone(),
                            expected: var.size(),
                            found: src.size(),
                        });
                    }
                    var.f_copy_(&src)?;
                    report.loaded += 1;
                }
                None if name.starts_with(CLASSIFIER_PREFIX) => report.initialised.push(name.clone()),
                None => {
                    return Err(Error::MissingTensor {
                        path: path.to_path_buf(),
                        name: name.clone(),
                        shape: var.size(),
                    })
                }
            }
        }
        Ok(())
    })?;
    report.unexpected = by_name.into_values().map(|(original, _)| original).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::model_name;

    #[test]
    fn checkpoint_names_map_to_the_model() {
        assert_eq!(model_name("encoder.layer.0.output.dense.weight"), "bert.encoder.layer.0.output.dense.weight");
        assert_eq!(model_name("bert.pooler.dense.bias"), "bert.pooler.dense.bias");
        assert_eq!(model_name("classifier.weight"), "classifier.weight");
        assert_eq!(model_name("bert.embeddings.LayerNorm.gamma"), "bert.embeddings.LayerNorm.weight");
        assert_eq!(model_name("embeddings.LayerNorm.beta"), "bert.embeddings.LayerNorm.bias");
    }
}
