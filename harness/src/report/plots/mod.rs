//! The report's figures, as SVG drawn with plotters (no bitmap backend, no fonts: the SVG holds
//! `<text>` elements and the viewer draws them).

mod by_errors;
mod loss;
mod scores;
mod setting;
mod upset;

pub use by_errors::by_errors;
pub use loss::loss_curves;
pub use scores::scores;
pub use setting::setting_plots;
pub use upset::upset;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::error::ReportError;

/// One figure: where it goes under the report folder, its caption, and the SVG text.
#[derive(Clone, Debug)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub svg: String,
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws an SVG of `size` pixels on a white background.
fn render(
    file: String,
    title: String,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
) -> Result<Plot, ReportError> {
    let mut svg = String::new();
    let drawn = (|| -> DrawResult {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| ReportError::Plot {
        file: file.clone(),
        message: e.to_string(),
    })?;
    Ok(Plot { file, title, svg })
}

/// Tableau's ten categorical colours, one per series.
fn colour(i: usize) -> RGBColor {
    const TABLEAU: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TABLEAU[i % TABLEAU.len()];
    RGBColor(r, g, b)
}

/// A file-name-safe form of a task or setting name.
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Axis range `[lo, hi]` widened by 8% so that points do not sit on the frame.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.08 * span)..(hi + 0.08 * span)
}

/// The category index of an axis position that sits on an integer (labels of categorical
/// axes drawn on an f64 range, so that series can be placed side by side within a slot).
fn slot(x: f64) -> Option<usize> {
    let r = x.round();
    ((x - r).abs() < 1e-6 && r >= 0.0).then_some(r as usize)
}

const FONT: &str = "sans-serif";
