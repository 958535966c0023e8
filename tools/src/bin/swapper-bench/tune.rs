//! swapper-bench tune: sweeps the engine's block size, queue depth, thread count and
//! backend on one file, and prints the best configuration for reads and for writes as a
//! libswapper `SwapperIoConfig` and as a DeepSpeed `"aio"` block.
//!
//! Each point of the grid restarts the engine with its settings and moves the whole file
//! once per run (writes, then reads from a dropped page cache), through `io`'s code path.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use swapper::{Backend, DirectIo, IoConfig};

use crate::ours::Ours;
use crate::report::{Sample, Series, Spread};
use crate::{cleanup, direct_io_supported, drop_page_cache, units, BackendArg, DirectArg};

/// `swapper-bench tune`'s flags.
#[derive(clap::Args)]
pub struct TuneArgs {
    /// Folder for the benchmark file (default: a temporary folder under the current one).
    /// The file is removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// File size moved per point and run.
    #[arg(long, default_value = "512MiB", value_parser = units::parse_size)]
    pub size: u64,
    /// Block sizes to try (default 1M,4M,16M; --full: 256K,1M,4M,16M,64M).
    #[arg(long, value_delimiter = ',', value_parser = units::parse_size)]
    pub blocks: Option<Vec<u64>>,
    /// Queue depths to try (default 4,8,32; --full: 1,2,4,8,16,32,64).
    #[arg(long, value_delimiter = ',')]
    pub depths: Option<Vec<u32>>,
    /// Thread counts to try (default 1,2; --full: 1,2,4).
    #[arg(long, value_delimiter = ',')]
    pub threads: Option<Vec<u32>>,
    /// Backends to try (default io_uring; --full: io_uring,blocking).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub backends: Option<Vec<BackendArg>>,
    /// The full grid (5 block sizes x 7 depths x 3 thread counts x 2 backends, 3 runs):
    /// long (an hour or more on a slow disk); flags given explicitly still win.
    #[arg(long)]
    pub full: bool,
    /// Runs per point and direction (default 1; --full: 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,
    /// O_DIRECT: auto falls back to buffered I/O (flagged) where unsupported.
    #[arg(long, value_enum, default_value_t = DirectArg::Auto)]
    pub direct: DirectArg,
    /// Submit each request on its own (DeepSpeed's `single_submit`), at every point.
    #[arg(long)]
    pub single_submit: bool,
    /// Draw the sweep into this SVG file: MiB/s against block size, one line per queue
    /// depth (and thread count / backend), a panel for writes and one for reads.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print one CSV row per point and run instead of the table.
    #[arg(long)]
    pub csv: bool,
}

/// One point of the grid and its measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub block_size: u64,
    pub queue_depth: u32,
    pub threads: u32,
    pub backend: &'static str,
    #[serde(skip)]
    pub series: BTreeMap<&'static str, Series>,
}

impl Point {
    pub fn median(&self, op: &str) -> f64 {
        self.series.get(op).map_or(f64::NAN, |s| s.mib_s().median)
    }
}

fn backend_of(b: BackendArg) -> Backend {
    b.into()
}

