//! What a run reports: metrics.jsonl as it goes (written and read here), and at its end a PNG
//! of the loss and accuracy curves drawn from it (so a resumed run's plot covers the whole
//! history) and a summary table.

use super::{EvalResult, Precision};
use crate::error::{Error, Result};
use crate::tensorboard::EventWriter;
use plotters::prelude::*;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends one JSON object per line to `metrics.jsonl`, and sends its numbers to TensorBoard
/// when asked; rank 0 only (a no-op elsewhere).
pub(crate) struct MetricsLog {
    lines: Option<JsonLines>,
    tensorboard: Option<EventWriter>,
}

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "curves.png";
pub const SUMMARY_FILE: &str = "summary.json";

impl MetricsLog {
    /// Opens the log for appending, and a new TensorBoard events file in `tensorboard`. On
    /// resume from `resumed_step`, records of later steps (from the interrupted run, which
    /// will be redone) are dropped first, and TensorBoard is told to drop them too.
    pub(crate) fn open(
        dir: &Path,
        is_main: bool,
        resumed_step: Option<usize>,
        tensorboard: Option<&Path>,
    ) -> Result<Self> {
        if !is_main {
            return Ok(MetricsLog { lines: None, tensorboard: None });
        }
        let lines = JsonLines::open(dir.join(METRICS_FILE), resumed_step)?;
        let tensorboard = tensorboard.map(|dir| EventWriter::create(dir, resumed_step.map(|s| s + 1))).transpose()?;
        if let Some(writer) = &tensorboard {
            tracing::info!(events = %writer.path().display(), "reporting to TensorBoard");
        }
        Ok(MetricsLog { lines: Some(lines), tensorboard })
    }

