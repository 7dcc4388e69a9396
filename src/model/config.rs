//! A model's family, shape and regularisation, read from a Hugging Face `config.json` with
//! transformers' field names and each family's defaults (`BertConfig`, `RobertaConfig`,
//! `ElectraConfig`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An activation by transformers' name (`hidden_act`, ELECTRA's `summary_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// The exact, erf-based GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    #[serde(rename = "tanh")]
    Tanh,
}

/// The encoder families medbert builds; `model_type` decides, never the tensor names. They share
/// the layers and differ in the embeddings and the multiple-choice head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// `BertForMultipleChoice`: positions from 0, two token types, the pooler (dense + tanh on
    /// [CLS]), dropout and the classifier.
    #[default]
    Bert,
    /// `RobertaForMultipleChoice`: positions counted from `pad_token_id + 1` over the tokens that
    /// are not padding, token type 0 throughout (RoBERTa's tokenizer gives none), BERT's head
    /// with `hidden_dropout_prob` before the classifier.
    Roberta,
    /// `ElectraForMultipleChoice`: embeddings of `embedding_size` projected to the hidden size
    /// where they differ, no pooler; the head is the sequence summary of [CLS] (dense,
    /// activation, dropout) and the classifier.
    Electra,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Bert, Family::Roberta, Family::Electra];

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::Electra => "electra",
        }
    }

    /// The base model's prefix in a multiple-choice checkpoint (`base_model_prefix`).
    pub fn prefix(self) -> &'static str {
        self.model_type()
    }

    /// The class name of its multiple-choice model, as checkpoints' `architectures` name it.
    pub fn class(self) -> &'static str {
        match self {
            Family::Bert => "BertForMultipleChoice",
            Family::Roberta => "RobertaForMultipleChoice",
            Family::Electra => "ElectraForMultipleChoice",
        }
    }

    /// The start of its classes' names (`RobertaModel`, `ElectraForPreTraining`, ...).
    fn class_stem(self) -> &'static str {
        &self.class()[..self.class().len() - "ForMultipleChoice".len()]
    }

    /// transformers' config class defaults for the fields medbert reads.
    fn defaults(self) -> ModelConfig {
        let bert = ModelConfig::default();
        match self {
            Family::Bert => bert,
            Family::Roberta => ModelConfig { family: self, vocab_size: 50265, pad_token_id: 1, ..bert },
            Family::Electra => ModelConfig {
                family: self,
                embedding_size: Some(128),
                hidden_size: 256,
                num_attention_heads: 4,
                intermediate_size: 1024,
                summary_type: Some("first".into()),
                summary_use_proj: Some(true),
                summary_activation: Some("gelu".into()),
                summary_last_dropout: Some(0.1),
                ..bert
            },
        }
    }
}

