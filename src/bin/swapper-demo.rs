//! swapper-demo: a real swap through a temporary folder, with throughput printed.
//!
//! Writes 256 MiB of "parameters" to files with the I/O engine (O_DIRECT), reads them
//! back, checks every byte and prints the throughput of each direction.
//! usage: swapper-demo [FOLDER]   (default: a temporary folder under the current one)

use std::time::Instant;

use anyhow::{bail, Context, Result};
use swapper::io::handle::IoHandle;
use swapper::sys::alloc::AlignedBuf;
use swapper::IoConfig;

const PARAMS: usize = 16;
const PARAM_BYTES: usize = 16 << 20;

fn main() -> Result<()> {
    let base = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let dir = tempfile::Builder::new()
        .prefix("swapper-demo-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a temporary folder in {base}"))?;
    let io = IoHandle::new(IoConfig::default())?;
    println!(
        "libswapper {} demo: {PARAMS} params of {} MiB in {} (backend {}, block {} KiB, queue depth {})",
        swapper::VERSION,
        PARAM_BYTES >> 20,
        dir.path().display(),
        io.engine().backend().name(),
        io.engine().config().block_size >> 10,
        io.engine().config().queue_depth
    );
    let mut bufs = Vec::new();
    for p in 0..PARAMS {
        let mut b = AlignedBuf::new(PARAM_BYTES, false)?;
        for (i, chunk) in b.as_mut_slice().chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&((p * PARAM_BYTES + i) as u64).to_le_bytes());
        }
        bufs.push(b);
    }
    let path = |p: usize| dir.path().join(format!("{p}_param.tensor.swp"));
    let start = Instant::now();
    for (p, b) in bufs.iter().enumerate() {
        // SAFETY: `bufs` lives until the wait below has returned.
        unsafe { io.submit(true, b.raw(), PARAM_BYTES as u64, &path(p), 0, true) }?;
    }
    io.wait().1?;
    let out_secs = start.elapsed().as_secs_f64();
    for b in &mut bufs {
        b.as_mut_slice().fill(0);
    }
    let start = Instant::now();
    for (p, b) in bufs.iter().enumerate() {
        // SAFETY: as above.
        unsafe { io.submit(false, b.raw(), PARAM_BYTES as u64, &path(p), 0, true) }?;
    }
    io.wait().1?;
    let in_secs = start.elapsed().as_secs_f64();
    for (p, b) in bufs.iter().enumerate() {
        for (i, chunk) in b.as_slice().chunks(8).enumerate() {
            if chunk != ((p * PARAM_BYTES + i) as u64).to_le_bytes() {
                bail!("param {p} differs at byte {}", i * 8);
            }
        }
    }
    let mib = (PARAMS * PARAM_BYTES) as f64 / (1 << 20) as f64;
    println!(
        "swap out: {mib:.0} MiB in {out_secs:.3} s = {:.0} MiB/s",
        mib / out_secs
    );
    println!(
        "swap in:  {mib:.0} MiB in {in_secs:.3} s = {:.0} MiB/s",
        mib / in_secs
    );
    println!("every byte verified; {} removed", dir.path().display());
    Ok(())
}
