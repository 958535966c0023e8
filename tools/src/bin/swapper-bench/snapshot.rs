//! `swapper-bench snapshot`: how long a consistent snapshot of a swap folder takes
//! (swapper_snapshot: a flush, then reflinks where the file system shares extents, or
//! copies of the ranges the manifest names) against `cp -r` of the same rank folder, and
//! against `cp -r` followed by `sync` of the copies (the snapshot's files are fsynced).
//! Every timed side starts from the same state: written-back dirty pages (`sync`) and,
//! as root, an empty page cache (`echo 3 > /proc/sys/vm/drop_caches`), so no side reads
//! what the one before it left in memory. The order of the sides alternates run for run
//! (snapshot, cp, cp + sync; then the reverse). Medians with [min..max]. Everything it
//! makes is removed at the end.

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

/// Writes back dirty pages and, where allowed (root), empties the page cache. Returns
/// whether the cache was emptied.
fn settle() -> Result<bool> {
    let st = Command::new("sync").status().context("cannot run sync")?;
    if !st.success() {
        bail!("sync failed: {st}");
    }
    Ok(std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok())
}

fn seconds(dropped: &mut bool, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    *dropped &= settle()?;
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
    let mut times: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut how = String::new();
    let mut dropped = true;
    for run in 0..args.runs {
        let order: [usize; 3] = if run % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for side in order {
            let dest = work.path().join(format!("side{side}-{run}"));
            let t = if side == 0 {
                seconds(&mut dropped, || {
                    let r = s.snapshot_to(&dest).map_err(|e| anyhow!("snapshot: {e}"))?;
                    how = format!(
                        "{} files: {} reflinked, {} copied",
                        r.files, r.reflinked, r.copied
                    );
                    Ok(())
                })?
            } else {
                seconds(&mut dropped, || {
                    let st = Command::new("cp").arg("-r").arg(&rank).arg(&dest).status()?;
                    if !st.success() {
                        bail!("cp -r failed: {st}");
                    }
                    if side == 2 {
                        let files: Vec<PathBuf> = std::fs::read_dir(&dest)?
                            .map(|e| Ok(e?.path()))
                            .collect::<Result<_>>()?;
                        let st = Command::new("sync").args(&files).status()?;
                        if !st.success() {
                            bail!("sync failed: {st}");
                        }
                    }
                    Ok(())
                })?
            };
            times[side].push(t);
            std::fs::remove_dir_all(&dest)?;
        }
    }
    // (median, min, max) of each side.
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let [mut t0, mut t1, mut t2] = times;
    let (a, b, c) = (stats(&mut t0), stats(&mut t1), stats(&mut t2));
    let bytes = params * p;
    let cache = if dropped {
        "page cache dropped before each side"
    } else {
        "page cache NOT dropped (not root): later sides may read cached data"
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bytes": bytes, "params": params, "runs": args.runs, "how": how,
                "cache_dropped": dropped,
                "snapshot_s": a.0, "snapshot_min_s": a.1, "snapshot_max_s": a.2,
                "cp_r_s": b.0, "cp_r_min_s": b.1, "cp_r_max_s": b.2,
                "cp_r_sync_s": c.0, "cp_r_sync_min_s": c.1, "cp_r_sync_max_s": c.2})
        );
    } else {
        println!(
            "swap data: {params} params of {p} bytes ({bytes} bytes) in {}",
            rank.display()
        );
        println!(
            "{} runs of each side, order alternating, {cache}; median [min..max]",
            args.runs
        );
        println!("snapshot ({how}): {:.3} s [{:.3}..{:.3}]", a.0, a.1, a.2);
        println!("cp -r:        {:.3} s [{:.3}..{:.3}]", b.0, b.1, b.2);
        println!("cp -r + sync: {:.3} s [{:.3}..{:.3}]", c.0, c.1, c.2);
        println!(
            "snapshot / (cp -r + sync): {:.2}x, snapshot / cp -r: {:.2}x",
            a.0 / c.0,
            a.0 / b.0
        );
    }
    drop(s);
    Ok(())
}
