//! Weights into the model's variables, as transformers loads a checkpoint: names mapped
//! (a bare encoder's missing `bert.`/`roberta.`/`electra.` prefix, old LayerNorm
//! `gamma`/`beta`), shapes checked, what the checkpoint lacks of the pooler and the head
//! reported for initialising, and tensors the model has no place for reported as unused.

use super::torch_pickle;
use super::Family;
use crate::error::{Error, Result};
use crate::files::{first_file, is_shard_index, read_shard_index, PICKLE_WEIGHTS_FILE, WEIGHTS_FILE, WEIGHTS_FILES};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The weights of an HF model directory: model.safetensors, else pytorch_model.bin, else the
/// index of either's shards.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    first_file(dir, &WEIGHTS_FILES).ok_or_else(|| Error::Weights {
        path: dir.to_path_buf(),
        message: format!(
            "neither {WEIGHTS_FILE} nor {PICKLE_WEIGHTS_FILE} found, nor the index of a sharded model ({})",
            WEIGHTS_FILES[2..].join(", ")
        ),
    })
}

/// The tensors of every shard that `index` names (each shard read whole, as transformers
/// does), once each shard is checked to hold what the index says it holds.
fn read_shards(index: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |message: String| Error::Weights { path: index.to_path_buf(), message };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (shard, tensors) in read_shard_index(index)? {
        let path = dir.join(&shard);
        if !path.is_file() {
            let (n, first) = (tensors.len(), &tensors[0]);
            return Err(bad(format!("shard {shard} is missing (the index puts {n} tensor(s) there, `{first}` first)")));
        }
        let read = read_tensors(&path)?;
        let held: HashSet<&str> = read.iter().map(|(name, _)| name.as_str()).collect();
        if let Some(absent) = tensors.iter().find(|t| !held.contains(t.as_str())) {
            return Err(bad(format!(
                "`{absent}` is in no shard: the index puts it in {shard}, which does not hold it"
            )));
        }
        out.extend(read);
    }
    Ok(out)
}
/// The multiple-choice heads' modules, outside the base model's prefix.
const HEAD_PREFIXES: [&str; 2] = ["classifier.", "sequence_summary."];

/// What a checkpoint may lack: the heads and the pooler, which transformers initialises afresh.
fn may_be_missing(name: &str, family: Family) -> bool {
    HEAD_PREFIXES.iter().any(|p| name.starts_with(p))
        || name.strip_prefix(family.prefix()).is_some_and(|rest| rest.starts_with(".pooler."))
}

/// The named tensors of a weights file, on the CPU: safetensors, what `torch.save` writes
/// (`.bin`, `.pt`: a zip archive holding a pickled state dict), or a shard index's shards.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if is_shard_index(path) {
        return read_shards(path);
    }
    let pickle = matches!(path.extension().and_then(|e| e.to_str()), Some("bin" | "pt"));
    let read = match pickle {
        true => torch_pickle::read_state_dict(path).map_err(|e| e.to_string()),
        false => Tensor::read_safetensors(path).map_err(crate::error::torch_message),
    };
    read.map_err(|message| Error::Weights { path: path.to_path_buf(), message })
}

/// What a weight load did, for a one-time report.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The model loaded, by transformers' class name (`RobertaForMultipleChoice`).
    pub model: &'static str,
    pub loaded: usize,
    /// Model variables absent from the checkpoint and freshly initialised (the classifier,
    /// and the pooler of a masked-LM checkpoint).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model has no place for (`cls.predictions.*`,
    /// `embeddings.position_ids`, ...), by their names in the checkpoint.
    pub unexpected: Vec<String>,
}

impl LoadReport {
    /// transformers' load report, as log lines: what was initialised and what was not used.
    /// Outside `training` a fresh classifier is a warning: its predictions mean nothing yet.
    pub fn log(&self, dir: &Path, training: bool) {
        if !self.initialised.is_empty() {
            let message = format!(
                "{} tensors of {} are not in the checkpoint at {} and were newly initialised: {}",
                self.initialised.len(),
                self.model,
                dir.display(),
                self.initialised.join(", ")
            );
            match training {
                true => tracing::info!("{message}"),
                false => tracing::warn!("{message}; train the model before using its predictions"),
            }
        }
        if !self.unexpected.is_empty() {
            tracing::info!(
                "{} tensors of the checkpoint at {} were not used (heads and buffers {} has no place for): {}",
                self.unexpected.len(),
                dir.display(),
                self.model,
                abbreviate(&self.unexpected)
            );
        }
    }
}

