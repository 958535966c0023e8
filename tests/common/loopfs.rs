//! A file system on a loop device for the real-fault tests (needs root, util-linux and
//! the mkfs asked for; a missing one fails the test with what to install).

use std::path::PathBuf;
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}): this test needs util-linux (losetup, mount) and e2fsprogs")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {} (this test needs root for losetup and mount)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A file system image on a loop device, mounted; unmounted and detached on drop.
pub struct LoopFs {
    _dir: tempfile::TempDir,
    /// The loop device.
    pub device: String,
    /// Where it is mounted.
    pub mount: PathBuf,
}

impl LoopFs {
    /// `mkfs` (with its arguments) over a sparse image of `mib` MiB.
    pub fn new(mkfs: &[&str], mib: u64) -> LoopFs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test mounts loop devices: run it as root"
        );
        let dir = super::disk_dir();
        let image = dir.path().join("libswapper-test-fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image file");
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image));
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let fs = LoopFs {
            _dir: dir,
            device,
            mount,
        };
        run(Command::new("mount").arg(&fs.device).arg(&fs.mount));
        fs
    }

    /// A path inside the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
