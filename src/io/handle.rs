//! The engine as the C API sees it (`SwapperIo`): synchronous or asynchronous reads
//! and writes, and one `wait` for every asynchronous operation submitted before it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{IoEngine, Request, Ticket};
use crate::config::IoConfig;
use crate::status::{Error, Result, Status};
use crate::sys::RawBuf;

/// How many failures a `wait` message spells out; the rest are counted (and logged).
const ERRORS_IN_MESSAGE: usize = 8;

/// An engine plus the list of asynchronous operations not yet waited for.
pub struct IoHandle {
    engine: IoEngine,
    pending: Mutex<Vec<Ticket>>,
}

impl IoHandle {
    /// Starts an engine with `config`.
    pub fn new(config: IoConfig) -> Result<IoHandle> {
        Ok(IoHandle {
            engine: IoEngine::new(config)?,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &IoEngine {
        &self.engine
    }

    /// Stops the engine ([`IoEngine::close`]): returns once every operation submitted,
    /// waited for or not, has finished, so that no buffer is touched afterwards; later
    /// submits fail. Threads blocked in [`IoHandle::wait`] return as their operations end.
    pub fn close(&self) {
        self.engine.close()
    }

    /// Reads (`write` false) or writes `len` bytes at `offset` of `path`. Synchronous: returns
    /// when the data is in the buffer or handed to the device. Asynchronous: returns once
    /// queued; [`IoHandle::wait`] reports the outcome.
    ///
    /// # Safety
    /// `buf` must be valid for `len` bytes (writable for a read) until the operation has
    /// finished: for an asynchronous one, until a `wait` has returned.
    pub unsafe fn submit(
        &self,
        write: bool,
        buf: RawBuf,
        len: u64,
        path: &Path,
        offset: u64,
        async_op: bool,
    ) -> Result<()> {
        let req = Request {
            write,
            buf,
            len,
            path,
            offset,
            nofollow: false,
            dir: None,
            checksum_len: None,
        };
        // SAFETY: the caller's contract.
        let ticket = unsafe { self.engine.submit(&req) }?;
        if async_op {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ticket);
            Ok(())
        } else {
            ticket.wait()
        }
    }

    /// Asynchronous operations submitted and not yet reaped by a `wait`.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits for every asynchronous operation submitted before the call. Returns how many
    /// this call reaped (successful or not; an operation reaped by a concurrent `wait` is
    /// counted there) and the first failure among them, whose message lists the others.
    /// With nothing pending it returns (0, Ok) at once. In a forked child it returns
    /// (0, `BadState`) without waiting; once a worker has panicked every wait reaps what is
    /// pending and returns `Panic`.
    pub fn wait(&self) -> (u64, Result<()>) {
        let usable = self.engine.check_usable();
        if let Err(e) = &usable {
            if e.status() != Status::Panic {
                return (0, usable);
            }
        }
        let snapshot: Vec<Ticket> = self.pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for t in &snapshot {
            let _ = t.wait_here();
        }
        let mine: HashSet<usize> = snapshot.iter().map(|t| Arc::as_ptr(&t.0) as usize).collect();
        let mut reaped = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.retain(|t| {
                let take = mine.contains(&(Arc::as_ptr(&t.0) as usize));
                if take {
                    reaped.push(t.clone());
                }
                !take
            });
        }
        let errors: Vec<Error> = reaped.iter().filter_map(|t| t.wait_here().err()).collect();
        let completed = reaped.len() as u64;
        let Some(first) = errors.first() else {
            return (completed, usable);
        };
        for e in &errors {
            crate::log!(Error, "asynchronous operation failed: {}", e.message());
        }
        if errors.len() == 1 {
            return (completed, Err(first.clone()));
        }
        let mut msg = format!("{} of {completed} operations failed: ", errors.len());
        let listed: Vec<&str> = errors
            .iter()
            .take(ERRORS_IN_MESSAGE)
            .map(|e| e.message())
            .collect();
        msg.push_str(&listed.join("; "));
        if errors.len() > ERRORS_IN_MESSAGE {
            msg.push_str(&format!(
                "; and {} more (logged)",
                errors.len() - ERRORS_IN_MESSAGE
            ));
        }
        (completed, Err(Error::new(first.status(), msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_with_nothing_pending_is_a_no_op() {
        let h = IoHandle::new(IoConfig::default()).unwrap();
        let (n, r) = h.wait();
        assert_eq!(n, 0);
        assert!(r.is_ok());
    }

    #[test]
    fn a_read_past_the_end_is_refused_at_submit_and_a_good_one_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let h = IoHandle::new(IoConfig::default()).unwrap();
        let mut buf = vec![0u8; 4096];
        std::fs::write(dir.path().join("short"), [1u8; 100]).unwrap();
        // A read past the end is refused at submit; a good read succeeds.
        // SAFETY: `buf` outlives the wait below.
        let r = unsafe {
            h.submit(
                false,
                RawBuf(buf.as_mut_ptr()),
                4096,
                &dir.path().join("short"),
                0,
                true,
            )
        };
        assert!(r.unwrap_err().message().contains("past end of file"));
        // SAFETY: as above.
        unsafe {
            h.submit(
                false,
                RawBuf(buf.as_mut_ptr()),
                100,
                &dir.path().join("short"),
                0,
                true,
            )
        }
        .unwrap();
        let (n, r) = h.wait();
        assert_eq!(n, 1);
        r.unwrap();
        assert_eq!(&buf[..100], &[1u8; 100][..]);
    }
}
