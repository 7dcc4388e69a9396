//! Checkpoints in the Hugging Face layout: `model.safetensors` with transformers' names,
//! `config.json` and the tokenizer files, so `AutoModelForMultipleChoice.from_pretrained`
//! loads them. Written into a temporary sibling and renamed into place: a crash never leaves
//! a half-written checkpoint where a good one was.

use crate::atomic::StagedDir;
use crate::error::{Error, Result};
use std::path::Path;
use tch::nn::VarStore;

/// Files copied from the source model directory when present.
const MODEL_FILES: [&str; 5] =
    ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"];

pub fn save(dest: &Path, vs: &VarStore, source_model: &Path) -> Result<()> {
    let staged = StagedDir::new(dest)?;
    let mut named: Vec<(String, tch::Tensor)> =
        vs.variables().into_iter().map(|(n, t)| (n, t.to_device(tch::Device::Cpu).contiguous())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_hf_safetensors(&staged.file(crate::model::WEIGHTS_FILE), &named)?;
    for name in MODEL_FILES {
        let src = source_model.join(name);
        if src.is_file() {
            std::fs::copy(&src, staged.file(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    staged.publish()
}

/// Writes float32 tensors as safetensors with the `{"format": "pt"}` metadata that
/// transformers requires.
pub fn write_hf_safetensors(path: &Path, named: &[(String, tch::Tensor)]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let data: Vec<(String, Vec<i64>, Vec<f32>)> = named
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.size(), Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1))?)))
        .collect::<Result<_>>()?;
    let views = data
        .iter()
        .map(|(n, shape, values)| {
            let shape = shape.iter().map(|&d| d as usize).collect();
            TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(values))
                .map(|v| (n.as_str(), v))
                .map_err(|e| Error::Input(format!("checkpoint tensor {n}: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    safetensors::serialize_to_file(views, &metadata, path)
        .map_err(|e| Error::Input(format!("{}: {e:?}", path.display())))
}
