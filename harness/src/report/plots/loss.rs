//! Training loss curves, one line per `train_log.jsonl`.

use plotters::prelude::*;

use super::{colour, padded, render, Plot, FONT};
use crate::report::error::ReportError;
use crate::report::trainlog::TrainLog;

pub fn loss_curves(logs: &[TrainLog]) -> Result<Plot, ReportError> {
    let steps = logs.iter().flat_map(|l| l.steps.iter());
    let x_max = steps.clone().map(|s| s.step).max().unwrap_or(1).max(1) as f64;
    let x_min = steps.clone().map(|s| s.step).min().unwrap_or(0) as f64;
    let lo = steps.clone().map(|s| s.loss).fold(f64::INFINITY, f64::min);
    let hi = steps.map(|s| s.loss).fold(f64::NEG_INFINITY, f64::max);
    let title = "Training loss per optimiser step".to_owned();
    render("plots/loss.svg".into(), title.clone(), (760, 440), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, padded(lo, hi))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("loss")
            .draw()?;
        for (i, log) in logs.iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(
                    log.steps.iter().map(|s| (s.step as f64, s.loss)),
                    c.stroke_width(2),
                ))?
                .label(&log.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
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
