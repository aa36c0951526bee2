//! The latency-over-time chart: p50 and p99 of each operation per second of the run, as SVG.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::load::Report;

/// Writes `report`'s per-second latencies to an SVG file.
pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let mut names: Vec<&str> = report.stats.ops.iter().map(|o| o.op.as_str()).collect();
    names.dedup();
    let seconds = report.stats.timeline.len().max(1) as f64;
    let y_max =
        report.stats.timeline.iter().flat_map(|w| w.ops.values().map(|o| o.latency_ms.p99)).fold(1.0f64, f64::max)
            * 1.5;

    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let caption = format!("orderflow-load {:?}: latency per second (p50 dashed, p99 solid)", report.scenario);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, (0.05f64..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("seconds since start").y_desc("latency (ms, log)").draw().map_err(|e| err(&e))?;
    for (i, name) in names.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series = |pick: fn(&crate::stats::LatencyMs) -> f64| -> Vec<(f64, f64)> {
            report
                .stats
                .timeline
                .iter()
                .filter_map(|w| w.ops.get(*name).map(|o| (w.second as f64 + 0.5, pick(&o.latency_ms).max(0.05))))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(series(|l| l.p99), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(series(|l| l.p50), 6, 4, color.stroke_width(1)))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
