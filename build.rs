//! Generates the C header from the Rust sources with cbindgen, and sets the soname.
//!
//! The header is written to `$OUT_DIR/swapper.h` only: a build never writes into the
//! source tree. `tests/header.rs` compares it with the committed `include/swapper.h` and
//! fails on any difference. To refresh the committed copy after changing the C API, run
//! `scripts/gen-header.sh` (it builds with `SWAPPER_REGENERATE_HEADER=1`, the one case in
//! which this script also writes `include/swapper.h`).
//!
//! The header starts with `SWAPPER_VERSION_MAJOR/MINOR/PATCH` and `SWAPPER_VERSION`, taken
//! from Cargo.toml's version.

use std::path::PathBuf;

/// The soname's version suffix, by cargo-c's rule: the part of the version that semver
/// allows to break the ABI (`1.2.3` -> `1`, `0.1.2` -> `0.1`, `0.0.3` -> `0.0.3`).
fn soname_version(major: &str, minor: &str, patch: &str) -> String {
    match (major, minor) {
        ("0", "0") => format!("0.0.{patch}"),
        ("0", _) => format!("0.{minor}"),
        _ => major.to_string(),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}

fn main() {
    let crate_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/swapper.h");
    println!("cargo:rerun-if-env-changed=SWAPPER_REGENERATE_HEADER");

    let (major, minor, patch) = (
        env("CARGO_PKG_VERSION_MAJOR"),
        env("CARGO_PKG_VERSION_MINOR"),
        env("CARGO_PKG_VERSION_PATCH"),
    );
    let version = env("CARGO_PKG_VERSION");
    let sover = soname_version(&major, &minor, &patch);
    // A versioned soname, so that installed copies of incompatible versions can live side
    // by side; `make` and `make install` create the matching file name.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libswapper.so.{sover}");
    // The one place the rule is applied: the tests read it as env!("SWAPPER_SOVERSION"),
    // the Makefile from the header's SWAPPER_SOVERSION below.
    println!("cargo:rustc-env=SWAPPER_SOVERSION={sover}");

    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let version_macros = format!(
        "\n/**\n * The version of libswapper this header belongs to; swapper_version() gives the\n * version of the library loaded at run time.\n */\n\
         #define SWAPPER_VERSION_MAJOR {major}\n\
         #define SWAPPER_VERSION_MINOR {minor}\n\
         #define SWAPPER_VERSION_PATCH {patch}\n\
         #define SWAPPER_VERSION \"{version}\"\n\
         /** The soname's version: libswapper.so.SWAPPER_SOVERSION. */\n\
         #define SWAPPER_SOVERSION \"{sover}\""
    );
    config.after_includes = Some(match config.after_includes.take() {
        Some(existing) => format!("{existing}\n{version_macros}"),
        None => version_macros,
    });
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen can generate the header");
    bindings.write_to_file(out_dir.join("swapper.h"));
    if std::env::var_os("SWAPPER_REGENERATE_HEADER").is_some_and(|v| v == "1") {
        bindings.write_to_file(crate_dir.join("include").join("swapper.h"));
    }
}
