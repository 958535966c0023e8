//! Snapshots: a flushed generation of a store, recorded into a checkpoint folder without
//! copying what the file system can share, and a restore that puts one back.
//!
//! # Layout
//! `<dest>/drive<k>/<rank folder parts>/` for each drive k, e.g.
//! `<dest>/drive0/zero_stage_3/float16params/rank0/{manifest.json, extent-0.swp, ...}`:
//! each is a rank folder as the store leaves it, so a swapper can also adopt a snapshot
//! in place (`nvme_path` = `<dest>/drive<k>`, adopt on; its writes then change the
//! snapshot).
//!
//! # How the bytes get there
//! Each extent file is a reflink of the live one (FICLONE: shared extents, constant time
//! in the data size, on XFS with reflink=1 and btrfs); where the file system cannot
//! (ext4, another file system: EXDEV, EOPNOTSUPP), a file of the same size with only the
//! ranges the manifest names copied into it, holes elsewhere: by O_DIRECT reads and
//! writes through the drive's I/O engines where both files take O_DIRECT
//! ([`super::copy`]: no page cache, reads and writes overlapped), else
//! copy_file_range (or read and write across file systems). Then every file is fsynced,
//! the manifest written (fsynced) and the folders synced.
//!
//! # Consistency
//! The snapshot is taken under the flush lock right after a flush: nothing the manifest
//! names can change meanwhile (a rewrite goes to fresh space, and retired pieces are not
//! freed before the next flush, which waits for the lock). Swapping goes on during the
//! copy.
//!
//! # Restore
//! [`restore`] empties each drive's rank folder (locked: `Busy` if a swapper holds it)
//! and clones the snapshot's files and manifest into it the same way; a swapper created
//! with adopt then finds the snapshot's generation.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::copy;
use super::drive::Drive;
use super::flush::Flushed;
use super::folder::RankFolder;
use super::manifest::{self, Expected, Manifest};
use super::Store;
use crate::io::{HeldFile, IoEngine};
use crate::status::{Error, Result, Status};
use crate::sys::clone::{self, CopyHow};
use crate::sys::durable;
use crate::sys::file::{self, Dir};

/// What a snapshot or restore did.
#[derive(Clone, Debug, Default)]
pub struct SnapshotReport {
    /// The generation recorded.
    pub generation: u64,
    /// Extent files recorded.
    pub files: usize,
    /// Bytes the manifest names (what a restore brings back).
    pub bytes: u64,
    /// Files shared by reflink.
    pub reflinked: usize,
    /// Files copied (copy_file_range, or read and write).
    pub copied: usize,
}

impl SnapshotReport {
    fn count(&mut self, how: CopyHow) {
        match how {
            CopyHow::Reflink => self.reflinked += 1,
            _ => self.copied += 1,
        }
    }
}

/// The folder of drive `k` inside a snapshot.
pub fn drive_folder(dest: &Path, k: usize) -> PathBuf {
    dest.join(format!("drive{k}"))
}

/// The ranges of `file` on drive `drive` that `m` names, sorted and merged.
fn named_ranges(m: &Manifest, drive: usize, file: usize) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = m
        .tensors
        .iter()
        .flat_map(|t| t.pieces.iter())
        .filter(|p| p.drive == drive && p.file == file)
        .map(|p| (p.offset, p.len))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (o, n) in v {
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= o => last.1 = last.1.max(o + n - last.0),
            _ => out.push((o, n)),
        }
    }
    out
}

/// Where a copy's bytes come from: the source file held open (an O_DIRECT descriptor
/// beside the buffered one where the file system has O_DIRECT), and the engines that
/// read it and write the copy.
struct Source<'a> {
    held: &'a Arc<HeldFile>,
    read: &'a IoEngine,
    write: &'a IoEngine,
}

/// Copies `src` (`size` bytes recorded) into the new file `name` of `dir` (at `path`):
/// a reflink, or the `ranges` copied into a file of `size` bytes (through the engines
/// with O_DIRECT where both files take it, else copy_file_range). Synced.
fn copy_file(
    src: &Source<'_>,
    size: u64,
    dir: &Dir,
    name: &str,
    path: &Path,
    ranges: &[(u64, u64)],
) -> Result<CopyHow> {
    let dst =
        clone::create_new(dir, OsStr::new(name)).map_err(|e| Error::os("cannot create", path, None, e))?;
    let sfd = src.held.buffered_fd();
    let how = match clone::reflink(sfd, dst.as_raw_fd(), path) {
        Ok(()) => CopyHow::Reflink,
        Err(libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY | libc::ENOSYS | libc::EBADF) => {
            clone::set_len(dst.as_raw_fd(), size).map_err(|e| Error::os("cannot size", path, None, e))?;
            match open_direct(src, dir, name, path)? {
                Some(fd) => {
                    // The engine needs both descriptors of the copy: its own for the
                    // aligned transfers and a buffered one for an unaligned tail.
                    let buffered = dst.try_clone().map_err(|e| {
                        Error::os(
                            "cannot duplicate the descriptor of",
                            path,
                            None,
                            e.raw_os_error().unwrap_or(libc::EIO),
                        )
                    })?;
                    let held = Arc::new(HeldFile::new(path.to_path_buf(), Some(fd), buffered));
                    copy::copy_ranges(src.read, src.write, src.held, &held, ranges)?;
                    CopyHow::Direct
                }
                None => {
                    let mut how = CopyHow::CopyFileRange;
                    for &(o, n) in ranges {
                        how = clone::copy_range(sfd, dst.as_raw_fd(), o, n, path).map_err(|e| {
                            Error::os(&format!("cannot copy {n} bytes into"), path, Some(o), e)
                        })?;
                    }
                    how
                }
            }
        }
        Err(e) => return Err(Error::os("cannot clone into", path, None, e)),
    };
    clone::sync(dst.as_raw_fd(), path).map_err(|e| Error::os("cannot sync", path, None, e))?;
    Ok(how)
}

