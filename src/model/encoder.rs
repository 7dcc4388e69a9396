//! The encoder the BERT family shares, read top to bottom as transformers' modeling_bert.py:
//! embeddings (where RoBERTa and ELECTRA differ: positions, token types, ELECTRA's narrower
//! tables and their projection), then a stack of layers (self-attention through
//! `scaled_dot_product_attention`, then the feed-forward block). Variable names are the
//! checkpoint's (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.
//! weight`, ...); variables are allocated unset and what no checkpoint fills gets transformers'
//! `_init_weights` ([`initialise`]).
//!
//! Two things differ from transformers in how, never in what, is computed:
//! - Padding is never computed on. Hidden states hold only the real tokens, packed as
//!   [tokens, hidden]; they are laid out padded only around attention, which masks padding
//!   keys. A padding token cannot change a real token's output, so the results are the same.
//! - The last layer computes its attention output and feed-forward block for the [CLS] tokens
//!   alone: nothing else reaches a multiple-choice head, so its output is the same.

use super::config::{Activation, Family, ModelConfig};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// A variable of shape `dims` at `p / name`, allocated but not yet set: a checkpoint fills
/// it, and [`initialise`] sets what the checkpoint lacks (transformers' order: allocate, load,
/// initialise the rest).
fn param(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    p.add(name, Tensor::empty(dims, (p.kind(), p.device())), true)
}

/// transformers' `_init_weights`, by the kind of module `name` belongs to: LayerNorm weight 1
/// and bias 0; linear weights and embedding tables N(0, initializer_range), the padding row of
/// a table with a `padding_idx` 0 (the word embeddings', and RoBERTa's positions'); every other
/// bias 0.
pub(crate) fn initialise(name: &str, var: &Tensor, c: &ModelConfig) {
    tch::no_grad(|| {
        let mut var = var.shallow_clone();
        if name.ends_with("LayerNorm.weight") {
            let _ = var.fill_(1.0);
        } else if name.ends_with(".bias") {
            let _ = var.zero_();
        } else {
            let _ = var.normal_(0.0, c.initializer_range);
            let padded = name.ends_with("word_embeddings.weight")
                || (c.family == Family::Roberta && name.ends_with("position_embeddings.weight"));
            if padded {
                let _ = var.get(c.pad_token_id).zero_();
            }
        }
    })
}

