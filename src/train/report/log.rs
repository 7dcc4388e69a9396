//! The logs a run appends to as it goes: metrics.jsonl (and TensorBoard's events) on rank 0,
//! and `--record-questions`' per-rank question files; a resume drops the lines of steps it
//! will redo.

use crate::error::{Error, Result};
use crate::tensorboard::EventWriter;
use crate::train::RunDir;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of metrics.jsonl, as the HF Trainer's log history names its keys: a logged
/// training step, an evaluation, or the run's end (each sets its own fields). The training
/// loop writes it (fields it does not set left out of the line) and the plot reads it back.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MetricsRecord {
    pub step: usize,
    pub epoch: f64,
    // A logged training step.
    pub loss: Option<f64>,
    pub learning_rate: Option<f64>,
    pub grad_norm: Option<f64>,
    pub questions_per_second: Option<f64>,
    /// fp16's scaler skipped the step (a gradient was not finite).
    pub skipped_step: Option<bool>,
    // An evaluation.
    pub eval_loss: Option<f64>,
    pub eval_accuracy: Option<f64>,
    pub eval_questions: Option<usize>,
    pub eval_runtime: Option<f64>,
    /// (subject, correct, questions).
    pub per_subject: Option<Vec<(String, usize, usize)>>,
    // The run's end.
    pub train_runtime: Option<f64>,
    pub train_questions_per_second: Option<f64>,
    /// When the line was written (Unix seconds); set by [`MetricsLog::write`].
    pub timestamp: Option<f64>,
}

/// Appends one JSON object per line to `metrics.jsonl`, and sends its numbers to TensorBoard
/// when asked; rank 0 only (a no-op elsewhere).
pub(crate) struct MetricsLog {
    lines: Option<JsonLines>,
    tensorboard: Option<EventWriter>,
}

impl MetricsLog {
    /// Opens the log for appending, and a new TensorBoard events file in `tensorboard`. On
    /// resume from `resumed_step`, records of later steps (from the interrupted run, which
    /// will be redone) are dropped first, and TensorBoard is told to drop them too.
    pub(crate) fn open(
        path: &Path,
        is_main: bool,
        resumed_step: Option<usize>,
        tensorboard: Option<&Path>,
    ) -> Result<Self> {
        if !is_main {
            return Ok(MetricsLog { lines: None, tensorboard: None });
        }
        let lines = JsonLines::open(path.to_path_buf(), resumed_step)?;
        let tensorboard = tensorboard.map(|dir| EventWriter::create(dir, resumed_step.map(|s| s + 1))).transpose()?;
        if let Some(writer) = &tensorboard {
            tracing::info!(events = %writer.path().display(), "reporting to TensorBoard");
        }
        Ok(MetricsLog { lines: Some(lines), tensorboard })
    }

    /// Appends `record` with the wall-clock time as its `timestamp`; its numbers go to
    /// TensorBoard named as the HF Trainer names them (`eval_loss` as `eval/loss`, `loss` as
    /// `train/loss`).
    pub(crate) fn write(&mut self, record: MetricsRecord) -> Result<()> {
        let Some(lines) = &mut self.lines else { return Ok(()) };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let step = record.step;
        let record = MetricsRecord { timestamp: Some(now.as_secs_f64()), ..record };
        let mut value = serde_json::to_value(&record).map_err(|e| Error::write(&lines.path, e))?;
        let Some(row) = value.as_object_mut() else { return Ok(()) };
        row.retain(|_, v| !v.is_null());
        if let Some(writer) = &mut self.tensorboard {
            let scalars = row
                .iter()
                .filter(|(key, v)| !["step", "timestamp"].contains(&key.as_str()) && v.is_number())
                .map(|(key, v)| (tensorboard_tag(key), v.as_f64().unwrap_or(f64::NAN)));
            writer.scalars(step, scalars)?;
        }
        lines.append(&value)
    }
}

/// A JSON-lines log open for appending.
struct JsonLines {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonLines {
    /// On resume from `resumed_step`, the lines of later steps (from the interrupted run,
    /// which will be redone) are dropped first.
    fn open(path: PathBuf, resumed_step: Option<usize>) -> Result<Self> {
        if let Some(step) = resumed_step {
            cut_after(&path, step)?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(JsonLines { file, path })
    }

    /// One line, written whole (a line is one `write` to the file, so a crash leaves no part).
    fn append(&mut self, value: &serde_json::Value) -> Result<()> {
        self.file.write_all(format!("{value}\n").as_bytes()).map_err(|e| Error::io(&self.path, e))
    }
}

/// Drops the lines of a JSON-lines log (when it exists) whose `step` is after `step`.
fn cut_after(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_none_or(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::atomic::write_file(path, kept.as_bytes())
}

/// `--record-questions`: every process appends the training questions (indices into the
/// training cache) of each optimizer step to its own `questions-rank<R>.jsonl`.
pub(crate) struct QuestionLog(Option<JsonLines>);

impl QuestionLog {
    /// This rank's file. On resume, rank 0 also cuts back the files of ranks the run no
    /// longer has (it resumed on fewer processes): what they trained after the checkpoint
    /// was lost with them and is trained again.
    pub(crate) fn open(
        run: &RunDir,
        rank: usize,
        world: usize,
        enabled: bool,
        resumed_step: Option<usize>,
    ) -> Result<Self> {
        if let (true, 0, Some(step)) = (enabled, rank, resumed_step) {
            for gone in (world..).map(|r| run.questions(r)).take_while(|p| p.exists()) {
                cut_after(&gone, step)?;
            }
        }
        Ok(QuestionLog(enabled.then(|| JsonLines::open(run.questions(rank), resumed_step)).transpose()?))
    }

    pub(crate) fn write(&mut self, step: usize, epoch: u64, group: &[Vec<usize>]) -> Result<()> {
        let Some(lines) = &mut self.0 else { return Ok(()) };
        lines.append(&serde_json::json!({"step": step, "epoch": epoch, "questions": group.concat()}))
    }
}

/// The HF Trainer's TensorBoard name for a logged key.
fn tensorboard_tag(key: &str) -> String {
    match key.strip_prefix("eval_") {
        Some(metric) => format!("eval/{metric}"),
        None => format!("train/{key}"),
    }
}
