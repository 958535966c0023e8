//! The swap folder `<nvme_path>/zero_stage_3/<dtype>params/rank<R>/`: created private
//! (0700), refused when it is a symbolic link, locked for the handle's life (a second
//! swapper on it gets `Busy`), emptied at creation, one file per param.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::convert::Dtype;
use crate::status::{Error, Result, Status};
use crate::sys::file::{self, OpenMode};

const LOCK_NAME: &str = ".swapper.lock";

/// A locked swap folder.
pub struct SwapFolder {
    path: PathBuf,
    _lock: OwnedFd,
}

fn check_dir(path: &Path, what: &str) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        Error::os(&format!("{what}: cannot use"), path, None, errno)
    })?;
    if meta.file_type().is_symlink() {
        return Err(Error::invalid(format!(
            "{what} {} is a symbolic link; give the real folder",
            path.display()
        )));
    }
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{what} {} is not a folder",
            path.display()
        )));
    }
    Ok(())
}

fn make_private_dir(path: &Path, what: &str) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::os(
                "cannot create the swap folder",
                path,
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            ))
        }
    }
    check_dir(path, what)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| {
        Error::os(
            "cannot make private",
            path,
            None,
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })
}

impl SwapFolder {
    /// Creates (or reuses) and locks the folder of `rank` and `dtype` under `nvme_path`, then
    /// empties it.
    pub fn open(nvme_path: &Path, dtype: Dtype, rank: u32) -> Result<SwapFolder> {
        check_dir(nvme_path, "nvme_path")?;
        let mut path = nvme_path.join("zero_stage_3");
        make_private_dir(&path, "the swap folder")?;
        path.push(format!("{}params", dtype.folder_name()));
        make_private_dir(&path, "the swap folder")?;
        path.push(format!("rank{rank}"));
        make_private_dir(&path, "the rank folder")?;

        let lock_path = path.join(LOCK_NAME);
        let lock = file::open(
            &lock_path,
            OpenMode {
                write: true,
                direct: false,
                nofollow: true,
            },
        )
        .map_err(|e| Error::os("cannot open the lock file", &lock_path, None, e))?;
        // SAFETY: flock on an open descriptor touches no memory.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if errno == libc::EWOULDBLOCK {
                return Err(Error::new(
                    Status::Busy,
                    format!(
                        "the swap folder {} is in use by another swapper (in this process or another)",
                        path.display()
                    ),
                ));
            }
            return Err(Error::os("cannot lock", &lock_path, None, errno));
        }
        let folder = SwapFolder { path, _lock: lock };
        folder.empty()?;
        Ok(folder)
    }

    fn empty(&self) -> Result<()> {
        let entries = fs::read_dir(&self.path).map_err(|e| {
            Error::os(
                "cannot list",
                &self.path,
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        for entry in entries.flatten() {
            if entry.file_name() == LOCK_NAME {
                continue;
            }
            let p = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let r = if is_dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|e| Error::os("cannot remove", &p, None, e.raw_os_error().unwrap_or(libc::EIO)))?;
        }
        Ok(())
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The swap file of a param: `<id>_param.tensor.swp`.
    pub fn param_path(&self, id: u64) -> PathBuf {
        self.path.join(format!("{id}_param.tensor.swp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_locked_emptied_folder() {
        let base = tempfile::tempdir().unwrap();
        let f = SwapFolder::open(base.path(), Dtype::Fp16, 3).unwrap();
        assert!(f.path().ends_with("zero_stage_3/float16params/rank3"));
        let mode = fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(f.param_path(7), b"x").unwrap();
        let again = SwapFolder::open(base.path(), Dtype::Fp16, 3).err().unwrap();
        assert_eq!(again.status(), Status::Busy);
        let other_rank = SwapFolder::open(base.path(), Dtype::Fp16, 4).unwrap();
        drop(other_rank);
        drop(f);
        let f = SwapFolder::open(base.path(), Dtype::Fp16, 3).unwrap();
        assert!(!f.param_path(7).exists(), "the folder is emptied at creation");
    }

    #[test]
    fn refuses_bad_nvme_paths_and_symlinked_rank_folders() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("missing");
        assert_eq!(
            SwapFolder::open(&missing, Dtype::Fp16, 0).err().unwrap().status(),
            Status::NotFound
        );
        let file = base.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert_eq!(
            SwapFolder::open(&file, Dtype::Fp16, 0).err().unwrap().status(),
            Status::InvalidArgument
        );
        let link = base.path().join("link");
        std::os::unix::fs::symlink(base.path(), &link).unwrap();
        assert_eq!(
            SwapFolder::open(&link, Dtype::Fp16, 0).err().unwrap().status(),
            Status::InvalidArgument
        );
        let root = base.path().join("root");
        fs::create_dir_all(root.join("zero_stage_3/float16params")).unwrap();
        let elsewhere = base.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("zero_stage_3/float16params/rank0")).unwrap();
        let e = SwapFolder::open(&root, Dtype::Fp16, 0).err().unwrap();
        assert_eq!(e.status(), Status::InvalidArgument);
        assert!(e.message().contains("symbolic link"), "{e}");
    }
}
