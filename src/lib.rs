//! libswapper: keep training tensors on NVMe and bring them back just in time.
//!
//! The layers, bottom up:
//! - [`sys`]: the unsafe boundary (aligned memory, files, io_uring, fault injection).
//! - [`io`]: the asynchronous I/O engine: operations split into `block_size`
//!   requests, spread over worker threads, `queue_depth` in flight each.
//! - [`memory_budget`]: what the process can page-lock (cgroups, MemAvailable,
//!   RLIMIT_MEMLOCK), checked before anything is pinned.
//! - [`store`]: the swap store under both swappers: locked rank folders on one or several
//!   drives, an engine per drive, extent files held open, placement and free space;
//! - [`swapper`]: the parameter swapper (params, buffer pool) over the store;
//!   [`convert`] turns fp32 into fp16 / bf16 for its partitioned path.
//! - [`optimizer`]: the optimizer-state swapper (sub-groups of fp32 tensors stepped
//!   through a page-locked ring) over the swap store [`store`].
//! - [`ffi`]: the C ABI; it checks pointers, catches panics, converts and delegates.
//!
//! Errors are [`Error`] values carrying a [`Status`] and a message; diagnostics go
//! through [`log`].

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

/// The one way a C integer becomes one of the crate's fieldless `#[repr(C)]` enums: gives
/// the enum `ALL` (every variant, in declaration order) and `from_raw(i32) -> Option<Self>`.
/// With a noun and a label per variant it also gives `name()` (the label) and
/// `from_c(i32) -> Result<Self>`, whose error names the accepted values ("invalid backend
/// value 7 (expected 0 auto, ...)"); with `c_names` and a C string per variant, `c_name()`.
/// Each label is written here once: no hand-written `match` repeats them.
macro_rules! c_enum {
    ($t:ident, c_names [$($v:ident $c_name:literal),+ $(,)?]) => {
        c_enum!($t, [$($v),+]);

        impl $t {
            /// The constant's name as it appears in the C header.
            pub fn c_name(self) -> &'static ::std::ffi::CStr {
                match self {
                    $($t::$v => $c_name),+
                }
            }
        }
    };
    ($t:ident, [$($v:ident),+ $(,)?]) => {
        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$t] = &[$($t::$v),+];

            /// The variant with this numeric value, if there is one.
            pub fn from_raw(raw: i32) -> Option<$t> {
                $t::ALL.iter().copied().find(|v| *v as i32 == raw)
            }
        }
    };
    ($t:ident, $what:literal, [$($v:ident $label:literal),+ $(,)?]) => {
        c_enum!($t, [$($v),+]);

        impl $t {
            /// The variant's short name, as the C API documents it and error messages
            /// and `SWAPPER_*` environment variables spell it.
            pub fn name(self) -> &'static str {
                match self {
                    $($t::$v => $label),+
                }
            }

            /// The variant with this numeric value; `SWAPPER_STATUS_INVALID_ARGUMENT`
            /// naming the accepted values otherwise.
            pub fn from_c(raw: i32) -> $crate::status::Result<$t> {
                $t::from_raw(raw).ok_or_else(|| {
                    let accepted: Vec<String> =
                        [$(format!("{} {}", $t::$v as i32, $label)),+].to_vec();
                    $crate::status::Error::invalid(format!(
                        "invalid {} value {raw} (expected {})",
                        $what,
                        accepted.join(", ")
                    ))
                })
            }
        }
    };
}

pub mod checksum;
mod claim;
pub mod config;
pub mod convert;
pub mod ffi;
pub mod io;
#[macro_use]
pub mod log;
pub mod memory_budget;
pub mod optimizer;
pub mod status;
pub mod store;
pub mod swapper;
pub mod sys;

pub use config::{Backend, DirectIo, IoConfig};
pub use convert::Dtype;
pub use status::{Error, Result, Status};
pub use swapper::{ParamStatus, Settings, Stats, Swapper};

/// The library's version, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where build.rs wrote the header generated from these sources (for the drift test).
#[doc(hidden)]
pub fn generated_header_path() -> &'static str {
    concat!(env!("OUT_DIR"), "/swapper.h")
}