/// A linear layer's `weight` [output, input] and `bias` [output].
pub(crate) fn linear(p: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::Linear { ws: param(&p, "weight", &[output, input]), bs: Some(param(&p, "bias", &[output])) }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(p: nn::Path, width: i64, c: &ModelConfig) -> Self {
        LayerNorm { weight: param(&p, "weight", &[width]), bias: param(&p, "bias", &[width]), eps: c.layer_norm_eps }
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let width = [self.weight.size()[0]];
        xs.layer_norm(width, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// An embedding table [rows, width]; the padding row gets no gradient, as
/// `nn.Embedding(padding_idx=...)`.
#[derive(Debug)]
struct Embedding {
    weight: Tensor,
    padding_idx: i64,
}

impl Embedding {
    fn new(p: nn::Path, rows: i64, width: i64, padding_idx: Option<i64>) -> Self {
        Embedding { weight: param(&p, "weight", &[rows, width]), padding_idx: padding_idx.unwrap_or(-1) }
    }
}

impl Module for Embedding {
    fn forward(&self, xs: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, xs, self.padding_idx, false, false)
    }
}

/// Where the real tokens of a padded [sequences, seq] batch are: their flat indices (in
/// order) and the padding mask attention needs.
struct Packing {
    sequences: i64,
    len: i64,
    /// Flat indices (row * len + position) of the real tokens.
    index: Tensor,
    /// Each sequence's first token ([CLS]) among the packed tokens.
    first: Tensor,
    /// [sequences, 1, 1, seq], true where a key may be attended to.
    mask: Tensor,
}

impl Packing {
    /// Computed where the mask is (the CPU, for batches straight from the cache, so nothing
    /// waits for the GPU) and placed on `device`.
    fn new(attention_mask: &Tensor, device: Device) -> Packing {
        let (sequences, len) = attention_mask.size2().expect("attention_mask is [sequences, seq]");
        let real = attention_mask.to_kind(Kind::Bool);
        let index = real.view([-1]).nonzero().squeeze_dim(1);
        let lengths = real.sum_dim_intlist(1, false, Kind::Int64);
        let first = lengths.cumsum(0, Kind::Int64) - &lengths;
        Packing {
            sequences,
            len,
            index: super::upload(&index, device),
            first: super::upload(&first, device),
            mask: super::upload(&real.view([sequences, 1, 1, len]), device),
        }
    }

    /// The real tokens' rows of a padded [sequences, seq, ...] tensor, as [tokens, ...].
    fn pack(&self, padded: &Tensor) -> Tensor {
        let mut flat = padded.size();
        flat.splice(0..2, [self.sequences * self.len]);
        padded.reshape(flat).index_select(0, &self.index)
    }

    /// Packed [tokens, width] rows laid out as [sequences, seq, width], zeros at padding.
    fn unpack(&self, packed: &Tensor) -> Tensor {
        let width = packed.size()[1];
        let padded = Tensor::zeros([self.sequences * self.len, width], (packed.kind(), packed.device()));
        padded.index_copy(0, &self.index, packed).view([self.sequences, self.len, width])
    }

    fn positions(&self) -> Tensor {
        self.index.remainder(self.len)
    }
}

pub struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
    family: Family,
    pad_token_id: i64,
}

impl Embeddings {
    fn new(p: nn::Path, c: &ModelConfig) -> Self {
        let (width, pad) = (c.embedding_width(), c.pad_token_id);
        let position_padding = (c.family == Family::Roberta).then_some(pad);
        Embeddings {
            word_embeddings: Embedding::new(&p / "word_embeddings", c.vocab_size, width, Some(pad)),
            position_embeddings: Embedding::new(
                &p / "position_embeddings",
                c.max_position_embeddings,
                width,
                position_padding,
            ),
            token_type_embeddings: Embedding::new(&p / "token_type_embeddings", c.type_vocab_size, width, None),
            layer_norm: LayerNorm::new(&p / "LayerNorm", width, c),
            dropout: c.hidden_dropout_prob,
            family: c.family,
            pad_token_id: pad,
        }
    }

    /// The packed tokens' embeddings, [tokens, width], from padded `input_ids` and
    /// `token_type_ids` on `packing`'s device.
    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, packing: &Packing, train: bool) -> Tensor {
        let ids = packing.pack(input_ids);
        let (positions, token_types) = match self.family {
            Family::Bert | Family::Electra => (packing.positions(), packing.pack(token_type_ids)),
            // fairseq's positions, as transformers' `create_position_ids_from_input_ids`: the
            // count of non-padding ids up to each token, after `pad_token_id`; RoBERTa's
            // tokenizer gives no token types, so the model's buffer of zeros is used.
            Family::Roberta => {
                let counted = input_ids.ne(self.pad_token_id);
                let positions = counted.cumsum(1, Kind::Int64) * &counted + self.pad_token_id;
                (packing.pack(&positions), ids.zeros_like())
            }
        };
        let embeddings = self.word_embeddings.forward(&ids)
            + self.token_type_embeddings.forward(&token_types)
            + self.position_embeddings.forward(&positions);
        self.layer_norm.forward(&embeddings).dropout(self.dropout, train)
    }
}

/// `attention.self` and `attention.output`: multi-head self-attention, projection, residual.
struct Attention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    dense: nn::Linear,
    layer_norm: LayerNorm,
    heads: i64,
    attention_dropout: f64,
    dropout: f64,
}

impl Attention {
    fn new(p: nn::Path, c: &ModelConfig) -> Self {
        let (s, o, h) = (&p / "self", &p / "output", c.hidden_size);
        Attention {
            query: linear(&s / "query", h, h),
            key: linear(&s / "key", h, h),
            value: linear(&s / "value", h, h),
            dense: linear(&o / "dense", h, h),
            layer_norm: LayerNorm::new(&o / "LayerNorm", h, c),
            heads: c.num_attention_heads,
            attention_dropout: c.attention_probs_dropout_prob,
            dropout: c.hidden_dropout_prob,
        }
    }

    /// `hidden`: the packed tokens, [tokens, hidden]. Every token attends to its sequence's
    /// real tokens; with `cls_only` only the [CLS] tokens are computed, [sequences, hidden].
    fn forward(&self, hidden: &Tensor, packing: &Packing, cls_only: bool, train: bool) -> Tensor {
        let (n, width) = (packing.sequences, hidden.size()[1]);
        let heads = |t: Tensor| t.view([n, -1, self.heads, width / self.heads]).transpose(1, 2);
        // [sequences, seq, parts x width] -> each part as [sequences, heads, seq, head_dim].
        let split = |fused: Tensor, parts: i64| -> Vec<Tensor> {
            let fused = packing.unpack(&fused).view([n, packing.len, parts, self.heads, width / self.heads]);
            fused.permute([2, 0, 3, 1, 4]).unbind(0)
        };
        let (queries, q, k, v) = match cls_only {
            true => {
                let queries = hidden.index_select(0, &packing.first);
                let q = heads(self.query.forward(&queries));
                let [k, v]: [Tensor; 2] = split(fused_linear(hidden, &[&self.key, &self.value]), 2).try_into().unwrap();
                (queries, q, k, v)
            }
            false => {
                let qkv = fused_linear(hidden, &[&self.query, &self.key, &self.value]);
                let [q, k, v]: [Tensor; 3] = split(qkv, 3).try_into().unwrap();
                (hidden.shallow_clone(), q, k, v)
            }
        };
        let dropout_p = if train { self.attention_dropout } else { 0.0 };
        let context =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&packing.mask), dropout_p, false, None, false);
        let context = context.transpose(1, 2).reshape([n, -1, width]);
        let context = if cls_only { context.view([n, width]) } else { packing.pack(&context) };
        self.layer_norm.forward(&(self.dense.forward(&context).dropout(self.dropout, train) + queries))
    }
}