/// An O_DIRECT descriptor of the new copy `name` (at `path`) when the source has one and
/// the copy's file system takes O_DIRECT too; None where it answers EINVAL (tmpfs
/// without O_DIRECT: the kernel's copy then). Any other failure is an error naming it.
fn open_direct(src: &Source<'_>, dir: &Dir, name: &str, path: &Path) -> Result<Option<std::os::fd::OwnedFd>> {
    if !src.held.is_direct() {
        return Ok(None);
    }
    match file::open_read_write(dir, OsStr::new(name), true, false) {
        Ok(f) => Ok(Some(f.fd)),
        Err(file::OpenError::Errno(libc::EINVAL)) => Ok(None),
        Err(file::OpenError::Errno(e)) => Err(Error::os("cannot open with O_DIRECT", path, None, e)),
        Err(file::OpenError::NotRegular(kind)) => Err(Error::new(
            Status::CorruptData,
            format!(
                "{} became {} while it was copied",
                path.display(),
                kind.describe()
            ),
        )),
    }
}

/// Writes drive `k`'s copy of `m` into `folder` and syncs the folder.
fn write_manifest(m: &Manifest, k: usize, folder: &RankFolder) -> Result<()> {
    let mut copy = m.clone();
    copy.this_drive = k;
    let path = folder.path().join(manifest::NAME);
    durable::write_synced(folder.dir(), OsStr::new(manifest::NAME), &copy.encode(), &path)
        .map_err(|e| Error::os("cannot write the manifest", &path, None, e))?;
    durable::sync_dir(folder.dir(), folder.path())
        .map_err(|e| Error::os("cannot sync the folder", folder.path(), None, e))
}

/// A destination rank folder: made under `root` (which is created if missing, as is its
/// parent, the snapshot folder), locked, and required empty (`BadState` naming it
/// otherwise; nothing in it is touched).
fn destination(root: &Path, parts: &[String]) -> Result<RankFolder> {
    if let Some(dest) = root.parent() {
        make_one(dest)?;
    }
    make_one(root)?;
    let folder = RankFolder::adopt(root, parts)?;
    if let Some((name, _)) = folder.entries()?.first() {
        return Err(Error::new(
            Status::BadState,
            format!(
                "the snapshot folder {} is not empty (it holds {name}); give a new folder; nothing was written",
                folder.path().display()
            ),
        ));
    }
    Ok(folder)
}

