//! The optimizer swapper's settings from a DeepSpeed configuration: the `aio` block and
//! `zero_optimization.offload_optimizer`, read as DeepSpeed reads them, with the readers
//! shared with the parameter swapper's (`crate::swapper::config`).
//!
//! | DeepSpeed key | here |
//! | --- | --- |
//! | `offload_optimizer.device` | must be `"nvme"` when given (else nothing is swapped: refused) |
//! | `offload_optimizer.nvme_path` | `nvme_paths`: a string, or a list of strings (one folder per drive) |
//! | `offload_optimizer.buffer_count` (default 4) | `ring_bytes` = buffer_count x the largest tensor's bytes (4 KiB-aligned): DeepSpeed's swap buffers each hold one tensor of the largest sub-group, and so does the ring's memory |
//! | `offload_optimizer.ring_bytes` (libswapper's) | `ring_bytes` given outright, instead of the product above |
//! | `offload_optimizer.pipeline_read` (default false) | true: `read_ahead` 0, as many sub-groups as the ring holds; false: `read_ahead` 1 |
//! | `offload_optimizer.pipeline_write` (default false) | checked; write-behinds always overlap the next step, in queues of their own, within the ring |
//! | `offload_optimizer.fast_init` (default false) | checked; first-time state is always the file system's zeros (no zeros through the CPU) |
//! | `offload_optimizer.pin_memory` (default false) | `pin_memory` |
//! | `offload_optimizer.libswapper_adopt` (libswapper's, default false) | `adopt`: keep the rank folders and adopt what the last flush made durable |
//! | `offload_optimizer.libswapper_flush_at_end_step` (libswapper's, default false) | `flush_at_end_step`: every `end_step` flushes |
//! | `zero_optimization.sub_group_size` | the largest tensor's elements, when the caller does not know them |
//! | `aio.*` | `io`, as for the parameter swapper |

use serde_json::Value;

use crate::status::{Error, Result};
use crate::swapper::config::{aio, boolean, integer, nvme_paths, parse, section};

use super::ring::aligned;
use super::subgroup::ELEM;
use super::OptimizerSettings;

/// DeepSpeed's default `offload_optimizer.buffer_count`.
pub const DEEPSPEED_BUFFER_COUNT: u64 = 4;

