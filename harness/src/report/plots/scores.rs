//! Table 1 as a picture: each benchmark's headline score per method, with the score's 95%
//! confidence interval (± 1.96 standard errors).

use plotters::prelude::*;

use super::{colour, render, slot, Plot, FONT};
use crate::report::error::ReportError;
use crate::report::table::Row;

pub fn scores(rows: &[Row], methods: &[String], tasks: &[String]) -> Result<Plot, ReportError> {
    let m = methods.len();
    // Methods side by side within each task's slot.
    let offset = |i: usize| (i as f64 - (m as f64 - 1.0) / 2.0) * (0.7 / m.max(1) as f64);
    let series: Vec<Vec<(f64, f64, f64, f64)>> = methods
        .iter()
        .enumerate()
        .map(|(i, method)| {
            tasks
                .iter()
                .enumerate()
                .filter_map(|(j, task)| {
                    let row = rows
                        .iter()
                        .find(|r| &r.method == method && &r.task == task)?;
                    let v = 100.0 * row.value?;
                    let half = 100.0 * 1.96 * row.stderr.unwrap_or(0.0);
                    Some((
                        j as f64 + offset(i),
                        v,
                        (v - half).max(0.0),
                        (v + half).min(100.0),
                    ))
                })
                .collect()
        })
        .collect();
    let top = series.iter().flatten().map(|p| p.3).fold(0.0f64, f64::max);
    // Headroom above the highest interval for the legend (about 15 px per method of ~380 px).
    let headroom = (15.0 * m as f64 + 25.0) / 380.0;
    let y_max = (top / (1.0 - headroom)).clamp(1.0, 100.0);
    let width = (160 + 110 * tasks.len() as u32).max(640);
    let title = "Headline score per benchmark (95% CI: ± 1.96 standard errors)".to_owned();
    render(
        "plots/scores.svg".into(),
        title.clone(),
        (width, 460),
        |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(&title, (FONT, 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(-0.5..tasks.len() as f64 - 0.5, 0.0..y_max)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                // With as many labels as slots, plotters puts them on the integers.
                .x_labels(tasks.len())
                .x_label_formatter(&|x| {
                    slot(*x)
                        .and_then(|j| tasks.get(j))
                        .cloned()
                        .unwrap_or_default()
                })
                .y_desc("score (%)")
                .draw()?;
            for (i, (method, points)) in methods.iter().zip(&series).enumerate() {
                let c = colour(i);
                chart.draw_series(points.iter().map(|&(x, v, lo, hi)| {
                    ErrorBar::new_vertical(x, lo, v, hi, c.stroke_width(2), 8)
                }))?;
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|&(x, v, _, _)| Circle::new((x, v), 4, c.filled())),
                    )?
                    .label(method)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
            Ok(())
        },
    )
}
