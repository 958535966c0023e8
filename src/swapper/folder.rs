//! The swap folder `<nvme_path>/zero_stage_3/<dtype>params/rank<R>/`: created private
//! (0700), refused when any of its parts is a symbolic link, locked for the handle's life
//! (a second swapper on it gets `Busy`), emptied at creation, one file per param.
//!
//! The rank folder is held open: every swap file is created, opened, checked and removed
//! relative to that descriptor, so a chdir (with a relative `nvme_path`), a renamed rank
//! folder or a rank folder replaced by a symbolic link cannot send the I/O elsewhere. Its
//! path, resolved once at creation to an absolute canonical one, only names files in
//! messages and in `swapper_param_path`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::convert::Dtype;
use crate::status::{Error, Result, Status};
use crate::sys::file::{self, Dir, DirLock, FileKind, Stat};

/// The longest swap file name: the one of the largest id.
const LONGEST_NAME: usize = "18446744073709551615_param.tensor.swp".len();

/// A locked swap folder.
pub struct SwapFolder {
    path: PathBuf,
    dir: Dir,
    _lock: DirLock,
}

fn open_error(what: &str, path: &Path, errno: i32) -> Error {
    match errno {
        libc::ELOOP => Error::invalid(format!(
            "{what} {} is a symbolic link; give the real folder",
            path.display()
        )),
        libc::ENOTDIR => Error::invalid(format!("{what} {} is not a folder", path.display())),
        libc::ENAMETOOLONG => Error::invalid(format!("{what} {} is too long", path.display())),
        e => Error::os(&format!("{what}: cannot use"), path, None, e),
    }
}

/// Creates (if missing), opens and makes private the folder `name` inside `parent`.
fn private_dir(parent: &Dir, name: &str, path: &Path, what: &str) -> Result<Dir> {
    match parent.make_dir(OsStr::new(name), 0o700) {
        Ok(()) | Err(libc::EEXIST) => {}
        Err(e) => return Err(Error::os("cannot create the swap folder", path, None, e)),
    }
    let dir = parent
        .open_dir(OsStr::new(name))
        .map_err(|e| open_error(what, path, e))?;
    dir.set_mode(0o700)
        .map_err(|e| Error::os("cannot make private", path, None, e))?;
    Ok(dir)
}

/// Removes everything inside `dir` (at `path`), through the descriptor: a symbolic link is
/// removed, never followed.
fn empty(dir: &Dir, path: &Path) -> Result<()> {
    let entries = dir
        .entries()
        .map_err(|e| Error::os("cannot list", path, None, e))?;
    for (name, kind) in entries {
        let p = path.join(&name);
        if kind == FileKind::Directory {
            let sub = dir
                .open_dir(&name)
                .map_err(|e| Error::os("cannot open", &p, None, e))?;
            empty(&sub, &p)?;
        }
        match dir.remove(&name, kind == FileKind::Directory) {
            Ok(()) | Err(libc::ENOENT) => {}
            Err(e) => return Err(Error::os("cannot remove", &p, None, e)),
        }
    }
    Ok(())
}

impl SwapFolder {
    /// Creates (or reuses) and locks the folder of `rank` and `dtype` under `nvme_path`, then
    /// empties it. `nvme_path` may be relative: it is resolved once, here.
    pub fn open(nvme_path: &Path, dtype: Dtype, rank: u32) -> Result<SwapFolder> {
        let root = Dir::open(nvme_path).map_err(|e| open_error("nvme_path", nvme_path, e))?;
        let canonical = file::canonical(nvme_path).map_err(|e| open_error("nvme_path", nvme_path, e))?;
        let parts = [
            ("zero_stage_3".to_string(), "the swap folder"),
            (format!("{}params", dtype.folder_name()), "the swap folder"),
            (format!("rank{rank}"), "the rank folder"),
        ];
        let path = parts.iter().fold(canonical.clone(), |p, (name, _)| p.join(name));
        // Every open is relative to the held folder, so the kernel's PATH_MAX does not apply
        // to them; but the paths the swapper reports (swapper_param_path, messages) must be
        // usable, so refuse now what the largest id would overflow.
        let longest = path.as_os_str().len() + 1 + LONGEST_NAME;
        if longest >= libc::PATH_MAX as usize {
            return Err(Error::invalid(format!(
                "nvme_path is too long: the swap files would have paths of up to {longest} bytes, \
                 over PATH_MAX ({} bytes including the terminating NUL): {}",
                libc::PATH_MAX,
                path.display()
            )));
        }
        let mut dir = root;
        let mut at = canonical;
        for (name, what) in &parts {
            at.push(name);
            dir = private_dir(&dir, name, &at, what)?;
        }
        let lock = dir.lock().map_err(|e| {
            if e == libc::EWOULDBLOCK {
                Error::new(
                    Status::Busy,
                    format!(
                        "the swap folder {} is in use by another swapper (in this process or another)",
                        path.display()
                    ),
                )
            } else {
                Error::os("cannot lock", &path, None, e)
            }
        })?;
        empty(&dir, &path)?;
        Ok(SwapFolder {
            path,
            dir,
            _lock: lock,
        })
    }