impl OptimizerSettings {
    /// Reads a DeepSpeed configuration (see the module doc's table). `largest_numel` is
    /// the elements of the largest tensor of any sub-group (DeepSpeed's `largest_numel`,
    /// which its optimizer swapper is built with); 0 takes
    /// `zero_optimization.sub_group_size` from the configuration. A key of the wrong type
    /// is an error naming it; `nvme_path` is required, and so is one of `largest_numel`,
    /// `offload_optimizer.ring_bytes` or `zero_optimization.sub_group_size`.
    pub fn from_deepspeed_json(text: &str, rank: u32, largest_numel: u64) -> Result<OptimizerSettings> {
        let root = parse(text)?;
        let d = OptimizerSettings::default();
        let io = aio(&root, d.io)?;
        const S: &str = "zero_optimization.offload_optimizer";
        let key = |k: &str| format!("{S}.{k}");
        let o = section(&root, &["zero_optimization", "offload_optimizer"])?
            .ok_or_else(|| Error::invalid(format!("the configuration has no {S} section")))?;
        match o.get("device") {
            None | Some(Value::Null) => {}
            Some(Value::String(dev)) if dev == "nvme" => {}
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{S}.device is {other}: the optimizer state goes to NVMe only with \"nvme\""
                )))
            }
        }
        let nvme_paths = nvme_paths(o, &key("nvme_path"))?;
        let buffer_count = integer(o, &key("buffer_count"))?.unwrap_or(DEEPSPEED_BUFFER_COUNT);
        if buffer_count == 0 {
            return Err(Error::invalid(format!("{S}.buffer_count must be at least 1")));
        }
        let pipeline_read = boolean(o, &key("pipeline_read"))?.unwrap_or(false);
        // Checked, nothing to set (see the module doc).
        boolean(o, &key("pipeline_write"))?;
        boolean(o, &key("fast_init"))?;
        let pin_memory = boolean(o, &key("pin_memory"))?.unwrap_or(false);
        let adopt = boolean(o, &key("libswapper_adopt"))?.unwrap_or(d.adopt);
        let flush_at_end_step =
            boolean(o, &key("libswapper_flush_at_end_step"))?.unwrap_or(d.flush_at_end_step);
        let ring_bytes = match integer(o, &key("ring_bytes"))? {
            Some(0) => return Err(Error::invalid(format!("{S}.ring_bytes must be at least 1"))),
            Some(b) => b,
            None => {
                let numel = match largest_numel {
                    0 => section(&root, &["zero_optimization"])?
                        .map(|z| integer(z, "zero_optimization.sub_group_size"))
                        .transpose()?
                        .flatten()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "the ring's size is unknown: pass the largest tensor's numel, or set {S}.ring_bytes (bytes) or zero_optimization.sub_group_size"
                            ))
                        })?,
                    n => n,
                };
                numel
                    .checked_mul(ELEM)
                    .map(aligned)
                    .and_then(|b| b.checked_mul(buffer_count))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{S}.buffer_count {buffer_count} x {numel} elements overflows"
                        ))
                    })?
            }
        };
        let s = OptimizerSettings {
            nvme_paths,
            rank,
            ring_bytes,
            read_ahead: if pipeline_read { 0 } else { 1 },
            pin_memory,
            io,
            adopt,
            flush_at_end_step,
            ..d
        };
        s.io.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn read(json: &str, largest: u64) -> Result<OptimizerSettings> {
        OptimizerSettings::from_deepspeed_json(json, 3, largest)
    }

    #[test]
    fn deepspeeds_block_maps_to_the_settings() {
        let s = read(
            r#"{"aio": {"block_size": 262144, "queue_depth": 16, "intra_op_parallelism": 2},
                "zero_optimization": {"offload_optimizer": {"device": "nvme", "nvme_path": ["/a", "/b"],
                  "buffer_count": 8, "pipeline_read": true, "pipeline_write": true, "fast_init": false, "pin_memory": true}}}"#,
            1000,
        )
        .unwrap();
        assert_eq!(s.nvme_paths, vec![std::path::PathBuf::from("/a"), "/b".into()]);
        assert_eq!(s.rank, 3);
        assert_eq!(s.ring_bytes, 8 * 4096);
        assert_eq!(s.read_ahead, 0);
        assert!(s.pin_memory);
        assert_eq!(
            (s.io.block_size, s.io.queue_depth, s.io.thread_count),
            (262144, 16, 2)
        );
    }

    #[test]
    fn defaults_are_deepspeeds_and_the_ring_can_be_given_or_come_from_the_sub_group_size() {
        let s = read(
            r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n"}}}"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(s.ring_bytes, DEEPSPEED_BUFFER_COUNT * (4 << 20));
        assert_eq!(s.read_ahead, 1);
        assert!(!s.pin_memory);
        assert!(!s.adopt && !s.flush_at_end_step);
        let s = read(
            r#"{"zero_optimization": {"sub_group_size": 1e6, "offload_optimizer": {"nvme_path": "/n", "buffer_count": 5}}}"#,
            0,
        )
        .unwrap();
        assert_eq!(s.ring_bytes, 5 * aligned(4_000_000));
        let s = read(
            r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "ring_bytes": 12345}}}"#,
            7,
        )
        .unwrap();
        assert_eq!(s.ring_bytes, 12345);
    }

    #[test]
    fn libswappers_resume_keys_set_adopt_and_the_flush_at_the_end_of_a_step() {
        for (adopt, flush) in [(true, false), (false, true), (true, true), (false, false)] {
            let s = read(
                &format!(
                    r#"{{"zero_optimization": {{"offload_optimizer": {{"nvme_path": "/n",
                      "libswapper_adopt": {adopt}, "libswapper_flush_at_end_step": {flush}}}}}}}"#
                ),
                1,
            )
            .unwrap();
            assert_eq!((s.adopt, s.flush_at_end_step), (adopt, flush));
        }
    }

    #[test]
    fn bad_blocks_are_refused_naming_the_key() {
        for (json, largest, words) in [
            (
                r#"{"zero_optimization": {}}"#,
                1,
                "no zero_optimization.offload_optimizer",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "device": "cpu"}}}"#,
                1,
                "device",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {}}}"#,
                1,
                "nvme_path",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "buffer_count": 0}}}"#,
                1,
                "buffer_count",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "buffer_count": "4"}}}"#,
                1,
                "buffer_count",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "pipeline_read": 1}}}"#,
                1,
                "pipeline_read",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "fast_init": "yes"}}}"#,
                1,
                "fast_init",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "libswapper_adopt": 1}}}"#,
                1,
                "offload_optimizer.libswapper_adopt",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "libswapper_flush_at_end_step": "true"}}}"#,
                1,
                "offload_optimizer.libswapper_flush_at_end_step",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n"}}}"#,
                0,
                "ring's size is unknown",
            ),
            (
                r#"{"zero_optimization": {"offload_optimizer": {"nvme_path": "/n", "buffer_count": 1e19}}}"#,
                1 << 40,
                "overflows",
            ),
            (
                r#"{"aio": {"queue_depth": -1}, "zero_optimization": {"offload_optimizer": {"nvme_path": "/n"}}}"#,
                1,
                "aio.queue_depth",
            ),
            ("[]", 1, "JSON object"),
        ] {
            let e = read(json, largest).unwrap_err();
            assert_eq!(e.status(), Status::InvalidArgument, "{json}");
            assert!(e.message().contains(words), "{json}: {}", e.message());
        }
    }
}
