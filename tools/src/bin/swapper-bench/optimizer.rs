//! swapper-bench optimizer: the update phase alone, through the optimizer-state swapper.
//!
//! `--params` bytes of fp32 master params, with Adam's two moments and the gradients
//! (four times that on disk), in sub-groups of `--sub-group-size` elements (DeepSpeed's
//! `sub_group_size`, default 1e9). Untimed, the sub-groups are registered and written
//! once (random params and gradients). A run is one step: every sub-group is read (the
//! ring reads ahead as far as `--ring` and `--read-ahead` allow), stepped with a real CPU
//! Adam in place, and written behind; the step ends when every write has. Reported per
//! run: step time, GB/s moved (reads plus writes), CPU seconds, the ring's page-locked
//! bytes and how long the step waited for reads (the I/O the arithmetic did not hide).
//!
//! With `--vs-fio`, the device limit beside it: fio reads the bytes the step read and
//! writes the bytes it wrote, with the same block size, queue depth and threads, on a
//! file in the same folder (laid out untimed first), run alternating with the steps, run
//! for run. The limit's time is fio's read time plus its write time; the ratio is that
//! over the step's time (1.0: the update phase runs at the device limit, the arithmetic
//! hidden under the I/O; the target is 0.9 or more). Medians and spread (min to max) are
//! over `--runs`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use swapper::optimizer::{OptimizerSettings, OptimizerSwapper, TensorKind, TensorSpec};

use crate::ours::{cpu_seconds, fill_random};
use crate::report::Spread;
use crate::{cleanup, fio, units, IoFlags};

#[derive(clap::Args)]
pub struct OptimizerArgs {
    /// Folder for the swap files (default: a temporary folder under the current one).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Bytes of fp32 master params (the moments and gradients add three times as much).
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    params: u64,
    /// Elements per sub-group (DeepSpeed's `zero_optimization.sub_group_size`).
    #[arg(long, default_value_t = 1_000_000_000)]
    sub_group_size: u64,
    /// Bytes of the page-locked ring (default: two of the largest sub-group).
    #[arg(long, value_parser = units::parse_size)]
    ring: Option<u64>,
    /// Most sub-groups read ahead (0: as many as the ring holds).
    #[arg(long, default_value_t = 0)]
    read_ahead: u32,
    /// Page-lock the ring.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pin: bool,
    /// Keep and check a crc32c of every tensor.
    #[arg(long)]
    checksums: bool,
    #[command(flatten)]
    io: IoFlags,
    /// Steps timed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Measure the device limit too: fio reads and writes the same bytes with the same
    /// block size, queue depth and threads on a file in the same folder, alternating with
    /// the steps; reports the ratio fio time / step time.
    #[arg(long)]
    vs_fio: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The device limit of one run: fio's read of the step's read bytes, then its write of
/// the step's written bytes.
struct Limit {
    read: fio::Job,
    write: fio::Job,
    path: PathBuf,
}

impl Limit {
    /// Seconds fio needs for both, and its CPU seconds.
    fn run(&self) -> Result<(f64, f64)> {
        let r = self.read.run(&self.path, false).context("fio read")?;
        let w = self.write.run(&self.path, true).context("fio write")?;
        Ok((r.seconds + w.seconds, r.cpu_s + w.cpu_s))
    }
}

/// One Adam update in place (DeepSpeed's defaults: lr 1e-3, betas 0.9/0.999, eps 1e-8).
fn adam(step: i32, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    let (lr, b1, b2, eps) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32);
    let c1 = 1.0 - b1.powi(step);
    let c2 = 1.0 - b2.powi(step);
    for (((p, m), v), g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
    }
}

/// Fills `x` with small finite floats from `seed`.
fn fill_floats(x: &mut [f32], seed: u64) {
    let bytes = x.len() * 4;
    // SAFETY: any bit pattern is a valid u8; the slice covers the floats' bytes exactly.
    let raw = unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, bytes) };
    fill_random(raw, seed);
    for f in x.iter_mut() {
        *f = (f.to_bits() >> 9) as f32 / (1u32 << 23) as f32 - 0.5;
    }
}

