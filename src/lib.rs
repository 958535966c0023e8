//! libswapper: keep training tensors on NVMe and bring them back just in time.
//!
//! The layers, bottom up:
//! - [`sys`]: the unsafe boundary (aligned memory, files, io_uring, fault injection).
//! - [`io`]: the asynchronous I/O engine: operations split into `block_size`
//!   requests, spread over worker threads, `queue_depth` in flight each.
//! - [`swapper`]: the parameter swapper (params, buffer pool, swap folder) over the engine;
//!   [`convert`] turns fp32 into fp16 / bf16 for its partitioned path.
//! - [`ffi`]: the C ABI; it checks pointers, catches panics, converts and delegates.
//!
//! Errors are [`Error`] values carrying a [`Status`] and a message; diagnostics go
//! through [`log`].

pub mod config;
pub mod convert;
pub mod ffi;
pub mod io;
#[macro_use]
pub mod log;
pub mod status;
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
