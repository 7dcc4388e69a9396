//! Achieved FLOP rate of a BERT-base-shaped training step (12 layers, hidden 768, sequence
//! length 128) against a plain fp32 matmul of libtorch measured in the same process.
//!
//! usage: cargo run --release --example flops [-- STEPS]

use medbert::model::{BertConfig, ChoiceBatch, MultipleChoiceModel};
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
    let config = BertConfig::default();
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
    println!(
        "{}",
        serde_json::json!({
            "threads": tch::get_num_threads(),
            "step_seconds": seconds,
            "train_gflops": achieved / 1e9,
            "matmul_gflops": peak / 1e9,
            "ratio": achieved / peak,
        })
    );
    Ok(())
}
