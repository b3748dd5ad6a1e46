//! `--plot FILE.svg`: decode throughput and TTFT against batch size, one line per configuration
//! (model, dtype, device, prompt and generated lengths). SVG only: plotters' SVG backend writes
//! text as `<text>` elements, so no font files or fontconfig are needed, while its PNG backend
//! would need a TTF font to draw any label.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use plotters::prelude::*;

use super::record::Record;

/// A line of the chart: its label and `(batch, value)` points.
type Series = (String, Vec<(f64, f64)>);

fn series(records: &[Record], value: impl Fn(&Record) -> f64) -> Vec<Series> {
    let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        let label = format!("{} {} {} p{} n{}", r.model, r.dtype, r.device, r.prompt_tokens, r.gen_tokens);
        by.entry(label).or_default().push((r.batch as f64, value(r)));
    }
    by.into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (k, v)
        })
        .collect()
}

/// Draws one panel.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    data: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let x_max = data.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(1.0, f64::max);
    let y_max = data.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..x_max + 0.5, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("batch size")
        .y_desc(y_desc)
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    for (i, (label, points)) in data.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Writes the two-panel chart of `records` to `path` (`.svg`).
pub fn write(records: &[Record], path: &Path) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!("--plot writes SVG only (PNG would need a font file to draw labels); name the file *.svg");
    }
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, "Decode throughput (batch)", "tok/s", &series(records, |r| r.batch_tok_s.median))?;
    panel(&right, "Time to first token", "ms", &series(records, |r| r.ttft_ms.median))?;
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::record::tests::record;

    #[test]
    fn svg_has_both_panels_and_a_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.svg");
        write(&[record(1, 10.0), record(4, 8.0)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for needle in ["Decode throughput", "Time to first token", "synthetic:qwen2.5-0.5b f32 cpu p128 n64"]
        {
            assert!(svg.contains(needle), "{needle} missing");
        }
        assert!(write(&[record(1, 10.0)], &dir.path().join("x.png")).is_err());
    }
}