    /// Appends `value` (a JSON object with a `step`) with the wall-clock time as `timestamp`
    /// (Unix seconds); its numbers go to TensorBoard named as the HF Trainer names them
    /// (`eval_loss` as `eval/loss`, `loss` as `train/loss`).
    pub(crate) fn write(&mut self, mut value: serde_json::Value) -> Result<()> {
        let (Some(lines), Some(row)) = (&mut self.lines, value.as_object_mut()) else { return Ok(()) };
        if let (Some(writer), Some(step)) = (&mut self.tensorboard, row.get("step").and_then(|s| s.as_u64())) {
            let scalars = row
                .iter()
                .filter(|(key, v)| key.as_str() != "step" && v.is_number())
                .map(|(key, v)| (tensorboard_tag(key), v.as_f64().unwrap_or(f64::NAN)));
            writer.scalars(step as usize, scalars)?;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        row.insert("timestamp".into(), now.as_secs_f64().into());
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
        if let (Some(step), Ok(text)) = (resumed_step, std::fs::read_to_string(&path)) {
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
            crate::atomic::write_file(&path, kept.as_bytes())?;
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

/// `--record-questions`: every process appends the training questions (indices into the
/// training cache) of each optimizer step to its own `questions-rank<R>.jsonl`.
pub(crate) struct QuestionLog(Option<JsonLines>);

pub const QUESTIONS_PREFIX: &str = "questions-rank";

impl QuestionLog {
    pub(crate) fn open(dir: &Path, enabled: bool, rank: usize, resumed_step: Option<usize>) -> Result<Self> {
        let path = dir.join(format!("{QUESTIONS_PREFIX}{rank}.jsonl"));
        Ok(QuestionLog(enabled.then(|| JsonLines::open(path, resumed_step)).transpose()?))
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
            ("DDP comm. wait/step", self.ddp_exposed_ms_per_step.map_or_else(|| "-".into(), |t| format!("{t:.1} ms"))),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}

/// One metrics.jsonl series: (step, value) pairs.
type Series = Vec<(f64, f64)>;

/// The training loss, evaluation loss and evaluation accuracy recorded in metrics.jsonl.
#[derive(Debug, Default)]
pub struct Curves {
    pub train_loss: Series,
    pub eval_loss: Series,
    pub eval_accuracy: Series,
}

impl Curves {
    pub fn read(metrics: &Path) -> Result<Curves> {
        let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
        let mut curves = Curves::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::data(metrics, Some(crate::error::Loc::Line(i as u64 + 1)), None, e.to_string()))?;
            let Some(step) = record["step"].as_f64() else { continue };
            for (key, series) in [
                ("loss", &mut curves.train_loss),
                ("eval_loss", &mut curves.eval_loss),
                ("eval_accuracy", &mut curves.eval_accuracy),
            ] {
                if let Some(v) = record[key].as_f64() {
                    series.push((step, v));
                }
            }
        }
        Ok(curves)
    }
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The embedded DejaVu Sans always parses; a failure would only leave text out.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn bounds(series: &[&Series]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = series.iter().flat_map(|s| s.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    (0.0..x1, (y0 - pad)..(y1 + pad))
}

/// An accuracy to compare the model with, drawn as a dashed line: chance, or always giving
/// the training labels' most common answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Baseline {
    pub name: String,
    pub accuracy: f64,
}

/// Draws `curves` to a PNG: loss (train and evaluation) on the left, accuracy on the right
/// with the `baselines` as dashed lines. Each legend sits in the corner the lines leave free.
pub fn plot(curves: &Curves, baselines: &[Baseline], png: &Path) -> Result<()> {
    register_font();
    let draw_err = |message: String| Error::Plot { path: png.to_path_buf(), message };
    let root = BitMapBackend::new(png, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let (left, right) = root.split_horizontally(600);
    type Lines<'a> = Vec<(&'a str, &'a Series, RGBColor)>;
    let panels: [(&DrawingArea<_, _>, &str, Lines); 2] = [
        (&left, "loss", vec![("train", &curves.train_loss, BLUE), ("eval", &curves.eval_loss, RED)]),
        (&right, "eval accuracy", vec![("eval", &curves.eval_accuracy, RED)]),
    ];
    for (area, title, lines) in panels {
        let accuracy = title.contains("accuracy");
        let series: Vec<&Series> = lines.iter().map(|(_, s, _)| *s).collect();
        let (xs, mut ys) = bounds(&series);
        if accuracy {
            ys = 0.0..1.0;
        }
        // The legend goes where the lines are not: above them when they end low, else below.
        let (last, height) = (last_value(&series).unwrap_or(ys.start), ys.end - ys.start);
        let legend = match (last - ys.start) / height > 0.5 {
            true => SeriesLabelPosition::LowerRight,
            false => SeriesLabelPosition::UpperRight,
        };
        if !accuracy {
            // Room for the legend above a falling loss.
            ys = ys.start..ys.end + 0.3 * height;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs.clone(), ys)
            .map_err(|e| draw_err(e.to_string()))?;
        chart.configure_mesh().x_desc("optimizer step").draw().map_err(|e| draw_err(e.to_string()))?;
        for (name, series, color) in lines {
            chart
                .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))
                .map_err(|e| draw_err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart
                .draw_series(series.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| draw_err(e.to_string()))?;
        }
        if accuracy {
            let greys = [RGBColor(90, 90, 90), RGBColor(150, 110, 40)];
            for (b, color) in baselines.iter().zip(greys) {
                let (y, style) = (b.accuracy, color.stroke_width(1));
                let dashes = DashedLineSeries::new([(xs.start, y), (xs.end, y)], 6, 4, style);
                chart
                    .draw_series(dashes)
                    .map_err(|e| draw_err(e.to_string()))?
                    .label(format!("{} {:.3}", b.name, b.accuracy))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
    }
    root.present().map_err(|e| draw_err(e.to_string()))
}

/// The last value of the series that reaches furthest right.
fn last_value(series: &[&Series]) -> Option<f64> {
    series.iter().filter_map(|s| s.last()).max_by(|a, b| a.0.total_cmp(&b.0)).map(|p| p.1)
}
