//! What a finished run reports: summary.json and the table printed at the end.

use super::plot::Baseline;
use crate::train::{EvalResult, Precision};
use serde::Serialize;
use std::path::PathBuf;

/// What a finished run reports.
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_run: f64,
    pub world_size: usize,
    pub precision: Precision,
    /// Questions per second over all ranks, evaluation and checkpointing excluded.
    pub train_questions_per_second: f64,
    pub final_train_loss: Option<f64>,
    pub final_eval: Option<EvalResult>,
    pub final_eval_loss: Option<f64>,
    pub final_eval_accuracy: Option<f64>,
    /// Accuracies to compare with on the evaluation questions: chance, and always giving the
    /// training questions' commonest answer (empty without evaluation).
    pub baselines: Vec<Baseline>,
    /// The metric that picked best/, its best value and the step that reached it.
    pub metric_for_best_model: String,
    pub best_metric: Option<f64>,
    pub best_step: Option<usize>,
    /// Seconds from the start of training to its end, evaluation and saving included.
    pub train_runtime: f64,
    pub stopped_early: bool,
    pub checkpoint: PathBuf,
    pub best_checkpoint: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Under DDP: gradient buckets, and the mean time per step spent waiting for their
    /// all-reduce after backward (the communication that overlap did not hide).
    pub ddp_buckets: Option<usize>,
    pub ddp_exposed_ms_per_step: Option<f64>,
    /// Under DDP: each rank's compute time per step (until the gradient all-reduce) and its
    /// wait in that all-reduce, median and 95th percentile, for stragglers.
    pub per_rank_step_ms: Option<Vec<super::RankStepTimes>>,
    /// Distinct shapes of this rank's training micro-batches (questions, tokens per sequence,
    /// real tokens): what kernels and CUDA graphs meet (`--fixed-shapes` keeps it small).
    pub batch_shapes: usize,
    /// `--step-breakdown`: mean milliseconds per step of each phase.
    pub step_breakdown_ms: Option<super::StepTimes>,
}

impl TrainSummary {
    /// The run at a glance, as a plain-text table.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, digits: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"));
        let eval = self.final_eval.as_ref();
        let rows = [
            ("optimizer steps", self.steps.to_string()),
            ("epochs", format!("{:.2}", self.epochs_run)),
            ("processes", self.world_size.to_string()),
            ("precision", format!("{:?}", self.precision).to_lowercase()),
            ("train questions/s", format!("{:.1}", self.train_questions_per_second)),
            ("last train loss", opt(self.final_train_loss, 4)),
            ("eval questions", eval.map_or_else(|| "-".into(), |e| e.questions.to_string())),
            ("eval loss", opt(eval.map(EvalResult::loss), 4)),
            ("eval accuracy", opt(eval.map(EvalResult::accuracy), 4)),
            (
                "baselines",
                match self.baselines.is_empty() {
                    true => "-".into(),
                    false => self
                        .baselines
                        .iter()
                        .map(|b| format!("{} {:.4}", b.name, b.accuracy))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            ),
            (
                "best eval metric",
                match (self.best_metric, self.best_step) {
                    (Some(m), Some(s)) => format!("{} {m:.4} at step {s}", self.metric_for_best_model),
                    (Some(m), None) => format!("{} {m:.4}", self.metric_for_best_model),
                    _ => "-".into(),
                },
            ),
            ("runtime", format!("{:.1} s", self.train_runtime)),
            ("stopped early", self.stopped_early.to_string()),
            ("final checkpoint", self.checkpoint.display().to_string()),
            ("best checkpoint", self.best_checkpoint.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string())),
            ("plot", self.plot.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string())),
            ("DDP buckets", self.ddp_buckets.map_or_else(|| "-".into(), |b| b.to_string())),
            ("batch shapes", self.batch_shapes.to_string()),
            (
                "step ms fwd/bwd/wait/opt",
                self.step_breakdown_ms.as_ref().map_or_else(
                    || "-".into(),
                    |t| format!("{:.1} / {:.1} / {:.1} / {:.1}", t.forward, t.backward, t.all_reduce_wait, t.optimizer),
                ),
            ),
            ("DDP comm. wait/step", self.ddp_exposed_ms_per_step.map_or_else(|| "-".into(), |t| format!("{t:.1} ms"))),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}
