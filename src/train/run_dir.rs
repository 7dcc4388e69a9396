//! The output directory as one run's home: refused when it holds another run (unless
//! `--overwrite-output-dir` or a resume), the run's arguments saved there as
//! `training_args.json` (HF's name) with the data's fingerprints, and a resume checked against
//! what the interrupted run was told.

use super::{Resume, TrainArgs};
use crate::dist::Comm;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const ARGS_FILE: &str = "training_args.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "curves.png";
pub const SUMMARY_FILE: &str = "summary.json";
const QUESTIONS_PREFIX: &str = "questions-rank";
const CHECKPOINT_PREFIX: &str = "checkpoint-";
const BEST: &str = "best";
const FINAL: &str = "final";
/// TensorBoard's default logging directory (the HF Trainer's `runs/`).
const TENSORBOARD: &str = "runs";
/// Raw training and evaluation files prepared for this run.
const PREPARED: &str = "prepared";

/// `--output-dir` and everything in it: the one place its layout is spelled.
#[derive(Clone, Debug, PartialEq)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn new(root: &Path) -> RunDir {
        RunDir(root.to_path_buf())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn args(&self) -> PathBuf {
        self.0.join(ARGS_FILE)
    }

    pub fn metrics(&self) -> PathBuf {
        self.0.join(METRICS_FILE)
    }

    pub fn plot(&self) -> PathBuf {
        self.0.join(PLOT_FILE)
    }

    pub fn summary(&self) -> PathBuf {
        self.0.join(SUMMARY_FILE)
    }

    /// `--record-questions`' file for `rank`.
    pub fn questions(&self, rank: usize) -> PathBuf {
        self.0.join(format!("{QUESTIONS_PREFIX}{rank}.jsonl"))
    }

    /// The model with the best evaluation metric so far.
    pub fn best(&self) -> PathBuf {
        self.0.join(BEST)
    }

    /// The model at the end of the run.
    pub fn last(&self) -> PathBuf {
        self.0.join(FINAL)
    }

    /// `checkpoint-<step>`.
    pub fn checkpoint(&self, step: usize) -> PathBuf {
        self.0.join(format!("{CHECKPOINT_PREFIX}{step}"))
    }

    /// The step of a `checkpoint-<step>` directory name.
    pub fn checkpoint_step(name: &str) -> Option<usize> {
        name.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()
    }

    /// Where TensorBoard logs go by default: `runs/<run name>`.
    pub fn tensorboard(&self, run: &str) -> PathBuf {
        self.0.join(TENSORBOARD).join(run)
    }

    /// Where the run prepares raw data files.
    pub fn prepared(&self) -> PathBuf {
        self.0.join(PREPARED)
    }

    /// What in the directory belongs to a run: its arguments, metrics, plot, summary,
    /// checkpoints, question logs, and TensorBoard logs in their default place.
    fn run_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.0) else { return Vec::new() };
        let named = [ARGS_FILE, METRICS_FILE, PLOT_FILE, SUMMARY_FILE, FINAL, BEST, TENSORBOARD];
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                named.contains(&name.as_str())
                    || name.starts_with(CHECKPOINT_PREFIX)
                    || name.starts_with(QUESTIONS_PREFIX)
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }
}

/// What a run was told: every flag as given, the number of processes, the fingerprints of its
/// training and evaluation data (from their prepared caches), and what the flags resolved to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedArgs {
    pub arguments: Value,
    /// The model and caches as local paths, the device, the precision and collective backend
    /// as resolved, how progress is shown (not compared on resume).
    #[serde(default)]
    pub resolved: Value,
    pub world_size: usize,
    pub train_data: String,
    pub eval_data: Option<String>,
}

/// A field of [`TrainArgs`] as training_args.json names it (nested ones joined with dots); the
/// compiler checks that the field exists, so a renamed flag cannot slip out of these lists.
macro_rules! saved_name {
    ($first:ident $(. $rest:ident)*) => {{
        const _: fn(&TrainArgs) = |args| {
            let _ = &args.$first $(.$rest)*;
        };
        concat!(stringify!($first) $(, ".", stringify!($rest))*)
    }};
}

