//! Adopting a rank folder: a store opened with `adopt` keeps what its folders hold and
//! takes up the newest complete manifest.
//!
//! 1. Every drive's `manifest.json` is read, its header checksum verified and its
//!    identity checked ([`Manifest::check`]: library version, kind, rank, drives, which
//!    drive it is on). Copies of generations G and G - 1 are what a crash during a flush
//!    leaves (both complete, see [`super::manifest`]): G is taken; a drive without a
//!    manifest counts as generation 0 (a first flush interrupted). Other mixes (two
//!    generations apart, another store id) are `CorruptData` naming both files.
//! 2. Each drive's extent files the manifest lists are opened and held; one that is
//!    missing, not a regular file or shorter than recorded is `CorruptData` naming the
//!    file and the first tensor in it.
//! 3. The space the manifest does not name is free ([`super::space::Space::adopt_file`]):
//!    the garbage of writes after the last flush. Extent files past the listed ones
//!    (made after the last flush) and a leftover `manifest.json.new` are removed, each
//!    logged; any other name is left alone, with a warning. A drive left at G - 1 gets
//!    generation G's copy (atomically, as a flush writes it), so that the next flush
//!    cannot leave generations G + 1 and G - 1 side by side.
//!
//! No manifest on any drive: nothing was ever flushed there. If the folders hold
//! nothing but the store's own files, the store starts empty (those files removed and
//! logged), with a warning naming the folders (adopt was asked, and a wrong path, rank or
//! dtype would otherwise resume from nothing in silence); otherwise adoption is refused.
//! Nothing is removed before every check passed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;

use super::drive::{extent_name, Drive};
use super::flush::Durable;
use super::manifest::{self, Expected, Manifest, TensorEntry};
use super::space::{Piece, Space};
use super::{DriveState, Placed, State};
use crate::status::{Error, Result, Status};
use crate::sys::durable;
use crate::sys::file::{FileKind, OpenError};

/// Whether `name` is one the store itself makes in a rank folder.
fn own_name(name: &str) -> Option<Option<usize>> {
    if name == manifest::NEW_NAME || name == manifest::NAME {
        return Some(None);
    }
    let k = name.strip_prefix("extent-")?.strip_suffix(".swp")?;
    k.parse::<usize>()
        .ok()
        .filter(|k| extent_name(*k) == name)
        .map(Some)
}

/// Reads and checks drive `k`'s manifest (None: there is none).
fn read(drive: &Drive, k: usize, want: &Expected) -> Result<Option<Manifest>> {
    let path = drive.path().join(manifest::NAME);
    let what = path.display().to_string();
    match durable::read_small(
        drive.folder().dir(),
        OsStr::new(manifest::NAME),
        manifest::MAX_BYTES,
    ) {
        Ok(bytes) => {
            let m = Manifest::decode(&bytes, &what)?;
            m.check(want, k, &what)?;
            Ok(Some(m))
        }
        Err(OpenError::Errno(libc::ENOENT)) => Ok(None),
        Err(OpenError::Errno(libc::EFBIG)) => Err(Error::new(
            Status::CorruptData,
            format!(
                "the manifest {what} is larger than {} bytes: not a manifest; nothing was changed or removed",
                manifest::MAX_BYTES
            ),
        )),
        Err(OpenError::Errno(e)) => Err(Error::os("cannot read the manifest", &path, None, e)),
        Err(OpenError::NotRegular(kind)) => Err(Error::new(
            Status::CorruptData,
            format!(
                "the manifest {what} is {}, not a regular file; nothing was changed or removed",
                kind.describe()
            ),
        )),
    }
}

