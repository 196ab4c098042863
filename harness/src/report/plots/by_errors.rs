//! Figure 9: the merged model's accuracy on the items that exactly 0, 1, …, K sub-models got
//! wrong; one bar series per merged run.

use plotters::prelude::*;

use super::{colour, render, slot, slug, Plot, FONT};
use crate::report::error::ReportError;
use crate::report::error_sets::ErrorSets;

pub fn by_errors(sets: &ErrorSets) -> Result<Plot, ReportError> {
    let k = sets.submodels.len();
    let m = sets.merged.len().max(1);
    let width_each = 0.8 / m as f64;
    let title = format!(
        "{}: merged accuracy by the number of sub-models that got the item wrong",
        sets.task
    );
    let file = format!("plots/errors-merged-{}.svg", slug(&sets.task));
    let counts: Vec<usize> = (0..=k)
        .map(|w| sets.merged.first().map_or(0, |b| b.buckets[w].n))
        .collect();
    render(file, title.clone(), (720, 440), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FONT, 16))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5..k as f64 + 0.5, 0.0..110.0)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(k + 1)
            .x_label_formatter(&|x| {
                slot(*x)
                    .and_then(|w| Some(format!("{w} (n={})", counts.get(w)?)))
                    .unwrap_or_default()
            })
            .x_desc("sub-models wrong on the item (items)")
            .y_desc("merged accuracy (%)")
            .draw()?;
        for (i, merged) in sets.merged.iter().enumerate() {
            let c = colour(i);
            let left = |w: usize| w as f64 - 0.4 + i as f64 * width_each;
            chart
                .draw_series(merged.buckets.iter().filter_map(|b| {
                    let acc = 100.0 * b.accuracy?;
                    Some(Rectangle::new(
                        [
                            (left(b.wrong), 0.0),
                            (left(b.wrong) + width_each * 0.92, acc),
                        ],
                        c.filled(),
                    ))
                }))?
                .label(&merged.merged)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}
