//! Figure 8: how the K sub-models' error sets overlap, as an UpSet chart. Each column is one
//! combination of sub-models (the dots below it) that got exactly the same items wrong; the bar
//! is the share of all items some sub-model got wrong that fall in that combination.

use plotters::prelude::*;

use super::{render, slot, slug, Plot, FONT};
use crate::report::error::ReportError;
use crate::report::error_sets::ErrorSets;

pub fn upset(sets: &ErrorSets) -> Result<Plot, ReportError> {
    let cols = sets.intersections.len().max(1);
    let k = sets.submodels.len();
    let top = sets
        .intersections
        .iter()
        .map(|i| 100.0 * i.share)
        .fold(0.0f64, f64::max);
    let title = format!(
        "{}: overlap of the sub-models' errors ({} of {} items wrong for at least one)",
        sets.task, sets.any_wrong, sets.n_items
    );
    let file = format!("plots/errors-upset-{}.svg", slug(&sets.task));
    let width = (260 + 46 * cols as u32).max(640);
    let height = 420 + 26 * k as u32;
    render(file, title.clone(), (width, height), |root| {
        let root = root.titled(&title, (FONT, 16))?;
        let (bars, matrix) = root.split_vertically(300);
        let x_range = -0.5..cols as f64 - 0.5;
        let mut chart = ChartBuilder::on(&bars)
            .margin(10)
            .y_label_area_size(180)
            .build_cartesian_2d(x_range.clone(), 0.0..(top * 1.2).max(1.0))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("share of erroneous items (%)")
            .draw()?;
        chart.draw_series(sets.intersections.iter().enumerate().map(|(j, s)| {
            let x = j as f64;
            Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, 100.0 * s.share)],
                BLACK.mix(0.75).filled(),
            )
        }))?;
        chart.draw_series(sets.intersections.iter().enumerate().map(|(j, s)| {
            Text::new(
                format!("{:.0}%", 100.0 * s.share),
                (j as f64 - 0.3, 100.0 * s.share + top * 0.08),
                (FONT, 12),
            )
        }))?;

        let mut grid = ChartBuilder::on(&matrix)
            .margin(10)
            .y_label_area_size(180)
            .build_cartesian_2d(x_range, -0.5..k as f64 - 0.5)?;
        grid.configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(k)
            .y_label_formatter(&|y| match slot(*y)
                .and_then(|r| Some((sets.submodels.get(r)?, sets.wrong.get(r)?)))
            {
                Some((name, w)) => format!("{name} ({w} wrong)"),
                None => String::new(),
            })
            .draw()?;
        for (j, s) in sets.intersections.iter().enumerate() {
            let x = j as f64;
            let member: Vec<usize> = (0..k)
                .filter(|&r| s.members.contains(&sets.submodels[r]))
                .collect();
            if let (Some(first), Some(last)) = (member.first(), member.last()) {
                grid.draw_series(std::iter::once(PathElement::new(
                    vec![(x, *first as f64), (x, *last as f64)],
                    BLACK.stroke_width(2),
                )))?;
            }
            grid.draw_series((0..k).map(|r| {
                let style = if member.contains(&r) {
                    BLACK.filled()
                } else {
                    BLACK.mix(0.15).filled()
                };
                Circle::new((x, r as f64), 6, style)
            }))?;
        }
        Ok(())
    })
}
