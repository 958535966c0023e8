//! The tune sweep as an SVG, drawn with plotters: two panels (writes, reads), MiB/s
//! against block size on a log2 axis, one line per queue depth (colour) and thread count /
//! backend (dash pattern), one dot per point at its median, and a legend below.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::tune::Point;
use crate::units;

const COLOURS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
/// Dash length and gap in pixels per (thread count, backend); `None` is a solid line.
const DASHES: [Option<(i32, i32)>; 6] = [
    None,
    Some((8, 4)),
    Some((2, 3)),
    Some((14, 4)),
    Some((4, 4)),
    Some((1, 6)),
];

const WIDTH: u32 = 1040;
/// Title and the two panels, above the legend.
const CHARTS_H: u32 = 420;
const LEGEND_ROW_H: u32 = 22;
const LEGEND_COLUMNS: usize = 3;
const FONT: &str = "sans-serif";

/// A font of `px` pixels in the SVG (plotters writes a font size of size / 1.24).
fn font(px: f64) -> FontDesc<'static> {
    (FONT, px * 1.24).into_font()
}

/// How one series is drawn.
#[derive(Clone, Copy)]
struct Look {
    colour: RGBColor,
    dash: Option<(i32, i32)>,
}

impl Look {
    fn style(&self) -> ShapeStyle {
        self.colour.stroke_width(2)
    }
}

