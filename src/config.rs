//! Settings of the I/O engine, with DeepSpeed's defaults and their validation.

use crate::status::{Error, Result};

/// Which system interface the engine's workers use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when the kernel allows it, blocking calls otherwise (the default).
    Auto = 0,
    /// io_uring only; creating an engine fails with `SWAPPER_STATUS_UNSUPPORTED` where the kernel refuses it.
    IoUring = 1,
    /// Blocking pread/pwrite: each worker runs `queue_depth` threads, one request each.
    Blocking = 2,
}

/// Whether files are opened with O_DIRECT (bypassing the page cache).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIo {
    /// O_DIRECT where the file system supports it; buffered I/O, with one log line, where it
    /// does not (tmpfs). The default.
    Auto = 0,
    /// O_DIRECT always; a file system without it is an error (`SWAPPER_STATUS_UNSUPPORTED`).
    On = 1,
    /// Buffered I/O through the page cache.
    Off = 2,
}

c_enum!(Backend, "backend", [Auto "auto", IoUring "io_uring", Blocking "blocking"]);

c_enum!(DirectIo, "direct_io", [Auto "auto", On "on", Off "off"]);

/// Alignment of O_DIRECT transfers (buffer address, file offset and length), in bytes.
pub const IO_ALIGNMENT: u64 = 4096;
/// Smallest accepted block size.
pub const MIN_BLOCK_SIZE: u64 = IO_ALIGNMENT;
/// Largest accepted block size.
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Largest accepted queue depth.
pub const MAX_QUEUE_DEPTH: u32 = 4096;
/// Largest accepted thread count.
pub const MAX_THREADS: u32 = 256;

/// The engine's settings (the Rust twin of the C `SwapperIoConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoConfig {
    /// Bytes per request; a power of two from 4 KiB to 1 GiB. DeepSpeed: `aio.block_size`.
    pub block_size: u64,
    /// Requests each worker keeps in flight. DeepSpeed: `aio.queue_depth`.
    pub queue_depth: u32,
    /// Worker threads; every operation is spread over all of them.
    /// DeepSpeed: `aio.intra_op_parallelism` (formerly `thread_count`).
    pub thread_count: u32,
    /// Submit requests to the kernel one at a time instead of in a batch.
    pub single_submit: bool,
    /// Refill the queue as each completion arrives (true) instead of only once the whole
    /// queue has drained (false).
    pub overlap_events: bool,
    /// The system interface.
    pub backend: Backend,
    /// O_DIRECT mode.
    pub direct_io: DirectIo,
}

impl Default for IoConfig {
    fn default() -> IoConfig {
        IoConfig {
            block_size: 1 << 20,
            queue_depth: 8,
            thread_count: 1,
            single_submit: false,
            overlap_events: true,
            backend: Backend::Auto,
            direct_io: DirectIo::Auto,
        }
    }
}

impl IoConfig {
    /// Checks every setting; the error says which one is wrong and what is accepted.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size) || !self.block_size.is_power_of_two()
        {
            return Err(Error::invalid(format!(
                "block_size {} must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}",
                self.block_size
            )));
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            return Err(Error::invalid(format!(
                "queue_depth {} must be from 1 to {MAX_QUEUE_DEPTH}",
                self.queue_depth
            )));
        }
        if !(1..=MAX_THREADS).contains(&self.thread_count) {
            return Err(Error::invalid(format!(
                "thread_count {} must be from 1 to {MAX_THREADS}",
                self.thread_count
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_deepspeed_and_validate() {
        let c = IoConfig::default();
        assert_eq!(c.block_size, 1048576);
        assert_eq!(c.queue_depth, 8);
        assert_eq!(c.thread_count, 1);
        assert!(!c.single_submit);
        assert!(c.overlap_events);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_absurd_settings() {
        for (bs, qd, tc) in [
            (0, 8, 1),
            (3 << 20, 8, 1),
            (2048, 8, 1),
            (1 << 31, 8, 1),
            (1 << 20, 0, 1),
            (1 << 20, 100_000, 1),
            (1 << 20, 8, 0),
            (1 << 20, 8, 5000),
        ] {
            let c = IoConfig {
                block_size: bs,
                queue_depth: qd,
                thread_count: tc,
                ..IoConfig::default()
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.status(), crate::Status::InvalidArgument, "{bs} {qd} {tc}");
        }
        assert!(Backend::from_c(7).is_err());
        assert!(DirectIo::from_c(-1).is_err());
    }
}