/// Builds the state of a store adopting `drives`' folders (see the module doc), and the
/// tensors it found.
pub(super) fn adopt(drives: &[Drive], parts: &[String]) -> Result<(State, Vec<TensorEntry>)> {
    let n = parts.len();
    let want = Expected {
        kind: parts[..n - 1].join("/"),
        rank: parts[n - 1].clone(),
        drives: drives.len(),
    };
    let copies: Vec<Option<Manifest>> = drives
        .iter()
        .enumerate()
        .map(|(k, d)| read(d, k, &want))
        .collect::<Result<_>>()?;
    let newest = copies
        .iter()
        .enumerate()
        .filter_map(|(k, m)| m.as_ref().map(|m| (k, m)))
        .max_by_key(|(_, m)| m.generation);
    let Some((from, chosen)) = newest else {
        return start_empty(drives);
    };
    let name = |k: usize| drives[k].path().join(manifest::NAME).display().to_string();
    for (k, m) in copies.iter().enumerate() {
        let (g, id) = m
            .as_ref()
            .map_or((0, chosen.store_id), |m| (m.generation, m.store_id));
        if id != chosen.store_id || g + 1 < chosen.generation {
            return Err(Error::new(
                Status::CorruptData,
                format!(
                    "the manifests do not belong together: {} is generation {} of store {:016x}, {} is {} of store {id:016x} \
                     (a crash leaves at most one generation between drives); nothing was changed or removed",
                    name(from),
                    chosen.generation,
                    chosen.store_id,
                    if m.is_some() { name(k) } else { format!("{} (missing)", name(k)) },
                    g
                ),
            ));
        }
        if g != chosen.generation {
            crate::log!(
                Info,
                "{} holds generation {g}: the flush of generation {} was interrupted after {} was written; adopting generation {}",
                name(k),
                chosen.generation,
                name(from),
                chosen.generation
            );
        }
    }
    let chosen = chosen.clone();
    // The first tensor with a piece in each file, to name in errors.
    let mut first: HashMap<(usize, usize), u64> = HashMap::new();
    let mut used: HashMap<(usize, usize), Vec<(u64, u64)>> = HashMap::new();
    for t in &chosen.tensors {
        for p in &t.pieces {
            first.entry((p.drive, p.file)).or_insert(t.key);
            used.entry((p.drive, p.file)).or_default().push((p.offset, p.len));
        }
    }
    let mut states = Vec::with_capacity(drives.len());
    for (k, drive) in drives.iter().enumerate() {
        let mut space = Space::new();
        let mut files = Vec::new();
        for (i, entry) in chosen.files[k].iter().enumerate() {
            let path = drive.path().join(&entry.name);
            let who = match first.get(&(k, i)) {
                Some(key) => format!("tensor {key}'s extent file"),
                None => "the extent file".to_string(),
            };
            if entry.name != extent_name(i) {
                return Err(Error::new(
                    Status::CorruptData,
                    format!("the manifest generation {} names file {i} of drive {k} {:?}, not {}; nothing was changed or removed", chosen.generation, entry.name, extent_name(i)),
                ));
            }
            let f = drive.open_file(i).map_err(|e| {
                Error::new(
                    Status::CorruptData,
                    format!(
                        "cannot adopt {who} {}: {}; nothing was changed or removed",
                        path.display(),
                        e.message()
                    ),
                )
            })?;
            let size = crate::sys::file::fstat(f.held.fd())
                .map_err(|e| Error::os("cannot stat", &path, None, e))?
                .size;
            if size < entry.size {
                return Err(Error::new(
                    Status::CorruptData,
                    format!(
                        "cannot adopt {who} {}: it holds {size} bytes, manifest generation {} recorded {}; nothing was changed or removed",
                        path.display(),
                        chosen.generation,
                        entry.size
                    ),
                ));
            }
            let ranges = used.remove(&(k, i)).unwrap_or_default();
            space.adopt_file(size, &ranges).map_err(|(o, l)| {
                Error::new(
                    Status::CorruptData,
                    format!(
                        "the manifest places bytes {o}..+{l} of {} wrongly; nothing was changed or removed",
                        path.display()
                    ),
                )
            })?;
            files.push(Arc::new(f));
        }
        states.push(DriveState {
            space,
            files,
            load: 0,
            full: false,
        });
    }
    // Everything checked: now the garbage goes.
    for (k, drive) in drives.iter().enumerate() {
        let listed = chosen.files[k].len();
        for (name, kind) in drive.folder().entries()? {
            match own_name(&name) {
                Some(Some(i)) if i >= listed && kind == FileKind::Regular => {
                    crate::log!(
                        Info,
                        "removing {} (made after the last flush, named by no manifest)",
                        drive.path().join(&name).display()
                    );
                    drive.folder().remove(&name)?;
                }
                Some(None) if name == manifest::NEW_NAME => {
                    crate::log!(
                        Info,
                        "removing {} (an interrupted flush's manifest)",
                        drive.path().join(&name).display()
                    );
                    drive.folder().remove(&name)?;
                }
                Some(_) => {}
                None => crate::log!(
                    Warn,
                    "{} is not the store's: left alone",
                    drive.path().join(&name).display()
                ),
            }
        }
    }
    // A flush was interrupted between drives: bring the drives left at the older generation
    // up to the adopted one (its data is on stable storage: it was synced before the first
    // rename), so that the next flush cannot leave two generations between drives.
    for (k, m) in copies.iter().enumerate() {
        if m.as_ref().map(|m| m.generation) != Some(chosen.generation) {
            let mut copy = chosen.clone();
            super::flush::write_copy(&drives[k], &mut copy, k).map_err(|e| {
                e.context(format!(
                    "bringing {} up to generation {}",
                    name(k),
                    chosen.generation
                ))
            })?;
        }
    }
    let mut keys = HashMap::with_capacity(chosen.tensors.len());
    for t in &chosen.tensors {
        let pieces: Vec<(usize, Piece)> = t
            .pieces
            .iter()
            .map(|p| {
                (
                    p.drive,
                    Piece {
                        file: p.file,
                        offset: p.offset,
                        len: p.len,
                        fresh: false,
                    },
                )
            })
            .collect();
        for (d, p) in &pieces {
            states[*d].load += p.len;
        }
        keys.insert(
            t.key,
            Placed {
                named: Some(chosen.generation),
                ..Placed::at(t.reserved, pieces, Vec::new())
            },
        );
    }
    let mut durable = Durable::new(chosen.store_id, chosen.generation);
    durable.named = chosen.tensors.iter().map(|t| (t.key, t.clone())).collect();
    // A durable manifest names these files: their folder entries were synced before it.
    durable.entries_synced = chosen.files.iter().map(Vec::len).collect();
    crate::log!(
        Info,
        "adopted manifest generation {} of {}: {} tensors",
        chosen.generation,
        drives[0].path().display(),
        chosen.tensors.len()
    );
    Ok((
        State {
            keys,
            weights: vec![1.0; drives.len()],
            drives: states,
            pinned: false,
            durable,
        },
        chosen.tensors,
    ))
}

