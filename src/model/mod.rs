//! `BertForMultipleChoice` built from a Hugging Face model directory: our own BERT graph
//! (bert.rs) under transformers' parameter names, and the weight loader.
//!
//! Checkpoint names follow transformers: a `BertForMultipleChoice` checkpoint carries
//! `bert.*` and `classifier.*`; a bare `BertModel` checkpoint has no `bert.` prefix; a
//! pretraining checkpoint (`BertForMaskedLM`, `BertForPreTraining`) carries `bert.*` and heads
//! under `cls.*`, and a masked-LM one no pooler. All load as transformers loads them: the
//! variables are allocated, filled from the checkpoint, and what it lacks of the pooler and the
//! classifier is initialised as transformers does; heads we have no use for are reported as
//! unused. A missing encoder tensor is an error naming it.

pub mod bert;
pub mod config;
mod torch_pickle;

use crate::error::{Error, Result};
use bert::BertModel;
pub use config::{checkpoint_config, Activation, BertConfig};
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
/// What a checkpoint may lack: transformers initialises these afresh.
const MAY_BE_MISSING: [&str; 2] = ["bert.pooler.", CLASSIFIER_PREFIX];

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
        false => Tensor::read_safetensors(path).map_err(crate::error::torch_message),
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
    /// Model variables absent from the checkpoint and freshly initialised (the classifier,
    /// and the pooler of a masked-LM checkpoint).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model has no place for (`cls.predictions.*`,
    /// `embeddings.position_ids`, ...), by their names in the checkpoint.
    pub unexpected: Vec<String>,
}

impl LoadReport {
    /// transformers' load report, as log lines: what was initialised and what was not used.
    /// Outside `training` a fresh classifier is a warning: its predictions mean nothing yet.
    pub fn log(&self, dir: &Path, training: bool) {
        if !self.initialised.is_empty() {
            let message = format!(
                "{} tensors of BertForMultipleChoice are not in the checkpoint at {} and were newly initialised: {}",
                self.initialised.len(),
                dir.display(),
                self.initialised.join(", ")
            );
            match training {
                true => tracing::info!("{message}"),
                false => tracing::warn!("{message}; train the model before using its predictions"),
            }
        }
        if !self.unexpected.is_empty() {
            tracing::info!(
                "{} tensors of the checkpoint at {} were not used (heads and buffers BertForMultipleChoice has no \
                 place for): {}",
                self.unexpected.len(),
                dir.display(),
                abbreviate(&self.unexpected)
            );
        }
    }
}

/// Names grouped by their module path's first two parts (`cls.predictions.* (7 tensors)`),
/// so a head's dozens of tensors take one entry.
fn abbreviate(names: &[String]) -> String {
    // (the group's prefix, its first name, how many)
    let mut groups: Vec<(String, &str, usize)> = Vec::new();
    for name in names {
        let parts: Vec<&str> = name.splitn(3, '.').collect();
        let prefix = if parts.len() == 3 { format!("{}.{}.", parts[0], parts[1]) } else { name.clone() };
        match groups.last_mut() {
            Some((p, _, n)) if *p == prefix => *n += 1,
            _ => groups.push((prefix, name, 1)),
        }
    }
    let shown: Vec<String> = groups
        .into_iter()
        .map(|(prefix, first, n)| if n == 1 { first.to_string() } else { format!("{prefix}* ({n} tensors)") })
        .collect();
    shown.join(", ")
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
            classifier: bert::linear(&p / "classifier", c.hidden_size, 1),
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
        let model = MultipleChoiceModel::allocate(config, device)?;
        let variables = model.vs.variables();
        let mut names: Vec<&String> = variables.keys().collect();
        names.sort();
        for name in names {
            bert::initialise(name, &variables[name], &model.config);
        }
        Ok(model)
    }

    /// The variables allocated and unset, for a checkpoint to fill.
    fn allocate(config: BertConfig, device: Device) -> Result<Self> {
        config.check().map_err(|message| Error::Config { path: PathBuf::from(CONFIG_FILE), message })?;
        let vs = nn::VarStore::new(device);
        let net = BertForMultipleChoice::new(vs.root(), &config);
        Ok(MultipleChoiceModel { vs, net, config })
    }

    /// Loads `config.json` and the weights (model.safetensors or pytorch_model.bin) from an
    /// HF model directory; what the checkpoint lacks of the pooler and the classifier is
    /// initialised (listed in the report).
    pub fn from_dir(dir: &Path, device: Device) -> Result<(Self, LoadReport)> {
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        let mut model = MultipleChoiceModel::allocate(config, device)?;
        let report = model.load_weights(&weights_file(dir)?)?;
        Ok((model, report))
    }

    /// Copies an HF checkpoint (safetensors, or PyTorch's pickle format for `.bin`/`.pt`)
    /// into the variables, then initialises the pooler and classifier tensors it lacks.
    pub fn load_weights(&mut self, path: &Path) -> Result<LoadReport> {
        let variables = self.vs.variables();
        let report = copy_into(&variables, read_tensors(path)?, path)?;
        for name in &report.initialised {
            bert::initialise(name, &variables[name], &self.config);
        }
        Ok(report)
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
                None if MAY_BE_MISSING.iter().any(|p| name.starts_with(p)) => report.initialised.push(name.clone()),
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
    use super::*;

    fn small() -> BertConfig {
        BertConfig {
            vocab_size: 400,
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            pad_token_id: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_model_starts_as_transformers_initialises_it() {
        tch::manual_seed(0);
        let model = MultipleChoiceModel::new(small(), Device::Cpu).unwrap();
        let vars = model.vs.variables();
        let all = |name: &str, value: f64| vars[name].eq(value).all().int64_value(&[]) == 1;
        assert!(all("bert.encoder.layer.1.output.LayerNorm.weight", 1.0));
        assert!(all("bert.embeddings.LayerNorm.bias", 0.0) && all("classifier.bias", 0.0));
        assert!(all("bert.encoder.layer.0.attention.self.query.bias", 0.0));
        let words = &vars["bert.embeddings.word_embeddings.weight"];
        assert!(words.get(3).eq(0.0).all().int64_value(&[]) == 1, "the padding row starts at zero");
        for name in ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.intermediate.dense.weight"] {
            let std = vars[name].std(true).double_value(&[]);
            assert!((0.019..0.021).contains(&std), "{name}: std {std}");
        }
    }

    #[test]
    fn names_are_grouped_by_head_in_the_report() {
        let names: Vec<String> = [
            "cls.predictions.bias",
            "cls.predictions.transform.dense.weight",
            "cls.seq_relationship.weight",
            "embeddings.position_ids",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            abbreviate(&names),
            "cls.predictions.* (2 tensors), cls.seq_relationship.weight, embeddings.position_ids"
        );
    }

    #[test]
    fn checkpoint_names_map_to_the_model() {
        assert_eq!(model_name("encoder.layer.0.output.dense.weight"), "bert.encoder.layer.0.output.dense.weight");
        assert_eq!(model_name("bert.pooler.dense.bias"), "bert.pooler.dense.bias");
        assert_eq!(model_name("classifier.weight"), "classifier.weight");
        assert_eq!(model_name("bert.embeddings.LayerNorm.gamma"), "bert.embeddings.LayerNorm.weight");
        assert_eq!(model_name("embeddings.LayerNorm.beta"), "bert.embeddings.LayerNorm.bias");
    }
}
