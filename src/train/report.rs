//! What a run shows at its end: a PNG of the loss and accuracy curves drawn from
//! metrics.jsonl (so a resumed run's plot covers the whole history) and a summary table.

use crate::error::{Error, Result};
use plotters::prelude::*;
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

/// Draws `curves` to a PNG: loss (train and evaluation) on the left, accuracy on the right.
pub fn plot(curves: &Curves, png: &Path) -> Result<()> {
    register_font();
    let draw_err = |e: String| Error::Input(format!("{}: plot: {e}", png.display()));
    let root = BitMapBackend::new(png, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let (left, right) = root.split_horizontally(600);
    type Lines<'a> = Vec<(&'a str, &'a Series, RGBColor)>;
    let panels: [(&DrawingArea<_, _>, &str, Lines); 2] = [
        (&left, "loss", vec![("train", &curves.train_loss, BLUE), ("eval", &curves.eval_loss, RED)]),
        (&right, "eval accuracy", vec![("eval", &curves.eval_accuracy, RED)]),
    ];
    for (area, title, lines) in panels {
        let (xs, mut ys) = bounds(&lines.iter().map(|(_, s, _)| *s).collect::<Vec<_>>());
        if title.contains("accuracy") {
            ys = 0.0..1.0;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs, ys)
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
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
    }
    root.present().map_err(|e| draw_err(e.to_string()))
}
