//! Directories that appear whole or not at all: filled as a temporary sibling of their
//! destination, every file synced, then renamed into place (replacing an older version only
//! once the new one is complete). Dropped unpublished, the temporary directory is removed.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct StagedDir {
    tmp: tempfile::TempDir,
    dest: PathBuf,
    parent: PathBuf,
}

impl StagedDir {
    pub fn new(dest: &Path) -> Result<StagedDir> {
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".medbert-staged-")
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        Ok(StagedDir { tmp, dest: dest.to_path_buf(), parent })
    }

    /// Where to put a file named `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes and syncs `name`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.file(name);
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&path, e))
    }

    /// Renames the directory into place; a previous one at the destination is replaced.
    pub fn publish(self) -> Result<()> {
        for entry in std::fs::read_dir(self.tmp.path()).map_err(|e| Error::io(self.tmp.path(), e))? {
            let path = entry.map_err(|e| Error::io(self.tmp.path(), e))?.path();
            sync(&path)?;
        }
        let (dest, parent) = (self.dest, self.parent);
        let staged = self.tmp.keep();
        let old = parent.join(format!(".medbert-old-{}", std::process::id()));
        let replaced = dest.exists();
        if replaced {
            std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
        }
        if let Err(e) = std::fs::rename(&staged, &dest) {
            if replaced {
                let _ = std::fs::rename(&old, &dest);
            }
            let _ = std::fs::remove_dir_all(&staged);
            return Err(Error::io(&dest, e));
        }
        if replaced {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        sync(&parent)
    }
}

/// Writes a single file atomically: a synced temporary sibling renamed over `path`.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| Error::io(parent, e))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    sync(parent)
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}
