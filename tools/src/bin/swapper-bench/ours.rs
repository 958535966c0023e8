//! The libswapper side: the whole file moved through the I/O engine from a ring of
//! reused aligned buffers.
//!
//! The file is cut into operations of `op_size` bytes (64 MiB, or one full queue's worth
//! of requests, `block_size * queue_depth * threads`, when that is larger). Up to
//! `buffers` operations are submitted at once, each into its own buffer; as the oldest
//! finishes, its buffer carries the next operation. The engine cuts each operation into
//! `block_size` requests, so with at least two operations queued there are always more
//! requests waiting than the `queue_depth * threads` the workers keep in flight.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use swapper::io::{IoEngine, Request, Ticket};
use swapper::sys::alloc::AlignedBuf;
use swapper::IoConfig;

use crate::report::Sample;

/// Smallest operation size.
const MIN_OP: u64 = 64 << 20;
/// Operations in flight at once (buffers in the ring).
const RING: u64 = 4;

/// The engine and its buffer ring.
pub struct Ours {
    engine: IoEngine,
    bufs: Vec<AlignedBuf>,
    op_size: u64,
}

impl Ours {
    /// Starts the engine and allocates the ring for a file of `size` bytes.
    pub fn new(config: IoConfig, size: u64) -> Result<Ours> {
        let engine = IoEngine::new(config).context("cannot start the I/O engine")?;
        let depth = config.block_size * u64::from(config.queue_depth) * u64::from(config.thread_count);
        let op_size = MIN_OP.max(depth).min(size);
        let count = RING.min(size.div_ceil(op_size));
        let mut bufs = Vec::new();
        for _ in 0..count {
            let mut b = AlignedBuf::new(op_size as usize, false).with_context(|| {
                format!(
                    "cannot allocate the buffer ring ({count} x {} bytes); lower --block-size, --queue-depth or --threads",
                    op_size
                )
            })?;
            fill_random(b.as_mut_slice(), bufs.len() as u64 + 1);
            bufs.push(b);
        }
        Ok(Ours {
            engine,
            bufs,
            op_size,
        })
    }

    /// Restarts the engine with `config` for a file of `size` bytes, keeping the ring when
    /// its operation size stays the same (so that a sweep does not refill it every point).
    pub fn reconfigure(&mut self, config: IoConfig, size: u64) -> Result<()> {
        let depth = config.block_size * u64::from(config.queue_depth) * u64::from(config.thread_count);
        let op_size = MIN_OP.max(depth).min(size);
        let count = RING.min(size.div_ceil(op_size));
        if op_size != self.op_size || count as usize != self.bufs.len() {
            // Free the old ring before allocating the new one.
            self.bufs.clear();
            *self = Ours::new(config, size)?;
            return Ok(());
        }
        self.engine = IoEngine::new(config).context("cannot start the I/O engine")?;
        Ok(())
    }

    pub fn engine(&self) -> &IoEngine {
        &self.engine
    }

    pub fn op_size(&self) -> u64 {
        self.op_size
    }

    pub fn buffers(&self) -> usize {
        self.bufs.len()
    }

    /// Reads or writes the first `size` bytes of `path`; `progress` is told the bytes done.
    pub fn run(&self, path: &Path, write: bool, size: u64, progress: &dyn Fn(u64)) -> Result<Sample> {
        let ops = size.div_ceil(self.op_size);
        let (read0, written0) = self.engine.bytes_moved();
        let mut pending: VecDeque<(Ticket, u64)> = VecDeque::new();
        let mut next = 0u64;
        let mut done = 0u64;
        let mut failure: Option<anyhow::Error> = None;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        loop {
            while failure.is_none() && next < ops && pending.len() < self.bufs.len() {
                // Operations finish in the order they were submitted (FIFO below), so the
                // buffer of operation `next - buffers` is free again.
                let buf = &self.bufs[(next % self.bufs.len() as u64) as usize];
                let offset = next * self.op_size;
                let len = self.op_size.min(size - offset);
                let req = Request {
                    write,
                    buf: buf.raw(),
                    len,
                    path,
                    offset,
                    nofollow: false,
                    dir: None,
                    checksum_len: None,
                };
                // SAFETY: the buffer holds `op_size` >= `len` bytes, lives as long as `self`,
                // and carries no other operation until this one has been waited for below
                // (every pending ticket is waited for before returning, errors included).
                match unsafe { self.engine.submit(&req) } {
                    Ok(t) => pending.push_back((t, len)),
                    Err(e) => {
                        failure = Some(anyhow::Error::new(e).context(format!(
                            "cannot submit a {} of {} at offset {offset}",
                            if write { "write" } else { "read" },
                            path.display()
                        )))
                    }
                }
                next += 1;
            }
            let Some((ticket, len)) = pending.pop_front() else {
                break;
            };
            if let Err(e) = ticket.wait() {
                failure.get_or_insert(anyhow::Error::new(e).context("benchmark I/O failed"));
            }
            done += len;
            progress(done);
        }
        let seconds = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        if let Some(e) = failure {
            return Err(e);
        }
        let (read1, written1) = self.engine.bytes_moved();
        let moved = if write { written1 - written0 } else { read1 - read0 };
        if moved != size {
            bail!("the engine moved {moved} bytes instead of {size}");
        }
        Ok(Sample::new(size, seconds, cpu))
    }
}

/// User plus system CPU seconds of the whole process so far (every thread, io_uring
/// workers included).
pub fn cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is writable.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Incompressible bytes (xorshift), as fio writes, so that no layer below gains from zeros.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}
