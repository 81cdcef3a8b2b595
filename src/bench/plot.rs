//! `sweep.svg`: throughput by batch size, and latency against throughput.

use super::report::Row;
use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1000;
const FONT: &str = "sans-serif";

/// The series of the plot: every knob but the batch size, in sweep order.
fn series_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for row in rows {
        let name = row.point.series();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The x axis of the bars: one unit per batch size, a key point (label) at each.
#[derive(Debug, Clone)]
struct Groups(usize);

impl Ranged for Groups {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.0.max(1) as f64;
        let fraction = (value + 0.5) / span;
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

/// Tableau's ten colours (distinct, and readable on white), then Palette99.
/// The legend entry of the series `name`.
fn title_of(rows: &[Row], name: &str) -> String {
    rows.iter()
        .find(|r| r.point.series() == name)
        .map_or_else(|| name.to_owned(), |r| r.point.series_title())
}

fn color(series: usize) -> RGBAColor {
    const TEN: [(u8, u8, u8); 10] = [
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
    match TEN.get(series) {
        Some(&(r, g, b)) => RGBColor(r, g, b).to_rgba(),
        None => Palette99::pick(series).to_rgba(),
    }
}

/// Draws both panels into an SVG file at `path`.
pub fn draw(path: &Path, title: &str, rows: &[Row]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, (FONT, 22).into_font())
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2 - 20);
    throughput(&top, rows).map_err(|e| err(&e))?;
    latency(&bottom, rows).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Bars of x-realtime, grouped by batch size, one bar per series.
fn throughput(area: &Area<'_>, rows: &[Row]) -> DrawResult {
    let mut batches: Vec<usize> = rows.iter().map(|r| r.point.batch_size).collect();
    batches.sort_unstable();
    batches.dedup();
    let series = series_names(rows);
    let top = rows
        .iter()
        .filter_map(|r| r.median.as_ref().map(|m| m.x_realtime))
        .filter(|x| x.is_finite())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput: x-realtime of the whole pipeline (higher is better)",
            (FONT, 17),
        )
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(Groups(batches.len()), 0.0..top * 1.25)?;
    let batch_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < batches.len() {
            format!("batch {}", batches[i as usize])
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&batch_label)
        .x_desc("--batch-size (speech chunks per model call)")
        .y_desc("x-realtime (audio s / wall s)")
        .max_light_lines(1)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    // Bars of at most 0.22 of a group each, all of a group within 0.8 of it.
    let group_width = (0.22 * series.len() as f64).min(0.8);
    let width = group_width / series.len().max(1) as f64;
    let value_style =
        TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (s, name) in series.iter().enumerate() {
        let fill = color(s);
        let bars: Vec<(f64, f64, f64)> = rows
            .iter()
            .filter(|r| &r.point.series() == name)
            .filter_map(|r| {
                let m = r.median.as_ref()?;
                let group = batches.iter().position(|&b| b == r.point.batch_size)? as f64;
                let left = group - group_width / 2.0 + s as f64 * width;
                Some((left, left + width, m.x_realtime))
            })
            .filter(|(_, _, x)| x.is_finite())
            .collect();
        chart
            .draw_series(bars.iter().map(|&(left, right, x)| {
                Rectangle::new([(left + 0.01, 0.0), (right - 0.01, x)], fill.filled())
            }))?
            .label(title_of(rows, name))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
        chart.draw_series(bars.iter().map(|&(left, right, x)| {
            Text::new(
                format!("{x:.1}"),
                ((left + right) / 2.0, x),
                value_style.clone(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// p95 latency of a model call against x-realtime; one line per series, in batch order.
fn latency(area: &Area<'_>, rows: &[Row]) -> DrawResult {
    let series = series_names(rows);
    let points: Vec<(usize, usize, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let m = r.median.as_ref()?;
            let s = series.iter().position(|n| *n == r.point.series())?;
            Some((s, r.point.batch_size, m.x_realtime, m.latency_p95_s?))
        })
        .filter(|&(_, _, x, y)| x.is_finite() && y.is_finite())
        .collect();
    let right = points.iter().map(|p| p.2).fold(1.0f64, f64::max);
    let top = points.iter().map(|p| p.3).fold(0.1f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency against throughput (lower right is better)",
            (FONT, 17),
        )
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..right * 1.15, 0.0..top * 1.25)?;
    chart
        .configure_mesh()
        .x_desc("x-realtime (audio s / wall s)")
        .y_desc("p95 of one model call, s (histogram)")
        .max_light_lines(1)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (s, name) in series.iter().enumerate() {
        let stroke = color(s);
        let mut own: Vec<(usize, f64, f64)> = points
            .iter()
            .filter(|p| p.0 == s)
            .map(|&(_, batch, x, y)| (batch, x, y))
            .collect();
        if own.is_empty() {
            continue;
        }
        own.sort_by_key(|p| p.0);
        chart
            .draw_series(LineSeries::new(
                own.iter().map(|&(_, x, y)| (x, y)),
                stroke.stroke_width(2),
            ))?
            .label(title_of(rows, name))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], stroke.stroke_width(3))
            });
        chart.draw_series(own.iter().map(|&(batch, x, y)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 5, stroke.filled())
                + Text::new(format!("b{batch}"), (7, -16), (FONT, 12).into_font())
        }))?;
    }
    if points.is_empty() {
        area.draw(&Text::new(
            "no latency figures (the metrics files had no transcription_duration_seconds)",
            (80, 200),
            (FONT, 15).into_font(),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::child::Measurement;
    use crate::bench::sweep::{Decoding, Point, Precision};

    fn row(workers: usize, batch_size: usize, x_realtime: f64) -> Row {
        let point = Point {
            precision: Precision::Fp32,
            packing: false,
            decoding: Decoding::Full,
            workers,
            threads: 1,
            max_wait_ms: None,
            batch_size,
        };
        let m = Measurement {
            x_realtime,
            latency_p95_s: Some(batch_size as f64 / 2.0),
            ..Measurement::default()
        };
        Row::new(point, vec![Ok(m)])
    }

    #[test]
    fn draws_an_svg_with_both_panels_and_every_series() {
        let rows = vec![
            row(1, 1, 8.0),
            row(1, 8, 12.5),
            row(2, 1, 9.0),
            row(2, 8, 13.25),
            Row::new(row(2, 16, 0.0).point, vec![Err("failed".into())]),
        ];
        let path = std::env::temp_dir().join(format!("mmt-bench-plot-{}.svg", std::process::id()));
        draw(&path, "mmt bench: test on 2 cores", &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for text in [
            "mmt bench: test on 2 cores",
            "Throughput",
            "Latency against throughput",
            "batch 8",
            "batch 16",
            "1 worker x 1 thread",
            "2 workers x 1 thread",
            "12.5",
            "b8",
        ] {
            assert!(svg.contains(text), "the plot lacks {text:?}");
        }
    }
}
