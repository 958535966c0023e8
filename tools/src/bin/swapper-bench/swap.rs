//! swapper-bench swap: the parameter swapper in a training-like loop.
//!
//! A model of `params` fp16 params of `param_size` bytes each is parked on disk (every
//! param gets a pool buffer, is stamped and swapped out with release: the swap-out
//! figure), then a forward pass walks the layers in order: it waits for layer i, swaps in
//! layers i+1..=i+prefetch asynchronously, checks a sample of layer i's bytes (its first
//! and last 4 KiB against the pattern stamped when it was parked), "computes" for
//! `compute_ms` and releases it (the swap-in figure).
//!
//! One run starts a fresh swapper on empty folders and measures three things: `new`, the
//! first park (every param placed and written for the first time: the store grows its
//! extent files, or, before the store, a file is created per param); `write`, a second
//! park (every param overwritten in place, as the engine's and fio's timed writes
//! overwrite allocated blocks); `read`, a forward pass. The pool buffers are filled with
//! random bytes beforehand, untimed, so that no param is mostly zeros.
//!
//! The swapper may span several drives (`--dir` once per drive, or `--dirs A,B` /
//! `--dirs "$SWAPPER_DRIVES"` inside `scripts/drive-bed.sh`). Several drives are given to
//! the library as a DeepSpeed `nvme_path` list, one drive as `nvme_path`: so this file
//! builds against the library before the swap store too, for before/after comparisons
//! on one drive (copy `tools/` over an older checkout).
//!
//! A park waits for all its writes when the pool runs dry (`wait_writes`), as DeepSpeed
//! does; a forward pass waits for layer i alone (`wait_params`), so the layers prefetched
//! after it stay in flight, then submits the prefetch of the next layers, so that the
//! prefetch overlaps layer i's compute.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use swapper::sys::RawBuf;
use swapper::{Dtype, ParamStatus, Settings, Status, Swapper};

use crate::ours::{cpu_seconds, fill_random, Ours};
use crate::report::{self, push, Results, Sample, Spread};
use crate::{cleanup, direct_io_supported, drop_page_cache, fio, units, IoFlags};

/// Bytes checked at each end of a param.
pub const SAMPLE: usize = 4096;

/// How a layer's compute step is simulated.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ComputeKind {
    /// Sleep (leaves the CPU to the I/O threads, as a GPU kernel would).
    Sleep,
    /// Spin on the CPU (competes with the I/O threads, as CPU-side work would).
    Busy,
}

/// The swapper and the model it holds.
pub struct SwapBench {
    sw: Swapper,
    params: u64,
    param_bytes: u64,
    numel: u64,
    prefetch: u64,
    /// swapper_flush after every this many swap-outs of a park (0: never).
    flush_every: u64,
}

/// One forward pass: its sample, and the seconds spent in the simulated compute.
pub struct Forward {
    pub sample: Sample,
    pub compute_s: f64,
}

impl SwapBench {
    /// Starts a swapper over `folders` (one per drive) with `buffers` pool buffers of one
    /// param each.
    pub fn new(
        folders: &[PathBuf],
        io: swapper::IoConfig,
        params: u64,
        param_bytes: u64,
        buffers: u32,
        prefetch: u32,
        checksums: bool,
    ) -> Result<SwapBench> {
        let numel = param_bytes / 2;
        let settings = Settings {
            rank: 0,
            dtype: Dtype::Fp16,
            buffer_count: buffers,
            buffer_numel: numel,
            pin_memory: false,
            verify_checksums: checksums,
            io,
            allocator: None,
            ..drive_settings(folders)?
        };
        let sw = Swapper::new(settings).map_err(|e| anyhow!("cannot start the swapper: {e}"))?;
        Ok(SwapBench {
            sw,
            params,
            param_bytes,
            numel,
            prefetch: u64::from(prefetch),
            flush_every: 0,
        })
    }