/// No manifest anywhere: an empty store, if the folders hold only the store's own files.
fn start_empty(drives: &[Drive]) -> Result<(State, Vec<TensorEntry>)> {
    for drive in drives {
        let entries = drive.folder().entries()?;
        if let Some((name, _)) = entries
            .iter()
            .find(|(n, k)| own_name(n).is_none() || *k != FileKind::Regular)
        {
            return Err(Error::new(
                Status::CorruptData,
                format!(
                    "cannot adopt {}: it has no manifest and holds {} (not the store's); nothing was changed or removed",
                    drive.path().display(),
                    drive.path().join(name).display()
                ),
            ));
        }
    }
    // Adopt was asked and there is nothing to adopt: often a mistaken path, rank or dtype
    // (they choose the folder), which would otherwise resume from nothing in silence.
    crate::log!(
        Warn,
        "adopt: no manifest in {} (nothing was ever flushed there): starting empty; if this rank should resume, \
         check nvme_path and the rank (and the dtype, for parameters), which choose the folder",
        drives
            .iter()
            .map(|d| d.path().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for drive in drives {
        for (name, _) in drive.folder().entries()? {
            crate::log!(
                Info,
                "no manifest in {}: removing {} (never flushed)",
                drive.path().display(),
                name
            );
            drive.folder().remove(&name)?;
        }
    }
    Ok((
        State {
            keys: HashMap::new(),
            weights: vec![1.0; drives.len()],
            drives: (0..drives.len())
                .map(|_| DriveState {
                    space: Space::new(),
                    files: Vec::new(),
                    load: 0,
                    full: false,
                })
                .collect(),
            pinned: false,
            durable: Durable::new(manifest::new_store_id(), 0),
        },
        Vec::new(),
    ))
}
