//! A BERT model's shape and regularisation, read from a Hugging Face `config.json` with
//! transformers' field names and defaults (`BertConfig`).

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The activation of the feed-forward block (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
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
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier; `hidden_dropout_prob` when absent.
    pub classifier_dropout: Option<f64>,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub position_embedding_type: String,
}

impl Default for BertConfig {
    /// transformers' `BertConfig()`: the bert-base-uncased shape.
    fn default() -> Self {
        BertConfig {
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
            position_embedding_type: "absolute".into(),
        }
    }
}

/// The model families medbert builds, by `model_type`.
pub const SUPPORTED_MODEL_TYPES: [&str; 1] = ["bert"];

/// Refuses a config.json of another family than BERT, before any weight is read: by its
/// `model_type`, or where an old config has none (BERT's TF code wrote none), by its
/// `architectures` (transformers' class names: `Bert*`).
fn require_bert(config: &serde_json::Value) -> std::result::Result<(), String> {
    let supported = SUPPORTED_MODEL_TYPES.join(", ");
    match config.get("model_type") {
        Some(serde_json::Value::String(t)) if SUPPORTED_MODEL_TYPES.contains(&t.as_str()) => Ok(()),
        Some(t) => Err(format!("model_type {t} is not supported (supported: {supported})")),
        None => match config.get("architectures").and_then(|a| a.as_array()) {
            Some(classes) if classes.iter().any(|c| !c.as_str().is_some_and(|c| c.starts_with("Bert"))) => {
                Err(format!(
                    "no model_type, and architectures {} are not BERT's (supported: {supported})",
                    serde_json::Value::Array(classes.clone())
                ))
            }
            _ => Ok(()),
        },
    }
}

/// The config.json a checkpoint of ours carries: the source model's, every field kept, with
/// what transformers' `save_pretrained` writes for a `BertForMultipleChoice` (its
/// `architectures`, and `model_type` where an old config lacks it, so that the Auto classes
/// load the checkpoint).
pub fn checkpoint_config(source: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(source).map_err(|e| Error::io(source, e))?;
    let err = |message: String| Error::Config { path: source.to_path_buf(), message };
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let fields = config.as_object_mut().ok_or_else(|| err("expected a JSON object".into()))?;
    fields.insert("architectures".into(), serde_json::json!(["BertForMultipleChoice"]));
    fields.entry("model_type").or_insert_with(|| "bert".into());
    serde_json::to_vec_pretty(&config).map_err(|e| Error::write(source, e))
}

impl BertConfig {
    /// Reads and checks `config.json`; errors name the file and the field.
    /// Reads `config.json`: a BERT's (its `model_type`, or for an old config without one its
    /// `architectures`, decides; never the tensor names), in a shape this implementation builds.
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let err = |message: String| Error::Config { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        require_bert(&value).map_err(err)?;
        let config: BertConfig = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        config.check().map_err(err)?;
        Ok(config)
    }

    /// What this implementation cannot build, as a message naming the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "field `position_embedding_type`: \"{}\" is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
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
        ];
        for (field, p) in probabilities {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(format!("field `{field}`: a dropout probability in [0, 1) is needed, got {p}"));
            }
        }
        if !(0..self.vocab_size).contains(&self.pad_token_id) {
            return Err(format!("field `pad_token_id`: {} is outside the vocabulary", self.pad_token_id));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// The same model without dropout (for comparisons with a reference).
    pub fn without_dropout(mut self) -> BertConfig {
        self.hidden_dropout_prob = 0.0;
        self.attention_probs_dropout_prob = 0.0;
        self.classifier_dropout = Some(0.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<BertConfig, String> {
        let config: BertConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        config.check().map(|_| config)
    }

    #[test]
    fn absent_fields_take_transformers_defaults() {
        let c = parse(r#"{"hidden_size": 384, "num_attention_heads": 12, "hidden_act": "gelu_new"}"#).unwrap();
        assert_eq!((c.hidden_size, c.head_dim(), c.num_hidden_layers), (384, 32, 12));
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!((c.layer_norm_eps, c.pad_token_id, c.type_vocab_size), (1e-12, 0, 2));
    }

    #[test]
    fn the_model_type_decides_the_family() {
        let refused = |json: &str| require_bert(&serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(require_bert(&serde_json::json!({"model_type": "bert"})).is_ok());
        assert!(require_bert(&serde_json::json!({"hidden_size": 768})).is_ok(), "old BERT configs have no model_type");
        assert!(require_bert(&serde_json::json!({"architectures": ["BertForPreTraining"]})).is_ok());
        let err = refused(r#"{"model_type": "deberta-v2", "type_vocab_size": 0}"#);
        assert_eq!(err, r#"model_type "deberta-v2" is not supported (supported: bert)"#);
        assert!(refused(r#"{"model_type": "roberta"}"#).contains(r#""roberta""#));
        assert!(refused(r#"{"architectures": ["RobertaModel"]}"#).contains("RobertaModel"));
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
    }
}
