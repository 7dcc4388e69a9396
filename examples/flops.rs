//! Achieved FLOP rate of a BERT-base-shaped training step (12 layers, hidden 768, sequence
//! length 128) against a plain fp32 matmul of libtorch measured in the same process, and
//! where the step's time goes: each kind of operation of the graph timed alone, forward and
//! backward, at the step's shapes, times the layers; the optimizer step; the rest.
//!
//! usage: cargo run --release --example flops [-- STEPS]

use medbert::model::{ChoiceBatch, ModelConfig, MultipleChoiceModel};
use medbert::train::batch_loss;
use medbert::train::optim::AdamW;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const SEQ: i64 = 128;
const QUESTIONS: i64 = 4;
const CHOICES: i64 = 4;

/// Forward + backward FLOPs of one step: per token and layer 24 h^2 (the six weight matmuls,
/// 2 FLOPs per multiply-add) plus 4 s h (scores and weighted sum); backward is twice forward.
fn step_flops(layers: f64, hidden: f64) -> f64 {
    let tokens = (QUESTIONS * CHOICES * SEQ) as f64;
    3.0 * tokens * layers * (24.0 * hidden * hidden + 4.0 * SEQ as f64 * hidden)
}

fn matmul_flops_per_second() -> f64 {
    let (m, k, n) = (1024, 768, 3072);
    let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&b);
    let reps = 20;
    let started = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b);
    }
    (2 * m * k * n * reps) as f64 / started.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    tch::manual_seed(0);
    let config = ModelConfig::default();
    let (layers, hidden) = (config.num_hidden_layers as f64, config.hidden_size as f64);
    let model = MultipleChoiceModel::new(config, Device::Cpu)?;
    let mut opt = AdamW::new(&model.vs, 0.0, (0.9, 0.999), 1e-8);
    let shape = [QUESTIONS, CHOICES, SEQ];
    let batch = ChoiceBatch {
        input_ids: Tensor::randint_low(1000, 30000, shape, (Kind::Int64, Device::Cpu)),
        attention_mask: Tensor::ones(shape, (Kind::Int64, Device::Cpu)),
        token_type_ids: Tensor::zeros(shape, (Kind::Int64, Device::Cpu)),
    };
    let labels = Tensor::from_slice(&[1i64, 3, 0, 2]);
    let mut step = || -> anyhow::Result<()> {
        let (loss, _) = batch_loss(&model, &batch, &labels, true)?;
        loss.backward();
        opt.step(1e-5)?;
        opt.zero_grad()?;
        Ok(())
    };
    step()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let seconds = started.elapsed().as_secs_f64() / steps as f64;
    let achieved = step_flops(layers, hidden) / seconds;
    let peak = matmul_flops_per_second();
    let shape = config_shape();
    let mut parts = breakdown(&shape, steps.max(2));
    let (loss, _) = batch_loss(&model, &batch, &labels, true)?;
    loss.backward();
    parts.push((
        "optimizer step (fused AdamW)",
        time(steps.max(2), || {
            opt.step(1e-5)?;
            Ok(())
        })?,
    ));
    opt.zero_grad()?;
    // Beside the table: attention without its dropout, which CPU flash attention cannot do.
    let no_dropout = attention(&shape, steps.max(2), 0.0)?;
    let accounted: f64 = parts.iter().map(|(_, s)| s).sum();
    let share = |s: f64| (s / seconds * 1000.0).round() / 10.0;
    let mut table: Vec<serde_json::Value> =
        parts.iter().map(|(what, s)| serde_json::json!({"what": what, "seconds": s, "percent": share(*s)})).collect();
    table.push(serde_json::json!({"what": "the rest (embeddings, loss, hooks, allocation)",
        "seconds": seconds - accounted, "percent": share(seconds - accounted)}));
    println!(
        "{}",
        serde_json::json!({
            "threads": tch::get_num_threads(),
            "step_seconds": seconds,
            "train_gflops": achieved / 1e9,
            "matmul_gflops": peak / 1e9,
            "ratio": achieved / peak,
            "breakdown": table,
            "attention_without_dropout_seconds": no_dropout,
        })
    );
    Ok(())
}

/// The shapes of one step's encoder layer.
struct Shape {
    tokens: i64,
    sequences: i64,
    hidden: i64,
    heads: i64,
    intermediate: i64,
    layers: i64,
}

