//! A small io_uring ring for read and write requests on raw buffers.

use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use super::RawBuf;

/// One ring, driven by one worker thread.
pub struct Ring {
    ring: IoUring,
}

impl Ring {
    /// A ring with room for `entries` requests; the error is the errno (ENOSYS, EPERM
    /// where the kernel or a seccomp policy refuses io_uring).
    pub fn new(entries: u32) -> Result<Ring, i32> {
        IoUring::new(entries.max(1))
            .map(|ring| Ring { ring })
            .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOSYS))
    }

    /// Whether this kernel lets the process create a ring: Ok, or the errno of the failed
    /// `io_uring_setup`. Only a definitive answer is kept for the life of the process: a
    /// ring made (io_uring works), ENOSYS (no io_uring in the kernel, or hidden by
    /// seccomp) or EPERM (sysctl `kernel.io_uring_disabled`, or seccomp). A passing
    /// failure (EMFILE, ENFILE, ENOMEM, ...) is returned and the next call probes again.
    pub fn probe() -> Result<(), i32> {
        static DEFINITIVE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
        if let Some(answer) = DEFINITIVE.get() {
            return *answer;
        }
        let answer = Ring::new(2).map(drop);
        match answer {
            Ok(()) | Err(libc::ENOSYS) | Err(libc::EPERM) => *DEFINITIVE.get_or_init(|| answer),
            Err(_) => answer,
        }
    }

    /// Whether this kernel lets the process create a ring now (see [`Ring::probe`]).
    pub fn available() -> bool {
        Ring::probe().is_ok()
    }

    /// Queues one read or write; returns false when the submission queue is full.
    ///
    /// # Safety
    /// `buf` must be valid for `len` bytes (writable for a read) and `fd` open until the
    /// request's completion has been popped.
    pub unsafe fn push(
        &mut self,
        fd: RawFd,
        write: bool,
        buf: RawBuf,
        len: u32,
        offset: u64,
        user_data: u64,
    ) -> bool {
        let entry = if write {
            opcode::Write::new(types::Fd(fd), buf.0 as *const u8, len)
                .offset(offset)
                .build()
        } else {
            opcode::Read::new(types::Fd(fd), buf.0, len)
                .offset(offset)
                .build()
        }
        .user_data(user_data);
        // SAFETY: the caller keeps the buffer and the descriptor valid until completion.
        unsafe { self.ring.submission().push(&entry).is_ok() }
    }

    /// Submits what was queued and waits until at least `want` completions are ready.
    /// EINTR is retried; other errors are returned as errno.
    pub fn submit_and_wait(&mut self, want: usize) -> Result<usize, i32> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(0),
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
    }

    /// The next completion: (user_data, result), where a negative result is -errno.
    pub fn pop(&mut self) -> Option<(u64, i32)> {
        self.ring.completion().next().map(|c| (c.user_data(), c.result()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_a_file() {
        if !Ring::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello ring").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let mut ring = Ring::new(4).unwrap();
        let mut buf = [0u8; 10];
        // SAFETY: `buf` and `f` outlive the completion popped below.
        assert!(unsafe { ring.push(f.as_raw_fd(), false, RawBuf(buf.as_mut_ptr()), 10, 0, 42) });
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.pop(), Some((42, 10)));
        assert_eq!(&buf, b"hello ring");
    }
}
