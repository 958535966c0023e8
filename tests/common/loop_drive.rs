//! Real drives for the store's tests: a file in /dev/shm on a loop device, formatted
//! (ext4 or XFS) and mounted; unmounted, detached and removed on drop. Names hold "store"
//! and the process id, so that parallel tests and other users of loop devices do not
//! collide. Needs root (losetup, mount) and e2fsprogs / xfsprogs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}): the loop drives need util-linux, e2fsprogs and xfsprogs")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {} (loop drives need root for losetup and mount)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The file systems a loop drive can have.
#[derive(Clone, Copy, Debug)]
pub enum Fs {
    Ext4,
    Xfs,
}

/// A mounted loop drive.
pub struct LoopDrive {
    image: PathBuf,
    device: Option<String>,
    mount: PathBuf,
    mounted: bool,
}

impl LoopDrive {
    /// A drive of `mib` MiB (a sparse file in /dev/shm) formatted with `fs`.
    pub fn new(fs: Fs, mib: u64) -> LoopDrive {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "loop drives need root");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("store-{}-{n}", std::process::id());
        let image = PathBuf::from(format!("/dev/shm/{tag}.img"));
        let mount = PathBuf::from(format!("/tmp/{tag}-mnt"));
        let mut d = LoopDrive {
            image,
            device: None,
            mount,
            mounted: false,
        };
        std::fs::File::create(&d.image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("drive image in /dev/shm");
        match fs {
            Fs::Ext4 => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&d.image)),
            Fs::Xfs => run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&d.image)),
        };
        d.device = Some(run(Command::new("losetup").args(["-f", "--show"]).arg(&d.image)));
        std::fs::create_dir_all(&d.mount).expect("mount point");
        run(Command::new("mount")
            .arg(d.device.as_ref().unwrap())
            .arg(&d.mount));
        d.mounted = true;
        d
    }

    /// The mounted drive's root folder.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Shuts the file system down (FS_IOC_SHUTDOWN, as after a device failure, without
    /// flushing the log): from now on every read and write on it fails with EIO.
    pub fn fail(&self) {
        let dir = std::fs::File::open(&self.mount).unwrap();
        // _IOR('X', 125, __u32): ext4's and XFS's shutdown ioctl.
        const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        let flags: u32 = 2; // FSOP_GOING_FLAGS_NOLOGFLUSH
                            // SAFETY: the ioctl reads one u32 from the pointer.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dir), FS_IOC_SHUTDOWN, &flags) };
        assert_eq!(
            rc,
            0,
            "shutdown ioctl on {}: {}",
            self.mount.display(),
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for LoopDrive {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mount)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
        }
        if let Some(dev) = &self.device {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}
