//! The prepared cache: `tokens.safetensors` (unpadded token arrays with offsets, labels,
//! subjects, ids) and `manifest.json`. Written to a temporary sibling directory and renamed
//! into place only when complete; read back through a memory map without copying.

use crate::data::{FileCounts, CHOICES};
use crate::encode::{EncodeSettings, Sequences};
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const TOKENS_FILE: &str = "tokens.safetensors";
/// Bumped whenever the cache layout or the encoding changes.
pub const CACHE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    pub path: PathBuf,
    pub format: crate::data::Format,
    pub cop_base: u8,
    pub sha256: String,
    pub counts: FileCounts,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub sequences: usize,
    pub p50: u32,
    pub p95: u32,
    pub max: u32,
    pub truncated: usize,
    pub truncated_share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// sha256 over the input contents, conventions, tokenizer and encoding settings.
    pub fingerprint: String,
    pub medbert_version: String,
    pub inputs: Vec<InputInfo>,
    pub encoding: EncodeSettings,
    pub questions: usize,
    pub subjects: Vec<String>,
    pub lengths: LengthStats,
}

/// The arrays of a cache: the encoded sequences (see `Sequences`), then per question its
/// label (0-based, -1 where unlabelled), subject (an index into `Manifest::subjects`, -1
/// where absent) and id.
#[derive(Debug, Default, PartialEq)]
pub struct Arrays {
    pub tokens: Sequences,
    pub labels: Vec<i64>,
    pub subjects: Vec<i32>,
    pub id_bytes: Vec<u8>,
    pub id_offsets: Vec<i64>,
}

fn view<'a>(file: &Path, dtype: Dtype, len: usize, bytes: &'a [u8]) -> Result<TensorView<'a>> {
    TensorView::new(dtype, vec![len], bytes).map_err(|e| Error::write_safetensors(file, e))
}

/// Writes the cache into `dest` atomically (see `crate::atomic`).
pub fn write(dest: &Path, manifest: &Manifest, arrays: &Arrays) -> Result<()> {
    let staged = crate::atomic::StagedDir::new(dest)?;
    let (a, t) = (arrays, &arrays.tokens);
    let file = dest.join(TOKENS_FILE);
    let view = |dtype, len, bytes| view(&file, dtype, len, bytes);
    let tensors: BTreeMap<&str, TensorView> = [
        ("input_ids", view(Dtype::I32, t.input_ids.len(), bytemuck::cast_slice(&t.input_ids))?),
        ("token_type_ids", view(Dtype::U8, t.token_type_ids.len(), &t.token_type_ids)?),
        ("offsets", view(Dtype::I64, t.offsets.len(), bytemuck::cast_slice(&t.offsets))?),
        ("labels", view(Dtype::I64, a.labels.len(), bytemuck::cast_slice(&a.labels))?),
        ("subjects", view(Dtype::I32, a.subjects.len(), bytemuck::cast_slice(&a.subjects))?),
        ("id_bytes", view(Dtype::U8, a.id_bytes.len(), &a.id_bytes)?),
        ("id_offsets", view(Dtype::I64, a.id_offsets.len(), bytemuck::cast_slice(&a.id_offsets))?),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(&tensors, &None).map_err(|e| Error::write_safetensors(&file, e))?;
    staged.write(TOKENS_FILE, &bytes)?;
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::write(dest.join(MANIFEST_FILE), e))?;
    staged.write(MANIFEST_FILE, &json)?;
    staged.publish()
}

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(&path, None, None, format!("invalid manifest: {e}")))
}

/// A cache opened for reading: the token file memory-mapped, arrays borrowed from it.
pub struct PreparedCache {
    pub manifest: Manifest,
    mmap: memmap2::Mmap,
    ranges: BTreeMap<String, Range<usize>>,
    path: PathBuf,
}

impl PreparedCache {
    pub fn open(dir: &Path) -> Result<PreparedCache> {
        let manifest = read_manifest(dir)?;
        let path = dir.join(TOKENS_FILE);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the cache is written once and renamed into place, never modified after.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
            Error::data(&path, None, None, format!("invalid safetensors: {}", crate::error::safetensors_cause(e)))
        })?;
        let start = 8 + header_len;
        let ranges = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, start + info.data_offsets.0..start + info.data_offsets.1))
            .collect();
        let cache = PreparedCache { manifest, mmap, ranges, path };
        let n = cache.labels()?.len();
        if cache.offsets()?.len() != n * CHOICES + 1 || cache.id_offsets()?.len() != n + 1 {
            return Err(Error::data(&cache.path, None, None, "inconsistent array lengths"));
        }
        Ok(cache)
    }

    /// Refuses a cache with unanswered questions (a test split) for `purpose` ("training",
    /// "evaluation"), naming the input file they came from.
    pub fn require_answers(&self, purpose: &str) -> Result<()> {
        let unanswered = |i: &&InputInfo| i.counts.labelled < i.counts.questions;
        match self.manifest.inputs.iter().find(unanswered) {
            None => Ok(()),
            Some(input) => Err(Error::data(
                &input.path,
                None,
                Some("cop"),
                format!(
                    "the file has no answers (every cop is -1 or missing: a test split); {purpose} needs labelled \
                     questions, and `medbert predict` takes this file"
                ),
            )),
        }
    }

    fn array<T: bytemuck::Pod>(&self, name: &str) -> Result<&[T]> {
        let range = self.ranges.get(name).ok_or_else(|| Error::data(&self.path, None, Some(name), "missing tensor"))?;
        bytemuck::try_cast_slice(&self.mmap[range.clone()])
            .map_err(|e| Error::data(&self.path, None, Some(name), format!("misaligned tensor: {e}")))
    }

    pub fn input_ids(&self) -> Result<&[i32]> {
        self.array("input_ids")
    }
    pub fn token_type_ids(&self) -> Result<&[u8]> {
        self.array("token_type_ids")
    }
    pub fn offsets(&self) -> Result<&[i64]> {
        self.array("offsets")
    }
    pub fn labels(&self) -> Result<&[i64]> {
        self.array("labels")
    }
    pub fn subjects(&self) -> Result<&[i32]> {
        self.array("subjects")
    }
    pub fn id_offsets(&self) -> Result<&[i64]> {
        self.array("id_offsets")
    }

    pub fn len(&self) -> usize {
        self.manifest.questions
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The original id of question `q`.
    pub fn id(&self, q: usize) -> Result<&str> {
        let offsets = self.id_offsets()?;
        let bytes: &[u8] = self.array("id_bytes")?;
        std::str::from_utf8(&bytes[offsets[q] as usize..offsets[q + 1] as usize])
            .map_err(|_| Error::data(&self.path, None, Some("id_bytes"), "invalid UTF-8"))
    }

    /// All arrays copied out (for comparisons and small caches).
    pub fn to_arrays(&self) -> Result<Arrays> {
        Ok(Arrays {
            tokens: Sequences {
                input_ids: self.input_ids()?.to_vec(),
                token_type_ids: self.token_type_ids()?.to_vec(),
                offsets: self.offsets()?.to_vec(),
            },
            labels: self.labels()?.to_vec(),
            subjects: self.subjects()?.to_vec(),
            id_bytes: self.array::<u8>("id_bytes")?.to_vec(),
            id_offsets: self.id_offsets()?.to_vec(),
        })
    }
}
