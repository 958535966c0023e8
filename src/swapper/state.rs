//! The swapper's bookkeeping, all behind one mutex: the params, the pool's accounting,
//! the pending sets that waits walk, the partitioned space and the counters.
//!
//! The lock is held only to read and change this bookkeeping: never across a
//! file-system call, a conversion, a copy or a wait (see the module doc of
//! [`crate::swapper`] for how a batch claims params, works outside the lock and records
//! the outcome).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::param::Param;
use super::partition::PartitionSpace;
use super::pool::Buffers;

/// Totals kept for the stats.
#[derive(Default)]
pub(crate) struct Counters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_wait_ns: u64,
    pub write_wait_ns: u64,
}

/// Everything that changes, behind the swapper's mutex.
pub(crate) struct State {
    pub params: HashMap<u64, Param>,
    pub buffers: Buffers,
    /// Params with a read queued (their `io` is `Io::Read`).
    pub pending_reads: BTreeSet<u64>,
    /// Params with a write queued (their `io` is `Io::Write`).
    pub pending_writes: BTreeSet<u64>,
    /// The partitioned swap space, if reserved; a call that uses it holds a clone, so a
    /// new reservation never frees memory under a running conversion.
    pub partition: Option<Arc<PartitionSpace>>,
    /// A partitioned swap-out is using the space.
    pub partition_busy: bool,
    pub counters: Counters,
}

impl State {
    /// The state of a new swapper with `buffers` pool buffers.
    pub fn new(buffers: usize) -> State {
        State {
            params: HashMap::new(),
            buffers: Buffers::new(buffers),
            pending_reads: BTreeSet::new(),
            pending_writes: BTreeSet::new(),
            partition: None,
            partition_busy: false,
            counters: Counters::default(),
        }
    }

    /// The param `id`, which the caller has checked to exist.
    pub fn param(&mut self, id: u64) -> &mut Param {
        self.params
            .get_mut(&id)
            .expect("the batch was checked and the param cannot be removed")
    }
}
