//! The multi-drive test bed (`scripts/drive-bed.sh`) from Rust, the one way the tests get
//! real drives: N loop devices over files in /dev/shm, formatted (ext4, XFS, btrfs, ext2)
//! and mounted, in a blkio group (throttled only if asked), under a unique name; torn
//! down on drop. `up` takes about 0.1 s per ext4 drive. Needs root, util-linux and the
//! mkfs of the file system; the script says what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One drive of the bed.
#[derive(Clone, Debug)]
pub struct Drive {
    /// Its index (0..N), its mount point's `d<index>`.
    pub index: usize,
    /// The loop device, `/dev/loopK`.
    pub dev: String,
    /// Its `MAJ:MIN`, as the blkio files name it.
    pub majmin: String,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// Its backing file in /dev/shm.
    pub file: PathBuf,
    /// ext4, xfs or btrfs.
    pub fs: String,
    /// Its read and write throttle in bytes per second (0: none).
    pub rate_bps: u64,
}

impl Drive {
    /// The mounted drive's root folder.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Shuts the file system down (FS_IOC_SHUTDOWN, as after a device failure, without
    /// flushing the log): from now on every read and write on it fails with EIO. `down`
    /// still unmounts it.
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

/// A bed that is up.
#[derive(Debug)]
pub struct DriveBed {
    /// Its unique name (mount folder, files, group and state file carry it).
    pub name: String,
    /// The blkio group commands run in.
    pub cgroup: PathBuf,
    /// The drives, in order.
    pub drives: Vec<Drive>,
    down: bool,
}

/// The script.
pub fn script() -> PathBuf {
    super::root().join("scripts/drive-bed.sh")
}

/// A name no other bed of this machine has: `drive-bed-test-<pid>-<n>`.
pub fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "drive-bed-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `drive-bed.sh ARGS...` (not yet run).
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(script()).args(args);
    c
}

/// The value of `key=` in a line of `up`'s output.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

impl DriveBed {
    /// Brings up `n` ext4 drives of 64 MiB, unthrottled, plus `extra` up options
    /// (`--fs xfs`, `--size 512M`, `--sizes 256M,16M`, `--rate-mbps 200`, `--rates 100,50`).
    pub fn up(n: usize, extra: &[&str]) -> DriveBed {
        let name = unique_name();
        let n = n.to_string();
        let mut args = vec!["up", &n, "--name", &name];
        if !extra.iter().any(|a| *a == "--size" || *a == "--sizes") {
            args.extend(["--size", "64M"]);
        }
        args.extend_from_slice(extra);
        let out = command(&args).output().expect("bash runs");
        assert!(
            out.status.success(),
            "drive-bed.sh up: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        DriveBed::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Reads `up`'s output.
    pub fn parse(stdout: &str) -> DriveBed {
        let mut name = None;
        let mut cgroup = None;
        let mut drives = Vec::new();
        for line in stdout.lines() {
            if let Some(v) = line.strip_prefix("name=") {
                name = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("cgroup=") {
                cgroup = Some(PathBuf::from(v));
            } else if line.starts_with("drive=") {
                let get = |k| field(line, k).unwrap_or_else(|| panic!("no {k}= in {line:?}"));
                drives.push(Drive {
                    index: get("drive").parse().expect("a drive index"),
                    dev: get("dev").to_string(),
                    majmin: get("majmin").to_string(),
                    mount: PathBuf::from(get("mount")),
                    file: PathBuf::from(get("file")),
                    fs: get("fs").to_string(),
                    rate_bps: get("rate_bps").parse().expect("a rate"),
                });
            }
        }
        DriveBed {
            name: name.unwrap_or_else(|| panic!("no name= in {stdout:?}")),
            cgroup: cgroup.unwrap_or_else(|| panic!("no cgroup= in {stdout:?}")),
            drives,
            down: false,
        }
    }

    /// The drives' root folders, in order.
    pub fn paths(&self) -> Vec<&Path> {
        self.drives.iter().map(Drive::path).collect()
    }

    /// The mount points joined by ':' (what `run` exports as SWAPPER_DRIVES).
    pub fn drives_var(&self) -> String {
        let m: Vec<String> = self
            .drives
            .iter()
            .map(|d| d.mount.display().to_string())
            .collect();
        m.join(":")
    }

    /// `program args...` to run inside the bed's group (through `drive-bed.sh run`).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = command(&["run", "--name", &self.name, "--", program]);
        c.args(args);
        c
    }

    /// Tears the bed down now; the script's output.
    pub fn down(&mut self) -> Output {
        self.down = true;
        command(&["down", "--name", &self.name])
            .output()
            .expect("bash runs")
    }
}

impl Drop for DriveBed {
    fn drop(&mut self) {
        if !self.down {
            let out = self.down();
            if !out.status.success() {
                eprintln!(
                    "drive-bed.sh down --name {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// What is left of bed `name` on the machine: mounts, loop devices, files, folders,
/// the group, the state file (empty when it is gone).
pub fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let base = format!("/mnt/drive-bed/{name}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if line.split(' ').nth(4).is_some_and(|m| m.starts_with(&base)) {
            left.push(format!("mount: {line}"));
        }
    }
    let shm_prefix = format!("/dev/shm/{name}-");
    if let Ok(dir) = std::fs::read_dir("/sys/block") {
        for e in dir.flatten() {
            let backing = e.path().join("loop/backing_file");
            if let Ok(f) = std::fs::read_to_string(&backing) {
                if f.starts_with(&shm_prefix) {
                    left.push(format!("loop device {:?} over {}", e.file_name(), f.trim()));
                }
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{name}-")) {
                left.push(format!("file {}", e.path().display()));
            }
        }
    }
    for p in [
        base,
        format!("/sys/fs/cgroup/blkio/{name}"),
        format!("/run/drive-bed/{name}.state"),
    ] {
        if Path::new(&p).exists() {
            left.push(p);
        }
    }
    left
}
