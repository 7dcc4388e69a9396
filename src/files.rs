//! The files of a Hugging Face model directory, named once, as transformers names them. The
//! loader, the tokenizer, the hub client and the checkpoint writer all use these.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// PyTorch's pickle checkpoint, read when a directory has no safetensors file.
pub const PICKLE_WEIGHTS_FILE: &str = "pytorch_model.bin";
/// The index of a model saved in shards (`save_pretrained` above `max_shard_size`): which of
/// the `model-0000k-of-0000n.safetensors` files holds each tensor.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The same for shards in PyTorch's pickle format (`pytorch_model-0000k-of-0000n.bin`), as
/// transformers 4 wrote them.
pub const PICKLE_WEIGHTS_INDEX_FILE: &str = "pytorch_model.bin.index.json";
/// Where a model directory's weights may be, in order of preference.
pub const WEIGHTS_FILES: [&str; 4] = [WEIGHTS_FILE, PICKLE_WEIGHTS_FILE, WEIGHTS_INDEX_FILE, PICKLE_WEIGHTS_INDEX_FILE];
/// The fast tokenizer (the whole pipeline in one JSON file).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// BERT's and ELECTRA's WordPiece vocabulary, read when a directory has no tokenizer.json.
pub const VOCAB_FILE: &str = "vocab.txt";
/// RoBERTa's byte-level BPE vocabulary, with its merges, read when a directory has neither
/// tokenizer.json nor vocab.txt.
pub const BPE_VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
/// Where a model directory's tokenizer comes from, in order of preference (transformers'
/// `from_pretrained` prefers tokenizer.json too).
pub const TOKENIZER_SOURCES: [&str; 3] = [TOKENIZER_FILE, VOCAB_FILE, BPE_VOCAB_FILE];
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// Tokens added after the vocabulary, with their ids (older save_pretrained).
pub const ADDED_TOKENS_FILE: &str = "added_tokens.json";

/// The tokenizer's files: one of [`TOKENIZER_SOURCES`] is needed (vocab.json with
/// merges.txt), the rest are carried on from the model into every checkpoint when present.
pub const TOKENIZER_FILES: [&str; 7] = [
    TOKENIZER_FILE,
    VOCAB_FILE,
    BPE_VOCAB_FILE,
    MERGES_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    ADDED_TOKENS_FILE,
];
/// The files beside vocab.txt or vocab.json that change how they tokenize.
pub const VOCAB_SETTINGS_FILES: [&str; 3] = [TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE];

/// A sharded model's index as save_pretrained writes it; only the map is read.
#[derive(serde::Deserialize)]
struct ShardIndex {
    /// Tensor name -> the shard's file name, beside the index.
    weight_map: BTreeMap<String, String>,
}

/// Whether `path` is a sharded model's index (either format's).
pub fn is_shard_index(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| WEIGHTS_FILES[2..].contains(&n))
}

/// The shards a sharded model's `index` names, each with the tensors it should hold; a shard
/// named other than as a file beside the index is an error.
pub fn read_shard_index(index: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let bad = |message: String| Error::Weights { path: index.to_path_buf(), message };
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let ShardIndex { weight_map } =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a shard index (`weight_map`): {e}")))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in weight_map {
        if !Path::new(&shard).components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad(format!("shard {shard:?} of `{tensor}` is not a file name")));
        }
        shards.entry(shard).or_default().push(tensor);
    }
    Ok(shards)
}

/// The first of `names` that is a file in `dir`.
pub fn first_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|f| dir.join(f)).find(|p| p.is_file())
}
