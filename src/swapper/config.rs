//! The swapper's settings, with DeepSpeed's defaults, and reading them from a DeepSpeed
//! configuration (`aio` and `zero_optimization.offload_param`).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::IoConfig;
use crate::convert::Dtype;
use crate::status::{Error, Result};
use crate::sys::alloc::ExternalAllocator;

/// The swapper's settings (the Rust twin of the C `SwapperConfig`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Root of the swap files. DeepSpeed: `offload_param.nvme_path`. With `nvme_paths`
    /// set, it must be empty or the list's first entry.
    pub nvme_path: PathBuf,
    /// Roots on several drives, one rank folder each (DeepSpeed: `offload_param.nvme_path`
    /// as a list). Empty: `nvme_path` alone.
    pub nvme_paths: Vec<PathBuf>,
    /// This process's rank: its own folder.
    pub rank: u32,
    /// The element type stored.
    pub dtype: Dtype,
    /// Buffers in the pool. DeepSpeed: `offload_param.buffer_count` (5).
    pub buffer_count: u32,
    /// Elements per buffer. DeepSpeed: `offload_param.buffer_size` (1e8).
    pub buffer_numel: u64,
    /// Page-lock the pool. DeepSpeed: `offload_param.pin_memory` (false).
    pub pin_memory: bool,
    /// Keep a crc32c of every param, computed by the I/O workers as the bytes are written
    /// and checked as they are read back. Off by default: it costs about 11% of swap-in
    /// throughput on a 2-core machine at 2.5 GB/s (README, Benchmarks).
    pub verify_checksums: bool,
    /// The engine's settings. DeepSpeed: `aio`.
    pub io: IoConfig,
    /// Where the pool's memory comes from (default: page-aligned mmap).
    pub allocator: Option<ExternalAllocator>,
}

/// DeepSpeed's `offload_param.buffer_count`.
pub const DEFAULT_BUFFER_COUNT: u32 = 5;
/// DeepSpeed's `offload_param.buffer_size`.
pub const DEFAULT_BUFFER_NUMEL: u64 = 100_000_000;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            nvme_path: PathBuf::new(),
            nvme_paths: Vec::new(),
            rank: 0,
            dtype: Dtype::Fp16,
            buffer_count: DEFAULT_BUFFER_COUNT,
            buffer_numel: DEFAULT_BUFFER_NUMEL,
            pin_memory: false,
            verify_checksums: false,
            io: IoConfig::default(),
            allocator: None,
        }
    }
}

impl Settings {
    /// The folders of the drives: `nvme_paths`, or `nvme_path` alone.
    pub fn drive_paths(&self) -> Vec<PathBuf> {
        if self.nvme_paths.is_empty() {
            vec![self.nvme_path.clone()]
        } else {
            self.nvme_paths.clone()
        }
    }

    /// Checks the settings that the engine does not.
    pub fn validate(&self) -> Result<()> {
        if !self.nvme_paths.is_empty()
            && !self.nvme_path.as_os_str().is_empty()
            && self.nvme_path != self.nvme_paths[0]
        {
            return Err(Error::invalid(format!(
                "nvme_path {:?} and nvme_paths (starting with {:?}) are both set and disagree: set one",
                self.nvme_path, self.nvme_paths[0]
            )));
        }
        for p in self.drive_paths() {
            if p.as_os_str().is_empty() {
                return Err(Error::invalid("nvme_path is empty"));
            }
            if p.as_os_str().as_bytes().contains(&0) {
                return Err(Error::invalid(format!(
                    "nvme_path {p:?} contains a NUL byte, which no path can hold"
                )));
            }
        }
        if self.buffer_count == 0 {
            return Err(Error::invalid("buffer_count must be at least 1"));
        }
        if self.buffer_numel == 0 {
            return Err(Error::invalid("buffer_numel must be at least 1"));
        }
        self.io.validate()
    }

    /// Reads a DeepSpeed configuration: `aio` (block_size, queue_depth,
    /// intra_op_parallelism or thread_count, single_submit, overlap_events) and
    /// `zero_optimization.offload_param` (nvme_path, buffer_count, buffer_size,
    /// pin_memory). Missing keys take DeepSpeed's defaults; a key of the wrong type is an
    /// error naming it; `nvme_path` is required.
    pub fn from_deepspeed_json(text: &str, rank: u32, dtype: Dtype) -> Result<Settings> {
        let root = parse(text)?;
        let mut c = Settings {
            rank,
            dtype,
            ..Settings::default()
        };
        c.io = aio(&root, c.io)?;
        let offload = section(&root, &["zero_optimization", "offload_param"])?.ok_or_else(|| {
            Error::invalid("the configuration has no zero_optimization.offload_param section")
        })?;
        let paths = nvme_paths(offload, "zero_optimization.offload_param.nvme_path")?;
        c.nvme_path = paths[0].clone();
        if paths.len() > 1 {
            c.nvme_paths = paths;
        }
        if let Some(v) = integer(offload, "zero_optimization.offload_param.buffer_count")? {
            c.buffer_count = to_u32(v, "zero_optimization.offload_param.buffer_count")?;
        }
        if let Some(v) = integer(offload, "zero_optimization.offload_param.buffer_size")? {
            c.buffer_numel = v;
        }
        if let Some(v) = boolean(offload, "zero_optimization.offload_param.pin_memory")? {
            c.pin_memory = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// A DeepSpeed configuration's JSON text as an object.
pub(crate) fn parse(text: &str) -> Result<Value> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("the DeepSpeed configuration is not valid JSON: {e}")))?;
    if !root.is_object() {
        return Err(Error::invalid(
            "the DeepSpeed configuration must be a JSON object",
        ));
    }
    Ok(root)
}