fn config_shape() -> Shape {
    let c = ModelConfig::default();
    Shape {
        tokens: QUESTIONS * CHOICES * SEQ,
        sequences: QUESTIONS * CHOICES,
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
    }
}

/// Mean seconds of `reps` runs of `f` after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let started = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(started.elapsed().as_secs_f64() / reps as f64)
}

/// Forward and backward of `f` on a fresh input of `dims` that wants its gradient.
fn fwd_bwd(reps: usize, dims: &[i64], f: impl Fn(&Tensor) -> Tensor) -> anyhow::Result<f64> {
    let x = Tensor::randn(dims, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    time(reps, || {
        let y = f(&x);
        y.sum(Kind::Float).backward();
        Ok(())
    })
}

/// Masked self-attention of every layer, forward and backward, with `dropout` on the
/// attention probabilities.
fn attention(s: &Shape, reps: usize, dropout: f64) -> anyhow::Result<f64> {
    let seq = s.tokens / s.sequences;
    let mask = Tensor::ones([s.sequences, 1, 1, seq], (Kind::Bool, Device::Cpu));
    let per_layer = fwd_bwd(reps, &[s.sequences, s.heads, seq, s.hidden / s.heads], |q| {
        Tensor::scaled_dot_product_attention(q, q, q, Some(&mask), dropout, false, None, false)
    })?;
    Ok(per_layer * s.layers as f64)
}

/// Each kind of operation of one encoder layer alone (forward + backward), times the layers.
fn breakdown(s: &Shape, reps: usize) -> Vec<(&'static str, f64)> {
    let (t, n, h, i) = (s.tokens, s.sequences, s.hidden, s.intermediate);
    let seq = t / n;
    let opts = (Kind::Float, Device::Cpu);
    let weight = |o: i64, k: i64| Tensor::randn([o, k], opts).set_requires_grad(true);
    let (w_qkv, w_o, w_in, w_out) = (weight(3 * h, h), weight(h, h), weight(i, h), weight(h, i));
    let (b_qkv, b_o) = (Tensor::zeros([3 * h], opts).set_requires_grad(true), Tensor::zeros([h], opts));
    let (b_in, b_out) = (Tensor::zeros([i], opts), Tensor::zeros([h], opts));
    let gamma = Tensor::ones([h], opts).set_requires_grad(true);
    let index = Tensor::arange(t, (Kind::Int64, Device::Cpu));
    let layers = s.layers as f64;
    let mut out = Vec::new();
    let mut add = |what: &'static str, per_layer: anyhow::Result<f64>| {
        out.push((what, per_layer.unwrap_or(f64::NAN) * layers));
    };
    add(
        "matmuls (QKV, output, intermediate, FFN output)",
        fwd_bwd(reps, &[t, h], |x| {
            let qkv = x.linear(&w_qkv, Some(&b_qkv));
            let o = qkv.narrow(1, 0, h).linear(&w_o, Some(&b_o));
            o.linear(&w_in, Some(&b_in)).linear(&w_out, Some(&b_out))
        }),
    );
    add("attention (scaled_dot_product_attention, masked, dropout 0.1)", attention(s, reps, 0.1).map(|a| a / layers));
    add(
        "LayerNorm x2",
        fwd_bwd(reps, &[t, h], |x| {
            let y = x.layer_norm([h], Some(&gamma), Some(&b_o), 1e-12, true);
            y.layer_norm([h], Some(&gamma), Some(&b_o), 1e-12, true)
        }),
    );
    add("GELU", fwd_bwd(reps, &[t, i], |x| x.gelu("none")));
    add(
        "dropout x2 (attention output, FFN output)",
        fwd_bwd(reps, &[t, h], |x| x.dropout(0.1, true).dropout(0.1, true)),
    );
    add("residual adds x2", fwd_bwd(reps, &[t, h], |x| x + x + x));
    add(
        "packing (unpack QKV, pack the context)",
        fwd_bwd(reps, &[t, 3 * h], |x| {
            let padded = Tensor::zeros([t, 3 * h], opts).index_copy(0, &index, x);
            padded.narrow(1, 0, h).index_select(0, &index)
        }),
    );
    add(
        "head layout (view, transpose, reshape of Q, K, V and the context)",
        fwd_bwd(reps, &[n, seq, 3, s.heads, h / s.heads], |x| {
            let [q, _, _]: [Tensor; 3] = x.permute([2, 0, 3, 1, 4]).unbind(0).try_into().unwrap();
            q.transpose(1, 2).reshape([n, seq, h])
        }),
    );
    out
}
