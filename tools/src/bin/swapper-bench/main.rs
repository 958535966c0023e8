//! swapper-bench: measures libswapper's I/O engine, optionally against fio on the same
//! file with the same settings; its swappers (`swap`, `optimizer`); and tunes (`tune`).
//!
//! `swapper-bench io [--dir DIR] [--size 2GiB] [--block-size 1MiB] [--queue-depth 8]
//! [--threads 1] [--backend auto|io_uring|blocking] [--direct auto|on|off] [--runs 3]
//! [--op read|write|both] [--vs-fio] [--json | --csv]`
//!
//! The file is written once untimed (so every timed write overwrites allocated blocks,
//! as fio's do), then each run moves the whole file; with --vs-fio, fio runs right after
//! ours on the same file, run for run, so that a noisy disk hits both sides alike. Every
//! figure is the median over the runs, with min and max. Reads start from a dropped page
//! cache, and O_DIRECT is on by default; a run that fell back to buffered I/O is flagged.

mod cleanup;
mod fio;
mod optimizer;
mod ours;
mod plot;
mod report;
mod swap;
mod tune;
mod units;

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use swapper::{Backend, DirectIo, IoConfig};

use report::Results;

#[derive(Parser)]
#[command(name = "swapper-bench", version, about = "Benchmarks of libswapper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sequential write and read throughput of the I/O engine on one file, optionally
    /// against fio.
    Io(IoArgs),
    /// The parameter swapper in a training-like loop (park all params, then forward passes
    /// that prefetch and release), optionally against the raw engine and fio.
    Swap(swap::SwapArgs),
    /// The optimizer-state swapper's update phase alone: fp32 params, Adam's moments and
    /// gradients in sub-groups, read ahead, stepped with a CPU Adam, written behind.
    Optimizer(optimizer::OptimizerArgs),
    /// Sweeps block size, queue depth, thread count and backend; prints the best settings
    /// for reads and writes as a libswapper config and a DeepSpeed "aio" block.
    Tune(tune::TuneArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Auto,
    #[value(name = "io_uring", alias = "io-uring", alias = "uring")]
    IoUring,
    Blocking,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DirectArg {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OpArg {
    Read,
    Write,
    Both,
}

/// The engine's settings, shared by `io` and `swap`.
#[derive(Args, Clone)]
struct IoFlags {
    /// Bytes per request (a power of two from 4 KiB to 1 GiB).
    #[arg(long, default_value = "1MiB", value_parser = units::parse_size)]
    block_size: u64,
    /// Requests in flight per thread.
    #[arg(long, default_value_t = 8)]
    queue_depth: u32,
    /// Engine worker threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Submit each request to io_uring on its own instead of in batches (DeepSpeed's
    /// `single_submit`).
    #[arg(long)]
    single_submit: bool,
    /// O_DIRECT: auto falls back to buffered I/O (flagged) where unsupported.
    #[arg(long, value_enum, default_value_t = DirectArg::Auto)]
    direct: DirectArg,
}

impl IoFlags {
    /// The engine's configuration, validated.
    fn config(&self) -> Result<IoConfig> {
        let config = IoConfig {
            block_size: self.block_size,
            queue_depth: self.queue_depth,
            thread_count: self.threads,
            single_submit: self.single_submit,
            backend: self.backend.into(),
            direct_io: self.direct.into(),
            ..IoConfig::default()
        };
        config
            .validate()
            .map_err(|e| anyhow!("invalid settings: {}", e.message()))?;
        Ok(config)
    }
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::IoUring => Backend::IoUring,
            BackendArg::Blocking => Backend::Blocking,
        }
    }
}

impl From<DirectArg> for DirectIo {
    fn from(d: DirectArg) -> DirectIo {
        match d {
            DirectArg::Auto => DirectIo::Auto,
            DirectArg::On => DirectIo::On,
            DirectArg::Off => DirectIo::Off,
        }
    }
}