/// Several linear layers over the same input as one matmul: their weights and biases
/// concatenated (a copy of parts x width^2 per call, small beside the product over the
/// tokens), the outputs side by side, [tokens, parts x output]. Autograd splits the gradient
/// back into each layer's own variables, which keep transformers' names.
fn fused_linear(x: &Tensor, parts: &[&nn::Linear]) -> Tensor {
    let weights: Vec<&Tensor> = parts.iter().map(|l| &l.ws).collect();
    let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bs.as_ref()).collect();
    x.linear(&Tensor::cat(&weights, 0), Some(Tensor::cat(&biases, 0)))
}

/// One encoder layer: attention, then `intermediate` (dense + activation) and `output`
/// (dense, dropout, residual, LayerNorm).
struct Layer {
    attention: Attention,
    intermediate: nn::Linear,
    activation: Activation,
    output: nn::Linear,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Layer {
    fn new(p: nn::Path, c: &ModelConfig) -> Self {
        Layer {
            attention: Attention::new(&p / "attention", c),
            intermediate: linear(&p / "intermediate" / "dense", c.hidden_size, c.intermediate_size),
            activation: c.hidden_act,
            output: linear(&p / "output" / "dense", c.intermediate_size, c.hidden_size),
            layer_norm: LayerNorm::new(&p / "output" / "LayerNorm", c.hidden_size, c),
            dropout: c.hidden_dropout_prob,
        }
    }

    fn forward(&self, hidden: &Tensor, packing: &Packing, cls_only: bool, train: bool) -> Tensor {
        let attended = self.attention.forward(hidden, packing, cls_only, train);
        let inner = activate(self.activation, &self.intermediate.forward(&attended));
        self.layer_norm.forward(&(self.output.forward(&inner).dropout(self.dropout, train) + attended))
    }
}

/// Each activation as one fused kernel.
pub(crate) fn activate(activation: Activation, x: &Tensor) -> Tensor {
    match activation {
        Activation::Gelu => x.gelu("none"),
        Activation::GeluTanh => x.gelu("tanh"),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
        Activation::Tanh => x.tanh(),
    }
}

/// The base model without a pooler (`BertModel`, `RobertaModel`, `ElectraModel` up to their
/// last layer): embeddings, ELECTRA's `embeddings_project` where the embeddings are narrower
/// than the hidden size, and the layers.
pub struct Encoder {
    embeddings: Embeddings,
    embeddings_project: Option<nn::Linear>,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn new(p: &nn::Path, c: &ModelConfig) -> Self {
        let encoder = p / "encoder" / "layer";
        let (width, hidden) = (c.embedding_width(), c.hidden_size);
        Encoder {
            embeddings: Embeddings::new(p / "embeddings", c),
            embeddings_project: (width != hidden).then(|| linear(p / "embeddings_project", width, hidden)),
            layers: (0..c.num_hidden_layers).map(|i| Layer::new(&encoder / i, c)).collect(),
        }
    }

    pub fn device(&self) -> Device {
        self.embeddings.word_embeddings.weight.device()
    }

    /// The last layer's output at each sequence's first token ([CLS], `<s>`), [sequences,
    /// hidden], on the model's device. Inputs are right-padded [sequences, seq] on that device
    /// or on the CPU (then moved without waiting); `attention_mask` is 1 for tokens and 0 for
    /// padding.
    pub fn first_tokens(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        train: bool,
    ) -> Tensor {
        let device = self.device();
        let packing = Packing::new(attention_mask, device);
        let (input_ids, token_type_ids) = (super::upload(input_ids, device), super::upload(token_type_ids, device));
        let mut hidden = self.embeddings.forward(&input_ids, &token_type_ids, &packing, train);
        if let Some(project) = &self.embeddings_project {
            hidden = project.forward(&hidden);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(&hidden, &packing, i + 1 == self.layers.len(), train);
        }
        hidden
    }
}