/// Arguments that change the data order: a resume must keep them (the data fingerprints too).
/// The number of processes, batch size and accumulation may change: the order is global, and
/// the epoch is resharded where the checkpoint left it.
const FIXED_ON_RESUME: [&str; 4] =
    [saved_name!(seed), saved_name!(group_by_length), saved_name!(holdout), saved_name!(data.max_length)];

/// The batch flags. Under --group-by-length they set the mega-batches' size, so the order
/// depends on them; otherwise a resume that changes them changes the global batch.
const BATCH_FLAGS: [&str; 2] = [saved_name!(per_device_train_batch_size), saved_name!(gradient_accumulation_steps)];

/// The data's fingerprints among the compared settings (a resume must keep them).
const TRAIN_DATA: &str = "train data";
const EVAL_DATA: &str = "evaluation data";

/// Flags that say how to start, not what the run is.
const NOT_COMPARED: [&str; 5] = [
    saved_name!(resume),
    saved_name!(resume_from_checkpoint),
    saved_name!(overwrite_output_dir),
    saved_name!(no_save_on_signal),
    saved_name!(save_on_signal_timeout),
];

impl SavedArgs {
    pub fn new(
        args: &TrainArgs,
        resolved: Value,
        world_size: usize,
        train_data: &str,
        eval_data: Option<&str>,
    ) -> Result<SavedArgs> {
        Ok(SavedArgs {
            arguments: serde_json::to_value(args).map_err(|e| Error::write(ARGS_FILE, e))?,
            resolved,
            world_size,
            train_data: train_data.to_string(),
            eval_data: eval_data.map(str::to_string),
        })
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| Error::write(ARGS_FILE, e))
    }

    fn read(path: &Path) -> Result<SavedArgs> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::data(path, None, None, e.to_string()))
    }

    /// Every setting as `name = value`, nested flags joined with dots.
    fn flat(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        flatten("", &self.arguments, &mut out);
        out.insert("world_size".into(), self.world_size.into());
        out.insert(TRAIN_DATA.into(), self.train_data.clone().into());
        out.insert(EVAL_DATA.into(), self.eval_data.clone().into());
        out
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&name, v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// How a resume differs from the run it continues: what may not change, and what may.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub refused: Vec<String>,
    pub allowed: Vec<String>,
}

impl Changes {
    /// Whether --per-device-train-batch-size or --gradient-accumulation-steps differ.
    pub fn batch_flags_changed(&self) -> bool {
        let named = |line: &String| BATCH_FLAGS.iter().any(|f| line.split(':').next() == Some(f));
        self.allowed.iter().chain(&self.refused).any(named)
    }
}

pub fn compare(saved: &SavedArgs, now: &SavedArgs) -> Changes {
    let (before, after) = (saved.flat(), now.flat());
    let mut changes = Changes::default();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (a, b) = (before.get(name).unwrap_or(&Value::Null), after.get(name).unwrap_or(&Value::Null));
        if a == b || NOT_COMPARED.iter().any(|n| name == n) {
            continue;
        }
        let line = format!("{name}: {a} -> {b}");
        let grouped = after.get(saved_name!(group_by_length)) == Some(&Value::Bool(true));
        let fixed = FIXED_ON_RESUME.contains(&name.as_str())
            || (grouped && BATCH_FLAGS.contains(&name.as_str()))
            || [TRAIN_DATA, EVAL_DATA].contains(&name.as_str());
        match fixed {
            true => changes.refused.push(line),
            false => changes.allowed.push(line),
        }
    }
    changes
}

