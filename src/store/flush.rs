//! Making the index durable: a flush writes a new generation of the manifest on every
//! drive ([`manifest`] says where and how), in two steps so that the owning swapper can
//! take its snapshot of what each tensor holds under its own lock:
//! 1. [`Store::begin_flush`] takes the flush lock (before the swapper's own lock);
//!    [`FlushLock::prepare`], bookkeeping only (the store's lock, briefly), numbers the generation, and builds the manifest from the tensors the
//!    swapper declares complete (their current pieces) and those it asks to keep as the
//!    last manifest had them (a write of theirs is under way). Every piece the new
//!    manifest names is marked so (a live tensor's place is then rewritten copy-on-write;
//!    a retired piece stays retired through this generation).
//! 2. [`PreparedFlush::commit`], file-system calls without any bookkeeping lock: fdatasync
//!    of every extent file of every drive, and an fsync of each folder where an extent
//!    file was created since its last fsync (so that a manifest never names a file whose
//!    folder entry could vanish in a power loss, whatever order the file system commits
//!    folder changes in); then per drive: write `manifest.json.new`, fsync it, rename it
//!    over `manifest.json`, fsync the folder. Only then does the store free the pieces
//!    retired up to the generation before ([`super::space`]).
//!
//! A failed commit frees nothing: the last durable manifest's pieces stay as they are, a
//! later flush (a new generation number) may succeed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::MutexGuard;

use super::manifest::{self, FileEntry, Manifest, PieceEntry, TensorEntry, TensorRecord};
use super::{Key, Store};
use crate::status::{Error, Result, Status};
use crate::sys::durable;

/// The store's durability bookkeeping (inside its state).
pub(super) struct Durable {
    /// The store's random id (written in every manifest).
    pub store_id: u64,
    /// The last generation number given out (a failed flush uses one up too).
    pub generation: u64,
    /// The generation of the last manifest known durable on every drive (0: none).
    pub durable: u64,
    /// The tensors of the last prepared manifest, to keep those whose write is under way.
    pub named: HashMap<Key, TensorEntry>,
    /// Per drive, how many extent files have a durable folder entry (the folder was
    /// fsynced after they were created); a missing drive counts as none.
    pub entries_synced: Vec<usize>,
}

impl Durable {
    /// A store with no manifest yet, or one adopted at `generation`.
    pub fn new(store_id: u64, generation: u64) -> Durable {
        Durable {
            store_id,
            generation,
            durable: generation,
            named: HashMap::new(),
            entries_synced: Vec::new(),
        }
    }
}

/// The flush lock, taken before the owning swapper takes its own lock to list what its
/// tensors hold (the lock may be waited for: never under a bookkeeping lock).
pub struct FlushLock<'a> {
    store: &'a Store,
    guard: MutexGuard<'a, ()>,
}

/// A flush whose manifest is built and not yet written: holds the flush lock.
pub struct PreparedFlush<'a> {
    store: &'a Store,
    guard: MutexGuard<'a, ()>,
    manifest: Manifest,
}

/// A flush that is durable; holds the flush lock until dropped (a snapshot copies the
/// files meanwhile, knowing that nothing it names can change).
pub struct Flushed<'a> {
    _guard: MutexGuard<'a, ()>,
    /// The manifest written (its `this_drive` is 0's; each drive got its own copy).
    pub manifest: Manifest,
}

impl Store {
    /// Takes the flush lock: waits for another flush or snapshot to finish.
    pub fn begin_flush(&self) -> FlushLock<'_> {
        FlushLock {
            store: self,
            guard: self.flushing.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The generation of the last manifest durable on every drive (0: none yet).
    pub fn durable_generation(&self) -> u64 {
        self.lock().durable.durable
    }

    /// Bytes retired on every drive (named by a manifest, waiting for a newer one).
    pub fn retired_bytes(&self) -> u64 {
        self.lock().drives.iter().map(|d| d.space.retired_bytes()).sum()
    }
}

impl<'a> FlushLock<'a> {
    /// Step 1 of a flush (see the module doc): under the store's lock only, builds the next generation's manifest from `tensors`
    /// (key and record of each tensor whose current place holds its last complete write)
    /// and `keep` (keys whose write is under way: the last manifest's entry is kept, if
    /// any). An unknown key in `tensors` is `NotFound`, naming it (nothing is changed).
    pub fn prepare(self, tensors: Vec<(Key, TensorRecord)>, keep: &[Key]) -> Result<PreparedFlush<'a>> {
        let FlushLock { store, guard } = self;
        let mut st = store.lock();
        if let Some((k, _)) = tensors.iter().find(|(k, _)| st.settle(*k)) {
            return Err(Store::racing(*k));
        }
        if let Some((k, _)) = tensors.iter().find(|(k, _)| !st.keys.contains_key(k)) {
            return Err(Error::new(
                Status::NotFound,
                format!("cannot flush tensor {k}: it has no place in the store"),
            ));
        }
        st.durable.generation += 1;
        let generation = st.durable.generation;
        let mut entries: Vec<TensorEntry> = Vec::with_capacity(tensors.len() + keep.len());
        for (key, record) in tensors {
            let p = st.keys.get_mut(&key).expect("checked above");
            p.named = Some(generation);
            entries.push(TensorEntry {
                key,
                reserved: p.bytes,
                record,
                pieces: p
                    .pieces
                    .iter()
                    .map(|(d, pc)| PieceEntry {
                        drive: *d,
                        file: pc.file,
                        offset: pc.offset,
                        len: pc.len,
                    })
                    .collect(),
            });
        }
        for key in keep {
            let Some(old) = st.durable.named.get(key).cloned() else {
                continue;
            };
            // The old pieces stay named through this generation: still live (then marked),
            // or retired (then their retirement is extended).
            let live_same = st.keys.get(key).is_some_and(|p| {
                p.pieces.len() == old.pieces.len()
                    && p.pieces.iter().zip(&old.pieces).all(|((d, pc), e)| {
                        (*d, pc.file, pc.offset, pc.len) == (e.drive, e.file, e.offset, e.len)
                    })
            });
            if live_same {
                if let Some(p) = st.keys.get_mut(key) {
                    p.named = Some(generation);
                }
            } else {
                for e in &old.pieces {
                    st.drives[e.drive].space.extend_retirement(
                        super::space::Piece {
                            file: e.file,
                            offset: e.offset,
                            len: e.len,
                            fresh: false,
                        },
                        generation,
                    );
                }
            }
            entries.push(old);
        }
        entries.sort_unstable_by_key(|e| e.key);
        let files: Vec<Vec<FileEntry>> = st
            .drives
            .iter()
            .map(|d| {
                d.files
                    .iter()
                    .enumerate()
                    .map(|(k, f)| FileEntry {
                        name: f.name.clone(),
                        size: d.space.capacity(k),
                    })
                    .collect()
            })
            .collect();
        st.durable.named = entries.iter().map(|e| (e.key, e.clone())).collect();
        let store_id = st.durable.store_id;
        drop(st);
        let n = store.parts.len();
        Ok(PreparedFlush {
            store,
            guard,
            manifest: Manifest {
                format: manifest::FORMAT,
                library: manifest::LIBRARY.to_string(),
                kind: store.parts[..n - 1].join("/"),
                rank: store.parts[n - 1].clone(),
                store_id,
                generation,
                drives: store.drives.len(),
                this_drive: 0,
                files,
                tensors: entries,
            },
        })
    }
}