    /// The folder (absolute, canonical at creation).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder, held open: open swap files relative to it.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The swap file name of a param, relative to [`SwapFolder::dir`]: `<id>_param.tensor.swp`.
    pub fn file_name(&self, id: u64) -> String {
        format!("{id}_param.tensor.swp")
    }

    /// The swap file of a param, for messages: the folder's path joined with its name.
    pub fn param_path(&self, id: u64) -> PathBuf {
        self.path.join(self.file_name(id))
    }

    /// What the swap file of a param is (kind and size), looked up in the held folder
    /// without following a symbolic link.
    pub fn metadata(&self, id: u64) -> std::io::Result<Stat> {
        self.dir
            .stat(OsStr::new(&self.file_name(id)))
            .map_err(std::io::Error::from_raw_os_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn emptying_removes_links_and_subfolders_without_following_links() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let rank = base.path().join("nv/zero_stage_3/float16params/rank0");
        fs::create_dir_all(rank.join("sub/deeper")).unwrap();
        fs::write(rank.join("sub/deeper/f"), b"x").unwrap();
        fs::write(rank.join(".swapper.lock"), b"").unwrap();
        std::os::unix::fs::symlink(&outside, rank.join("link")).unwrap();
        let f = SwapFolder::open(&base.path().join("nv"), Dtype::Fp16, 0).unwrap();
        assert_eq!(fs::read_dir(f.path()).unwrap().count(), 0);
        assert!(
            outside.join("keep").exists(),
            "a link in the folder is not followed"
        );
    }

    #[test]
    fn a_relative_nvme_path_is_resolved_to_an_absolute_canonical_one() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("nv")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        // A relative path that reaches the folder from the current directory.
        let rel: PathBuf = cwd
            .components()
            .skip(1)
            .map(|_| "..")
            .collect::<PathBuf>()
            .join(base.path().strip_prefix("/").unwrap())
            .join("nv");
        let f = SwapFolder::open(&rel, Dtype::Bf16, 2).unwrap();
        let want = fs::canonicalize(base.path())
            .unwrap()
            .join("nv/zero_stage_3/bfloat16params/rank2");
        assert_eq!(f.path(), want);
        assert!(f.param_path(u64::MAX).is_absolute());
        assert_eq!(
            f.metadata(5).err().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn refuses_at_creation_an_nvme_path_whose_swap_files_would_pass_path_max() {
        let base = tempfile::tempdir().unwrap();
        let suffix = "/zero_stage_3/float16params/rank0/".len() + LONGEST_NAME;
        // Folders of 200 bytes until the longest swap file path reaches PATH_MAX exactly.
        let mut nv = fs::canonicalize(base.path()).unwrap();
        while nv.as_os_str().len() + suffix + 201 < libc::PATH_MAX as usize {
            nv.push("d".repeat(200));
        }
        let pad = libc::PATH_MAX as usize - suffix - nv.as_os_str().len() - 1;
        nv.push("e".repeat(pad));
        fs::create_dir_all(&nv).unwrap();
        assert_eq!(nv.as_os_str().len() + suffix, libc::PATH_MAX as usize);
        let e = SwapFolder::open(&nv, Dtype::Fp16, 0).err().unwrap();
        assert_eq!(e.status(), Status::InvalidArgument, "{e}");
        assert!(e.message().contains("PATH_MAX"), "{e}");
        // One byte shorter fits: the longest path is then PATH_MAX - 1 bytes plus the NUL.
        let shorter = nv.with_file_name("e".repeat(pad - 1));
        fs::create_dir(&shorter).unwrap();
        let f = SwapFolder::open(&shorter, Dtype::Fp16, 0).unwrap();
        assert_eq!(
            f.param_path(u64::MAX).as_os_str().len(),
            libc::PATH_MAX as usize - 1
        );
    }
}
