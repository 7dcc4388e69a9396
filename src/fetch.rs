//! `medbert fetch-data`: MedMCQA's parquet files from the Hugging Face hub (through hf-hub and
//! its cache), checked against the published row counts and laid out as
//! `<output>/<split>.parquet` for `prep` and `train`.

use crate::error::{Error, Result};
use hf_hub::RepoType;
use std::path::{Path, PathBuf};

/// The hub dataset MedMCQA is published as.
pub const DEFAULT_REPO: &str = "openlifescienceai/medmcqa";

/// A split of the release and its published size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// Questions in the split (Pal et al., 2022; the hub's dataset card).
    pub fn expected_rows(self) -> usize {
        match self {
            Split::Train => 182_822,
            Split::Validation => 4_183,
            Split::Test => 6_150,
        }
    }

    /// The file's path in the hub repository.
    pub fn hub_path(self) -> String {
        format!("data/{}-00000-of-00001.parquet", self.name())
    }
}

/// Rows in a parquet file, from its footer.
pub fn parquet_rows(path: &Path) -> Result<usize> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::data(path, None, None, format!("not a parquet file: {e}")))?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as usize)
}

/// Downloads `splits` of `repo` and writes `<output>/<split>.parquet` (atomically) after
/// checking each file's row count. Returns the files written.
/// Nothing is created before the first file is ready, so a failure leaves no empty folder.
pub fn fetch(repo: &str, splits: &[Split], output: &Path) -> Result<Vec<PathBuf>> {
    if output.exists() && !output.is_dir() {
        return Err(Error::Input(format!("--output {}: is a file, not a directory", output.display())));
    }
    let mut written = Vec::new();
    for &split in splits {
        let file = split.hub_path();
        let snapshot = crate::hub::download(repo, RepoType::Dataset, &[&[file.as_str()]], &[])?;
        let cached = snapshot.join(&file);
        let rows = parquet_rows(&cached)?;
        if rows != split.expected_rows() {
            return Err(Error::data(
                &cached,
                None,
                None,
                format!("{repo} {file}: {rows} rows, MedMCQA's {} split has {}", split.name(), split.expected_rows()),
            ));
        }
        std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
        let dest = output.join(format!("{}.parquet", split.name()));
        let bytes = std::fs::read(&cached).map_err(|e| Error::io(&cached, e))?;
        crate::atomic::write_file(&dest, &bytes)?;
        tracing::info!(split = split.name(), rows, file = %dest.display(), "fetched");
        written.push(dest);
    }
    Ok(written)
}
