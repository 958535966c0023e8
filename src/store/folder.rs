//! A rank folder on one drive, e.g. `<nvme_path>/zero_stage_3/<dtype>params/rank<R>/` for
//! the parameter swapper or `<nvme_path>/zero_stage_3/optimizer/rank<R>/` for the
//! optimizer's: created private (0700), refused when any of its parts is a symbolic link,
//! locked for the store's life (a second store on it gets `Busy`), emptied at creation.
//!
//! The rank folder is held open: every extent file is created, opened, checked and
//! removed relative to that descriptor, so a chdir (with a relative `nvme_path`), a
//! renamed rank folder or a rank folder replaced by a symbolic link cannot send the I/O
//! elsewhere. Its path, resolved once at creation to an absolute canonical one, only
//! names files in messages and in `swapper_param_path`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::status::{Error, Result, Status};
use crate::sys::file::{self, Dir, DirLock, FileKind, Stat};

/// The longest file name the store puts in a rank folder (an extent file of the largest
/// index): the PATH_MAX check at creation is made for it.
pub const LONGEST_NAME: usize = "extent-4294967295.swp".len();

/// A locked rank folder.
pub struct RankFolder {
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

impl RankFolder {
    /// Creates (or reuses) each folder of `parts` in turn under `nvme_path` (the last is
    /// "the rank folder"), locks the last and empties it. `nvme_path` may be relative: it
    /// is resolved once, here.
    pub fn open(nvme_path: &Path, parts: &[String]) -> Result<RankFolder> {
        if parts.is_empty() {
            return Err(Error::invalid(
                "the rank folder has no name (no folder parts given)",
            ));
        }
        if let Some(bad) = parts
            .iter()
            .find(|p| p.is_empty() || p.contains('/') || *p == "." || *p == ".." || p.contains('\0'))
        {
            return Err(Error::invalid(format!(
                "{bad:?} is not a folder name (a single path component is needed)"
            )));
        }
        let root = Dir::open(nvme_path).map_err(|e| open_error("nvme_path", nvme_path, e))?;
        let canonical = file::canonical(nvme_path).map_err(|e| open_error("nvme_path", nvme_path, e))?;
        let path = parts.iter().fold(canonical.clone(), |p, name| p.join(name));
        // Every open is relative to the held folder, so the kernel's PATH_MAX does not apply
        // to them; but the paths the store reports (swapper_param_path, messages) must be
        // usable, so refuse now what the longest file name would overflow.
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
        for (k, name) in parts.iter().enumerate() {
            at.push(name);
            let what = if k + 1 == parts.len() {
                "the rank folder"
            } else {
                "the swap folder"
            };
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
        Ok(RankFolder {
            path,
            dir,
            _lock: lock,
        })
    }

    /// The folder (absolute, canonical at creation).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder, held open: open files relative to it.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// What `name` in the held folder is (kind, size, identity), without following a
    /// symbolic link.
    pub fn stat(&self, name: &str) -> std::result::Result<Stat, i32> {
        self.dir.stat(OsStr::new(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn parts(dtype: &str, rank: u32) -> Vec<String> {
        vec![
            "zero_stage_3".into(),
            format!("{dtype}params"),
            format!("rank{rank}"),
        ]
    }

    #[test]
    fn creates_private_locked_emptied_folder() {
        let base = tempfile::tempdir().unwrap();
        let f = RankFolder::open(base.path(), &parts("float16", 3)).unwrap();
        assert!(f.path().ends_with("zero_stage_3/float16params/rank3"));
        let mode = fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(f.path().join("extent-0.swp"), b"x").unwrap();
        let again = RankFolder::open(base.path(), &parts("float16", 3)).err().unwrap();
        assert_eq!(again.status(), Status::Busy);
        let other_rank = RankFolder::open(base.path(), &parts("float16", 4)).unwrap();
        drop(other_rank);
        drop(f);
        let f = RankFolder::open(base.path(), &parts("float16", 3)).unwrap();
        assert!(
            !f.path().join("extent-0.swp").exists(),
            "the folder is emptied at creation"
        );
    }

    #[test]
    fn refuses_bad_nvme_paths_and_symlinked_rank_folders() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("missing");
        assert_eq!(
            RankFolder::open(&missing, &parts("float16", 0))
                .err()
                .unwrap()
                .status(),
            Status::NotFound
        );
        let file = base.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert_eq!(
            RankFolder::open(&file, &parts("float16", 0))
                .err()
                .unwrap()
                .status(),
            Status::InvalidArgument
        );
        let link = base.path().join("link");
        std::os::unix::fs::symlink(base.path(), &link).unwrap();
        assert_eq!(
            RankFolder::open(&link, &parts("float16", 0))
                .err()
                .unwrap()
                .status(),
            Status::InvalidArgument
        );
        let root = base.path().join("root");
        fs::create_dir_all(root.join("zero_stage_3/float16params")).unwrap();
        let elsewhere = base.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("zero_stage_3/float16params/rank0")).unwrap();
        let e = RankFolder::open(&root, &parts("float16", 0)).err().unwrap();
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
        let f = RankFolder::open(&base.path().join("nv"), &parts("float16", 0)).unwrap();
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
        let f = RankFolder::open(&rel, &parts("bfloat16", 2)).unwrap();
        let want = fs::canonicalize(base.path())
            .unwrap()
            .join("nv/zero_stage_3/bfloat16params/rank2");
        assert_eq!(f.path(), want);
        assert!(f.path().is_absolute());
        assert_eq!(f.stat("extent-0.swp").err(), Some(libc::ENOENT));
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
        let e = RankFolder::open(&nv, &parts("float16", 0)).err().unwrap();
        assert_eq!(e.status(), Status::InvalidArgument, "{e}");
        assert!(e.message().contains("PATH_MAX"), "{e}");
        // One byte shorter fits: the longest path is then PATH_MAX - 1 bytes plus the NUL.
        let shorter = nv.with_file_name("e".repeat(pad - 1));
        fs::create_dir(&shorter).unwrap();
        let f = RankFolder::open(&shorter, &parts("float16", 0)).unwrap();
        assert_eq!(
            f.path().as_os_str().len() + 1 + LONGEST_NAME,
            libc::PATH_MAX as usize - 1
        );
    }

    #[test]
    fn the_optimizer_layout_and_bad_part_names() {
        let base = tempfile::tempdir().unwrap();
        let parts: Vec<String> = ["zero_stage_3", "optimizer", "rank1"].map(String::from).to_vec();
        let f = RankFolder::open(base.path(), &parts).unwrap();
        assert!(f.path().ends_with("zero_stage_3/optimizer/rank1"));
        for bad in [
            vec![],
            vec!["a/b".to_string()],
            vec!["..".to_string()],
            vec![String::new()],
        ] {
            let e = RankFolder::open(base.path(), &bad).err().unwrap();
            assert_eq!(e.status(), Status::InvalidArgument, "{bad:?}: {e}");
        }
    }
}