/// Reads DeepSpeed's `aio` block over `io`: block_size, queue_depth,
/// intra_op_parallelism or thread_count, single_submit, overlap_events (use_gds is
/// refused). Missing keys keep `io`'s values. Shared by the readers of `offload_param`
/// and `offload_optimizer`.
pub fn aio(root: &Value, mut io: IoConfig) -> Result<IoConfig> {
    if let Some(aio) = section(root, &["aio"])? {
        if let Some(v) = integer(aio, "aio.block_size")? {
            io.block_size = v;
        }
        if let Some(v) = integer(aio, "aio.queue_depth")? {
            io.queue_depth = to_u32(v, "aio.queue_depth")?;
        }
        for key in ["aio.intra_op_parallelism", "aio.thread_count"] {
            if let Some(v) = integer(aio, key)? {
                io.thread_count = to_u32(v, key)?;
            }
        }
        if let Some(v) = boolean(aio, "aio.single_submit")? {
            io.single_submit = v;
        }
        if let Some(v) = boolean(aio, "aio.overlap_events")? {
            io.overlap_events = v;
        }
        if let Some(v) = boolean(aio, "aio.use_gds")? {
            if v {
                return Err(Error::new(
                    crate::Status::Unsupported,
                    "aio.use_gds (GPUDirect Storage) is not supported by libswapper",
                ));
            }
        }
    }
    Ok(io)
}

/// Reads `<section>.nvme_path` (`dotted` names it in messages): a non-empty string, or a
/// non-empty list of non-empty strings (one folder per drive). Shared by the readers of
/// `offload_param` and `offload_optimizer`.
pub fn nvme_paths(section: &Value, dotted: &str) -> Result<Vec<PathBuf>> {
    let one = |v: &Value| -> Result<PathBuf> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(PathBuf::from(s)),
            Value::String(_) => Err(Error::invalid(format!("{dotted} holds an empty path"))),
            other => Err(Error::invalid(format!(
                "{dotted} must be a string or a list of strings, not {other}"
            ))),
        }
    };
    match leaf(section, dotted) {
        None => Err(Error::invalid(format!("{dotted} is missing or empty"))),
        Some(Value::Array(list)) if list.is_empty() => {
            Err(Error::invalid(format!("{dotted} is an empty list")))
        }
        Some(Value::Array(list)) => list.iter().map(one).collect(),
        Some(Value::String(s)) if s.is_empty() => {
            Err(Error::invalid(format!("{dotted} is missing or empty")))
        }
        Some(v) => Ok(vec![one(v)?]),
    }
}

pub(crate) fn section<'a>(root: &'a Value, path: &[&str]) -> Result<Option<&'a Value>> {
    let mut v = root;
    for (i, key) in path.iter().enumerate() {
        match v.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(next @ Value::Object(_)) => v = next,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{} must be an object, not {other}",
                    path[..=i].join(".")
                )))
            }
        }
    }
    Ok(Some(v))
}

pub(crate) fn leaf<'a>(obj: &'a Value, dotted: &str) -> Option<&'a Value> {
    let key = dotted.rsplit('.').next().unwrap_or(dotted);
    obj.get(key).filter(|v| !v.is_null())
}

/// An integer key; DeepSpeed configurations often write sizes as `1e8`, so an integral
/// float is accepted.
pub(crate) fn integer(obj: &Value, dotted: &str) -> Result<Option<u64>> {
    let Some(v) = leaf(obj, dotted) else {
        return Ok(None);
    };
    if let Some(n) = v.as_u64() {
        return Ok(Some(n));
    }
    if let Some(f) = v.as_f64() {
        if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 {
            return Ok(Some(f as u64));
        }
    }
    Err(Error::invalid(format!(
        "{dotted} must be a non-negative integer, not {v}"
    )))
}

pub(crate) fn boolean(obj: &Value, dotted: &str) -> Result<Option<bool>> {
    match leaf(obj, dotted) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(Error::invalid(format!("{dotted} must be true or false, not {v}"))),
    }
}

