//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
