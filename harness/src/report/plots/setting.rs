//! Figures 10 and 11: a benchmark's headline score against a setting the runs were made with
//! (training-data size, K, …), read from run labels (`NAME=DIR@k=4`). Runs with the same
//! `series` label are joined by one line (default: all labelled runs form one series).

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::{colour, padded, render, slug, Plot, FONT};
use crate::report::error::ReportError;
use crate::report::runs::Run;
use crate::report::table::Row;

/// The label that names a run's line rather than a setting.
pub const SERIES_LABEL: &str = "series";

/// One point: a run's score at its value of the setting.
struct Point {
    x: f64,
    value: f64,
    stderr: f64,
}

/// One figure per (setting, task) for every setting at least two runs are labelled with.
pub fn setting_plots(
    runs: &[Run],
    rows: &[Row],
    tasks: &[String],
) -> Result<Vec<Plot>, ReportError> {
    let mut keys: Vec<&String> = runs
        .iter()
        .flat_map(|r| r.labels.keys())
        .filter(|k| k.as_str() != SERIES_LABEL)
        .collect();
    keys.sort();
    keys.dedup();
    let mut plots = Vec::new();
    for key in keys {
        let mut labelled = Vec::new();
        for run in runs {
            if let Some(v) = run.labels.get(key) {
                let x: f64 = v.parse().map_err(|_| {
                    ReportError::Usage(format!(
                        "run `{}`: label {key}={v} is not a number (settings are plotted on a numeric axis)",
                        run.name
                    ))
                })?;
                let series = run
                    .labels
                    .get(SERIES_LABEL)
                    .cloned()
                    .unwrap_or_else(|| "runs".into());
                labelled.push((run, x, series));
            }
        }
        if labelled.len() < 2 {
            continue;
        }
        for task in tasks {
            let mut series: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
            for (run, x, name) in &labelled {
                let row = rows
                    .iter()
                    .find(|r| r.method == run.name && &r.task == task);
                if let Some((value, stderr)) = row.and_then(|r| Some((r.value?, r.stderr))) {
                    series.entry(name).or_default().push(Point {
                        x: *x,
                        value: 100.0 * value,
                        stderr: 100.0 * stderr.unwrap_or(0.0),
                    });
                }
            }
            if series.values().map(Vec::len).sum::<usize>() < 2 {
                continue;
            }
            for points in series.values_mut() {
                points.sort_by(|a, b| a.x.total_cmp(&b.x));
            }
            plots.push(plot(key, task, &series)?);
        }
    }
    Ok(plots)
}

fn plot(key: &str, task: &str, series: &BTreeMap<&str, Vec<Point>>) -> Result<Plot, ReportError> {
    let all = series.values().flatten();
    let x_lo = all.clone().map(|p| p.x).fold(f64::INFINITY, f64::min);
    let x_hi = all.clone().map(|p| p.x).fold(f64::NEG_INFINITY, f64::max);
    let y_lo = all
        .clone()
        .map(|p| p.value - 1.96 * p.stderr)
        .fold(f64::INFINITY, f64::min)
        .max(0.0);
    let y_hi = all
        .map(|p| p.value + 1.96 * p.stderr)
        .fold(f64::NEG_INFINITY, f64::max)
        .min(100.0);
    let title = format!("{task}: headline score against {key} (95% CI)");
    let file = format!("plots/setting-{}-{}.svg", slug(key), slug(task));
    render(file, title.clone(), (720, 440), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(padded(x_lo, x_hi), padded(y_lo, y_hi))?;
        chart
            .configure_mesh()
            .x_desc(key)
            // Settings are counts more often than not: no trailing ".0".
            .x_label_formatter(&|x| format!("{}", (x * 1000.0).round() / 1000.0))
            .y_desc("score (%)")
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let c = colour(i);
            chart.draw_series(points.iter().map(|p| {
                let half = 1.96 * p.stderr;
                ErrorBar::new_vertical(
                    p.x,
                    p.value - half,
                    p.value,
                    p.value + half,
                    c.stroke_width(1),
                    8,
                )
            }))?;
            chart.draw_series(LineSeries::new(
                points.iter().map(|p| (p.x, p.value)),
                c.stroke_width(2),
            ))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.x, p.value), 4, c.filled())),
                )?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        Ok(())
    })
}