fn to_u32(v: u64, key: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(format!("{key} {v} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deepspeed_config_with_defaults() {
        let c = Settings::from_deepspeed_json(
            r#"{"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/nvme"}}}"#,
            2,
            Dtype::Bf16,
        )
        .unwrap();
        assert_eq!(c.nvme_path, PathBuf::from("/nvme"));
        assert_eq!(c.rank, 2);
        assert_eq!(c.buffer_count, 5);
        assert_eq!(c.buffer_numel, 100_000_000);
        assert_eq!(c.io, IoConfig::default());
        let c = Settings::from_deepspeed_json(
            r#"{"aio": {"block_size": 262144, "queue_depth": 32, "thread_count": 2, "single_submit": true,
                "overlap_events": false},
               "zero_optimization": {"offload_param": {"nvme_path": "/x", "buffer_count": 4,
                "buffer_size": 1e7, "pin_memory": true, "max_in_cpu": 1e9}}}"#,
            0,
            Dtype::Fp16,
        )
        .unwrap();
        assert_eq!(
            (c.io.block_size, c.io.queue_depth, c.io.thread_count),
            (262144, 32, 2)
        );
        assert!(c.io.single_submit && !c.io.overlap_events && c.pin_memory);
        assert_eq!((c.buffer_count, c.buffer_numel), (4, 10_000_000));
    }

    #[test]
    fn nvme_path_may_be_a_list_of_drives() {
        let c = Settings::from_deepspeed_json(
            r#"{"zero_optimization": {"offload_param": {"nvme_path": ["/nvme0", "/nvme1"]}}}"#,
            0,
            Dtype::Fp16,
        )
        .unwrap();
        assert_eq!(
            c.drive_paths(),
            [PathBuf::from("/nvme0"), PathBuf::from("/nvme1")]
        );
        assert_eq!(c.nvme_path, PathBuf::from("/nvme0"));
        let one = Settings::from_deepspeed_json(
            r#"{"zero_optimization": {"offload_param": {"nvme_path": ["/nvme0"]}}}"#,
            0,
            Dtype::Fp16,
        )
        .unwrap();
        assert_eq!(one.drive_paths(), [PathBuf::from("/nvme0")]);
        for bad in [r#"[]"#, r#"["/a", 3]"#, r#"["/a", ""]"#, r#"{"a": 1}"#, r#"7"#] {
            let json = format!(r#"{{"zero_optimization": {{"offload_param": {{"nvme_path": {bad}}}}}}}"#);
            let e = Settings::from_deepspeed_json(&json, 0, Dtype::Fp16)
                .err()
                .unwrap();
            assert!(e.message().contains("offload_param.nvme_path"), "{bad}: {e}");
        }
        // The optimizer's section is read the same way.
        let v: Value = serde_json::from_str(r#"{"nvme_path": ["/a", "/b", "/c"]}"#).unwrap();
        assert_eq!(
            nvme_paths(&v, "zero_optimization.offload_optimizer.nvme_path")
                .unwrap()
                .len(),
            3
        );
        // Both fields set and disagreeing is refused.
        let s = Settings {
            nvme_path: "/x".into(),
            nvme_paths: vec!["/y".into()],
            ..Settings::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn wrong_types_are_named() {
        for (json, key) in [
            (
                r#"{"aio": {"block_size": "big"}, "zero_optimization": {"offload_param": {"nvme_path": "/x"}}}"#,
                "aio.block_size",
            ),
            (
                r#"{"aio": {"single_submit": 1}, "zero_optimization": {"offload_param": {"nvme_path": "/x"}}}"#,
                "aio.single_submit",
            ),
            (
                r#"{"zero_optimization": {"offload_param": {"nvme_path": 5}}}"#,
                "nvme_path",
            ),
            (
                r#"{"zero_optimization": {"offload_param": {"nvme_path": "/x", "buffer_size": 1.5}}}"#,
                "buffer_size",
            ),
            (r#"{"zero_optimization": []}"#, "zero_optimization"),
            (r#"{"zero_optimization": {"offload_param": {}}}"#, "nvme_path"),
            (r#"[1]"#, "JSON object"),
            (r#"{"#, "not valid JSON"),
        ] {
            let e = Settings::from_deepspeed_json(json, 0, Dtype::Fp16).unwrap_err();
            assert_eq!(e.status(), crate::Status::InvalidArgument, "{json}");
            assert!(e.message().contains(key), "{json}: {e}");
        }
    }

    #[test]
    fn an_nvme_path_with_a_nul_byte_is_an_invalid_argument() {
        let json = r#"{"zero_optimization": {"offload_param": {"nvme_path": "/tmp/a\u0000b"}}}"#;
        let e = Settings::from_deepspeed_json(json, 0, Dtype::Fp16).err().unwrap();
        assert_eq!(e.status(), crate::Status::InvalidArgument, "{e}");
        assert!(e.message().contains("NUL"), "{e}");
    }
}
