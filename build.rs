//! Generates the C header from the Rust sources with cbindgen.
//!
//! The header is always written to `$OUT_DIR/swapper.h`; the test suite compares it with
//! the committed `include/swapper.h` and fails on any difference. Outside CI (the
//! environment variable `CI` unset) the committed copy is refreshed too, so a developer
//! only has to commit it.

use std::path::PathBuf;

fn main() {
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=CI");
    // A versioned soname, so that installed copies can live side by side.
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libswapper.so.{major}");

    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen can generate the header");
    let generated = out_dir.join("swapper.h");
    bindings.write_to_file(&generated);
    if std::env::var_os("CI").is_none() {
        bindings.write_to_file(crate_dir.join("include").join("swapper.h"));
    }
}
