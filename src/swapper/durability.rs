//! Resume and checkpoints for the parameter swapper (issue 20): adopting a rank folder
//! at creation, flushing the manifest, snapshots and their restore. Where the bytes are
//! and how the manifest is made durable is the store's business ([`crate::store`]'s
//! `flush`, `adopt`, `snapshot`); this file says what a param's record is.
//!
//! # What a flush promises
//! [`Swapper::flush`] first waits for every write in flight (as `wait_writes`; a write
//! that failed makes the flush fail, naming it, before anything is written). Then, under
//! the bookkeeping lock, each known param is either *recorded* (idle, or with a read
//! under way, and its last write complete: its current place holds its bytes), or *kept*
//! as the last manifest had it (a write of it is being submitted or in flight, or it has
//! no complete copy on disk since a get_buffer or a failed write): the manifest names, for
//! every param, the bytes of its last write that completed before a flush. Writes started
//! by other threads during a flush are therefore never half-recorded. The manifest is
//! then written without the lock.
//!
//! # Adoption
//! A swapper created with `adopt` knows every param of the manifest as NOT_AVAILABLE with
//! its numel, so `swap_in` works without `get_buffer` first. Each file's size is checked
//! by the store; with checksums recorded, each param is read back and its crc32c
//! verified here (a mismatch is `CorruptData` naming the param and the file). A param of
//! another dtype is refused. Nothing is removed for a mismatch: creation fails.

use std::path::Path;

use super::param::Io;
use super::Swapper;
use crate::checksum::{self, Checksum};
use crate::status::{Error, Result, Status};
use crate::store::manifest::TensorRecord;
use crate::store::snapshot::{self, SnapshotReport};
use crate::sys::alloc::AlignedBuf;

/// The rank folder's parts for these settings.
pub(crate) fn folder_parts(config: &super::Settings) -> Vec<String> {
    vec![
        "zero_stage_3".to_string(),
        format!("{}params", config.dtype.folder_name()),
        format!("rank{}", config.rank),
    ]
}

impl Swapper {
    /// Makes the manifest durable (see the module doc) and returns its generation.
    /// Thread-safe; another flush or snapshot waits for this one. `IoError` names what
    /// failed (the earlier generation stays the durable one).
    pub fn flush(&self) -> Result<u64> {
        self.flush_then(|_, f| Ok(f.manifest.generation))
    }

    /// Flushes, then runs `then` with the flush lock still held (nothing the manifest
    /// names can change): the snapshot's copy.
    fn flush_then<R>(
        &self,
        then: impl FnOnce(&Self, &crate::store::flush::Flushed<'_>) -> Result<R>,
    ) -> Result<R> {
        self.usable()?;
        self.wait_writes()
            .map_err(|e| e.context("flush: a write in flight failed, nothing was flushed"))?;
        let lock = self.store.begin_flush();
        let prepared = {
            let st = self.lock()?;
            let mut records = Vec::new();
            let mut keep = Vec::new();
            for (id, p) in st.params() {
                let busy = matches!(p.io(), Some(Io::Submitting) | Some(Io::Write(_)));
                match p.on_disk() {
                    Some(bytes) if !busy => records.push((
                        id,
                        TensorRecord {
                            name: String::new(),
                            numel: p.numel(),
                            dtype: self.config.dtype.folder_name().to_string(),
                            bytes,
                            crc32c: p.checksum().map(Checksum::crc),
                            checksum_parts: p.checksum().map_or_else(Vec::new, |c| c.parts().to_vec()),
                        },
                    )),
                    _ => keep.push(id),
                }
            }
            lock.prepare(records, &keep)?
        };
        let flushed = prepared.commit()?;
        then(self, &flushed)
    }

    /// Flushes, then records the flushed generation into `dest` (see
    /// [`crate::store::snapshot`]): reflinks where the file system shares extents,
    /// copies of the named ranges elsewhere. `dest` is created if missing; its rank
    /// folders must be empty (`BadState`).
    pub fn snapshot_to(&self, dest: &Path) -> Result<SnapshotReport> {
        self.flush_then(|s, flushed| s.store.snapshot(flushed, dest))
    }

    /// Puts the snapshot `snapshot` back into the rank folders `config` names (emptied
    /// first; `Busy` if a swapper holds one); create a swapper with `adopt` on the same
    /// settings afterwards.
    pub fn restore(snapshot: &Path, config: &super::Settings) -> Result<SnapshotReport> {
        config.validate()?;
        snapshot::restore(snapshot, &config.drive_paths(), &folder_parts(config))
    }

    /// The generation of the last manifest made durable (0: none).
    pub fn durable_generation(&self) -> u64 {
        self.store.durable_generation()
    }

    /// Registers every param the adopting store found; verifies checksums when recorded.
    pub(super) fn adopt_params(&self) -> Result<()> {
        let dtype = self.config.dtype.folder_name();
        let mut scratch: Option<AlignedBuf> = None;
        for t in self.store.take_adopted() {
            let id = t.key;
            let r = &t.record;
            let file = self.param_path(id);
            if r.dtype != dtype {
                return Err(Error::new(
                    Status::InvalidArgument,
                    format!(
                        "cannot adopt param {id} in {}: it is {}, this swapper stores {dtype}; nothing was changed or removed",
                        file.display(),
                        r.dtype
                    ),
                ));
            }
            let data = r.numel.checked_mul(self.elem as u64).filter(|&b| b <= r.bytes);
            let Some(data) = data else {
                return Err(Error::new(
                    Status::CorruptData,
                    format!(
                        "cannot adopt param {id} in {}: {} elements do not fit its {} bytes on disk",
                        file.display(),
                        r.numel,
                        r.bytes
                    ),
                ));
            };
            let checksum = checksum::verify_adopted(
                &self.store,
                &t,
                data,
                &format!("cannot adopt param {id}"),
                &file,
                &mut scratch,
            )?;
            self.lock()?.adopt(id, r.numel, r.bytes, checksum)?;
        }
        Ok(())
    }
}