pub fn run(args: OptimizerArgs) -> Result<()> {
    let config = args.io.config()?;
    let total = args.params / 4;
    if total == 0 || args.sub_group_size == 0 {
        bail!("--params must hold at least one fp32 element and --sub-group-size be positive");
    }
    let sizes: Vec<u64> = (0..total.div_ceil(args.sub_group_size))
        .map(|i| args.sub_group_size.min(total - i * args.sub_group_size))
        .collect();
    let aligned = |n: u64| (n * 4).div_ceil(4096) * 4096;
    let largest = sizes.iter().map(|&n| 4 * aligned(n)).max().unwrap_or(0);
    let ring = args.ring.unwrap_or(2 * largest);
    cleanup::install_handler()?;
    let pb = crate::progress_bar()?;
    let mut warnings = crate::Warnings { list: Vec::new() };
    let (dir, tmp_dir) = crate::bench_folder(args.dir.as_deref(), &pb, &mut warnings)?;
    let swap_dir = tempfile::Builder::new()
        .prefix("swapper-bench-optimizer-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create the swap folder in {}", dir.display()))?;
    cleanup::register_tree(swap_dir.path().to_path_buf());
    if let Some(t) = &tmp_dir {
        cleanup::register(t.path().to_path_buf());
    }
    let opt = OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![swap_dir.path().to_path_buf()],
        rank: 0,
        ring_bytes: ring,
        read_ahead: args.read_ahead,
        pin_memory: args.pin,
        verify_checksums: args.checksums,
        io: config,
        adopt: false,
        flush_at_end_step: false,
    })
    .map_err(|e| anyhow!("cannot start the optimizer swapper: {e}"))?;
    let order: Vec<u32> = (0..sizes.len() as u32).collect();
    pb.set_length(1 + u64::from(args.runs) * if args.vs_fio { 2 } else { 1 });
    pb.set_message("writing the optimizer state");

    // Untimed: register, write random params and gradients (the moments start as zeros).
    for (i, &n) in sizes.iter().enumerate() {
        let specs = [
            TensorSpec::new("param", n, TensorKind::State),
            TensorSpec::new("exp_avg", n, TensorKind::State),
            TensorSpec::new("exp_avg_sq", n, TensorKind::State),
            TensorSpec::new("grad", n, TensorKind::Gradient),
        ];
        opt.register(i as u32, &specs)
            .map_err(|e| anyhow!("cannot register sub-group {i}: {e}"))?;
    }
    opt.begin_step(&order).map_err(|e| anyhow!("{e}"))?;
    while let Some(mut v) = opt.next_ready().map_err(|e| anyhow!("{e}"))? {
        let seed = u64::from(v.index()) + 1;
        fill_floats(v.tensor_mut(0), seed);
        v.hand_back().map_err(|e| anyhow!("{e}"))?;
    }
    opt.end_step().map_err(|e| anyhow!("{e}"))?;
    for (i, &n) in sizes.iter().enumerate() {
        let mut g = vec![0f32; n as usize];
        fill_floats(&mut g, 1000 + i as u64);
        opt.swap_out_gradients(i as u32, 3, &[(0, &g)])
            .map_err(|e| anyhow!("{e}"))?;
    }
    opt.wait_gradients().map_err(|e| anyhow!("{e}"))?;
    // What one step moves: every tensor read, every state tensor written.
    let (read_bytes, write_bytes) = (total * 16, total * 12);
    let fio_version = if args.vs_fio {
        match fio::version() {
            Some(v) => Some(v),
            None => {
                warnings.add(
                    &pb,
                    "fio is not installed (install it with `apt-get install fio`); no device limit"
                        .to_string(),
                );
                None
            }
        }
    } else {
        None
    };
    let limit = match &fio_version {
        None => None,
        Some(_) => {
            let path = swap_dir.path().join("fio-device-limit.dat");
            let direct_ok = {
                std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
                crate::direct_io_supported(&path)
            };
            let backend = opt.store().engine(0).backend();
            let (_, read) = crate::direct_mode_and_fio_job(
                &config,
                direct_ok,
                &dir,
                backend,
                true,
                read_bytes,
                &args.io,
                &mut warnings,
                &pb,
            );
            let read = read.ok_or_else(|| anyhow!("no fio job"))?;
            let sized = |size: u64| {
                fio::Job::new(
                    read.ioengine,
                    size,
                    args.io.block_size,
                    args.io.queue_depth,
                    args.io.threads,
                    read.direct,
                )
            };
            let write = sized(write_bytes);
            // Untimed: lay the file out, so that fio's reads and writes meet real blocks.
            pb.set_message("laying out fio's file");
            sized(read_bytes)
                .run(&path, true)
                .context("cannot lay out fio's file")?;
            Some(Limit { read, write, path })
        }
    };
    pb.inc(1);

    let mut runs = Vec::new();
    for run in 1..=args.runs {
        pb.set_message(format!("step {run}"));
        let before = opt.stats().map_err(|e| anyhow!("{e}"))?;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        opt.begin_step(&order).map_err(|e| anyhow!("{e}"))?;
        while let Some(mut v) = opt.next_ready().map_err(|e| anyhow!("{e}"))? {
            let mut t = v.tensors_mut();
            let [p, m, s, g] = &mut t[..] else {
                bail!("a sub-group without its four tensors");
            };
            adam(run as i32, p, m, s, g);
            v.hand_back().map_err(|e| anyhow!("{e}"))?;
        }
        opt.end_step().map_err(|e| anyhow!("{e}"))?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let after = opt.stats().map_err(|e| anyhow!("{e}"))?;
        let moved = (after.bytes_read - before.bytes_read) + (after.bytes_written - before.bytes_written);
        let mut r = serde_json::json!({
            "run": run,
            "step_s": seconds,
            "bytes_moved": moved,
            "gb_s": moved as f64 / seconds / 1e9,
            "cpu_s": cpu,
            "read_wait_s": (after.read_wait_ns - before.read_wait_ns) as f64 / 1e9,
            "write_wait_s": (after.write_wait_ns - before.write_wait_ns) as f64 / 1e9,
        });
        pb.inc(1);
        // The device limit, right after the step (alternating, run for run).
        if let Some(l) = &limit {
            pb.set_message(format!("fio {run}"));
            let (fio_s, fio_cpu) = l.run().with_context(|| format!("the device limit, run {run}"))?;
            r["fio_s"] = fio_s.into();
            r["fio_cpu_s"] = fio_cpu.into();
            r["fio_gb_s"] = ((read_bytes + write_bytes) as f64 / fio_s / 1e9).into();
            r["device_limit_ratio"] = (fio_s / seconds).into();
            pb.inc(1);
        }
        runs.push(r);
    }
    pb.finish_and_clear();
    let stats = opt.stats().map_err(|e| anyhow!("{e}"))?;
    let locked = if stats.ring_locked != 0 {
        stats.ring_bytes
    } else {
        0
    };
    let spread = |key: &str| {
        let v: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        (!v.is_empty()).then(|| Spread::of(&v))
    };
    let keys = [
        "step_s",
        "gb_s",
        "cpu_s",
        "read_wait_s",
        "fio_s",
        "fio_gb_s",
        "device_limit_ratio",
    ];
    let summary: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .filter_map(|&k| spread(k).map(|s| (k.to_string(), serde_json::json!(s))))
        .collect();
    let median = spread("step_s").map_or(f64::NAN, |s| s.median);
    let report = serde_json::json!({
        "settings": {
            "dir": swap_dir.path().display().to_string(),
            "params_bytes": total * 4,
            "state_bytes": total * 16,
            "sub_groups": sizes.len(),
            "sub_group_size": args.sub_group_size,
            "ring_bytes": stats.ring_bytes,
            "read_ahead": args.read_ahead,
            "checksums": args.checksums,
            "block_size": config.block_size,
            "queue_depth": config.queue_depth,
            "threads": config.thread_count,
            "backend": opt.store().engine(0).backend().name(),
            "fio": fio_version,
            "bytes_read_per_step": read_bytes,
            "bytes_written_per_step": write_bytes,
        },
        "page_locked_bytes": locked,
        "ring_peak_bytes": stats.ring_peak,
        "read_ahead_peak": stats.read_ahead_peak,
        "median_step_s": median,
        "summary": summary,
        "runs": runs,
        "warnings": warnings.list,
    });
    drop(limit);
    drop(opt);
    drop(swap_dir);
    drop(tmp_dir);
    cleanup::clear();
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "optimizer update phase: {} of fp32 params (+ 2 moments + gradients = {}) in {} sub-groups of up to {} elements; ring {} ({})",
        units::human(total * 4),
        units::human(total * 16),
        sizes.len(),
        args.sub_group_size,
        units::human(stats.ring_bytes),
        if locked > 0 { "page-locked" } else { "not page-locked" }
    );
    let with_fio = limit_ran(&runs);
    if with_fio {
        println!(
            "{:>4} {:>10} {:>8} {:>8} {:>12} {:>8} {:>8} {:>14}",
            "run", "step s", "GB/s", "CPU s", "read wait s", "fio s", "fio GB/s", "limit ratio"
        );
    } else {
        println!(
            "{:>4} {:>10} {:>8} {:>8} {:>12}",
            "run", "step s", "GB/s", "CPU s", "read wait s"
        );
    }
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    for r in &runs {
        print!(
            "{:>4} {:>10.3} {:>8.2} {:>8.2} {:>12.3}",
            r["run"].as_u64().unwrap_or(0),
            f(r, "step_s"),
            f(r, "gb_s"),
            f(r, "cpu_s"),
            f(r, "read_wait_s")
        );
        if with_fio {
            print!(
                " {:>8.3} {:>8.2} {:>14.3}",
                f(r, "fio_s"),
                f(r, "fio_gb_s"),
                f(r, "device_limit_ratio")
            );
        }
        println!();
    }
    for (k, what) in [
        ("step_s", "step s"),
        ("gb_s", "GB/s"),
        ("cpu_s", "CPU s"),
        ("fio_s", "fio s (device limit)"),
        ("device_limit_ratio", "ratio to the device limit (fio s / step s)"),
    ] {
        if let Some(s) = spread(k) {
            println!(
                "{what}: median {:.3} (min {:.3}, max {:.3})",
                s.median, s.min, s.max
            );
        }
    }
    println!("median step {median:.3} s; page-locked {} bytes", locked);
    Ok(())
}

/// Whether the runs carry the device limit.
fn limit_ran(runs: &[serde_json::Value]) -> bool {
    runs.iter().any(|r| r.get("fio_s").is_some())
}
