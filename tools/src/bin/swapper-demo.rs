//! swapper-demo: a real swap of parameters through a temporary folder, with throughput.
//!
//! Parks 32 fp16 params of 16 MiB (512 MiB) on disk through the parameter swapper, then
//! runs a forward pass that prefetches the next param while checking the current one,
//! and prints the throughput of each direction. Every byte is verified. Ends with where
//! the data went (the temporary folder, removed) and the benchmark commands to run next.
//! usage: swapper-demo [FOLDER]   (default: a temporary folder under the current one)

use std::time::Instant;

use anyhow::{bail, Context, Result};
use swapper::{Dtype, Settings, Swapper};

const PARAMS: u64 = 32;
const NUMEL: u64 = 8 << 20; // fp16: 16 MiB each
const BUFFERS: u32 = 4;

fn value(id: u64, i: u64) -> u16 {
    (id.wrapping_mul(7919).wrapping_add(i.wrapping_mul(31))) as u16
}

fn main() -> Result<()> {
    let base = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let dir = tempfile::Builder::new()
        .prefix("swapper-demo-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a temporary folder in {base}"))?;
    let s = Swapper::new(Settings {
        nvme_path: dir.path().to_path_buf(),
        dtype: Dtype::Fp16,
        buffer_count: BUFFERS,
        buffer_numel: NUMEL,
        ..Settings::default()
    })?;
    let mib = (PARAMS * NUMEL * 2) as f64 / (1u64 << 20) as f64;
    println!(
        "libswapper {} demo: {PARAMS} fp16 params of {} MiB ({mib:.0} MiB) through {} buffers in {}",
        swapper::VERSION,
        (NUMEL * 2) >> 20,
        BUFFERS,
        s.folder().display()
    );
    let io = s.engine().config();
    println!(
        "engine: backend {}, block {} KiB, queue depth {}, threads {}",
        s.engine().backend().name(),
        io.block_size >> 10,
        io.queue_depth,
        io.thread_count
    );

    let start = Instant::now();
    for id in 0..PARAMS {
        let buf = s.get_buffer(id, NUMEL)?;
        // SAFETY: the param's fresh pool buffer holds NUMEL fp16 elements, ours until swap-out.
        let data = unsafe { std::slice::from_raw_parts_mut(buf.0 as *mut u16, NUMEL as usize) };
        for (i, v) in data.iter_mut().enumerate() {
            *v = value(id, i as u64);
        }
        s.swap_out_and_release(&[id], true, true)?;
        if s.available_buffers() == 0 {
            s.wait_writes()?;
        }
    }
    s.wait_writes()?;
    let out_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    // SAFETY: pool buffers only (no caller destination).
    unsafe { s.swap_in(&[0], true, None) }?;
    for id in 0..PARAMS {
        s.wait_reads()?;
        if id + 1 < PARAMS {
            // SAFETY: as above.
            unsafe { s.swap_in(&[id + 1], true, None) }?;
        }
        let (buf, numel) = s.param_buffer(id)?;
        // SAFETY: the param is AVAILABLE; its buffer holds `numel` elements.
        let data = unsafe { std::slice::from_raw_parts(buf.0 as *const u16, numel as usize) };
        if let Some(i) = data
            .iter()
            .enumerate()
            .position(|(i, v)| *v != value(id, i as u64))
        {
            bail!("param {id} differs at element {i}");
        }
        s.release(&[id])?;
    }
    let in_secs = start.elapsed().as_secs_f64();
    println!(
        "swap out: {mib:.0} MiB in {out_secs:.3} s = {:.0} MiB/s",
        mib / out_secs
    );
    println!(
        "swap in (prefetch one ahead, verified): {mib:.0} MiB in {in_secs:.3} s = {:.0} MiB/s",
        mib / in_secs
    );
    println!("every byte verified");

    // Where the data went, removed now (the swapper first, so that nothing holds the folder).
    let folder = s.folder();
    drop(s);
    let tmp = dir.path().to_path_buf();
    dir.close()
        .with_context(|| format!("cannot remove the temporary folder {}", tmp.display()))?;
    println!(
        "the swap files were in {}; {} is removed",
        folder.display(),
        tmp.display()
    );
    println!("next, on a folder of the NVMe you will swap to:");
    println!(
        "  cargo run --release --bin swapper-bench -- io --vs-fio --dir <folder on your NVMe>   # the engine against fio"
    );
    println!(
        "  cargo run --release --bin swapper-bench -- tune --dir <folder on your NVMe> --plot sweep.svg   # the best block size, queue depth, threads"
    );
    Ok(())
}