/// Checks a resume from `checkpoint` against the arguments saved with it (or beside it in
/// the run directory): differences that change the data order or the optimizer's meaning are
/// refused, listed; the others are logged by rank 0 and returned.
pub(crate) fn check_resume(checkpoint: &Path, run: &RunDir, now: &SavedArgs, is_main: bool) -> Result<Changes> {
    let Some(path) = [checkpoint.join(ARGS_FILE), run.args()].into_iter().find(|p| p.is_file()) else {
        if is_main {
            tracing::warn!(checkpoint = %checkpoint.display(), "no {ARGS_FILE} to compare this resume with");
        }
        return Ok(Changes::default());
    };
    let changes = compare(&SavedArgs::read(&path)?, now);
    if !changes.refused.is_empty() {
        return Err(Error::Input(format!(
            "cannot resume from {}: these settings differ from {} and would change the data order or the \
             optimizer's meaning:\n  {}\nstart a new run (another --output-dir, or --overwrite-output-dir) instead",
            checkpoint.display(),
            path.display(),
            changes.refused.join("\n  ")
        )));
    }
    if is_main && !changes.allowed.is_empty() {
        tracing::warn!("resuming with changed settings:\n  {}", changes.allowed.join("\n  "));
    }
    Ok(changes)
}

impl RunDir {
    /// Makes the directory this run's: refused when it holds another run, unless the run
    /// resumes or `overwrite` (`--overwrite-output-dir`, which deletes the other run's files
    /// first). Rank 0 decides; every rank gets the same answer.
    pub(crate) fn claim(&self, resume: &Resume, overwrite: bool, comm: &Comm) -> Result<()> {
        let verdict = match comm.is_main() {
            true => self.claim_on_main(resume, overwrite),
            false => Ok(()),
        };
        let refused = comm.any(verdict.is_err())?;
        verdict?;
        if refused {
            return Err(Error::Input(format!("rank 0 refused --output-dir {}", self.0.display())));
        }
        Ok(())
    }

    fn claim_on_main(&self, resume: &Resume, overwrite: bool) -> Result<()> {
        let dir = &self.0;
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Input(format!("--output-dir {}: is a file, not a directory", dir.display())));
        }
        let other = self.run_files();
        if other.is_empty() || resume.is_resuming() {
            return std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e));
        }
        if !overwrite {
            let names: Vec<String> =
                other.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            return Err(Error::Input(format!(
                "--output-dir {} holds another run ({}): pass --overwrite-output-dir to replace it, --resume to \
                 continue it, or choose another directory",
                dir.display(),
                names.join(", ")
            )));
        }
        tracing::warn!(dir = %dir.display(), "--overwrite-output-dir: deleting the previous run's files");
        for path in other {
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(arguments: Value, world_size: usize) -> SavedArgs {
        SavedArgs { arguments, resolved: Value::Null, world_size, train_data: "abc".into(), eval_data: None }
    }

    #[test]
    fn order_changing_settings_are_refused_and_the_rest_allowed() {
        let before = saved(serde_json::json!({"seed": 42, "learning_rate": 5e-5, "data": {"max_length": 128}}), 2);
        let after = saved(serde_json::json!({"seed": 42, "learning_rate": 1e-4, "data": {"max_length": 64}}), 2);
        let changes = compare(&before, &after);
        assert_eq!(changes.refused, ["data.max_length: 128 -> 64"]);
        assert_eq!(changes.allowed, ["learning_rate: 0.00005 -> 0.0001"]);
        let moved = SavedArgs { train_data: "def".into(), ..saved(before.arguments.clone(), 3) };
        let changes = compare(&before, &moved);
        assert_eq!(changes.refused.len(), 1);
        assert!(changes.refused[0].starts_with("train data"), "{changes:?}");
        assert_eq!(changes.allowed, ["world_size: 2 -> 3"], "the order is global: resharded, not refused");
        let batch = |grouped: bool, size: usize| {
            saved(serde_json::json!({"group_by_length": grouped, "per_device_train_batch_size": size}), 2)
        };
        assert_eq!(compare(&batch(false, 8), &batch(false, 4)).allowed, ["per_device_train_batch_size: 8 -> 4"]);
        assert_eq!(compare(&batch(true, 8), &batch(true, 4)).refused, ["per_device_train_batch_size: 8 -> 4"]);
        let resumed = saved(
            serde_json::json!({"seed": 42, "learning_rate": 5e-5, "data": {"max_length": 128},
            "resume": true}),
            2,
        );
        assert_eq!(compare(&before, &resumed), Changes::default());
    }
}
