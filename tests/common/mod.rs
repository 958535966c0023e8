//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod drive_bed;
pub mod kill_harness;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Deterministic bytes: a xorshift stream from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A folder on the real disk (not tmpfs), removed on drop.
pub fn disk_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new()
        .prefix("swapper-test-")
        .tempdir_in(base)
        .expect("temp dir on disk")
}

/// `len` bytes at `offset` into an aligned allocation (offset 0: aligned).
pub struct TestBuf {
    storage: swapper::sys::alloc::AlignedBuf,
    offset: usize,
    len: usize,
}

impl TestBuf {
    pub fn new(len: usize, offset: usize) -> TestBuf {
        TestBuf {
            storage: swapper::sys::alloc::AlignedBuf::new(len + offset + 1, false).unwrap(),
            offset,
            len,
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.storage.as_slice()[self.offset..self.offset + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (o, l) = (self.offset, self.len);
        &mut self.storage.as_mut_slice()[o..o + l]
    }
}

/// An aligned buffer of `len` bytes of pattern `seed` ([`pattern`]).
pub fn patterned(len: usize, seed: u64) -> TestBuf {
    let mut b = TestBuf::new(len, 0);
    b.as_mut_slice().copy_from_slice(&pattern(len, seed));
    b
}

/// The crate's folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>, where cargo built libswapper.so and libswapper.a for this test run.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Whether `tool --version` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The soname's version, as build.rs computed it (cargo-c's rule, written there once).
pub fn soversion() -> String {
    env!("SWAPPER_SOVERSION").to_string()
}

/// The DT_SONAME of the shared object at `path`, read with `readelf -d` (binutils).
pub fn dt_soname(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(path)
        .output()
        .expect("readelf is needed to read the soname: install binutils");
    assert!(
        out.status.success(),
        "readelf -d {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "0x000000000000000e (SONAME)             Library soname: [libswapper.so.0.1]"
    let line = text
        .lines()
        .find(|l| l.contains("(SONAME)"))
        .unwrap_or_else(|| panic!("{} has no DT_SONAME:\n{text}", path.display()));
    let start = line.find('[').expect("readelf prints the soname in brackets") + 1;
    let end = line.rfind(']').expect("readelf prints the soname in brackets");
    line[start..end].to_string()
}

/// A swapper in `dir` with checksums on and 64 KiB requests: `buffers` pool buffers of
/// `numel` elements of `dtype`.
pub fn swapper_in(dir: &Path, dtype: swapper::Dtype, buffers: u32, numel: u64) -> swapper::Swapper {
    swapper::Swapper::new(swapper::Settings {
        nvme_path: dir.to_path_buf(),
        dtype,
        buffer_count: buffers,
        buffer_numel: numel,
        io: swapper::IoConfig {
            block_size: 64 << 10,
            ..swapper::IoConfig::default()
        },
        verify_checksums: true,
        ..swapper::Settings::default()
    })
    .unwrap()
}

/// The backends to test: blocking, and io_uring where the kernel allows it.
pub fn backends() -> Vec<swapper::Backend> {
    let mut v = vec![swapper::Backend::Blocking];
    if swapper::sys::uring::Ring::available() {
        v.push(swapper::Backend::IoUring);
    } else {
        eprintln!("io_uring is not available on this machine: testing the blocking backend only");
    }
    v
}

/// What the store holds of param `id`: its extents' bytes read straight from the extent
/// files, in order (reserved length: the param's bytes, then padding).
pub fn stored_bytes(s: &swapper::Swapper, id: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    for e in s.param_locations(id) {
        let f = std::fs::File::open(&e.path).unwrap();
        let mut buf = vec![0u8; e.len as usize];
        f.read_exact_at(&mut buf, e.file_offset).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

/// Flips byte `at` of param `id` where the store keeps it (in its extent file).
pub fn flip_stored_byte(s: &swapper::Swapper, id: u64, mut at: u64) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    for e in s.param_locations(id) {
        if at < e.len {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&e.path)
                .unwrap();
            let mut b = [0u8];
            f.read_exact_at(&mut b, e.file_offset + at).unwrap();
            b[0] ^= 0x40;
            f.write_all_at(&b, e.file_offset + at).unwrap();
            return e.path;
        }
        at -= e.len;
    }
    panic!("param {id} has no byte {at} in the store");
}

/// A new file held open with O_DIRECT (and a buffered descriptor), as the swap store
/// holds its extent files.
pub fn held_file(path: &Path) -> std::sync::Arc<swapper::io::HeldFile> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |direct: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .unwrap()
    };
    let buffered = open(false);
    let direct = open(true);
    std::sync::Arc::new(swapper::io::HeldFile::new(
        path.to_path_buf(),
        Some(direct.into()),
        buffered.into(),
    ))
}

/// Runs `f` on a thread and fails the test if it has not finished within `secs`
/// (instead of hanging the test run).
pub fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s (hang)"))
}
