//! `--plot FILE.svg|FILE.png`: decode throughput and TTFT against batch size, one line per
//! configuration (model, dtype, device, prompt and generated lengths). Labels are laid out (and,
//! in a PNG, rasterized) with a TrueType font read at run time from the system's font
//! directories (Debian: `fonts-dejavu-core`) or from `$EDGELLM_FONT` — none ships with edgellm.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
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
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..x_max + 0.5, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("batch size")
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .y_label_formatter(&|y| if y_max >= 20.0 { format!("{y:.0}") } else { format!("{y:.1}") })
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
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Writes the two-panel chart of `records` to `path` (`.svg` or `.png`).
pub fn write(records: &[Record], path: &Path) -> Result<()> {
    const SIZE: (u32, u32) = (1400, 560);
    let ext = path.extension().and_then(|e| e.to_str());
    if !matches!(ext, Some("svg" | "png")) {
        bail!("--plot writes SVG or PNG: name the file *.svg or *.png");
    }
    register_font()?;
    if ext == Some("svg") {
        draw(SVGBackend::new(path, SIZE).into_drawing_area(), records)
    } else {
        draw(BitMapBackend::new(path, SIZE).into_drawing_area(), records)
    }
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, records: &[Record]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let (left, right) = root.split_horizontally(SIZE_HALF);
    panel(&left, "Decode throughput (batch)", "tok/s", &series(records, |r| r.batch_tok_s.median))?;
    panel(&right, "Time to first token", "ms", &series(records, |r| r.ttft_ms.median))?;
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Width of each panel.
const SIZE_HALF: u32 = 700;

/// Fonts tried for PNG labels, in order (Debian `fonts-dejavu-core`, then common others).
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The font file PNG labels are drawn with: `$EDGELLM_FONT`, else the first candidate present.
fn font_path() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("EDGELLM_FONT") {
        return Ok(p.into());
    }
    FONT_CANDIDATES.iter().map(std::path::PathBuf::from).find(|p| p.is_file()).with_context(|| {
        format!(
            "--plot needs a TrueType font for its labels and found none of {}; install one \
             (Debian: apt-get install fonts-dejavu-core) or point EDGELLM_FONT at a .ttf file",
            FONT_CANDIDATES.join(", ")
        )
    })
}

/// Registers the font as plotters' "sans-serif" (once per process).
fn register_font() -> Result<()> {
    use std::sync::OnceLock;
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = font_path().map_err(|e| format!("{e:#}"))?;
        let bytes = std::fs::read(&path).map_err(|e| format!("reading font {}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType font plotters can read", path.display()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::record::tests::record;

    #[test]
    fn svg_has_both_panels_and_a_legend() {
        if font_path().is_err() {
            return; // png_is_drawn_with_a_system_font checks the error
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.svg");
        write(&[record(1, 10.0), record(4, 8.0)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for needle in ["Decode throughput", "Time to first token", "synthetic:qwen2.5-0.5b f32 cpu p128 n64"]
        {
            assert!(svg.contains(needle), "{needle} missing");
        }
        assert!(write(&[record(1, 10.0)], &dir.path().join("x.jpg")).is_err());
    }

    /// With a font present (CI installs fonts-dejavu-core) the PNG is written at the chart's
    /// size; without one the error says what to install.
    #[test]
    fn png_is_drawn_with_a_system_font() {
        if font_path().is_err() {
            // the error names the package to install; the chart itself needs the font
            let dir = tempfile::tempdir().unwrap();
            let err = write(&[record(1, 10.0)], &dir.path().join("x.png")).unwrap_err();
            assert!(format!("{err:#}").contains("fonts-dejavu-core"));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.png");
        write(&[record(1, 10.0), record(4, 8.0)], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1400);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 560);
    }
}