/// The SVG document.
pub fn svg(points: &[Point], size: u64, runs: u32) -> Result<String> {
    let mut blocks: Vec<u64> = points.iter().map(|p| p.block_size).collect();
    blocks.sort_unstable();
    blocks.dedup();
    let mut depths: Vec<u32> = points.iter().map(|p| p.queue_depth).collect();
    depths.sort_unstable();
    depths.dedup();
    let mut styles: Vec<(u32, &str)> = points.iter().map(|p| (p.threads, p.backend)).collect();
    styles.sort_unstable();
    styles.dedup();

    let lx = |b: u64| (b as f64).log2();
    let (x0, x1) = match (blocks.first(), blocks.last()) {
        (Some(&a), Some(&b)) if a != b => (lx(a) - 0.3, lx(b) + 0.3),
        (Some(&a), _) => (lx(a) - 1.0, lx(a) + 1.0),
        _ => (0.0, 1.0),
    };
    // Block sizes are powers of two: one x label per power of two, at whole log2 values
    // (a label count of the width plus one makes plotters step by exactly 1).
    let x_labels = (x1 - x0).floor() as usize + 1;
    let ymax = points
        .iter()
        .flat_map(|p| ["write", "read"].map(|op| p.median(op)))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;

    // One series per (threads, backend, queue depth): its points sorted by block size.
    let mut series: BTreeMap<(u32, &str, u32), Vec<&Point>> = BTreeMap::new();
    for p in points {
        series
            .entry((p.threads, p.backend, p.queue_depth))
            .or_default()
            .push(p);
    }
    for v in series.values_mut() {
        v.sort_by_key(|p| p.block_size);
    }
    let look = |&(threads, backend, qd): &(u32, &str, u32)| Look {
        colour: COLOURS[depths.iter().position(|d| *d == qd).unwrap_or(0) % COLOURS.len()],
        dash: DASHES[styles
            .iter()
            .position(|st| *st == (threads, backend))
            .unwrap_or(0)
            % DASHES.len()],
    };

    let legend_rows = series.len().div_ceil(LEGEND_COLUMNS) as u32;
    let height = CHARTS_H + LEGEND_ROW_H * legend_rows + 20;
    let title = format!(
        "libswapper I/O engine sweep: {} file, median of {runs} run(s) per point",
        units::human(size)
    );
    let draw_err = |e: &dyn std::fmt::Display| anyhow!("cannot draw the plot: {e}");

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let root = root.titled(&title, font(16.0)).map_err(|e| draw_err(&e))?;
        let (charts, legend) = root.split_vertically(CHARTS_H - 30);
        for (area, op) in charts.split_evenly((1, 2)).iter().zip(["write", "read"]) {
            let mut chart = ChartBuilder::on(area)
                .caption(op, font(14.0).style(FontStyle::Bold))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(65)
                .build_cartesian_2d(x0..x1, 0.0..ymax)
                .map_err(|e| draw_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("block size (log2 scale)")
                .y_desc("MiB/s")
                .x_labels(x_labels)
                .x_label_formatter(&|v| units::human(v.exp2().round() as u64).replace(' ', ""))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(font(12.0))
                .axis_desc_style(font(12.0))
                .draw()
                .map_err(|e| draw_err(&e))?;
            for (key, pts) in &series {
                let look = look(key);
                let coords: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (lx(p.block_size), p.median(op)))
                    .filter(|(_, v)| v.is_finite())
                    .collect();
                match look.dash {
                    None => chart.draw_series(LineSeries::new(coords.iter().copied(), look.style())),
                    Some((dash, gap)) => chart.draw_series(DashedLineSeries::new(
                        coords.iter().copied(),
                        dash,
                        gap,
                        look.style(),
                    )),
                }
                .map_err(|e| draw_err(&e))?;
                chart
                    .draw_series(coords.iter().map(|&c| Circle::new(c, 3, look.colour.filled())))
                    .map_err(|e| draw_err(&e))?;
            }
        }
        // The legend, in columns below the panels (in pixels of its area).
        let column_w = (WIDTH as i32 - 80) / LEGEND_COLUMNS as i32;
        for (i, key @ (threads, backend, qd)) in series.keys().enumerate() {
            let look = look(key);
            let x = 70 + (i % LEGEND_COLUMNS) as i32 * column_w;
            let y = 10 + (i / LEGEND_COLUMNS) as i32 * LEGEND_ROW_H as i32;
            let sample = [(x, y), (x + 36, y)];
            match look.dash {
                None => legend.draw(&PathElement::new(sample, look.style())),
                Some((dash, gap)) => DashedLineSeries::new(sample, dash, gap, look.style())
                    .into_iter()
                    .try_for_each(|e| legend.draw(&e)),
            }
            .map_err(|e| draw_err(&e))?;
            legend
                .draw(&Text::new(
                    format!("queue depth {qd}, {threads} thread(s), {backend}"),
                    (x + 44, y - 7),
                    font(12.0),
                ))
                .map_err(|e| draw_err(&e))?;
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Sample, Series};

    fn point(block_size: u64, queue_depth: u32, threads: u32, mib_s: f64) -> Point {
        let mut p = Point {
            block_size,
            queue_depth,
            threads,
            backend: "io_uring",
            series: BTreeMap::new(),
        };
        for op in ["write", "read"] {
            let s = Sample::new(1 << 20, 1.0 / mib_s, 0.0);
            p.series.insert(op, Series { runs: vec![s] });
        }
        p
    }

    #[test]
    fn draws_panels_axes_lines_and_legend() {
        let points = [
            point(64 << 10, 2, 1, 100.0),
            point(1 << 20, 2, 1, 300.0),
            point(64 << 10, 8, 1, 200.0),
            point(1 << 20, 8, 1, 900.0),
            point(64 << 10, 8, 2, 250.0),
            point(1 << 20, 8, 2, 950.0),
        ];
        let svg = svg(&points, 16 << 20, 1).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        // The contents of the <text> elements.
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim()))
            .collect();
        for text in [
            "libswapper I/O engine sweep: 16 MiB file, median of 1 run(s) per point",
            "write",
            "read",
            "64KiB",
            "128KiB",
            "256KiB",
            "512KiB",
            "1MiB",
            "block size (log2 scale)",
            "MiB/s",
            "queue depth 2, 1 thread(s), io_uring",
            "queue depth 8, 1 thread(s), io_uring",
            "queue depth 8, 2 thread(s), io_uring",
        ] {
            assert!(texts.contains(&text), "no text {text:?} in {texts:?}");
        }
        // Two panels of 2 points per series, 3 series: one dot per point and panel.
        assert_eq!(svg.matches("<circle").count(), 2 * 2 * 3);
        // Each depth has its colour; the two thread counts share depth 8's colour.
        // A solid line per panel and one in the legend for each thread-1 series; the
        // thread-2 series (second dash pattern) is drawn in dashes of depth 8's colour.
        let solid = |colour: &str| format!(r#"stroke="{colour}" stroke-width="2" points="#);
        assert_eq!(svg.matches(&solid("#1F77B4")).count(), 2 + 1, "{svg}");
        assert!(svg.matches(&solid("#D62728")).count() > 2 * (2 + 1), "{svg}");
    }
}