/// Names grouped by their module path's first two parts (`cls.predictions.* (7 tensors)`),
/// so a head's dozens of tensors take one entry.
fn abbreviate(names: &[String]) -> String {
    // (the group's prefix, its first name, how many)
    let mut groups: Vec<(String, &str, usize)> = Vec::new();
    for name in names {
        let parts: Vec<&str> = name.splitn(3, '.').collect();
        let prefix = if parts.len() == 3 { format!("{}.{}.", parts[0], parts[1]) } else { name.clone() };
        match groups.last_mut() {
            Some((p, _, n)) if *p == prefix => *n += 1,
            _ => groups.push((prefix, name, 1)),
        }
    }
    let shown: Vec<String> = groups
        .into_iter()
        .map(|(prefix, first, n)| if n == 1 { first.to_string() } else { format!("{prefix}* ({n} tensors)") })
        .collect();
    shown.join(", ")
}

/// Maps a checkpoint name to the model's: adds the family's prefix to a bare encoder's names
/// and renames the legacy LayerNorm `gamma`/`beta` as transformers does.
fn model_name(name: &str, family: Family) -> String {
    let name = match name.strip_suffix(".gamma") {
        Some(stem) => format!("{stem}.weight"),
        None => match name.strip_suffix(".beta") {
            Some(stem) => format!("{stem}.bias"),
            None => name.to_string(),
        },
    };
    let prefix = family.prefix();
    let prefixed = name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'));
    if prefixed || HEAD_PREFIXES.iter().any(|p| name.starts_with(p)) {
        name
    } else {
        format!("{prefix}.{name}")
    }
}

pub(crate) fn copy_into(
    variables: &HashMap<String, Tensor>,
    tensors: Vec<(String, Tensor)>,
    path: &Path,
    family: Family,
) -> Result<LoadReport> {
    let mut by_name: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
    for (name, tensor) in tensors {
        by_name.insert(model_name(&name, family), (name, tensor));
    }
    let mut report = LoadReport { model: family.class(), ..LoadReport::default() };
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    tch::no_grad(|| -> Result<()> {
        for name in names {
            let mut var = variables[name].shallow_clone();
            match by_name.remove(name) {
                Some((_, src)) => {
                    if src.size() != var.size() {
                        return Err(Error::ShapeMismatch {
                            path: path.to_path_buf(),
                            name: name.clone(),
                            expected: var.size(),
                            found: src.size(),
                        });
                    }
                    var.f_copy_(&src)?;
                    report.loaded += 1;
                }
                None if may_be_missing(name, family) => report.initialised.push(name.clone()),
                None => {
                    return Err(Error::MissingTensor {
                        path: path.to_path_buf(),
                        name: name.clone(),
                        shape: var.size(),
                    })
                }
            }
        }
        Ok(())
    })?;
    report.unexpected = by_name.into_values().map(|(original, _)| original).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_grouped_by_head_in_the_report() {
        let names: Vec<String> = [
            "cls.predictions.bias",
            "cls.predictions.transform.dense.weight",
            "cls.seq_relationship.weight",
            "embeddings.position_ids",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            abbreviate(&names),
            "cls.predictions.* (2 tensors), cls.seq_relationship.weight, embeddings.position_ids"
        );
    }

    #[test]
    fn checkpoint_names_map_to_the_model() {
        let bert = |name| model_name(name, Family::Bert);
        assert_eq!(bert("encoder.layer.0.output.dense.weight"), "bert.encoder.layer.0.output.dense.weight");
        assert_eq!(bert("bert.pooler.dense.bias"), "bert.pooler.dense.bias");
        assert_eq!(bert("classifier.weight"), "classifier.weight");
        assert_eq!(bert("bert.embeddings.LayerNorm.gamma"), "bert.embeddings.LayerNorm.weight");
        assert_eq!(bert("embeddings.LayerNorm.beta"), "bert.embeddings.LayerNorm.bias");
        let roberta = |name| model_name(name, Family::Roberta);
        assert_eq!(roberta("pooler.dense.bias"), "roberta.pooler.dense.bias");
        assert_eq!(roberta("roberta.embeddings.word_embeddings.weight"), "roberta.embeddings.word_embeddings.weight");
        assert_eq!(roberta("bert.embeddings.word_embeddings.weight"), "roberta.bert.embeddings.word_embeddings.weight");
        assert_eq!(model_name("sequence_summary.summary.weight", Family::Electra), "sequence_summary.summary.weight");
        assert_eq!(model_name("embeddings_project.weight", Family::Electra), "electra.embeddings_project.weight");
        assert!(may_be_missing("roberta.pooler.dense.weight", Family::Roberta));
        assert!(!may_be_missing("bert.pooler.dense.weight", Family::Roberta));
        assert!(may_be_missing("sequence_summary.summary.bias", Family::Electra));
    }
}
