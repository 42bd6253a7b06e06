//! SVG plots of the figures (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::{Figures, CONCURRENCY};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Throughput against concurrency, one line per data plane.
pub fn throughput(path: &Path, results: &[Figures]) -> Result<(), String> {
    let max = results.iter().map(Figures::max_rps).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput (closed loop, GET, one proxy core)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..CONCURRENCY.len() - 1, 0f64..max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(CONCURRENCY.len())
        .x_label_formatter(&|i| {
            CONCURRENCY
                .get(*i)
                .map_or(String::new(), |c| format!("{c} connections"))
        })
        .y_desc("requests per second")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, figures) in results.iter().filter(|f| !f.closed.is_empty()).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(usize, f64)> = figures
            .closed
            .iter()
            .enumerate()
            .map(|(x, (_, o))| (x, o.rps()))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(figures.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Latency percentiles at 90% of each data plane's own maximum (open loop).
pub fn latency(path: &Path, results: &[Figures]) -> Result<(), String> {
    let quantiles = [0.5, 0.9, 0.99, 0.999];
    let series: Vec<(&str, Vec<f64>)> = results
        .iter()
        .filter_map(|f| {
            let (_, _, outcome) = f.open.iter().find(|(fraction, _, _)| *fraction > 0.8)?;
            Some((
                f.name.as_str(),
                quantiles
                    .iter()
                    .map(|q| outcome.percentile_ms(*q))
                    .collect(),
            ))
        })
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.1, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency at 90% of each proxy's own maximum (open loop)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..quantiles.len() - 1, 0f64..max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(quantiles.len())
        .x_label_formatter(&|i| {
            quantiles
                .get(*i)
                .map_or(String::new(), |q| format!("p{}", q * 100.0))
        })
        .y_desc("milliseconds")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, values)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                values.into_iter().enumerate(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.to_owned())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
