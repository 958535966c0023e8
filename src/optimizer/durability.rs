//! Resume for the optimizer-state swapper (issue 20), on the store's manifest
//! ([`crate::store::manifest`]) as the parameter swapper's.
//!
//! # Flush
//! [`OptimizerSwapper::flush`] runs between steps (after `end_step`; `BadState` during a
//! step) and records every state tensor of every idle sub-group (its last write-behind
//! complete: its bytes, or the file system's zeros if never written). A sub-group whose
//! last write-behind failed (its newest data only in the ring) keeps what the previous
//! manifest had. Gradients are not recorded: they are rewritten every backward pass
//! (their space is reclaimed at adoption and they read as zeros again).
//!
//! With `flush_at_end_step` ([`super::OptimizerSettings`]), `end_step` flushes too: once
//! every write of the step is settled, it takes the flush lock, ends the step and lists
//! what to record under the same hold of the bookkeeping lock (so no other thread's
//! `begin_step` slips in between), then commits without it. A failed flush is one of the
//! step's failures that `end_step` returns; the step is ended all the same and the
//! previous generation stays the durable one.
//!
//! # Adoption
//! An optimizer swapper created with `adopt` reads the manifest (the store checks it and
//! the files' sizes), verifies each state tensor's crc32c when the manifest has one,
//! and holds the tensors until their sub-group is registered again: `register` with the
//! same tensors (names, numel, kind) takes them up, idle and valid, with their bytes; a
//! tensor the manifest holds under another name or numel is an error naming it, and
//! nothing is removed. Adopted tensors of sub-groups not registered yet are kept (a flush
//! carries them over).

use std::collections::HashMap;

use super::subgroup::{Phase, SubGroup, Sum, TensorKind, ELEM};
use super::{OptimizerSwapper, State};
use crate::checksum;
use crate::status::{Error, Result, Status};
use crate::store::manifest::{TensorEntry, TensorRecord};
use crate::store::snapshot::SnapshotReport;
use crate::store::Store;

/// The optimizer's rank folder parts.
pub(super) fn folder_parts(rank: u32) -> Vec<String> {
    vec![
        "zero_stage_3".to_string(),
        "optimizer".to_string(),
        format!("rank{rank}"),
    ]
}

/// The dtype the optimizer's tensors are recorded with.
const DTYPE: &str = "float32";

/// The adopted store's tensors, checked (dtype, size, checksum when recorded), by key.
pub(super) fn verify_adopted(store: &Store) -> Result<HashMap<u64, TensorEntry>> {
    let mut out = HashMap::new();
    let mut scratch = None;
    for t in store.take_adopted() {
        let file = store
            .locations(t.key)
            .first()
            .map_or_else(|| store.folder(0).to_path_buf(), |e| e.path.clone());
        let what = format!(
            "cannot adopt tensor \"{}\" of sub-group {}",
            t.record.name,
            t.key >> 16
        );
        let data = t.record.numel.checked_mul(ELEM).filter(|&b| b <= t.reserved);
        if t.record.dtype != DTYPE || data.is_none() {
            return Err(Error::new(
                Status::CorruptData,
                format!(
                    "{what} in {}: {} elements of {}, the optimizer's tensors are {DTYPE} within {} bytes; nothing was changed or removed",
                    file.display(),
                    t.record.numel,
                    t.record.dtype,
                    t.reserved
                ),
            ));
        }
        // A recorded checksum is verified whether or not checksums are on now.
        checksum::verify_adopted(store, &t, data.unwrap_or(0), &what, &file, &mut scratch)?;
        out.insert(t.key, t);
    }
    Ok(out)
}