    /// Flushes after every `n` swap-outs of a park (0: never).
    pub fn flushing_every(mut self, n: u64) -> SwapBench {
        self.flush_every = n;
        self
    }

    pub fn swapper(&self) -> &Swapper {
        &self.sw
    }

    /// Fills every pool buffer with random bytes (untimed; the parks then only stamp the
    /// sampled ranges, and the bytes around them stay random).
    pub fn prefill(&self, buffers: u32) -> Result<()> {
        let ids: Vec<u64> = (0..u64::from(buffers)).map(|k| u64::MAX - k).collect();
        for &id in &ids {
            let buf = self
                .sw
                .get_buffer(id, self.numel)
                .map_err(|e| anyhow!("get_buffer({id}): {e}"))?;
            // SAFETY: a fresh pool buffer of `param_bytes` bytes, ours until released.
            let data = unsafe { std::slice::from_raw_parts_mut(buf.0, self.param_bytes as usize) };
            fill_random(data, id);
        }
        self.sw.release(&ids).map_err(|e| anyhow!("release: {e}"))?;
        Ok(())
    }

    /// A free pool buffer for param `id`, waiting for the writes in flight when the pool is
    /// empty (they release their buffers).
    fn buffer_for(&self, id: u64) -> Result<RawBuf> {
        loop {
            match self.sw.get_buffer(id, self.numel) {
                Ok(b) => return Ok(b),
                Err(e) if e.status() == Status::NoBuffer && self.sw.stats().pending_writes > 0 => {
                    self.sw.wait_writes().context("swap-out failed")?;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("get_buffer({id})"))),
            }
        }
    }

    /// Parks every param: buffer, stamp, asynchronous swap-out with release. With
    /// `fill`, each buffer is first filled with random bytes (the untimed first park, so
    /// that no param is mostly zeros).
    pub fn park(&self, round: u64, fill: bool, progress: &dyn Fn(u64)) -> Result<Sample> {
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        for id in 0..self.params {
            let buf = self.buffer_for(id)?;
            // SAFETY: the pool buffer holds `param_bytes` bytes and is this param's alone
            // until it is swapped out below.
            let data = unsafe { std::slice::from_raw_parts_mut(buf.0, self.param_bytes as usize) };
            if fill {
                fill_random(data, id + 1);
            }
            stamp(data, id, round);
            self.sw
                .swap_out_and_release(&[id], true, true)
                .with_context(|| format!("swap out of param {id}"))?;
            progress((id + 1) * self.param_bytes);
            if self.flush_every > 0 && (id + 1) % self.flush_every == 0 {
                self.sw.flush().context("flush failed")?;
            }
        }
        self.sw.wait_writes().context("swap-out failed")?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(Sample::new(
            self.params * self.param_bytes,
            seconds,
            cpu_seconds() - cpu0,
        ))
    }

    /// One forward pass over the layers parked in `round`, with `compute` per layer.
    pub fn forward(
        &self,
        round: u64,
        compute: Duration,
        kind: ComputeKind,
        progress: &dyn Fn(u64),
    ) -> Result<Forward> {
        let n = self.params;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let mut compute_s = 0.0;
        let mut next = 0u64; // the next param to submit
        for i in 0..n {
            if next == i {
                // Not prefetched (prefetch 0, or the first layer).
                self.swap_in(i, i + 1)?;
                next = i + 1;
            }
            if self.sw.param_status(i)? != ParamStatus::Available {
                // Wait for this layer only: the layers prefetched after it stay in flight.
                self.sw.wait_params(&[i]).context("swap-in failed")?;
            }
            // Prefetch the next layers while this one computes.
            let end = (i + 1 + self.prefetch).min(n);
            if next < end {
                self.swap_in(next, end)?;
                next = end;
            }
            let (buf, numel) = self.sw.param_buffer(i)?;
            if numel != self.numel {
                bail!(
                    "param {i} came back with {numel} elements instead of {}",
                    self.numel
                );
            }
            // SAFETY: the param is AVAILABLE: its read has completed and the buffer is
            // ours until it is released below.
            let data = unsafe { std::slice::from_raw_parts(buf.0, self.param_bytes as usize) };
            check(data, i, round)?;
            if !compute.is_zero() {
                let t = Instant::now();
                match kind {
                    ComputeKind::Sleep => std::thread::sleep(compute),
                    ComputeKind::Busy => {
                        while t.elapsed() < compute {
                            std::hint::spin_loop();
                        }
                    }
                }
                compute_s += t.elapsed().as_secs_f64();
            }
            self.sw.release(&[i])?;
            progress((i + 1) * self.param_bytes);
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(Forward {
            sample: Sample::new(n * self.param_bytes, seconds, cpu_seconds() - cpu0),
            compute_s,
        })
    }

    /// Submits the asynchronous swap-in of params `from..to`.
    fn swap_in(&self, from: u64, to: u64) -> Result<()> {
        let ids: Vec<u64> = (from..to).collect();
        // SAFETY: no destination buffers are given: the swapper reads into its own pool.
        unsafe { self.sw.swap_in(&ids, true, None) }
            .with_context(|| format!("swap in of params {from}..{to}"))
    }
}

