//! A small io_uring ring for read and write requests on raw buffers.

use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use super::RawBuf;

/// The buffers of one vectored request ([`Ring::push_vectored`]): addresses and lengths,
/// kept by the caller until the request completes.
#[derive(Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: an IoVecs holds only addresses and lengths; the promise that they stay valid is
// made by the `unsafe` call that hands them to the kernel.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Adds `len` bytes at `buf`.
    pub fn push(&mut self, buf: RawBuf, len: usize) {
        self.0.push(libc::iovec {
            iov_base: buf.0.cast(),
            iov_len: len,
        });
    }

    /// Empties the list (keeping its memory).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

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

    /// Queues one vectored read or write of the buffers in `iovs`, in order, from `offset`
    /// (readv/writev at an offset); returns false when the submission queue is full.
    ///
    /// # Safety
    /// Every buffer in `iovs` must be valid for its length (writable for a read), and
    /// `iovs` itself must neither move nor change, and `fd` stay open, until the
    /// request's completion has been popped.
    pub unsafe fn push_vectored(
        &mut self,
        fd: RawFd,
        write: bool,
        iovs: &IoVecs,
        offset: u64,
        user_data: u64,
    ) -> bool {
        let (ptr, n) = (iovs.0.as_ptr(), iovs.0.len() as u32);
        let entry = if write {
            opcode::Writev::new(types::Fd(fd), ptr, n).offset(offset).build()
        } else {
            opcode::Readv::new(types::Fd(fd), ptr, n).offset(offset).build()
        }
        .user_data(user_data);
        // SAFETY: the caller keeps the buffers, the iovec array and the descriptor valid
        // until completion.
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

    #[test]
    fn reads_into_and_writes_from_several_buffers_at_once() {
        if !Ring::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut ring = Ring::new(4).unwrap();
        let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
        let mut iovs = IoVecs::default();
        iovs.push(RawBuf(a.as_mut_ptr()), 3);
        iovs.push(RawBuf(b.as_mut_ptr()), 4);
        // SAFETY: `a`, `b`, `iovs` and `f` outlive the completion popped below.
        assert!(unsafe { ring.push_vectored(f.as_raw_fd(), false, &iovs, 2, 7) });
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.pop(), Some((7, 7)));
        assert_eq!((&a, &b), (b"234", b"5678"));
        let (mut x, mut y) = (*b"ab", *b"cd");
        iovs.clear();
        iovs.push(RawBuf(x.as_mut_ptr()), 2);
        iovs.push(RawBuf(y.as_mut_ptr()), 2);
        // SAFETY: as above; the buffers are only read.
        assert!(unsafe { ring.push_vectored(f.as_raw_fd(), true, &iovs, 1, 8) });
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.pop(), Some((8, 4)));
        assert_eq!(std::fs::read(&p).unwrap(), b"0abcd56789");
    }
}