/// Writes drive `k`'s copy of `m` atomically into its rank folder: `manifest.json.new`,
/// fsync, rename over `manifest.json`, fsync the folder. The data `m` names must be on
/// stable storage already.
pub(super) fn write_copy(drive: &super::drive::Drive, m: &mut Manifest, k: usize) -> Result<()> {
    m.this_drive = k;
    let bytes = m.encode();
    let folder = drive.folder();
    let new_path = folder.path().join(manifest::NEW_NAME);
    durable::write_synced(folder.dir(), OsStr::new(manifest::NEW_NAME), &bytes, &new_path)
        .map_err(|e| Error::os("cannot write the manifest", &new_path, None, e))?;
    durable::rename(
        folder.dir(),
        OsStr::new(manifest::NEW_NAME),
        OsStr::new(manifest::NAME),
    )
    .map_err(|e| Error::os("cannot rename the manifest into place", &new_path, None, e))?;
    durable::sync_dir(folder.dir(), folder.path())
        .map_err(|e| Error::os("cannot sync the folder", folder.path(), None, e))
}

impl<'a> PreparedFlush<'a> {
    /// The generation this flush writes.
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// Step 2 (see the module doc): syncs the data, writes and renames the manifest on
    /// every drive; then frees what only older manifests named. An `IoError` names the
    /// file and the drive, and says which generation is still the durable one.
    pub fn commit(self) -> Result<Flushed<'a>> {
        let store = self.store;
        let g = self.manifest.generation;
        let fail = |e: Error| {
            let last = store.durable_generation();
            e.context(format!(
                "flush of manifest generation {g} failed; generation {last} is still the durable one{}",
                if last == 0 {
                    " (none: an adopting swapper would find nothing)"
                } else {
                    ""
                }
            ))
        };
        // Data first, on every drive: no manifest may name bytes still in a cache.
        let files: Vec<Vec<std::sync::Arc<super::drive::ExtentFile>>> = {
            let st = store.lock();
            st.drives.iter().map(|d| d.files.clone()).collect()
        };
        for (k, fs) in files.iter().enumerate() {
            for f in fs {
                durable::data_sync(std::os::fd::AsRawFd::as_raw_fd(f.held.fd()), f.path()).map_err(|e| {
                    fail(Error::os(
                        &format!("cannot sync the data of {} in", store.drives[k].describe()),
                        f.path(),
                        None,
                        e,
                    ))
                })?;
            }
        }
        // The folder entries of extent files created since the folder's last fsync.
        for (k, fs) in files.iter().enumerate() {
            let synced = store.lock().durable.entries_synced.get(k).copied().unwrap_or(0);
            if fs.len() > synced {
                let folder = store.drives[k].folder();
                durable::sync_dir(folder.dir(), folder.path()).map_err(|e| {
                    fail(Error::os(
                        "cannot sync the folder (its new extent files' entries)",
                        folder.path(),
                        None,
                        e,
                    ))
                })?;
                let mut st = store.lock();
                let known = &mut st.durable.entries_synced;
                if known.len() <= k {
                    known.resize(k + 1, 0);
                }
                known[k] = known[k].max(fs.len());
            }
        }
        let mut m = self.manifest;
        for (k, drive) in store.drives.iter().enumerate() {
            write_copy(drive, &mut m, k).map_err(fail)?;
        }
        m.this_drive = 0;
        let mut st = store.lock();
        st.durable.durable = g;
        let mut freed = 0;
        for d in &mut st.drives {
            freed += d.space.release_through(g - 1);
        }
        drop(st);
        crate::log!(
            Debug,
            "manifest generation {g} durable in {} ({} tensors); {freed} retired bytes freed",
            store.folder(0).display(),
            m.tensors.len()
        );
        Ok(Flushed {
            _guard: self.guard,
            manifest: m,
        })
    }
}