/// `--drive-stats`: the store's weights, bytes per drive and measured rates after `phase`.
fn drive_stats(on: bool, phase: &str, s: &Swapper) {
    if !on {
        return;
    }
    let st = s.store();
    let loads: Vec<String> = st
        .loads()
        .iter()
        .map(|&l| format!("{:.0}", l as f64 / 1048576.0))
        .collect();
    let rates: Vec<String> = st
        .rates()
        .iter()
        .map(|r| r.map_or("-".into(), |r| format!("{:.0}", r / 1e6)))
        .collect();
    eprintln!(
        "drive stats after {phase}: weights {:?}, MiB per drive [{}], rates MB/s [{}]",
        st.weights(),
        loads.join(", "),
        rates.join(", ")
    );
}

/// The settings naming the drives: `nvme_path` for one folder, a DeepSpeed `nvme_path`
/// list for several (only a library with the swap store reads one).
fn drive_settings(folders: &[PathBuf]) -> Result<Settings> {
    match folders {
        [] => bail!("no folder for the swap files"),
        [one] => Ok(Settings {
            nvme_path: one.clone(),
            ..Settings::default()
        }),
        many => {
            let list: Vec<String> = many.iter().map(|f| f.display().to_string()).collect();
            let json = serde_json::json!({"zero_optimization": {"offload_param": {"nvme_path": list}}});
            Settings::from_deepspeed_json(&json.to_string(), 0, Dtype::Fp16)
                .map_err(|e| anyhow!("this library does not take several drives: {e}"))
        }
    }
}