/// Takes up, for `group` (being registered as `index`), the adopted tensors of its keys:
/// checks each against its spec and marks it valid with its checksum. Returns the entries
/// taken (put them back if the registration fails). An adopted tensor whose name, numel or
/// kind differs is `InvalidArgument` naming it and the file; nothing is taken then.
pub(super) fn take_adopted(
    adopted: &mut HashMap<u64, TensorEntry>,
    index: u32,
    group: &mut SubGroup,
    store: &Store,
) -> Result<Vec<TensorEntry>> {
    for t in &group.tensors {
        let Some(e) = adopted.get(&t.key) else { continue };
        if t.spec.kind != TensorKind::State || e.record.name != t.spec.name || e.record.numel != t.spec.numel
        {
            let file = store
                .locations(t.key)
                .first()
                .map_or_else(|| store.folder(0).to_path_buf(), |x| x.path.clone());
            return Err(Error::new(
                Status::InvalidArgument,
                format!(
                    "sub-group {index}, tensor {:?} ({} elements, {}): the adopted folder holds {:?} of {} elements (state) in {}; register it as it was, or start without adopt; nothing was changed or removed",
                    t.spec.name,
                    t.spec.numel,
                    t.spec.kind.name(),
                    e.record.name,
                    e.record.numel,
                    file.display()
                ),
            ));
        }
    }
    let mut taken = Vec::new();
    for t in &mut group.tensors {
        if let Some(e) = adopted.remove(&t.key) {
            t.valid = true;
            t.sum = match e.record.crc32c {
                Some(c) => Sum::Whole(checksum::Checksum::new(c, e.record.checksum_parts.clone())),
                None => Sum::Zeros,
            };
            taken.push(e);
        }
    }
    Ok(taken)
}

impl OptimizerSwapper {
    /// Makes the optimizer state resumable as of now (see the module doc): between steps
    /// only (`BadState` during one). Returns the manifest's generation. Thread-safe; a
    /// second flush waits for the first. `IoError` names what failed (the earlier
    /// generation stays the durable one).
    pub fn flush(&self) -> Result<u64> {
        self.flush_then(|_, f| Ok(f.manifest.generation))
    }

    /// Flushes, then records that generation into the checkpoint folder `dest`, as the
    /// parameter swapper's snapshot does ([`crate::store::snapshot`]): between steps only.
    pub fn snapshot_to(&self, dest: &std::path::Path) -> Result<SnapshotReport> {
        self.flush_then(|o, f| o.store.snapshot(f, dest))
    }

    /// Puts a snapshot back into the rank folders `config` names (emptied first, locked
    /// meanwhile); then create an optimizer swapper with `adopt` on the same settings.
    pub fn restore(snapshot: &std::path::Path, config: &super::OptimizerSettings) -> Result<SnapshotReport> {
        if config.nvme_paths.is_empty() {
            return Err(Error::invalid("no nvme_path given"));
        }
        crate::store::snapshot::restore(snapshot, &config.nvme_paths, &folder_parts(config.rank))
    }

    fn flush_then<R>(
        &self,
        then: impl FnOnce(&Self, &crate::store::flush::Flushed<'_>) -> Result<R>,
    ) -> Result<R> {
        self.usable()?;
        let lock = self.store.begin_flush();
        let prepared = {
            let st = self.lock()?;
            if st.step.is_some() {
                return Err(Error::bad_state("flush during a step: call it after end_step"));
            }
            let (records, keep) = st.flush_records();
            lock.prepare(records, &keep)?
        };
        let flushed = prepared.commit()?;
        then(self, &flushed)
    }

    /// The generation of the last manifest made durable (0: none).
    pub fn durable_generation(&self) -> u64 {
        self.store.durable_generation()
    }
}

impl State {
    /// What a flush records now: every state tensor of every idle sub-group whose last
    /// write is complete (key and record), and the keys to keep as the previous manifest
    /// had them (adopted tensors not taken up yet; sub-groups not idle, or whose last
    /// write-behind failed). Bookkeeping only, under the lock.
    pub(super) fn flush_records(&self) -> (Vec<(u64, TensorRecord)>, Vec<u64>) {
        let mut records = Vec::new();
        let mut keep: Vec<u64> = self.adopted.keys().copied().collect();
        for g in self.groups.values() {
            let idle = matches!(g.phase, Phase::Idle);
            for t in g.tensors.iter().filter(|t| t.spec.kind == TensorKind::State) {
                if idle && t.valid {
                    let sum = match &t.sum {
                        Sum::Whole(c) => Some(c),
                        _ => None,
                    };
                    records.push((
                        t.key,
                        TensorRecord {
                            name: t.spec.name.clone(),
                            numel: t.spec.numel,
                            dtype: DTYPE.to_string(),
                            bytes: t.bytes(),
                            crc32c: sum.map(|c| c.crc()),
                            checksum_parts: sum.map_or_else(Vec::new, |c| c.parts().to_vec()),
                        },
                    ));
                } else {
                    keep.push(t.key);
                }
            }
        }
        (records, keep)
    }
}
