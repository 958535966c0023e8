//! Fuzz target: random sequences of C API calls with random arguments (the same
//! generator as the property test tests/api_sequence.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/api_driver.rs"]
mod api_driver;

fuzz_target!(|data: &[u8]| {
    let base = std::env::var_os("SWAPPER_FUZZ_DIR").unwrap_or_else(|| ".".into());
    let dir = tempfile::Builder::new().prefix("swapper-fuzz-").tempdir_in(base).expect("temp dir");
    api_driver::run(data, dir.path());
});
