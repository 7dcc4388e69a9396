//! `medbert doctor`: what this build can do on this machine, ending with a real forward pass.

use crate::dist::{self, Backend};
use crate::encode;
use crate::error::Result;
use crate::model::MultipleChoiceModel;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind};

/// A MedMCQA-style question the forward pass runs on.
pub const SAMPLE_QUESTION: &str = "Which vitamin deficiency causes scurvy?";
pub const SAMPLE_OPTIONS: [&str; 4] = ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"];

/// The facts about the runtime, as lines of `name: value`.
pub fn runtime_report() -> String {
    let mut out = String::new();
    let cuda = if tch::Cuda::is_available() {
        format!("available, {} device(s), cuDNN {}", tch::Cuda::device_count(), tch::Cuda::cudnn_is_available())
    } else {
        "not available (CPU only)".to_string()
    };
    let backends: Vec<&str> = Backend::compiled().into_iter().map(Backend::name).collect();
    let _ = writeln!(out, "libtorch:       {} ({})", dist::torch_version(), env!("MEDBERT_LIBTORCH_LIB"));
    let _ = writeln!(out, "CUDA:           {cuda}");
    let _ = writeln!(out, "c10d backends:  {}", backends.join(", "));
    let _ = writeln!(out, "CPU threads:    {}", tch::get_num_threads());
    out
}

/// Loads the model in `dir` and runs `BertForMultipleChoice` on the sample question.
pub fn forward_report(dir: &Path) -> Result<String> {
    let mut out = String::new();
    tch::manual_seed(0);
    let started = Instant::now();
    let (model, report) = MultipleChoiceModel::from_dir(dir, Device::Cpu)?;
    let loaded_in = started.elapsed();
    let c = &model.config;
    let _ = writeln!(out, "model:          {}", dir.display());
    let _ = writeln!(
        out,
        "architecture:   BERT, {} layers, hidden {}, {} heads, vocab {}",
        c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size
    );
    let _ = writeln!(
        out,
        "weights:        {} tensors loaded in {:.2}s; initialised: [{}]; unused: [{}]",
        report.loaded,
        loaded_in.as_secs_f64(),
        report.initialised.join(", "),
        report.unexpected.join(", ")
    );
    let tokenizer = encode::load_tokenizer(dir, 128)?;
    let batch = encode::encode_questions(&tokenizer, &[(SAMPLE_QUESTION, &SAMPLE_OPTIONS)])?;
    let started = Instant::now();
    let logits = tch::no_grad(|| model.forward(&batch, false))?;
    let took = started.elapsed();
    let probs: Vec<f32> = Vec::try_from(logits.softmax(-1, Kind::Float).view(-1))?;
    let _ = writeln!(
        out,
        "forward:        {SAMPLE_QUESTION}  (input {:?}, {:.1} ms)",
        batch.input_ids.size(),
        took.as_secs_f64() * 1e3
    );
    for (option, p) in SAMPLE_OPTIONS.iter().zip(&probs) {
        let _ = writeln!(out, "                  {option:<12} p = {p:.4}");
    }
    let _ = writeln!(out, "                (the classifier is untrained until `medbert train`)");
    Ok(out)
}
