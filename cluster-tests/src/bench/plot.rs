//! PNG line charts with `plotters`, for `docs/benchmarks.md`.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::report::note;

/// Fonts plotters may draw with: DejaVu Sans (Debian `fonts-dejavu-core`), registered once.
fn font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
        let Ok(bytes) = std::fs::read(path) else {
            note(&format!(
                "no {path} (apt-get install fonts-dejavu-core): no plots"
            ));
            return false;
        };
        // Registered fonts live as long as the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

/// Draws `series` (name, points) to `path`, with an optional horizontal line (y, label).
pub(crate) fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    hline: Option<(f64, &str)>,
) -> anyhow::Result<()> {
    if !font() {
        return Ok(());
    }
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (1.0f64, hline.map_or(1.0, |h| h.0));
    for (x, y) in pts {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).context("plot")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max * 1.1)
        .context("plot")?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .context("plot")?;
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .context("plot")?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some((y, label)) = hline {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new(vec![(0.0, y), (x_max * 1.02, y)], grey))
            .context("plot")?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .context("plot")?;
    root.present().context("write the plot")?;
    Ok(())
}
