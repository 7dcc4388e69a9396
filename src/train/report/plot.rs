//! The loss and accuracy curves, drawn at the end of a run from metrics.jsonl (so a resumed
//! run's plot covers the whole history).

use super::MetricsRecord;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;

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
            let record: MetricsRecord = serde_json::from_str(line)
                .map_err(|e| Error::data(metrics, Some(crate::error::Loc::Line(i as u64 + 1)), None, e.to_string()))?;
            let step = record.step as f64;
            for (value, series) in [
                (record.loss, &mut curves.train_loss),
                (record.eval_loss, &mut curves.eval_loss),
                (record.eval_accuracy, &mut curves.eval_accuracy),
            ] {
                if let Some(v) = value {
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
    let losses = [("train", &curves.train_loss, BLUE), ("eval", &curves.eval_loss, RED)];
    panel(&left, "loss", &losses, &[]).map_err(draw_err)?;
    panel(&right, "eval accuracy", &[("eval", &curves.eval_accuracy, RED)], baselines).map_err(draw_err)?;
    root.present().map_err(|e| draw_err(e.to_string()))
}

/// One panel of the plot: `lines` by name and colour, and the `baselines` (the accuracy's).
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    lines: &[(&str, &Series, RGBColor)],
    baselines: &[Baseline],
) -> std::result::Result<(), String> {
    let accuracy = title.contains("accuracy");
    let series: Vec<&Series> = lines.iter().map(|(_, s, _)| *s).collect();
    let (xs, mut ys) = bounds(&series);
    if accuracy {
        ys = 0.0..1.0;
    }
    // The legend goes where no line is: for the loss in a band added above the curves; for
    // the accuracy (baselines near the bottom) at the top, or mid-height on the right when
    // the accuracy ends high.
    let (last, height) = (last_value(&series).unwrap_or(ys.start), ys.end - ys.start);
    let legend = match accuracy && (last - ys.start) / height > 0.5 {
        true => SeriesLabelPosition::MiddleRight,
        false => SeriesLabelPosition::UpperRight,
    };
    if !accuracy {
        ys = ys.start..ys.end + 0.3 * height;
    }
    let text = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(xs.clone(), ys)
        .map_err(text)?;
    chart.configure_mesh().x_desc("optimizer step").draw().map_err(text)?;
    for &(name, series, color) in lines {
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))
            .map_err(text)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(text)?;
    }
    let greys = [RGBColor(90, 90, 90), RGBColor(150, 110, 40)];
    for (b, color) in baselines.iter().zip(greys) {
        let (y, style) = (b.accuracy, color.stroke_width(1));
        let dashes = DashedLineSeries::new([(xs.start, y), (xs.end, y)], 6, 4, style);
        chart
            .draw_series(dashes)
            .map_err(text)?
            .label(format!("{} {:.3}", b.name, b.accuracy))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(text)
}

/// The last value of the series that reaches furthest right.
fn last_value(series: &[&Series]) -> Option<f64> {
    series.iter().filter_map(|s| s.last()).max_by(|a, b| a.0.total_cmp(&b.0)).map(|p| p.1)
}
