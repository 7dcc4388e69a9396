//! `medbert doctor`: what this build can do on this machine, ending with a real forward pass.

use crate::dist::Backend;
use crate::encode;
use crate::error::Result;
use crate::model::MultipleChoiceModel;
use crate::sys;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind};

/// A MedMCQA-style question the forward pass runs on.
pub const SAMPLE_QUESTION: &str = "Which vitamin deficiency causes scurvy?";
pub const SAMPLE_OPTIONS: [&str; 4] = ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"];

/// The facts about the runtime, as lines of `name: value`, then warnings.
pub fn runtime_report() -> String {
    let mut out = String::new();
    let config = sys::torch_config();
    let cuda_build = build_setting(&config, "CUDA_VERSION").filter(|v| !v.is_empty());
    let _ = writeln!(out, "libtorch:       {} ({})", sys::torch_version(), env!("MEDBERT_LIBTORCH_LIB"));
    let _ = writeln!(
        out,
        "built for:      {}",
        cuda_build.as_deref().map_or_else(|| "CPU only (no CUDA in this libtorch)".into(), |v| format!("CUDA {v}"))
    );
    let archs = kernel_archs(&config);
    let gpus = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    let cuda = match gpus {
        0 => "not available (CPU only)".to_string(),
        n => format!("available, {n} device(s), cuDNN {}", tch::Cuda::cudnn_is_available()),
    };
    let _ = writeln!(out, "CUDA:           {cuda}");
    if !archs.is_empty() {
        let _ = writeln!(out, "GPU kernels:    {}", archs.join(" "));
    }
    let mut warnings = Vec::new();
    for n in 0..gpus {
        let Some((major, minor)) = sys::cuda_capability(n) else {
            let _ = writeln!(out, "GPU {n}:          compute capability unknown (no CUDA driver API)");
            continue;
        };
        let covered = match archs.is_empty() {
            true => "kernel list unknown".to_string(),
            false if arch_supported(&archs, major, minor) => "kernels present".to_string(),
            false => {
                warnings.push(format!(
                    "GPU {n} (sm_{major}{minor}) is not among this libtorch's kernels ({}): use a libtorch \
                     built for it (LIBTORCH, see the README)",
                    archs.join(" ")
                ));
                "NO KERNELS for it".to_string()
            }
        };
        let _ = writeln!(
            out,
            "GPU {n}:          compute capability {major}.{minor}, bf16 {}, {covered}",
            if major >= 8 { "yes" } else { "no (fp16 autocast instead)" }
        );
    }
    let backends: Vec<&str> = Backend::compiled().into_iter().map(Backend::name).collect();
    let _ = writeln!(out, "c10d backends:  {}", backends.join(", "));
    let missing = env!("MEDBERT_NCCL_MISSING");
    if !missing.is_empty() {
        warnings.push(format!("NCCL is not compiled into this build: {missing}"));
    }
    let _ = writeln!(out, "CPU threads:    {}", tch::get_num_threads());
    for w in warnings {
        let _ = writeln!(out, "warning:        {w}");
    }
    out
}

/// A `KEY=value` of the "Build settings" line of torch's configuration.
fn build_setting(config: &str, key: &str) -> Option<String> {
    let line = config.lines().find(|l| l.contains("Build settings:"))?;
    let value = line.split(", ").find_map(|kv| kv.trim().strip_prefix(key)?.strip_prefix('='))?;
    Some(value.trim().trim_end_matches(',').to_string())
}

/// The GPU architectures libtorch's CUDA kernels were compiled for (`sm_90`, and `compute_120`
/// for PTX), from torch's configuration; listed only while a GPU is visible.
fn kernel_archs(config: &str) -> Vec<String> {
    let Some(line) = config.lines().find(|l| l.contains("NVCC architecture flags")) else { return Vec::new() };
    let mut archs: Vec<String> = line
        .split([';', ',', ' ', '='])
        .filter(|t| t.starts_with("sm_") || (t.starts_with("compute_") && line.contains(&format!("code={t}"))))
        .map(str::to_string)
        .collect();
    archs.dedup();
    archs
}

/// Whether a device of this capability runs these kernels: machine code for the same major
/// version and a lower or equal minor, or PTX for an equal or older architecture.
fn arch_supported(archs: &[String], major: i32, minor: i32) -> bool {
    let number = |t: &str| t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse::<i32>().ok();
    archs.iter().any(|a| {
        if let Some(n) = a.strip_prefix("sm_").and_then(number) {
            n / 10 == major && n % 10 <= minor
        } else if let Some(n) = a.strip_prefix("compute_").and_then(number) {
            n <= major * 10 + minor
        } else {
            false
        }
    })
}

/// Loads the model in `dir` and runs its multiple-choice model on the sample question.
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
    let batch = crate::batch::pad_all(&encode::encode_questions(&tokenizer, &[(SAMPLE_QUESTION, &SAMPLE_OPTIONS)])?);
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "PyTorch built with:\n  - Build settings: BLAS_INFO=mkl, CUDA_VERSION=13.0, CUDNN_VERSION=9.19.0, TORCH_VERSION=2.11.0, \n  - NVCC architecture flags: -gencode;arch=compute_75,code=sm_75;-gencode;arch=compute_90,code=sm_90;-gencode;arch=compute_120,code=compute_120\n";

    #[test]
    fn build_settings_and_kernel_architectures_are_read() {
        assert_eq!(build_setting(CONFIG, "CUDA_VERSION").as_deref(), Some("13.0"));
        assert_eq!(build_setting(CONFIG, "TORCH_VERSION").as_deref(), Some("2.11.0"));
        assert_eq!(kernel_archs(CONFIG), ["sm_75", "sm_90", "compute_120"]);
        assert!(kernel_archs("PyTorch built with:\n").is_empty());
    }

    #[test]
    fn architecture_support_follows_cuda_compatibility() {
        let archs = kernel_archs(CONFIG);
        assert!(arch_supported(&archs, 9, 0));
        assert!(arch_supported(&archs, 7, 5));
        assert!(!arch_supported(&archs, 8, 0), "no sm_8x and no PTX at or below 8.0");
        assert!(arch_supported(&archs, 12, 1), "PTX compute_120 is compiled for 12.1");
        assert!(!arch_supported(&["sm_90a".to_string()], 10, 0));
    }
}
