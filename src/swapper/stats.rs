//! The bookkeeping a caller can read: [`Stats`] (DeepSpeed's counters, plus totals) and a
//! human-readable dump of the whole state.

use std::fmt::Write as _;

use super::param::{ParamStatus, Slot};
use super::wait::Kind;
use super::Swapper;

/// The swapper's bookkeeping (DeepSpeed's counters, plus totals).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Params the swapper knows.
    pub params: u64,
    /// Reads submitted and not yet waited for.
    pub pending_reads: u64,
    /// Writes submitted and not yet waited for.
    pub pending_writes: u64,
    /// Params INFLIGHT.
    pub inflight_params: u64,
    /// Elements of the INFLIGHT params.
    pub inflight_numel: u64,
    /// Params AVAILABLE.
    pub available_params: u64,
    /// Elements of the AVAILABLE params.
    pub available_numel: u64,
    /// Pool buffers free.
    pub free_buffers: u64,
    /// Pool buffers taken by `swapper_reserve_available_buffers`.
    pub reserved_buffers: u64,
    /// Pool buffers in all.
    pub total_buffers: u64,
    /// Bytes read by completed swap-ins.
    pub bytes_read: u64,
    /// Bytes written by completed swap-outs.
    pub bytes_written: u64,
    /// Nanoseconds callers spent blocked waiting for reads.
    pub read_wait_ns: u64,
    /// Nanoseconds callers spent blocked waiting for writes.
    pub write_wait_ns: u64,
}

impl Swapper {
    /// The bookkeeping (answered even by a broken swapper: it only reads).
    pub fn stats(&self) -> Stats {
        let st = self.peek();
        let c = st.counters();
        let mut s = Stats {
            params: st.param_count() as u64,
            pending_reads: st.pending(Kind::Read).len() as u64,
            pending_writes: st.pending(Kind::Write).len() as u64,
            free_buffers: st.buffers().free() as u64,
            reserved_buffers: st.buffers().reserved() as u64,
            total_buffers: self.config.buffer_count as u64,
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            read_wait_ns: c.read_wait_ns,
            write_wait_ns: c.write_wait_ns,
            ..Stats::default()
        };
        for (_, p) in st.params() {
            match p.status() {
                ParamStatus::Available => {
                    s.available_params += 1;
                    s.available_numel += p.numel();
                }
                ParamStatus::Inflight => {
                    s.inflight_params += 1;
                    s.inflight_numel += p.numel();
                }
                ParamStatus::NotAvailable => {}
            }
        }
        s
    }

    /// A human-readable dump of the whole state (DeepSpeed's `print_object`); answered
    /// even by a broken swapper, whose dump says so.
    pub fn dump(&self) -> String {
        let s = self.stats();
        let mut out = String::new();
        let folders: Vec<String> = self.folders().iter().map(|f| f.display().to_string()).collect();
        let _ = writeln!(out, "swapper {}", folders.join(", "));
        let _ = writeln!(
            out,
            "  dtype {:?} ({} bytes), buffers {} x {} elements ({} bytes), pinned {}, checksums {}",
            self.config.dtype,
            self.elem,
            self.config.buffer_count,
            self.config.buffer_numel,
            self.pool.buffer_bytes(),
            self.pool.is_locked(),
            self.config.verify_checksums
        );
        let engine = self.store().engine(0);
        let io = engine.config();
        let _ = writeln!(
            out,
            "  io: backend {}, block {} bytes, queue depth {}, threads {}, direct {}",
            engine.backend().name(),
            io.block_size,
            io.queue_depth,
            io.thread_count,
            io.direct_io.name()
        );
        let _ = writeln!(out, "  {s:?}");
        if let Err(e) = self.usable() {
            let _ = writeln!(out, "  BROKEN: {}", e.message());
        }
        let st = self.peek();
        if let Some(space) = st.partition() {
            let _ = writeln!(out, "  partitioned swap space: {} elements", space.capacity());
        }
        let mut params: Vec<_> = st.params().collect();
        params.sort_unstable_by_key(|&(id, _)| id);
        for (id, p) in params {
            let slot = match p.slot() {
                Some(Slot::Pool(i)) => format!("pool buffer {}", i.index()),
                Some(Slot::Caller(b)) => format!("caller buffer {:p}", b.0),
                None => "no buffer".into(),
            };
            let io = p.io_name();
            let _ = writeln!(
                out,
                "  param {id}: {} numel {} {slot}, on disk {}{}{io}",
                p.status().name(),
                p.numel(),
                p.on_disk().map_or("no".into(), |b| format!("{b} bytes")),
                if io.is_empty() { "" } else { ", " },
            );
        }
        out
    }
}
