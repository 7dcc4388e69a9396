//! The multiple-choice model of a Hugging Face model directory's family (`BertForMultipleChoice`,
//! `RobertaForMultipleChoice`, `ElectraForMultipleChoice`): our own encoder graph (encoder.rs)
//! under transformers' parameter names, the family's head, and the weight loader.
//!
//! Checkpoint names follow transformers: a multiple-choice checkpoint carries the base model
//! under its prefix (`bert.*`, `roberta.*`, `electra.*`) and the head (`classifier.*`, and
//! ELECTRA's `sequence_summary.*`); a bare base model (`BertModel`, `RobertaModel`) has no
//! prefix; a pretraining checkpoint (`BertForMaskedLM`, `RobertaForMaskedLM`,
//! `ElectraForPreTraining`) carries the prefix and heads we have no use for, and a masked-LM
//! one no pooler. All load as transformers loads them: the variables are allocated, filled from
//! the checkpoint, and what it lacks of the pooler and the head is initialised as transformers
//! does; unused heads are reported. A missing encoder tensor is an error naming it.

pub mod config;
mod encoder;
mod load;
mod torch_pickle;

pub use crate::device::upload;
use crate::error::{Error, Result};
pub use crate::files::{CONFIG_FILE, PICKLE_WEIGHTS_FILE, WEIGHTS_FILE};
pub use config::{checkpoint_config, Activation, Family, ModelConfig};
use encoder::Encoder;
use load::copy_into;
pub use load::{read_tensors, weights_file, LoadReport};
use std::path::{Path, PathBuf};
use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// One batch of multiple-choice input, each tensor of shape [batch, choices, seq], int64.
pub struct ChoiceBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// What turns a sequence's first token into the vector the classifier scores.
enum Summary {
    /// BERT's and RoBERTa's: the base model's pooler (`<prefix>.pooler.dense`, tanh), then
    /// dropout (BERT: `classifier_dropout`, else `hidden_dropout_prob`; RoBERTa:
    /// `hidden_dropout_prob`).
    Pooler { dense: nn::Linear, dropout: f64 },
    /// ELECTRA's `sequence_summary`: dropout, the `summary` projection, the activation, dropout,
    /// each as the config's `summary_*` fields say.
    Sequence { first_dropout: f64, dense: Option<nn::Linear>, activation: Option<Activation>, last_dropout: f64 },
}

impl Summary {
    fn new(p: &nn::Path, c: &ModelConfig) -> Summary {
        let h = c.hidden_size;
        match c.family {
            Family::Bert | Family::Roberta => Summary::Pooler {
                dense: encoder::linear(p / c.family.prefix() / "pooler" / "dense", h, h),
                dropout: match c.family {
                    Family::Bert => c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
                    _ => c.hidden_dropout_prob,
                },
            },
            Family::Electra => Summary::Sequence {
                first_dropout: c.summary_first_dropout.unwrap_or(0.0),
                dense: (c.summary_use_proj == Some(true))
                    .then(|| encoder::linear(p / "sequence_summary" / "summary", h, h)),
                activation: c.summary_activation().expect("checked with the config"),
                last_dropout: c.summary_last_dropout.unwrap_or(0.0),
            },
        }
    }

    fn forward(&self, first: &Tensor, train: bool) -> Tensor {
        match self {
            Summary::Pooler { dense, dropout } => dense.forward(first).tanh().dropout(*dropout, train),
            Summary::Sequence { first_dropout, dense, activation, last_dropout } => {
                let mut x = first.dropout(*first_dropout, train);
                if let Some(dense) = dense {
                    x = dense.forward(&x);
                }
                if let Some(activation) = activation {
                    x = encoder::activate(*activation, &x);
                }
                x.dropout(*last_dropout, train)
            }
        }
    }
}

/// A family's `...ForMultipleChoice`: each (question, option) sequence through the encoder,
/// its first token through the family's summary and a one-unit `classifier`, the scores of a
/// question's options as logits.
pub struct ForMultipleChoice {
    encoder: Encoder,
    summary: Summary,
    classifier: nn::Linear,
}

impl ForMultipleChoice {
    pub fn new(p: nn::Path, c: &ModelConfig) -> Self {
        ForMultipleChoice {
            encoder: Encoder::new(&(&p / c.family.prefix()), c),
            summary: Summary::new(&p, c),
            classifier: encoder::linear(&p / "classifier", c.hidden_size, 1),
        }
    }

    /// Logits [batch, choices] from inputs of shape [batch, choices, seq].
    pub fn forward(&self, batch: &ChoiceBatch, train: bool) -> Tensor {
        let shape = batch.input_ids.size();
        let flat = |t: &Tensor| t.view([-1, shape[2]]);
        let first = self.encoder.first_tokens(
            &flat(&batch.input_ids),
            &flat(&batch.attention_mask),
            &flat(&batch.token_type_ids),
            train,
        );
        self.classifier.forward(&self.summary.forward(&first, train)).view([shape[0], shape[1]])
    }
}

/// The model, its variables and its config, on one device.
pub struct MultipleChoiceModel {
    pub vs: nn::VarStore,
    pub net: ForMultipleChoice,
    pub config: ModelConfig,
}

impl MultipleChoiceModel {
    /// A model with freshly initialised weights (transformers' initialisation).
    pub fn new(config: ModelConfig, device: Device) -> Result<Self> {
        let model = MultipleChoiceModel::allocate(config, device)?;
        let variables = model.vs.variables();
        let mut names: Vec<&String> = variables.keys().collect();
        names.sort();
        for name in names {
            encoder::initialise(name, &variables[name], &model.config);
        }
        Ok(model)
    }

    /// The variables allocated and unset, for a checkpoint to fill.
    fn allocate(config: ModelConfig, device: Device) -> Result<Self> {
        config.check().map_err(|message| Error::Config { path: PathBuf::from(CONFIG_FILE), message })?;
        let vs = nn::VarStore::new(device);
        let net = ForMultipleChoice::new(vs.root(), &config);
        Ok(MultipleChoiceModel { vs, net, config })
    }

    /// Loads `config.json` and the weights (model.safetensors, pytorch_model.bin, or either's
    /// shards) from an HF model directory; what the checkpoint lacks of the pooler and the head
    /// is initialised (listed in the report).
    pub fn from_dir(dir: &Path, device: Device) -> Result<(Self, LoadReport)> {
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
        let mut model = MultipleChoiceModel::allocate(config, device)?;
        let report = model.load_weights(&weights_file(dir)?)?;
        Ok((model, report))
    }

    /// Copies an HF checkpoint (safetensors, or PyTorch's pickle format for `.bin`/`.pt`)
    /// into the variables, then initialises the pooler and head tensors it lacks.
    pub fn load_weights(&mut self, path: &Path) -> Result<LoadReport> {
        let variables = self.vs.variables();
        let report = copy_into(&variables, read_tensors(path)?, path, self.config.family)?;
        for name in &report.initialised {
            encoder::initialise(name, &variables[name], &self.config);
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
        let max_length = self.config.max_length();
        if shape[2] > max_length {
            return Err(Error::Input(format!(
                "sequence length {} exceeds the model's {max_length} positions",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig {
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
}