/// Creates the folder `root` (mode 0700) if missing; its parent must exist.
fn make_one(root: &Path) -> Result<()> {
    if let Some(parent) = root.parent() {
        let name = root
            .file_name()
            .ok_or_else(|| Error::invalid(format!("the snapshot folder {} has no name", root.display())))?;
        let pdir = Dir::open(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        .map_err(|e| Error::os("cannot open", parent, None, e))?;
        match pdir.make_dir(name, 0o700) {
            Ok(()) | Err(libc::EEXIST) => {}
            Err(e) => return Err(Error::os("cannot create", root, None, e)),
        }
    }
    Ok(())
}

impl Store {
    /// Records the generation `flushed` made durable (its flush lock still held) into
    /// `dest` (see the module doc). Errors name the file; a failed snapshot leaves a
    /// partial folder, never a manifest naming a file not fully copied (the manifest is
    /// written last).
    pub fn snapshot(&self, flushed: &Flushed<'_>, dest: &Path) -> Result<SnapshotReport> {
        let m = &flushed.manifest;
        let mut report = SnapshotReport {
            generation: m.generation,
            bytes: m.tensors.iter().map(|t| t.reserved).sum(),
            ..SnapshotReport::default()
        };
        let files: Vec<Vec<std::sync::Arc<super::drive::ExtentFile>>> =
            self.lock().drives.iter().map(|d| d.files.clone()).collect();
        let mut folders = Vec::with_capacity(self.drives.len());
        for k in 0..self.drives.len() {
            folders.push(destination(&drive_folder(dest, k), &self.parts)?);
        }
        for (k, folder) in folders.iter().enumerate() {
            for (i, entry) in m.files[k].iter().enumerate() {
                let src = &files[k][i];
                let path = folder.path().join(&entry.name);
                let drive = &self.drives[k];
                let source = Source {
                    held: &src.held,
                    read: drive.engine_for(false),
                    write: drive.engine_for(true),
                };
                let how = copy_file(
                    &source,
                    entry.size,
                    folder.dir(),
                    &entry.name,
                    &path,
                    &named_ranges(m, k, i),
                )
                .map_err(|e| {
                    e.context(format!(
                        "snapshot of {} to {}",
                        src.path().display(),
                        dest.display()
                    ))
                })?;
                report.count(how);
                report.files += 1;
            }
        }
        for (k, folder) in folders.iter().enumerate() {
            write_manifest(m, k, folder)?;
        }
        Ok(report)
    }
}

/// Puts the snapshot in `snapshot` back into the rank folders `parts` under `paths` (one
/// per drive, as many as the snapshot has), emptying them first; each is locked meanwhile
/// (`Busy` if a swapper holds one). The snapshot's manifests are checked first as an
/// adoption checks them (another rank, kind, version, drive count: an error, and nothing
/// is emptied). Then create a swapper with adopt on the same folders.
pub fn restore(snapshot: &Path, paths: &[PathBuf], parts: &[String]) -> Result<SnapshotReport> {
    let n = parts.len();
    if n == 0 || paths.is_empty() {
        return Err(Error::invalid(
            "restore needs at least one nvme_path and a rank folder",
        ));
    }
    let want = Expected {
        kind: parts[..n - 1].join("/"),
        rank: parts[n - 1].clone(),
        drives: paths.len(),
    };
    // Read and check every drive's snapshot first.
    let mut sources = Vec::with_capacity(paths.len());
    for k in 0..paths.len() {
        let root = drive_folder(snapshot, k);
        let src = RankFolder::adopt(&root, parts)?;
        let mpath = src.path().join(manifest::NAME);
        let bytes =
            durable::read_small(src.dir(), OsStr::new(manifest::NAME), manifest::MAX_BYTES).map_err(|e| {
                match e {
                    file::OpenError::Errno(libc::ENOENT) => Error::new(
                        Status::NotFound,
                        format!(
                            "{} holds no manifest: not a snapshot of {} drives",
                            src.path().display(),
                            paths.len()
                        ),
                    ),
                    file::OpenError::Errno(e) => Error::os("cannot read the manifest", &mpath, None, e),
                    file::OpenError::NotRegular(kind) => Error::new(
                        Status::CorruptData,
                        format!("{} is {}", mpath.display(), kind.describe()),
                    ),
                }
            })?;
        let m = Manifest::decode(&bytes, &mpath.display().to_string())?;
        m.check(&want, k, &mpath.display().to_string())?;
        sources.push((src, m));
    }
    if let Some((first, rest)) = sources.split_first() {
        if let Some((s, _)) = rest
            .iter()
            .find(|(_, m)| (m.store_id, m.generation) != (first.1.store_id, first.1.generation))
        {
            return Err(Error::new(
                Status::CorruptData,
                format!(
                    "the snapshot's manifests do not belong together: {} and {} differ in store or generation; nothing was changed",
                    first.0.path().display(),
                    s.path().display()
                ),
            ));
        }
    }
    let mut report = SnapshotReport {
        generation: sources[0].1.generation,
        bytes: sources[0].1.tensors.iter().map(|t| t.reserved).sum(),
        ..SnapshotReport::default()
    };
    // Lock every target (emptied) before copying anything.
    let targets: Vec<Drive> = paths
        .iter()
        .enumerate()
        .map(|(k, p)| Drive::open(k, p, parts, crate::config::IoConfig::default(), false))
        .collect::<Result<_>>()?;
    for (k, ((src, m), target)) in sources.iter().zip(&targets).enumerate() {
        for (i, entry) in m.files[k].iter().enumerate() {
            let spath = src.path().join(&entry.name);
            let opened = file::open_read_write(src.dir(), OsStr::new(&entry.name), false, false).map_err(
                |e| match e {
                    file::OpenError::Errno(e) => Error::os("cannot open", &spath, None, e),
                    file::OpenError::NotRegular(kind) => Error::new(
                        Status::CorruptData,
                        format!("{} is {}", spath.display(), kind.describe()),
                    ),
                },
            )?;
            if opened.size < entry.size {
                return Err(Error::new(
                    Status::CorruptData,
                    format!(
                        "the snapshot file {} holds {} bytes, its manifest recorded {}",
                        spath.display(),
                        opened.size,
                        entry.size
                    ),
                ));
            }
            let direct = match file::open_read_write(src.dir(), OsStr::new(&entry.name), true, false) {
                Ok(f) => Some(f.fd),
                Err(_) => None, // no O_DIRECT there (or gone: the buffered copy says why)
            };
            let held = Arc::new(HeldFile::new(spath.clone(), direct, opened.fd));
            let source = Source {
                held: &held,
                read: target.engine_for(false),
                write: target.engine_for(true),
            };
            let dpath = target.path().join(&entry.name);
            let how = copy_file(
                &source,
                entry.size,
                target.folder().dir(),
                &entry.name,
                &dpath,
                &named_ranges(m, k, i),
            )?;
            report.count(how);
            report.files += 1;
        }
        write_manifest(m, k, target.folder())?;
    }
    Ok(report)
}
