//! Samples, their medians, and the three outputs: a table, one JSON object, CSV rows.

use std::collections::BTreeMap;

use serde::Serialize;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub bytes: u64,
    pub seconds: f64,
    pub mib_s: f64,
    pub cpu_s: f64,
    pub cpu_s_per_gib: f64,
}

impl Sample {
    pub fn new(bytes: u64, seconds: f64, cpu_s: f64) -> Sample {
        let seconds = seconds.max(1e-9);
        Sample {
            bytes,
            seconds,
            mib_s: bytes as f64 / MIB / seconds,
            cpu_s,
            cpu_s_per_gib: cpu_s / (bytes as f64 / GIB).max(1e-12),
        }
    }

    /// The run's figures as CSV fields: bytes,seconds,mib_s,cpu_s,cpu_s_per_gib.
    pub fn csv_fields(&self) -> String {
        format!(
            "{},{:.6},{:.3},{:.6},{:.6}",
            self.bytes, self.seconds, self.mib_s, self.cpu_s, self.cpu_s_per_gib
        )
    }
}

/// Median, min and max of one figure over the runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Every run of one side and one direction, with the summaries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    pub runs: Vec<Sample>,
}

#[derive(Serialize)]
struct SeriesOut<'a> {
    runs: &'a [Sample],
    mib_s: Spread,
    cpu_s_per_gib: Spread,
}

impl Series {
    pub fn mib_s(&self) -> Spread {
        Spread::of(&self.runs.iter().map(|s| s.mib_s).collect::<Vec<_>>())
    }

    pub fn cpu(&self) -> Spread {
        Spread::of(&self.runs.iter().map(|s| s.cpu_s_per_gib).collect::<Vec<_>>())
    }
}

/// Every side, in the order of the tables.
const SIDES: [&str; 4] = ["libswapper", "swapper", "engine", "fio"];

/// Results by side ("libswapper", "fio") and then by direction ("write", "read").
pub type Results = BTreeMap<&'static str, BTreeMap<&'static str, Series>>;

/// Adds one run of `side`'s `op` to the results.
pub fn push(results: &mut Results, side: &'static str, op: &'static str, s: Sample) {
    results
        .entry(side)
        .or_default()
        .entry(op)
        .or_default()
        .runs
        .push(s);
}

/// libswapper's median MiB/s over fio's, per direction measured by both.
pub fn ratios(results: &Results) -> BTreeMap<&'static str, f64> {
    ratio(results, "libswapper", "fio")
}

/// Side `a`'s median MiB/s over side `b`'s, per direction measured by both.
pub fn ratio(results: &Results, a: &str, b: &str) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    if let (Some(x), Some(y)) = (results.get(a), results.get(b)) {
        for (op, s) in x {
            if let Some(f) = y.get(op) {
                out.insert(*op, s.mib_s().median / f.mib_s().median);
            }
        }
    }
    out
}

/// A ratio line of the table: "ratio a/b (medians): write x, read y", or nothing.
pub fn ratio_line(results: &Results, a: &str, b: &str) -> String {
    let r = ratio(results, a, b);
    if r.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = ["new", "write", "read"]
        .iter()
        .filter_map(|op| r.get(op).map(|v| format!("{op} {v:.3}")))
        .collect();
    format!("ratio {a}/{b} (medians): {}\n", parts.join(", "))
}

/// Sides and directions in the order of the table: ours first, writes before reads.
fn ordered(results: &Results) -> Vec<(&'static str, &'static str, &Series)> {
    let mut sides: Vec<&'static str> = SIDES
        .iter()
        .copied()
        .filter(|s| results.contains_key(s))
        .collect();
    sides.extend(results.keys().copied().filter(|s| !SIDES.contains(s)));
    let mut v = Vec::new();
    for side in sides {
        let ops = &results[side];
        for op in ["new", "write", "read"] {
            if let Some(s) = ops.get(op) {
                v.push((side, op, s));
            }
        }
    }
    v
}

/// The readable table.
pub fn table(results: &Results) -> String {
    let mut out = rows(results);
    out.push_str(&ratio_line(results, "libswapper", "fio"));
    out
}

/// The table's rows, without ratios.
pub fn rows(results: &Results) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<13} {:<6} {:>9} {:<21} {:>10} {:<17}\n",
        "side", "op", "MiB/s", "[min..max]", "CPU s/GiB", "[min..max]"
    ));
    for (side, op, s) in ordered(results) {
        let m = s.mib_s();
        let c = s.cpu();
        out.push_str(&format!(
            "{:<13} {:<6} {:>9.1} {:<21} {:>10.4} {:<17}\n",
            side,
            op,
            m.median,
            format!("[{:.1}..{:.1}]", m.min, m.max),
            c.median,
            format!("[{:.4}..{:.4}]", c.min, c.max),
        ));
    }
    out
}

/// The whole report as one JSON object.
pub fn json(settings: serde_json::Value, results: &Results, warnings: &[String]) -> serde_json::Value {
    let mut res = serde_json::Map::new();
    for (side, ops) in results {
        let mut o = serde_json::Map::new();
        for (op, s) in ops {
            let v = SeriesOut {
                runs: &s.runs,
                mib_s: s.mib_s(),
                cpu_s_per_gib: s.cpu(),
            };
            o.insert((*op).to_string(), serde_json::to_value(v).unwrap_or_default());
        }
        res.insert((*side).to_string(), serde_json::Value::Object(o));
    }
    serde_json::json!({
        "settings": settings,
        "results": res,
        "ratios": ratios(results),
        "warnings": warnings,
    })
}

/// CSV: a header and one row per run.
pub fn csv(results: &Results) -> String {
    let mut out = String::from("side,op,run,bytes,seconds,mib_s,cpu_s,cpu_s_per_gib\n");
    for (side, op, s) in ordered(results) {
        for (i, r) in s.runs.iter().enumerate() {
            out.push_str(&format!("{side},{op},{},{}\n", i + 1, r.csv_fields()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn ratios_are_per_direction() {
        let mut r = Results::new();
        let series = |mib: f64| Series {
            runs: vec![Sample::new(1 << 30, 1024.0 / mib, 0.5)],
        };
        r.entry("libswapper").or_default().insert("read", series(900.0));
        r.entry("fio").or_default().insert("read", series(1000.0));
        r.entry("libswapper").or_default().insert("write", series(500.0));
        let q = ratios(&r);
        assert!((q["read"] - 0.9).abs() < 1e-9);
        assert!(!q.contains_key("write"));
        assert!(table(&r).contains("read 0.900"));
        assert_eq!(csv(&r).lines().count(), 4);
    }
}
