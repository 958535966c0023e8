//! examples-c/config_flags.c built with the undefined-behaviour sanitizer
//! (`-fsanitize=undefined`, every finding fatal): flag bytes other than 0 and 1 in the
//! C-filled structs must be read as true, and nothing libswapper hands back may be an
//! invalid `bool` for C.

mod common;

use common::{lib_dir, root};
use std::process::Command;

#[test]
fn flag_bytes_other_than_0_and_1_are_true_under_ubsan() {
    let out_dir = tempfile::tempdir().unwrap();
    let built = lib_dir().join("libswapper.so");
    assert!(
        built.exists(),
        "no {}: run `cargo build --features fault-injection` first (scripts/test.sh does)",
        built.display()
    );
    let lib = out_dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    for name in [
        "libswapper.so".to_string(),
        format!("libswapper.so.{}", env!("CARGO_PKG_VERSION_MAJOR")),
    ] {
        std::os::unix::fs::symlink(&built, lib.join(name)).unwrap();
    }
    let bin = out_dir.path().join("config_flags");
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(["-fsanitize=undefined", "-fno-sanitize-recover=all"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join("examples-c/config_flags.c"))
        .arg("-o")
        .arg(&bin)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lswapper", "-lpthread"])
        .output()
        .expect("a C compiler (cc) is installed");
    assert!(
        cc.status.success(),
        "compiling config_flags.c with -fsanitize=undefined failed (install gcc's libubsan):\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let dir = common::disk_dir();
    let out = Command::new(&bin).arg(dir.path()).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("config_flags: ok"),
        "config_flags failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
