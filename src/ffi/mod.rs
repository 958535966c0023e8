//! The C ABI. Every export that can fail runs its body in [`ffi_boundary!`](crate::ffi_boundary)
//! (the panic boundary and the thread's last error); getters go through
//! [`boundary::getter`]. The body checks its pointers, converts C values to Rust ones,
//! calls the core and converts the result. Nothing else lives here.
//!
//! - [`boundary`]: the panic boundary, the thread's last error, pointer checks.
//! - [`common`]: version, status names, last error, logging.
//! - [`alloc`]: aligned (page-locked) allocations for callers.
//! - [`io`]: the I/O engine handle, `SwapperIo`.
//! - [`swapper`]: the parameter swapper handle, `Swapper`.
//! - [`optimizer`]: the optimizer-state swapper handle, `SwapperOptimizer`.

#[macro_use]
pub mod boundary;
pub mod alloc;
pub mod common;
pub mod io;
pub mod optimizer;
pub mod swapper;