/// Comma-separated `model_type`s of [`Family::ALL`].
pub fn supported_model_types() -> String {
    Family::ALL.map(Family::model_type).join(", ")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Decided by `model_type` (or an old config's `architectures`), not a field of its own.
    #[serde(skip)]
    pub family: Family,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Dropout before BERT's classifier; `hidden_dropout_prob` when absent.
    pub classifier_dropout: Option<f64>,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    /// BERT's; transformers 5 reads it no more and RoBERTa's and ELECTRA's configs may lack it.
    pub position_embedding_type: Option<String>,
    /// ELECTRA: the width of the embeddings (`hidden_size` when absent).
    pub embedding_size: Option<i64>,
    /// ELECTRA's sequence summary (`ElectraSequenceSummary`), by its config fields.
    pub summary_type: Option<String>,
    pub summary_use_proj: Option<bool>,
    pub summary_proj_to_labels: Option<bool>,
    pub summary_activation: Option<String>,
    pub summary_first_dropout: Option<f64>,
    pub summary_last_dropout: Option<f64>,
}

impl Default for ModelConfig {
    /// transformers' `BertConfig()`: the bert-base-uncased shape.
    fn default() -> Self {
        ModelConfig {
            family: Family::Bert,
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            classifier_dropout: None,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: None,
            embedding_size: None,
            summary_type: None,
            summary_use_proj: None,
            summary_proj_to_labels: None,
            summary_activation: None,
            summary_first_dropout: None,
            summary_last_dropout: None,
        }
    }
}

/// The family of a config.json, before any weight is read: its `model_type`, or where an old
/// config has none (BERT's TF code wrote none), its `architectures` (transformers' class
/// names: `Bert*`, `Roberta*`, `Electra*`); neither means BERT.
fn family_of(config: &serde_json::Value) -> std::result::Result<Family, String> {
    let supported = supported_model_types();
    match config.get("model_type") {
        Some(serde_json::Value::String(t)) => Family::ALL
            .into_iter()
            .find(|f| f.model_type() == t)
            .ok_or_else(|| format!("model_type \"{t}\" is not supported (supported: {supported})")),
        Some(t) => Err(format!("model_type {t} is not supported (supported: {supported})")),
        None => {
            let Some(classes) = config.get("architectures").and_then(|a| a.as_array()) else {
                return Ok(Family::Bert);
            };
            let of = |class: &serde_json::Value| {
                Family::ALL.into_iter().find(|f| class.as_str().is_some_and(|c| c.starts_with(f.class_stem())))
            };
            let families: Vec<Option<Family>> = classes.iter().map(of).collect();
            match families.first() {
                None => Ok(Family::Bert),
                Some(Some(family)) if families.iter().all(|f| *f == Some(*family)) => Ok(*family),
                _ => Err(format!(
                    "no model_type, and architectures {} are not of one supported family ({supported})",
                    serde_json::Value::Array(classes.clone())
                )),
            }
        }
    }
}

/// The config.json a checkpoint of ours carries: the source model's, every field kept, with
/// what transformers' `save_pretrained` writes for the family's multiple-choice model (its
/// `architectures`, and `model_type` where an old config lacks it, so that the Auto classes
/// load the checkpoint).
pub fn checkpoint_config(source: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(source).map_err(|e| Error::io(source, e))?;
    let err = |message: String| Error::Config { path: source.to_path_buf(), message };
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let family = family_of(&config).map_err(err)?;
    let fields = config.as_object_mut().ok_or_else(|| err("expected a JSON object".into()))?;
    fields.insert("architectures".into(), serde_json::json!([family.class()]));
    fields.entry("model_type").or_insert_with(|| family.model_type().into());
    serde_json::to_vec_pretty(&config).map_err(|e| Error::write(source, e))
}

impl ModelConfig {
    /// Reads `config.json`: its family (see [`family_of`]; never the tensor names), each
    /// absent field at that family's default, in a shape this implementation builds. Errors
    /// name the file and the field.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let err = |message: String| Error::Config { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let config = ModelConfig::from_json(&value).map_err(err)?;
        config.check().map_err(err)?;
        Ok(config)
    }

    fn from_json(value: &serde_json::Value) -> std::result::Result<ModelConfig, String> {
        let family = family_of(value)?;
        let given = value.as_object().ok_or("expected a JSON object")?;
        let mut fields = match serde_json::to_value(family.defaults()) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => unreachable!("a config serialises as an object"),
        };
        for (key, v) in given {
            if let Some(field) = fields.get_mut(key) {
                *field = v.clone();
            }
        }
        let config: ModelConfig = serde_json::from_value(fields.into()).map_err(|e| e.to_string())?;
        Ok(ModelConfig { family, ..config })
    }

    /// What this implementation cannot build, as a message naming the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            return Err(format!("field `position_embedding_type`: \"{kind}\" is not supported (only \"absolute\")"));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("embedding_size", self.embedding_width()),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((field, value)) = positive.iter().find(|(_, v)| *v < 1) {
            return Err(format!("field `{field}`: must be at least 1, got {value}"));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "field `num_attention_heads`: {} heads do not divide `hidden_size` {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        let probabilities = [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            ("attention_probs_dropout_prob", Some(self.attention_probs_dropout_prob)),
            ("classifier_dropout", self.classifier_dropout),
            ("summary_first_dropout", self.summary_first_dropout),
            ("summary_last_dropout", self.summary_last_dropout),
        ];
        for (field, p) in probabilities {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!("field `{field}`: a dropout probability in [0, 1) is needed, got {p}"));
            }
        }
        if !(0..self.vocab_size).contains(&self.pad_token_id) {
            return Err(format!("field `pad_token_id`: {} is outside the vocabulary", self.pad_token_id));
        }
        if self.max_length() < 1 {
            return Err(format!(
                "field `max_position_embeddings`: {} leaves no position after RoBERTa's padding offset \
                 (`pad_token_id` {} + 1)",
                self.max_position_embeddings, self.pad_token_id
            ));
        }
        if self.family == Family::Electra {
            let summary = self.summary_type.as_deref().unwrap_or("last");
            if summary != "first" {
                return Err(format!(
                    "field `summary_type`: \"{summary}\" is not supported (only \"first\", ELECTRA's: the others \
                     read padding)"
                ));
            }
            if self.summary_proj_to_labels == Some(true) && self.summary_use_proj == Some(true) {
                return Err("field `summary_proj_to_labels`: true is not supported (a multiple-choice head projects \
                            to the hidden size)"
                    .into());
            }
            self.summary_activation()?;
        }
        Ok(())
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// The width of the embedding tables: ELECTRA's `embedding_size`, else the hidden size.
    pub fn embedding_width(&self) -> i64 {
        match self.family {
            Family::Electra => self.embedding_size.unwrap_or(self.hidden_size),
            _ => self.hidden_size,
        }
    }

    /// The longest sequence the position embeddings hold: RoBERTa's positions start after
    /// `pad_token_id` (514 positions hold 512 tokens).
    pub fn max_length(&self) -> i64 {
        match self.family {
            Family::Roberta => self.max_position_embeddings - self.pad_token_id - 1,
            _ => self.max_position_embeddings,
        }
    }

    /// ELECTRA's summary activation: none for an absent, empty or `"linear"` name, as
    /// transformers' `get_activation`.
    pub fn summary_activation(&self) -> std::result::Result<Option<Activation>, String> {
        match self.summary_activation.as_deref() {
            None | Some("" | "linear") => Ok(None),
            Some(name) => serde_json::from_value(name.into())
                .map(Some)
                .map_err(|_| format!("field `summary_activation`: \"{name}\" is not supported")),
        }
    }

    /// The same model without dropout (for comparisons with a reference).
    pub fn without_dropout(mut self) -> ModelConfig {
        self.hidden_dropout_prob = 0.0;
        self.attention_probs_dropout_prob = 0.0;
        self.classifier_dropout = Some(0.0);
        self.summary_first_dropout = None;
        self.summary_last_dropout = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<ModelConfig, String> {
        let config = ModelConfig::from_json(&serde_json::from_str(json).unwrap())?;
        config.check().map(|_| config)
    }

    #[test]
    fn absent_fields_take_transformers_defaults() {
        let c = parse(r#"{"hidden_size": 384, "num_attention_heads": 12, "hidden_act": "gelu_new"}"#).unwrap();
        assert_eq!((c.hidden_size, c.head_dim(), c.num_hidden_layers), (384, 32, 12));
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!((c.layer_norm_eps, c.pad_token_id, c.type_vocab_size), (1e-12, 0, 2));
        let r = parse(r#"{"model_type": "roberta", "max_position_embeddings": 514}"#).unwrap();
        assert_eq!((r.family, r.pad_token_id, r.vocab_size, r.max_length()), (Family::Roberta, 1, 50265, 512));
        let e = parse(r#"{"model_type": "electra"}"#).unwrap();
        assert_eq!(
            (e.family, e.embedding_width(), e.hidden_size, e.num_attention_heads),
            (Family::Electra, 128, 256, 4)
        );
        assert_eq!((e.summary_activation(), e.summary_last_dropout), (Ok(Some(Activation::Gelu)), Some(0.1)));
    }

    #[test]
    fn the_model_type_decides_the_family() {
        let family = |json: serde_json::Value| family_of(&json);
        assert_eq!(family(serde_json::json!({"model_type": "bert"})), Ok(Family::Bert));
        assert_eq!(family(serde_json::json!({"hidden_size": 768})), Ok(Family::Bert), "old BERT configs have none");
        assert_eq!(family(serde_json::json!({"architectures": ["BertForPreTraining"]})), Ok(Family::Bert));
        assert_eq!(family(serde_json::json!({"architectures": ["RobertaModel"]})), Ok(Family::Roberta));
        assert_eq!(family(serde_json::json!({"model_type": "electra", "architectures": ["X"]})), Ok(Family::Electra));
        let err = family(serde_json::json!({"model_type": "deberta-v2", "type_vocab_size": 0})).unwrap_err();
        assert_eq!(err, r#"model_type "deberta-v2" is not supported (supported: bert, roberta, electra)"#);
        let err = family(serde_json::json!({"architectures": ["AlbertModel"]})).unwrap_err();
        assert!(err.contains("AlbertModel"), "{err}");
    }

    #[test]
    fn unsupported_configs_name_the_field() {
        let err = parse(r#"{"hidden_size": 384, "num_attention_heads": 7}"#).unwrap_err();
        assert!(err.contains("`num_attention_heads`") && err.contains("384"), "{err}");
        let err = parse(r#"{"position_embedding_type": "relative_key"}"#).unwrap_err();
        assert!(err.contains("`position_embedding_type`") && err.contains("relative_key"), "{err}");
        let err = parse(r#"{"hidden_dropout_prob": 1.5}"#).unwrap_err();
        assert!(err.contains("`hidden_dropout_prob`"), "{err}");
        let err = parse(r#"{"hidden_act": "mish"}"#).unwrap_err();
        assert!(err.contains("mish"), "{err}");
        let err = parse(r#"{"num_attention_heads": 0}"#).unwrap_err();
        assert!(err.contains("`num_attention_heads`"), "{err}");
        let err = parse(r#"{"model_type": "electra", "summary_type": "mean"}"#).unwrap_err();
        assert!(err.contains("`summary_type`") && err.contains("mean"), "{err}");
        let err = parse(r#"{"model_type": "electra", "summary_activation": "mish"}"#).unwrap_err();
        assert!(err.contains("`summary_activation`"), "{err}");
        let err = parse(r#"{"model_type": "roberta", "max_position_embeddings": 2}"#).unwrap_err();
        assert!(err.contains("`max_position_embeddings`"), "{err}");
    }
}
