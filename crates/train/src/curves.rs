//! `curves.png`: the training and evaluation curves of a run drawn from its `metrics.jsonl`
//! (loss and eval loss, learning rate, grad norm, the other eval metrics, DPO's rewards and
//! margins), one panel each, with axes, labels and legends.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// DejaVu Sans (its licence is `assets/fonts/DejaVu-LICENSE.txt`), embedded so that charts
/// draw the same on machines without fonts.
static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";

/// One line of a panel.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// One chart of the figure.
struct Panel {
    title: &'static str,
    legend: SeriesLabelPosition,
    y_label: &'static str,
    series: Vec<Series>,
}

/// Reads `metrics.jsonl` (one JSON record per line; lines that do not parse are skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.as_object().cloned())
        .collect())
}

fn series(records: &[serde_json::Map<String, Value>], key: &str, name: &str) -> Option<Series> {
    let points: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect();
    (!points.is_empty()).then(|| Series {
        name: name.to_string(),
        points,
    })
}

fn panels(records: &[serde_json::Map<String, Value>]) -> Vec<Panel> {
    let mut eval_keys: Vec<String> = records
        .iter()
        .flat_map(|r| r.keys())
        .filter(|k| {
            // Loss and rewards have their panels; log-probabilities and logits are on another
            // scale than the accuracies.
            k.starts_with("eval_")
                && !["eval_loss", "eval_rewards/", "eval_logps/", "eval_logits/"]
                    .iter()
                    .any(|p| k.starts_with(p))
        })
        .cloned()
        .collect();
    eval_keys.sort();
    eval_keys.dedup();
    let mut out = vec![
        Panel {
            title: "loss",
            legend: SeriesLabelPosition::UpperRight,
            y_label: "loss",
            series: [("loss", "train"), ("eval_loss", "eval")]
                .iter()
                .filter_map(|(k, n)| series(records, k, n))
                .collect(),
        },
        Panel {
            title: "learning rate",
            legend: SeriesLabelPosition::UpperRight,
            y_label: "learning rate",
            series: series(records, "learning_rate", "learning rate")
                .into_iter()
                .collect(),
        },
        Panel {
            title: "gradient norm (before clipping)",
            legend: SeriesLabelPosition::UpperRight,
            y_label: "grad norm",
            series: series(records, "grad_norm", "grad norm")
                .into_iter()
                .collect(),
        },
        Panel {
            title: "evaluation",
            legend: SeriesLabelPosition::LowerRight,
            y_label: "accuracy",
            series: eval_keys
                .iter()
                .filter_map(|k| series(records, k, k.trim_start_matches("eval_")))
                .collect(),
        },
        Panel {
            title: "rewards (DPO)",
            legend: SeriesLabelPosition::UpperLeft,
            y_label: "reward",
            series: [
                ("rewards/chosen", "chosen"),
                ("rewards/rejected", "rejected"),
                ("rewards/margins", "margin"),
                ("eval_rewards/margins", "eval margin"),
            ]
            .iter()
            .filter_map(|(k, n)| series(records, k, n))
            .collect(),
        },
        Panel {
            title: "reward accuracy (DPO)",
            legend: SeriesLabelPosition::LowerRight,
            y_label: "accuracy",
            series: [
                ("rewards/accuracies", "train"),
                ("eval_rewards/accuracies", "eval"),
            ]
            .iter()
            .filter_map(|(k, n)| series(records, k, n))
            .collect(),
        },
    ];
    out.retain(|p| !p.series.is_empty());
    out
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws the curves of `metrics` (a `metrics.jsonl`) into the PNG `out`.
pub fn draw(metrics: &Path, out: &Path) -> Result<()> {
    let records = read_metrics(metrics)?;
    let panels = panels(&records);
    if panels.is_empty() {
        return Err(TrainError::Checkpoint {
            path: metrics.to_path_buf(),
            message: "no metrics to plot yet".into(),
        });
    }
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT);
    });
    let fail = |e: &dyn std::fmt::Display| TrainError::Checkpoint {
        path: out.to_path_buf(),
        message: format!("cannot draw the curves: {e}"),
    };
    let rows = panels.len().div_ceil(2);
    let root = BitMapBackend::new(out, (1400, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    for (area, panel) in root.split_evenly((rows, 2)).iter().zip(&panels) {
        draw_panel(area, panel).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = bounds(all().map(|p| p.0));
    let (y0, y1) = bounds(all().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT_NAME, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(78)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_label)
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| tick(*y, y1 - y0))
        .draw()?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
            });
        // Evaluation happens every few hundred steps: mark each point.
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT_NAME, 15))
        .draw()?;
    Ok(())
}

/// `(min, max)` with a margin, never empty.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    (lo - pad, hi + pad)
}

/// A tick label readable at the chart's range (`2.0e-4` for learning rates).
fn tick(v: f64, range: f64) -> String {
    if range < 1e-2 || v.abs() >= 1e4 {
        format!("{v:.1e}")
    } else if range < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}
