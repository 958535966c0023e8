//! The tune sweep as an SVG, written by hand: two panels (writes, reads), MiB/s against
//! block size on a log2 axis, one line per queue depth (colour) and thread count /
//! backend (dash pattern), one dot per point at its median.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::tune::Point;
use crate::units;

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const DASHES: [&str; 6] = ["", "8,4", "2,3", "10,3,2,3", "4,4", "1,6"];

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 60.0;
const GAP: f64 = 90.0;

/// A round step for about `n` ticks up to `max`.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG document.
pub fn svg(points: &[Point], size: u64, runs: u32) -> String {
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
    let ymax_data = points
        .iter()
        .flat_map(|p| ["write", "read"].map(|op| p.median(op)))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let step = tick_step(ymax_data * 1.05, 6.0);
    let ymax = (ymax_data * 1.05 / step).ceil() * step;

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

    let legend_rows = series.len().div_ceil(3);
    let width = LEFT + 2.0 * PANEL_W + GAP + 30.0;
    let height = TOP + PANEL_H + 60.0 + 22.0 * legend_rows as f64 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">libswapper I/O engine sweep: {} file, median of {runs} run(s) per point</text>"#,
        width / 2.0,
        escape(&units::human(size))
    );
    for (k, op) in ["write", "read"].iter().enumerate() {
        let ox = LEFT + k as f64 * (PANEL_W + GAP);
        let px = |b: u64| ox + (lx(b) - x0) / (x1 - x0) * PANEL_W;
        let py = |v: f64| TOP + PANEL_H - v / ymax * PANEL_H;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="14" text-anchor="middle" font-weight="bold">{op}</text>"#,
            ox + PANEL_W / 2.0,
            TOP - 10.0
        );
        // Grid and y ticks.
        let mut v = 0.0;
        while v <= ymax + step * 0.01 {
            let y = py(v);
            let _ = writeln!(
                s,
                r##"<line x1="{ox}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                ox + PANEL_W,
                ox - 6.0,
                y + 4.0,
                v
            );
            v += step;
        }
        // X ticks at each block size.
        for &b in &blocks {
            let x = px(b);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + PANEL_H,
                TOP + PANEL_H + 16.0,
                escape(&units::human(b).replace(' ', ""))
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{ox}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">block size (log2 scale)</text>"#,
            ox + PANEL_W / 2.0,
            TOP + PANEL_H + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">MiB/s</text>"#,
            ox - 52.0,
            TOP + PANEL_H / 2.0
        );
        for ((threads, backend, qd), pts) in &series {
            let colour = COLOURS[depths.iter().position(|d| d == qd).unwrap_or(0) % COLOURS.len()];
            let dash = DASHES[styles
                .iter()
                .position(|st| *st == (*threads, *backend))
                .unwrap_or(0)
                % DASHES.len()];
            let coords: Vec<String> = pts
                .iter()
                .filter(|p| p.median(op).is_finite())
                .map(|p| format!("{:.1},{:.1}", px(p.block_size), py(p.median(op))))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                coords.join(" ")
            );
            for c in &coords {
                let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
            }
        }
    }
    // Legend.
    let ly0 = TOP + PANEL_H + 60.0;
    for (i, (threads, backend, qd)) in series.keys().enumerate() {
        let colour = COLOURS[depths.iter().position(|d| d == qd).unwrap_or(0) % COLOURS.len()];
        let dash = DASHES[styles
            .iter()
            .position(|st| *st == (*threads, *backend))
            .unwrap_or(0)
            % DASHES.len()];
        let x = LEFT + (i % 3) as f64 * 320.0;
        let y = ly0 + (i / 3) as f64 * 22.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{:.1}" y2="{y}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">queue depth {qd}, {threads} thread(s), {}</text>"#,
            x + 36.0,
            x + 44.0,
            y + 4.0,
            escape(backend)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1000.0, 5.0), 200.0);
        assert_eq!(tick_step(3000.0, 6.0), 500.0);
        assert_eq!(tick_step(90.0, 6.0), 20.0);
    }
}