/// Runs `swapper-bench tune`.
pub fn run(args: TuneArgs) -> Result<()> {
    let full = args.full;
    let blocks = args.blocks.clone().unwrap_or_else(|| {
        if full {
            vec![256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
        } else {
            vec![1 << 20, 4 << 20, 16 << 20]
        }
    });
    let depths = args.depths.clone().unwrap_or_else(|| {
        if full {
            vec![1, 2, 4, 8, 16, 32, 64]
        } else {
            vec![4, 8, 32]
        }
    });
    let threads = args
        .threads
        .clone()
        .unwrap_or_else(|| if full { vec![1, 2, 4] } else { vec![1, 2] });
    let backends = args.backends.clone().unwrap_or_else(|| {
        if full {
            vec![BackendArg::IoUring, BackendArg::Blocking]
        } else {
            vec![BackendArg::IoUring]
        }
    });
    let runs = args.runs.unwrap_or(if full { 3 } else { 1 });
    let size = args.size;
    let direct_mode: DirectIo = args.direct.into();

    // Every point, checked before anything runs.
    let mut grid = Vec::new();
    for &backend in &backends {
        for &t in &threads {
            for &qd in &depths {
                for &bs in &blocks {
                    let config = IoConfig {
                        block_size: bs,
                        queue_depth: qd,
                        thread_count: t,
                        single_submit: args.single_submit,
                        backend: backend_of(backend),
                        direct_io: direct_mode,
                        ..IoConfig::default()
                    };
                    config.validate().map_err(|e| {
                        anyhow::anyhow!(
                            "invalid grid point (block {bs}, queue depth {qd}, threads {t}): {}",
                            e.message()
                        )
                    })?;
                    if size == 0 || size % bs != 0 {
                        bail!("--size {size} must be a positive multiple of every block size ({bs})");
                    }
                    grid.push(config);
                }
            }
        }
    }
    if grid.is_empty() {
        bail!("the grid is empty");
    }

    cleanup::install_handler()?;
    let pb = crate::progress_bar()?;
    let mut warnings = crate::Warnings { list: Vec::new() };
    let (dir, tmp_dir) = crate::bench_folder(args.dir.as_deref(), &pb, &mut warnings)?;
    let file = crate::bench_file(&dir, tmp_dir.as_ref())?;
    let path = file.to_path_buf();

    pb.set_length(1 + grid.len() as u64 * u64::from(runs) * 2);
    let bytes_msg = |what: String| {
        let pb = pb.clone();
        move |done: u64| pb.set_message(format!("{what} {}%", done * 100 / size))
    };
    let mut ours = Ours::new(grid[0], size)?;
    ours.run(&path, true, size, &bytes_msg("preparing the file".to_string()))
        .context("cannot write the benchmark file")?;
    pb.inc(1);
    let direct_ok = direct_io_supported(&path);
    let direct = direct_mode != DirectIo::Off && direct_ok;
    if !direct {
        warnings.add(
            &pb,
            "buffered I/O (--direct off, or no O_DIRECT on this file system): the page cache may flatter the figures"
                .to_string(),
        );
    }

    let mut points: Vec<Point> = Vec::new();
    for (k, config) in grid.iter().enumerate() {
        ours.reconfigure(*config, size)
            .with_context(|| format!("cannot set up point {}", k + 1))?;
        let mut p = Point {
            block_size: config.block_size,
            queue_depth: config.queue_depth,
            threads: config.thread_count,
            backend: ours.engine().backend().name(),
            series: BTreeMap::new(),
        };
        let name = format!(
            "{}/{} block {} qd {} threads {} {}",
            k + 1,
            grid.len(),
            units::human(p.block_size),
            p.queue_depth,
            p.threads,
            p.backend
        );
        for run in 1..=runs {
            for (op, write) in [("write", true), ("read", false)] {
                drop_page_cache(&path)?;
                let label = format!("{name} {op} run {run}");
                pb.set_message(label.clone());
                let s: Sample = ours
                    .run(&path, write, size, &bytes_msg(label))
                    .with_context(|| format!("{name} {op}, run {run}"))?;
                p.series.entry(op).or_default().runs.push(s);
                pb.inc(1);
            }
        }
        points.push(p);
    }
    pb.finish_and_clear();
    drop(ours);
    file.close()
        .with_context(|| format!("cannot remove the benchmark file {}", path.display()))?;
    if let Some(t) = tmp_dir {
        t.close().context("cannot remove the temporary folder")?;
    }
    cleanup::clear();

    let best = |op: &str| -> &Point {
        points
            .iter()
            .max_by(|a, b| a.median(op).total_cmp(&b.median(op)))
            .expect("the grid is not empty")
    };
    let (best_w, best_r) = (best("write"), best("read"));

    if let Some(svg_path) = &args.plot {
        let svg = crate::plot::svg(&points, size, runs)?;
        std::fs::write(svg_path, svg).with_context(|| format!("cannot write {}", svg_path.display()))?;
    }

    if args.json {
        let pts: Vec<serde_json::Value> = points
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                for (op, s) in &p.series {
                    v[*op] = serde_json::json!({
                        "runs": s.runs,
                        "mib_s": s.mib_s(),
                        "cpu_s_per_gib": s.cpu(),
                    });
                }
                v
            })
            .collect();
        let mut bests = serde_json::Map::new();
        for (op, p) in [("write", best_w), ("read", best_r)] {
            bests.insert(
                op.to_string(),
                serde_json::json!({
                    "mib_s": p.series[op].mib_s(),
                    "libswapper": libswapper_config(p, args.single_submit),
                    "deepspeed_aio": deepspeed_aio(p, args.single_submit),
                }),
            );
        }
        let v = serde_json::json!({
            "settings": {
                "folder": dir.display().to_string(),
                "size_bytes": size,
                "blocks": blocks,
                "depths": depths,
                "threads": threads,
                "backends": backends.iter().map(|b| backend_of(*b).name()).collect::<Vec<_>>(),
                "runs": runs,
                "full": full,
                "single_submit": args.single_submit,
                "direct": direct_mode.name(),
                "direct_effective": direct,
                "plot": args.plot.as_ref().map(|p| p.display().to_string()),
            },
            "points": pts,
            "best": bests,
            "warnings": warnings.list,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if args.csv {
        println!("block_size,queue_depth,threads,backend,op,run,bytes,seconds,mib_s,cpu_s,cpu_s_per_gib");
        for p in &points {
            for (op, s) in &p.series {
                for (i, r) in s.runs.iter().enumerate() {
                    println!(
                        "{},{},{},{},{op},{},{}",
                        p.block_size,
                        p.queue_depth,
                        p.threads,
                        p.backend,
                        i + 1,
                        r.csv_fields()
                    );
                }
            }
        }
        return Ok(());
    }
    println!(
        "libswapper {} tune: {} file in {}, {} point(s), {} run(s) each, {}",
        swapper::VERSION,
        units::human(size),
        dir.display(),
        points.len(),
        runs,
        if direct {
            "O_DIRECT"
        } else {
            "BUFFERED (page cache)"
        }
    );
    println!(
        "{:>8} {:>5} {:>7} {:<9} {:>9} {:<21} {:>9} {:<21}",
        "block", "qd", "threads", "backend", "write", "[min..max]", "read", "[min..max]"
    );
    for p in &points {
        let f = |op: &str| -> (String, String) {
            let m: Spread = p.series[op].mib_s();
            (
                format!("{:.1}", m.median),
                format!("[{:.1}..{:.1}]", m.min, m.max),
            )
        };
        let (w, wr) = f("write");
        let (r, rr) = f("read");
        println!(
            "{:>8} {:>5} {:>7} {:<9} {:>9} {:<21} {:>9} {:<21}",
            units::human(p.block_size),
            p.queue_depth,
            p.threads,
            p.backend,
            w,
            wr,
            r,
            rr
        );
    }
    for (op, p) in [("write", best_w), ("read", best_r)] {
        let m = p.series[op].mib_s();
        println!(
            "\nbest {op}: block {}, queue depth {}, {} thread(s), {}: {:.1} MiB/s [{:.1}..{:.1}]",
            units::human(p.block_size),
            p.queue_depth,
            p.threads,
            p.backend,
            m.median,
            m.min,
            m.max
        );
        println!("  libswapper: {}", c_config(p, args.single_submit));
        println!("  DeepSpeed:\n{}", deepspeed_aio_text(p, args.single_submit));
        if p.backend == "blocking" {
            println!("  (the blocking backend has no DeepSpeed equivalent: DeepSpeed always uses async I/O)");
        }
    }
    if let Some(svg_path) = &args.plot {
        println!("\nplot: {}", svg_path.display());
    }
    Ok(())
}

/// The SwapperIoConfig fields (Rust names, as JSON).
fn libswapper_config(p: &Point, single_submit: bool) -> serde_json::Value {
    serde_json::json!({
        "block_size": p.block_size,
        "queue_depth": p.queue_depth,
        "thread_count": p.threads,
        "single_submit": single_submit,
        "overlap_events": true,
        "backend": p.backend,
    })
}

/// The SwapperIoConfig as a C initializer.
fn c_config(p: &Point, single_submit: bool) -> String {
    format!(
        "SwapperIoConfig io = {{ .block_size = {}, .queue_depth = {}, .thread_count = {}, .single_submit = {}, .overlap_events = true, .backend = SWAPPER_BACKEND_{}, .direct_io = SWAPPER_DIRECT_IO_AUTO }};",
        p.block_size,
        p.queue_depth,
        p.threads,
        single_submit,
        p.backend.to_ascii_uppercase()
    )
}

/// DeepSpeed's `"aio"` block.
fn deepspeed_aio(p: &Point, single_submit: bool) -> serde_json::Value {
    serde_json::json!({
        "block_size": p.block_size,
        "queue_depth": p.queue_depth,
        "intra_op_parallelism": p.threads,
        "single_submit": single_submit,
        "overlap_events": true,
        "use_gds": false,
    })
}

/// DeepSpeed's `"aio"` block as text in DeepSpeed's key order, ready to paste.
fn deepspeed_aio_text(p: &Point, single_submit: bool) -> String {
    format!(
        "    \"aio\": {{\n      \"block_size\": {},\n      \"queue_depth\": {},\n      \"intra_op_parallelism\": {},\n      \"single_submit\": {single_submit},\n      \"overlap_events\": true,\n      \"use_gds\": false\n    }}",
        p.block_size, p.queue_depth, p.threads
    )
}
