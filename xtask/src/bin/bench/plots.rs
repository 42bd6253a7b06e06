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

/// One plot: a line per series over the same labelled x positions.
pub struct Lines<'a> {
    pub title: &'a str,
    pub x_labels: Vec<String>,
    pub y_desc: &'a str,
    pub series: Vec<(String, Vec<f64>)>,
    /// Where the legend goes: the corner the lines leave free.
    pub legend: SeriesLabelPosition,
}

impl Lines<'_> {
    pub fn draw(&self, path: &Path) -> Result<(), String> {
        let positions = self.x_labels.len().max(2);
        let max = self
            .series
            .iter()
            .flat_map(|(_, values)| values.iter().copied())
            .fold(0.1, f64::max)
            * 1.15;
        let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0usize..positions - 1, 0f64..max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(positions)
            .x_label_formatter(&|i| self.x_labels.get(*i).cloned().unwrap_or_default())
            .y_desc(self.y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, values)) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(usize, f64)> = values.iter().copied().enumerate().collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
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
            .position(self.legend.clone())
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

/// Throughput against concurrency, one line per data plane.
pub fn throughput(path: &Path, results: &[Figures]) -> Result<(), String> {
    Lines {
        title: "Throughput (closed loop, GET, one proxy core)",
        x_labels: CONCURRENCY
            .iter()
            .map(|c| format!("{c} connections"))
            .collect(),
        y_desc: "requests per second",
        series: results
            .iter()
            .filter(|f| !f.closed.is_empty())
            .map(|f| {
                (
                    f.name.clone(),
                    f.closed.iter().map(|(_, o)| o.rps()).collect(),
                )
            })
            .collect(),
        legend: SeriesLabelPosition::UpperLeft,
    }
    .draw(path)
}

/// Latency percentiles at 90% of each data plane's own maximum (open loop).
pub fn latency(path: &Path, results: &[Figures]) -> Result<(), String> {
    let quantiles = [0.5, 0.9, 0.99, 0.999];
    Lines {
        title: "Latency at 90% of each proxy's own maximum (open loop)",
        x_labels: quantiles
            .iter()
            .map(|q| format!("p{}", q * 100.0))
            .collect(),
        y_desc: "milliseconds",
        series: results
            .iter()
            .filter_map(|f| {
                let (_, _, outcome) = f.open.iter().find(|(fraction, _, _)| *fraction > 0.8)?;
                Some((
                    f.name.clone(),
                    quantiles
                        .iter()
                        .map(|q| outcome.percentile_ms(*q))
                        .collect(),
                ))
            })
            .collect(),
        legend: SeriesLabelPosition::UpperLeft,
    }
    .draw(path)
}
