//! The files of a Hugging Face model directory, named once, as transformers names them. The
//! loader, the tokenizer, the hub client and the checkpoint writer all use these.

use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// PyTorch's pickle checkpoint, read when a directory has no safetensors file.
pub const PICKLE_WEIGHTS_FILE: &str = "pytorch_model.bin";
/// The fast tokenizer (the whole pipeline in one JSON file).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// BERT's WordPiece vocabulary, read when a directory has no tokenizer.json.
pub const VOCAB_FILE: &str = "vocab.txt";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// The tokenizer's files: one of [`TOKENIZER_FILE`] and [`VOCAB_FILE`] is needed, the rest
/// are carried on from the model into every checkpoint when present.
pub const TOKENIZER_FILES: [&str; 4] = [TOKENIZER_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE];

/// The first of `names` that is a file in `dir`.
pub fn first_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|f| dir.join(f)).find(|p| p.is_file())
}
