//! Where a worker is: the optimizer step it works on, the phase of it (data, forward,
//! backward, the all-reduce of a bucket, the optimizer, evaluation, saving) and since when,
//! in a small file the launcher names (`MEDBERT_POSITION_FILE`) and reads without the
//! worker's help, even when the worker hangs or is stopped. The worker maps the file into
//! memory and updates it at phase boundaries only: four atomic stores into a shared page, no
//! system call.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable by which the launcher names a worker's position file.
pub const FILE_VAR: &str = "MEDBERT_POSITION_FILE";

/// Step, phase, bucket + 1 (0: none), time entered (Unix milliseconds); little-endian u64s.
const FIELDS: usize = 4;
const SIZE: u64 = (FIELDS * 8) as u64;

/// A phase of a worker's work, in the order a step goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    SettingUp = 1,
    Data,
    Forward,
    Backward,
    AllReduce,
    Optimizer,
    Evaluation,
    Saving,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::SettingUp,
        Phase::Data,
        Phase::Forward,
        Phase::Backward,
        Phase::AllReduce,
        Phase::Optimizer,
        Phase::Evaluation,
        Phase::Saving,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::SettingUp => "set-up",
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::AllReduce => "all-reduce",
            Phase::Optimizer => "optimizer",
            Phase::Evaluation => "evaluation",
            Phase::Saving => "saving",
        }
    }
}

/// What a position file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The optimizer step worked on (1 for the first).
    pub step: u64,
    pub phase: Phase,
    /// The gradient bucket whose all-reduce is waited for.
    pub bucket: Option<u64>,
    /// When the phase began, Unix milliseconds.
    pub since_ms: u64,
}

impl Position {
    /// Reads a position file; None before the worker first wrote it.
    pub fn read(path: &Path) -> Option<Position> {
        let bytes = std::fs::read(path).ok()?;
        let field = |i: usize| u64::from_le_bytes(bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?).into();
        let phase = Phase::ALL.into_iter().find(|p| Some(*p as u64) == field(1))?;
        let bucket = field(2)?.checked_sub(1);
        Some(Position { step: field(0)?, phase, bucket, since_ms: field(3)? })
    }

    /// Seconds since the phase began, at `now_ms`.
    pub fn seconds_in(&self, now_ms: u64) -> f64 {
        now_ms.saturating_sub(self.since_ms) as f64 / 1e3
    }

    /// "forward of step 41", "the all-reduce of bucket 3 of step 41".
    pub fn describe(&self) -> String {
        match (self.phase, self.bucket) {
            (Phase::AllReduce, Some(b)) => format!("the all-reduce of bucket {b} of step {}", self.step),
            (Phase::AllReduce, None) => format!("the all-reduce of step {} (starting its buckets)", self.step),
            (phase, _) => format!("{} of step {}", phase.name(), self.step),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// This process's position file, mapped; None when no launcher asked for one.
static MAPPED: OnceLock<Option<memmap2::MmapMut>> = OnceLock::new();

/// Maps the file the launcher named (a no-op without one, or once mapped).
pub fn open_from_env() -> Result<()> {
    let Some(path) = std::env::var_os(FILE_VAR) else { return Ok(()) };
    let path = Path::new(&path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.set_len(SIZE).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is this worker's alone (the launcher only reads it), and it is written
    // through atomics only.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| Error::io(path, e))?;
    let _ = MAPPED.set(Some(map));
    Ok(())
}

fn fields() -> Option<&'static [AtomicU64; FIELDS]> {
    let map = MAPPED.get()?.as_ref()?;
    // SAFETY: a page-aligned mapping of SIZE bytes that lives as long as the process.
    Some(unsafe { &*(map.as_ptr() as *const [AtomicU64; FIELDS]) })
}

/// This worker now works on `phase` of `step` (a no-op without a position file).
pub fn enter(step: usize, phase: Phase) {
    enter_bucket(step, phase, None);
}

/// As [`enter`], waiting for the all-reduce of `bucket`.
fn enter_bucket(step: usize, phase: Phase, bucket: Option<usize>) {
    let Some(f) = fields() else { return };
    f[3].store(now_ms().to_le(), Ordering::Relaxed);
    f[0].store((step as u64).to_le(), Ordering::Relaxed);
    f[1].store((phase as u64).to_le(), Ordering::Relaxed);
    f[2].store(bucket.map_or(0, |b| b as u64 + 1).to_le(), Ordering::Relaxed);
}

/// In the all-reduce of the step entered last, now waiting for `bucket`.
pub fn waiting_for(bucket: usize) {
    let Some(f) = fields() else { return };
    f[3].store(now_ms().to_le(), Ordering::Relaxed);
    f[2].store((bucket as u64 + 1).to_le(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_worker_enters_the_launcher_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rank0");
        assert_eq!(Position::read(&path), None, "no file yet");
        std::env::set_var(FILE_VAR, &path);
        open_from_env().unwrap();
        let before = now_ms();
        enter(41, Phase::Forward);
        let at = Position::read(&path).unwrap();
        assert_eq!((at.step, at.phase, at.bucket), (41, Phase::Forward, None));
        assert!(at.since_ms >= before && at.since_ms <= now_ms());
        enter(41, Phase::AllReduce);
        waiting_for(3);
        assert_eq!(Position::read(&path).unwrap().describe(), "the all-reduce of bucket 3 of step 41");
    }
}