#[derive(Args)]
struct IoArgs {
    /// Folder for the benchmark file (default: a temporary folder under the current one;
    /// avoid /tmp and /dev/shm, often tmpfs). The file is removed at the end.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// File size (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "2GiB", value_parser = units::parse_size)]
    size: u64,
    #[command(flatten)]
    io: IoFlags,
    /// Runs per side and direction.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[arg(long, value_enum, default_value_t = OpArg::Both)]
    op: OpArg,
    /// Also run fio on the same file with the same settings, alternating with ours.
    #[arg(long)]
    vs_fio: bool,
    /// In each pair, run fio before ours instead of after (to see whether the order
    /// favours one side).
    #[arg(long, requires = "vs_fio")]
    fio_first: bool,
    /// Print one JSON object instead of the table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print one CSV row per run instead of the table.
    #[arg(long)]
    csv: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Io(args) => io_bench(args),
        Command::Swap(args) => swap::run(args),
        Command::Optimizer(args) => optimizer::run(args),
        Command::Tune(args) => tune::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // An error caused by Ctrl-C removing the files under a running benchmark is no
            // failure to report: the handler is ending the process.
            cleanup::wait_if_interrupted();
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Warnings go to stderr at once (above the progress bar) and into the JSON report.
struct Warnings {
    list: Vec<String>,
}

impl Warnings {
    fn add(&mut self, pb: &ProgressBar, text: String) {
        pb.suspend(|| eprintln!("warning: {text}"));
        self.list.push(text);
    }
}

fn io_bench(args: IoArgs) -> Result<()> {
    let config = args.io.config()?;
    if args.size == 0 || args.size % args.io.block_size != 0 {
        bail!(
            "--size {} must be a positive multiple of --block-size {}",
            args.size,
            args.io.block_size
        );
    }
    let ops: &[&'static str] = match args.op {
        OpArg::Write => &["write"],
        OpArg::Read => &["read"],
        OpArg::Both => &["write", "read"],
    };
    cleanup::install_handler()?;

    let pb = progress_bar()?;
    let mut warnings = Warnings { list: Vec::new() };
    let (dir, _tmp_dir) = bench_folder(args.dir.as_deref(), &pb, &mut warnings)?;
    let file = bench_file(&dir, _tmp_dir.as_ref())?;
    let file_path = file.to_path_buf();
    let path: &Path = &file_path;

    let ours = ours::Ours::new(config, args.size)?;
    let backend = ours.engine().backend();

    // fio, when asked for and present.
    let fio = if args.vs_fio {
        match fio::version() {
            Some(v) => Some(v),
            None => {
                warnings.add(
                    &pb,
                    "fio is not installed (install it with `apt-get install fio`); running libswapper alone"
                        .to_string(),
                );
                None
            }
        }
    } else {
        None
    };

    let steps = 1 + u64::from(args.runs) * ops.len() as u64 * if fio.is_some() { 2 } else { 1 };
    pb.set_length(steps);
    let size = args.size;
    let bytes_msg = |what: String| {
        let pb = pb.clone();
        move |done: u64| pb.set_message(format!("{what} {}%", done * 100 / size))
    };

    // Lay the file out once, untimed: every timed write is then an overwrite, as fio's.
    ours.run(path, true, size, &bytes_msg("preparing the file".to_string()))
        .context("cannot write the benchmark file")?;
    pb.inc(1);

    let direct_ok = direct_io_supported(path);
    let (direct, fio_job) = direct_mode_and_fio_job(
        &config,
        direct_ok,
        &dir,
        backend,
        fio.is_some(),
        size,
        &args.io,
        &mut warnings,
        &pb,
    );

    let settings = merged(
        io_settings(&args.io, &config, backend, direct),
        serde_json::json!({
            "file": path.display().to_string(),
            "size_bytes": size,
            "runs": args.runs,
            "op": ops,
            "vs_fio": args.vs_fio,
            "fio_first": args.fio_first,
            "op_size": ours.op_size(),
            "buffers": ours.buffers(),
            "fio": match (&fio, &fio_job) {
                (Some(v), Some(j)) => serde_json::json!({
                    "version": v,
                    "ioengine": j.ioengine,
                    "numjobs": j.numjobs,
                    "iodepth": j.iodepth,
                    "size_per_job": j.job_size,
                }),
                _ => serde_json::Value::Null,
            },
        }),
    );

    let mut results = Results::new();
    for run in 1..=args.runs {
        for &op in ops {
            let write = op == "write";
            let order = if args.fio_first {
                ["fio", "libswapper"]
            } else {
                ["libswapper", "fio"]
            };
            for side in order {
                let label = format!("run {run}/{} {side} {op}", args.runs);
                let s = if side == "fio" {
                    let Some(job) = &fio_job else { continue };
                    drop_page_cache(path)?;
                    pb.set_message(label);
                    job.run(path, write)
                } else {
                    drop_page_cache(path)?;
                    pb.set_message(label.clone());
                    ours.run(path, write, size, &bytes_msg(label))
                }
                .with_context(|| format!("{side} {op}, run {run}"))?;
                report::push(&mut results, side, op, s);
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();

    let (op_size, buffers) = (ours.op_size(), ours.buffers());
    drop(ours);
    file.close()
        .with_context(|| format!("cannot remove the benchmark file {}", path.display()))?;
    if let Some(t) = _tmp_dir {
        t.close().context("cannot remove the temporary folder")?;
    }
    cleanup::clear();

    if args.json {
        let v = report::json(settings, &results, &warnings.list);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if args.csv {
        print!("{}", report::csv(&results));
    } else {
        println!(
            "libswapper {} io: {} file in {}, block {}, queue depth {}, {} thread(s), backend {}{}, {}, {} run(s){}; ops of {} from {} buffer(s)",
            swapper::VERSION,
            units::human(size),
            dir.display(),
            units::human(args.io.block_size),
            args.io.queue_depth,
            args.io.threads,
            backend.name(),
            if args.io.single_submit { " (single submit)" } else { "" },
            if direct { "O_DIRECT" } else { "BUFFERED (page cache)" },
            args.runs,
            if args.fio_first { ", fio first in each pair" } else { "" },
            units::human(op_size),
            buffers,
        );
        if let (Some(v), Some(j)) = (&fio, &fio_job) {
            println!(
                "{v}: ioengine {}, numjobs {}, iodepth {}, direct={}; CPU is fio's usr_cpu+sys_cpu over its job time",
                j.ioengine,
                j.numjobs,
                j.iodepth,
                u8::from(j.direct)
            );
        }
        print!("{}", report::table(&results));
    }
    Ok(())
}

/// Whether the run uses O_DIRECT (warning when it does not), and the fio job that matches
/// the engine's settings when fio takes part.
#[allow(clippy::too_many_arguments)]
pub(crate) fn direct_mode_and_fio_job(
    config: &IoConfig,
    direct_ok: bool,
    dir: &Path,
    backend: Backend,
    with_fio: bool,
    size: u64,
    io: &IoFlags,
    warnings: &mut Warnings,
    pb: &ProgressBar,
) -> (bool, Option<fio::Job>) {
    let direct = config.direct_io != DirectIo::Off && direct_ok;
    match config.direct_io {
        DirectIo::Off => warnings.add(
            pb,
            "buffered I/O (--direct off): the page cache may flatter the figures".to_string(),
        ),
        DirectIo::Auto if !direct_ok => warnings.add(
            pb,
            format!(
                "the file system of {} does not support O_DIRECT: the run fell back to buffered I/O and the page cache may flatter the figures",
                dir.display()
            ),
        ),
        _ => {}
    }
    let job = with_fio.then(|| {
        let ioengine = match (backend, config.backend) {
            (Backend::IoUring, _) => "io_uring",
            (_, Backend::Blocking) => "psync",
            // Our auto found no io_uring: fio's io_uring would fail too.
            _ => "libaio",
        };
        fio::Job::new(ioengine, size, io.block_size, io.queue_depth, io.threads, direct)
    });
    (direct, job)
}

/// A progress bar on stderr when it is a terminal, a hidden one otherwise.
fn progress_bar() -> Result<ProgressBar> {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            .map_err(|e| anyhow!("progress bar template: {e}"))?
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    Ok(pb)
}

/// A new benchmark file in `dir`, registered (with the temporary folder holding it, if
/// any) for removal on Ctrl-C; the returned path removes it when dropped.
fn bench_file(dir: &Path, tmp_dir: Option<&tempfile::TempDir>) -> Result<tempfile::TempPath> {
    let file = tempfile::Builder::new()
        .prefix("swapper-bench-")
        .suffix(".dat")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create the benchmark file in {}", dir.display()))?
        .into_temp_path();
    cleanup::register(file.to_path_buf());
    if let Some(t) = tmp_dir {
        cleanup::register(t.path().to_path_buf());
    }
    Ok(file)
}

/// The engine settings every report records, for the `settings` object of its JSON.
fn io_settings(io: &IoFlags, config: &IoConfig, backend: Backend, direct: bool) -> serde_json::Value {
    serde_json::json!({
        "block_size": io.block_size,
        "queue_depth": io.queue_depth,
        "threads": io.threads,
        "single_submit": io.single_submit,
        "backend": backend.name(),
        "backend_requested": config.backend.name(),
        "direct": config.direct_io.name(),
        "direct_effective": direct,
    })
}

/// `extra` merged into `base` (both JSON objects).
fn merged(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// The folder for the benchmark files: the one asked for, or a temporary one under the
/// current folder (the guard removes it at the end; the caller registers it for Ctrl-C
/// after the files inside it). Warns when it is on tmpfs.
fn bench_folder(
    dir: Option<&Path>,
    pb: &ProgressBar,
    warnings: &mut Warnings,
) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let (dir, tmp) = match dir {
        Some(d) => {
            if !d.is_dir() {
                bail!("--dir {} is not an existing folder", d.display());
            }
            (d.to_path_buf(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("swapper-bench-")
                .tempdir_in(".")
                .context("cannot make a temporary folder in the current folder (use --dir)")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    if is_tmpfs(&dir) {
        warnings.add(
            pb,
            format!(
                "{} is on tmpfs (memory): the figures say nothing about a disk; use --dir on one",
                dir.display()
            ),
        );
    }
    Ok((dir, tmp))
}

/// Whether `path` can be opened with O_DIRECT (EINVAL: its file system refuses it).
fn direct_io_supported(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// Writes back and drops the file's pages from the page cache, so a read comes from the disk.
fn drop_page_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    // SAFETY: posix_fadvise touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!(
            "cannot drop the page cache of {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

/// Whether `dir` is on tmpfs.
fn is_tmpfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` writable.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // f_type's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let tmpfs = st.f_type as i64 == libc::TMPFS_MAGIC as i64;
    rc == 0 && tmpfs
}
