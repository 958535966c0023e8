//! `swapper-bench snapshot`: how long a consistent snapshot of a swap folder takes
//! (swapper_snapshot: a flush, then reflinks where the file system shares extents, or
//! copies of the ranges the manifest names) against `cp -r` of the same rank folder, and
//! against `cp -r` followed by `sync` of the copies (the snapshot's files are fsynced).
//! Alternates the sides run for run. Everything it makes is removed at the end.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use swapper::{Dtype, Settings, Swapper};

use crate::{cleanup, units};

/// `swapper-bench snapshot`'s flags.
#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// Folder for the swap files and the snapshots (on the file system to measure: XFS
    /// with reflink, btrfs, ext4). Default: a temporary folder under the current one.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Bytes of swap data (params of --param-size).
    #[arg(long, default_value = "2GiB", value_parser = units::parse_size)]
    pub size: u64,
    /// Bytes per param (fp16; a multiple of 4 KiB).
    #[arg(long, default_value = "32MiB", value_parser = units::parse_size)]
    pub param_size: u64,
    /// Runs of each side.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn seconds(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `swapper-bench snapshot`.
pub fn run(args: SnapshotArgs) -> Result<()> {
    let p = args.param_size;
    if p == 0 || p % 4096 != 0 {
        bail!("--param-size {p} must be a positive multiple of 4 KiB");
    }
    let params = args.size.div_ceil(p).max(1);
    cleanup::install_handler()?;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let work = tempfile::Builder::new()
        .prefix("swapper-bench-snapshot-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a folder in {}", base.display()))?;
    cleanup::register_tree(work.path().to_path_buf());
    let nvme = work.path().join("nvme");
    std::fs::create_dir(&nvme)?;
    let numel = p / 2;
    let s = Swapper::new(Settings {
        nvme_path: nvme.clone(),
        dtype: Dtype::Fp16,
        buffer_count: 4,
        buffer_numel: numel,
        ..Settings::default()
    })
    .map_err(|e| anyhow!("cannot start the swapper: {e}"))?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for id in 0..params {
        let buf = loop {
            match s.get_buffer(id, numel) {
                Ok(b) => break b,
                Err(e) if e.status() == swapper::Status::NoBuffer => {
                    s.wait_writes().map_err(|e| anyhow!("{e}"))?
                }
                Err(e) => bail!("get_buffer: {e}"),
            }
        };
        // SAFETY: a pool buffer of `numel` fp16 elements, this param's until swapped out.
        let data = unsafe { std::slice::from_raw_parts_mut(buf.0, p as usize) };
        for w in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            w.copy_from_slice(&seed.to_le_bytes()[..w.len()]);
        }
        s.swap_out_and_release(&[id], true, true)
            .map_err(|e| anyhow!("{e}"))?;
    }
    s.flush().map_err(|e| anyhow!("flush: {e}"))?;
    let rank = s.folder();
    let (mut snap, mut cp, mut cp_sync) = (Vec::new(), Vec::new(), Vec::new());
    let mut how = String::new();
    for run in 0..args.runs {
        let dest = work.path().join(format!("snap-{run}"));
        snap.push(seconds(|| {
            let r = s.snapshot_to(&dest).map_err(|e| anyhow!("snapshot: {e}"))?;
            how = format!(
                "{} files: {} reflinked, {} copied",
                r.files, r.reflinked, r.copied
            );
            Ok(())
        })?);
        std::fs::remove_dir_all(&dest)?;
        for (k, list) in [(0, &mut cp), (1, &mut cp_sync)] {
            let dest = work.path().join(format!("cp-{run}-{k}"));
            list.push(seconds(|| {
                let st = Command::new("cp").arg("-r").arg(&rank).arg(&dest).status()?;
                if !st.success() {
                    bail!("cp -r failed: {st}");
                }
                if k == 1 {
                    let files: Vec<PathBuf> = std::fs::read_dir(&dest)?
                        .map(|e| Ok(e?.path()))
                        .collect::<Result<_>>()?;
                    let st = Command::new("sync").args(&files).status()?;
                    if !st.success() {
                        bail!("sync failed: {st}");
                    }
                }
                Ok(())
            })?);
            std::fs::remove_dir_all(&dest)?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b, c) = (median(&mut snap), median(&mut cp), median(&mut cp_sync));
    let bytes = params * p;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bytes": bytes, "params": params, "runs": args.runs, "how": how,
                "snapshot_s": a, "cp_r_s": b, "cp_r_sync_s": c})
        );
    } else {
        println!(
            "swap data: {params} params of {p} bytes ({bytes} bytes) in {}",
            rank.display()
        );
        println!("snapshot ({how}): {:.3} s (median of {})", a, args.runs);
        println!("cp -r:        {b:.3} s");
        println!("cp -r + sync: {c:.3} s");
    }
    drop(s);
    Ok(())
}