/// Splits `--dirs`: folders separated by ',' or ':' (SWAPPER_DRIVES uses ':').
pub fn split_dirs(list: &str) -> Vec<PathBuf> {
    list.split([',', ':'])
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The pattern's 8-byte word at byte `offset` of param `id` in round `round`.
fn word(id: u64, round: u64, offset: u64) -> u64 {
    // splitmix64
    let mut z = (id << 40 ^ round << 20 ^ offset).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The two sampled ranges: the first and last `SAMPLE` bytes (one range when they meet).
fn ranges(len: usize) -> [std::ops::Range<usize>; 2] {
    let n = SAMPLE.min(len);
    [0..n, len - n..len]
}

/// Writes the pattern into the sampled ranges.
pub fn stamp(data: &mut [u8], id: u64, round: u64) {
    for r in ranges(data.len()) {
        for off in r.step_by(8) {
            let w = word(id, round, off as u64).to_le_bytes();
            let end = (off + 8).min(data.len());
            data[off..end].copy_from_slice(&w[..end - off]);
        }
    }
}

/// Checks the sampled ranges against the pattern.
pub fn check(data: &[u8], id: u64, round: u64) -> Result<()> {
    for r in ranges(data.len()) {
        for off in r.step_by(8) {
            let w = word(id, round, off as u64).to_le_bytes();
            let end = (off + 8).min(data.len());
            if data[off..end] != w[..end - off] {
                bail!(
                    "param {id} came back wrong: bytes {off}..{end} differ from what was swapped out (round {round})"
                );
            }
        }
    }
    Ok(())
}

/// `swapper-bench swap`'s flags.
#[derive(clap::Args)]
pub struct SwapArgs {
    /// Folder for the swap files on one drive; give it once per drive to spread the swapper
    /// over several (default: a temporary folder under the current one; avoid /tmp and
    /// /dev/shm, often tmpfs). Everything is removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Vec<PathBuf>,
    /// The drives' folders as one list separated by ',' or ':', e.g. `--dirs
    /// "$SWAPPER_DRIVES"` in a command run by `scripts/drive-bed.sh`.
    #[arg(long, value_name = "DIR,DIR,..", conflicts_with = "dir")]
    pub dirs: Option<String>,
    /// Params in the model (one layer each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub params: u64,
    /// Bytes per param (fp16; a multiple of 4 KiB): 32MiB, 64K, 8K, or 1GiB with
    /// `--params 1 --buffers 1 --prefetch 0` for one large tensor.
    #[arg(long, alias = "param-bytes", default_value = "32MiB", value_parser = units::parse_size)]
    pub param_size: u64,
    /// Pool buffers of one param each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub buffers: u32,
    /// Layers swapped in ahead: layers i+1..=i+PREFETCH are read while layer i computes
    /// (needs PREFETCH + 1 buffers).
    #[arg(long, default_value_t = 1)]
    pub prefetch: u32,
    /// Simulated compute per layer, in milliseconds. With more than 0, each run also makes
    /// a forward pass without compute, and "I/O hidden" is reported:
    /// 1 - (pass time - compute time) / (time of the pass without compute), the share of
    /// the I/O time that overlapped compute (1: fully hidden, 0: none).
    #[arg(long, default_value_t = 0.0)]
    pub compute_ms: f64,
    /// How compute is simulated: sleep (CPU left to the I/O) or busy (spinning).
    #[arg(long, value_enum, default_value_t = ComputeKind::Sleep)]
    pub compute_kind: ComputeKind,
    /// The swapper's crc32c of every param, computed by the I/O workers on swap-out and
    /// checked on swap-in (Settings::verify_checksums; off by default, as in the library).
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub checksums: OnOff,
    /// Runs `swap --checksums on` and `off` alternately instead (two swappers, run for
    /// run), and reports the cost of checksums.
    #[arg(long, conflicts_with_all = ["vs_engine", "vs_fio"])]
    pub checksum_cost: bool,
    #[command(flatten)]
    pub io: IoFlags,
    /// Make the manifest durable (swapper_flush: waits for the writes in flight, syncs the
    /// extent files, writes the manifest) after every N swap-outs of a park, inside the
    /// timed park: its swap-out throughput then includes the flushes. 0: never (the
    /// default). Compare runs with 0 and with N for the cost of resumability.
    #[arg(long, default_value_t = 0)]
    pub flush_every: u64,
    /// After each phase, print (to stderr) the swap store's view of its drives: the
    /// weights placement used, the bytes each drive carries and each drive's measured
    /// rate. For diagnosing placement over several drives.
    #[arg(long)]
    pub drive_stats: bool,
    /// Runs (each: one park, one forward pass).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Also move the same bytes through the raw I/O engine (one file, `io`'s code path,
    /// same block size and queue depth), alternating run for run with the swapper.
    #[arg(long)]
    pub vs_engine: bool,
    /// Also run fio on the engine's file with the same settings (a third side).
    #[arg(long)]
    pub vs_fio: bool,
    /// Print one JSON object instead of the table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print one CSV row per run instead of the table.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Runs `swapper-bench swap`.
pub fn run(args: SwapArgs) -> Result<()> {
    let config = args.io.config()?;
    let p = args.param_size;
    if p == 0 || p % 4096 != 0 {
        bail!("--param-size {p} must be a positive multiple of 4 KiB");
    }
    if u64::from(args.prefetch) + 1 > u64::from(args.buffers) {
        bail!(
            "--prefetch {} needs at least {} buffers (the layer computing plus the ones read ahead); --buffers is {}",
            args.prefetch,
            args.prefetch + 1,
            args.buffers
        );
    }
    if !(args.compute_ms >= 0.0 && args.compute_ms.is_finite()) {
        bail!("--compute-ms must be 0 or more");
    }
    let total = args
        .params
        .checked_mul(p)
        .ok_or_else(|| anyhow!("--params x --param-size is too large"))?;
    let compute = Duration::from_secs_f64(args.compute_ms / 1000.0);
    let drives: Vec<PathBuf> = match &args.dirs {
        Some(list) => {
            let d = split_dirs(list);
            if d.is_empty() {
                bail!("--dirs {list:?} names no folder");
            }
            d
        }
        None => args.dir.clone(),
    };
    if drives.len() > 1 && (args.vs_engine || args.vs_fio) {
        bail!("--vs-engine and --vs-fio compare one drive: give one --dir");
    }
    cleanup::install_handler()?;
    let pb = crate::progress_bar()?;
    let mut warnings = crate::Warnings { list: Vec::new() };
    // Each drive's folder (a temporary one under the current folder when none is given).
    let mut folders: Vec<(PathBuf, Option<tempfile::TempDir>)> = Vec::new();
    if drives.is_empty() {
        folders.push(crate::bench_folder(None, &pb, &mut warnings)?);
    }
    for d in &drives {
        folders.push(crate::bench_folder(Some(d), &pb, &mut warnings)?);
    }
    let dir = folders[0].0.clone();

    // On each drive, the swapper's folder (its swap folders and lock files live inside),
    // removed with everything in it.
    let mut swap_dirs = Vec::new();
    for (d, _) in &folders {
        let t = tempfile::Builder::new()
            .prefix("swapper-bench-swap-")
            .tempdir_in(d)
            .with_context(|| format!("cannot create the swap folder in {}", d.display()))?;
        cleanup::register_tree(t.path().to_path_buf());
        swap_dirs.push(t);
    }
    let engine_file = if args.vs_engine || args.vs_fio {
        let f = tempfile::Builder::new()
            .prefix("swapper-bench-")
            .suffix(".dat")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create the benchmark file in {}", dir.display()))?
            .into_temp_path();
        cleanup::register(f.to_path_buf());
        Some(f)
    } else {
        None
    };
    for (_, t) in &folders {
        if let Some(t) = t {
            cleanup::register(t.path().to_path_buf());
        }
    }

    // The sides: one swapper (two with --checksum-cost), each made afresh every run; the
    // engine and fio.
    let checksum_modes: Vec<bool> = if args.checksum_cost {
        vec![true, false]
    } else {
        vec![args.checksums == OnOff::On]
    };
    let labels: Vec<&'static str> = checksum_modes
        .iter()
        .map(|&on| match (args.checksum_cost, on) {
            (false, _) => "swapper",
            (true, true) => "checksums-on",
            (true, false) => "checksums-off",
        })
        .collect();
    let backend = swapper::io::IoEngine::new(config)
        .map_err(|e| anyhow!("cannot start an I/O engine: {e}"))?
        .backend();
    let ours = match &engine_file {
        Some(_) if args.vs_engine => Some(Ours::new(config, total)?),
        _ => None,
    };
    let fio = if args.vs_fio {
        match fio::version() {
            Some(v) => Some(v),
            None => {
                warnings.add(
                    &pb,
                    "fio is not installed (install it with `apt-get install fio`); no fio side".to_string(),
                );
                None
            }
        }
    } else {
        None
    };

    let sides = labels.len() as u64 + u64::from(ours.is_some()) + u64::from(fio.is_some());
    let passes = if compute.is_zero() { 3 } else { 4 };
    pb.set_length(1 + u64::from(args.runs) * sides * passes);
    let bytes_msg = |what: String| {
        let pb = pb.clone();
        move |done: u64| pb.set_message(format!("{what} {}%", done * 100 / total))
    };

    // O_DIRECT on the first drive, probed with a file of its own.
    let probe = swap_dirs[0].path().join("direct-probe");
    std::fs::write(&probe, b"").with_context(|| format!("cannot create {}", probe.display()))?;
    let direct_ok = direct_io_supported(&probe);
    std::fs::remove_file(&probe).with_context(|| format!("cannot remove {}", probe.display()))?;
    if let (Some(f), Some(o)) = (&engine_file, &ours) {
        o.run(
            f,
            true,
            total,
            &bytes_msg("preparing the engine's file".to_string()),
        )
        .context("cannot write the engine's file")?;
    } else if let Some(f) = &engine_file {
        // fio alone: lay its file out with a plain write.
        prepare_file(f, total)?;
    }
    pb.inc(1);
    let (direct, fio_job) = crate::direct_mode_and_fio_job(
        &config,
        direct_ok,
        &dir,
        backend,
        fio.is_some(),
        total,
        &args.io,
        &mut warnings,
        &pb,
    );

    let mut results = Results::new();
    let mut hidden: Vec<f64> = Vec::new();
    let mut compute_total: Vec<f64> = Vec::new();
    let mut swap_stats = None;
    for run in 1..=args.runs {
        for (k, (&label, &on)) in labels.iter().zip(&checksum_modes).enumerate() {
            let tag = format!("run {run}/{} {label}", args.runs);
            // A fresh swapper on empty folders, one per drive.
            let run_folders: Vec<PathBuf> = swap_dirs
                .iter()
                .map(|t| t.path().join(format!("s{k}-run{run}")))
                .collect();
            for f in &run_folders {
                std::fs::create_dir(f).with_context(|| format!("cannot create {}", f.display()))?;
            }
            let b = SwapBench::new(
                &run_folders,
                config,
                args.params,
                p,
                args.buffers,
                args.prefetch,
                on,
            )?
            .flushing_every(args.flush_every);
            b.prefill(args.buffers)?;
            let (new_round, round) = (2 * u64::from(run), 2 * u64::from(run) + 1);
            pb.set_message(format!("{tag} swap-out (new)"));
            let n = b
                .park(new_round, false, &bytes_msg(format!("{tag} swap-out (new)")))
                .with_context(|| format!("{label} swap-out of new params, run {run}"))?;
            push(&mut results, label, "new", n);
            drive_stats(args.drive_stats, "new", b.swapper());
            pb.inc(1);
            let w = b
                .park(round, false, &bytes_msg(format!("{tag} swap-out (overwrite)")))
                .with_context(|| format!("{label} swap-out, run {run}"))?;
            push(&mut results, label, "write", w);
            drive_stats(args.drive_stats, "write", b.swapper());
            pb.inc(1);
            // Without compute first: the swap-in figure.
            let r = b
                .forward(
                    round,
                    Duration::ZERO,
                    args.compute_kind,
                    &bytes_msg(format!("{tag} swap-in")),
                )
                .with_context(|| format!("{label} swap-in, run {run}"))?;
            let io_only = r.sample.seconds;
            push(&mut results, label, "read", r.sample);
            drive_stats(args.drive_stats, "read", b.swapper());
            pb.inc(1);
            if !compute.is_zero() {
                let c = b
                    .forward(
                        round,
                        compute,
                        args.compute_kind,
                        &bytes_msg(format!("{tag} swap-in with compute")),
                    )
                    .with_context(|| format!("{label} swap-in with compute, run {run}"))?;
                if labels.len() == 1 {
                    hidden.push(1.0 - (c.sample.seconds - c.compute_s) / io_only);
                    compute_total.push(c.sample.seconds);
                }
                pb.inc(1);
            }
            if k == 0 {
                swap_stats = Some(b.swapper().stats());
            }
            drop(b);
            for f in &run_folders {
                std::fs::remove_dir_all(f).with_context(|| format!("cannot remove {}", f.display()))?;
            }
        }
        if let (Some(f), Some(o)) = (&engine_file, &ours) {
            for (op, write) in [("write", true), ("read", false)] {
                let tag = format!("run {run}/{} engine {op}", args.runs);
                drop_page_cache(f)?;
                pb.set_message(tag.clone());
                let s = o
                    .run(f, write, total, &bytes_msg(tag))
                    .with_context(|| format!("engine {op}, run {run}"))?;
                push(&mut results, "engine", op, s);
                pb.inc(1);
            }
        }
        if let (Some(f), Some(job)) = (&engine_file, &fio_job) {
            for (op, write) in [("write", true), ("read", false)] {
                drop_page_cache(f)?;
                pb.set_message(format!("run {run}/{} fio {op}", args.runs));
                let s = job
                    .run(f, write)
                    .with_context(|| format!("fio {op}, run {run}"))?;
                push(&mut results, "fio", op, s);
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();

    let swap_stats = swap_stats.ok_or_else(|| anyhow!("no run"))?;
    drop(ours);
    for t in swap_dirs {
        t.close().context("cannot remove the swap folder")?;
    }
    if let Some(f) = engine_file {
        f.close().context("cannot remove the engine's file")?;
    }
    for (_, t) in folders {
        if let Some(t) = t {
            t.close().context("cannot remove the temporary folder")?;
        }
    }
    cleanup::clear();

    let folders_shown: Vec<String> = std::iter::once(dir.display().to_string())
        .chain(drives.iter().skip(1).map(|d| d.display().to_string()))
        .collect();
    let pairs: &[(&str, &str)] = if args.checksum_cost {
        &[("checksums-on", "checksums-off")]
    } else {
        &[("swapper", "engine"), ("swapper", "fio"), ("engine", "fio")]
    };
    let hidden_spread = (!hidden.is_empty()).then(|| Spread::of(&hidden));
    let cost = args.checksum_cost.then(|| {
        // Paired: each run's on/off ratio, so that drift of the disk between runs cancels.
        let per_run = |op: &str| -> Vec<f64> {
            let on = &results["checksums-on"][op].runs;
            let off = &results["checksums-off"][op].runs;
            on.iter()
                .zip(off)
                .map(|(a, b)| (1.0 - a.mib_s / b.mib_s) * 100.0)
                .collect()
        };
        (Spread::of(&per_run("write")), Spread::of(&per_run("read")))
    });

    if args.json {
        let settings = crate::merged(
            crate::io_settings(&args.io, &config, backend, direct),
            serde_json::json!({
                "folder": dir.display().to_string(),
                "folders": folders_shown,
                "params": args.params,
                "param_size": p,
                "total_bytes": total,
                "buffers": args.buffers,
                "prefetch": args.prefetch,
                "compute_ms": args.compute_ms,
                "compute_kind": match args.compute_kind { ComputeKind::Sleep => "sleep", ComputeKind::Busy => "busy" },
                "checksums": checksum_modes,
                "runs": args.runs,
                "vs_engine": args.vs_engine,
                "vs_fio": args.vs_fio,
                "engine_op_size": ours_op_size(args.vs_engine, config, total),
                "fio": match (&fio, &fio_job) {
                    (Some(v), Some(j)) => serde_json::json!({
                        "version": v, "ioengine": j.ioengine, "numjobs": j.numjobs,
                        "iodepth": j.iodepth, "size_per_job": j.job_size,
                    }),
                    _ => serde_json::Value::Null,
                },
            }),
        );
        let mut v = report::json(settings, &results, &warnings.list);
        let mut ratios = serde_json::Map::new();
        for (a, b) in pairs {
            let r = report::ratio(&results, a, b);
            if !r.is_empty() {
                ratios.insert(format!("{a}/{b}"), serde_json::to_value(r)?);
            }
        }
        v["ratios"] = serde_json::Value::Object(ratios);
        v["io_hidden"] = match hidden_spread {
            Some(h) => serde_json::json!({
                "runs": hidden,
                "median": h.median, "min": h.min, "max": h.max,
                "pass_seconds_with_compute": compute_total,
            }),
            None => serde_json::Value::Null,
        };
        v["checksum_cost_percent"] = match cost {
            Some((w, r)) => serde_json::json!({"write": w, "read": r}),
            None => serde_json::Value::Null,
        };
        v["swapper_stats"] = serde_json::json!({
            "read_wait_ns": swap_stats.read_wait_ns,
            "write_wait_ns": swap_stats.write_wait_ns,
            "bytes_read": swap_stats.bytes_read,
            "bytes_written": swap_stats.bytes_written,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if args.csv {
        print!("{}", report::csv(&results));
    } else {
        println!(
            "libswapper {} swap: {} params x {} (fp16) = {} in {} ({} drive(s)), {} buffer(s), prefetch {}, compute {} ms ({}), checksums {}; block {}, queue depth {}, {} thread(s), backend {}, {}, {} run(s)",
            swapper::VERSION,
            args.params,
            units::human(p),
            units::human(total),
            folders_shown.join(", "),
            folders_shown.len(),
            args.buffers,
            args.prefetch,
            args.compute_ms,
            match args.compute_kind { ComputeKind::Sleep => "sleep", ComputeKind::Busy => "busy" },
            if args.checksum_cost { "on vs off".to_string() } else { format!("{:?}", checksum_modes[0]).replace("true", "on").replace("false", "off") },
            units::human(args.io.block_size),
            args.io.queue_depth,
            args.io.threads,
            backend.name(),
            if direct { "O_DIRECT" } else { "BUFFERED (page cache)" },
            args.runs,
        );
        println!("new = swap-out of new params (a fresh swapper), write = swap-out overwriting them, read = swap-in (a forward pass); the engine and fio move the same bytes through one file");
        print!("{}", report::rows(&results));
        for (a, b) in pairs {
            print!("{}", report::ratio_line(&results, a, b));
        }
        if let Some(h) = hidden_spread {
            println!(
                "I/O hidden behind compute: {:.1}% [{:.1}..{:.1}] (1 - (pass with compute - compute) / pass without compute)",
                h.median * 100.0,
                h.min * 100.0,
                h.max * 100.0
            );
        }
        if let Some((w, r)) = cost {
            println!(
                "checksum cost (1 - on/off per run pair): swap-out {:.1}% [{:.1}..{:.1}], swap-in {:.1}% [{:.1}..{:.1}]",
                w.median, w.min, w.max, r.median, r.min, r.max
            );
        }
    }
    Ok(())
}

fn ours_op_size(on: bool, config: swapper::IoConfig, total: u64) -> serde_json::Value {
    if !on {
        return serde_json::Value::Null;
    }
    let depth = config.block_size * u64::from(config.queue_depth) * u64::from(config.thread_count);
    serde_json::json!((64u64 << 20).max(depth).min(total))
}

/// Writes `size` bytes of random data to `path` (untimed layout for fio alone).
fn prepare_file(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut chunk = vec![0u8; 16 << 20];
    fill_random(&mut chunk, 99);
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_then_check() {
        for len in [4096usize, 6000, 3 << 20] {
            let mut d = vec![0u8; len];
            stamp(&mut d, 7, 2);
            check(&d, 7, 2).unwrap();
            assert!(check(&d, 7, 3).is_err());
            assert!(check(&d, 8, 2).is_err());
            let last = len - 1;
            d[last] ^= 1;
            assert!(check(&d, 7, 2).is_err());
        }
    }
}
