//! The C API's tests: every program in examples-c/ is compiled with warnings as errors
//! against include/ and the freshly built library, then run and checked; under
//! valgrind too where valgrind is installed.

mod common;

use common::{have, lib_dir, root};

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles one example; returns the binary's path.
pub fn compile(source: &str, out_dir: &Path) -> PathBuf {
    let src = root().join("examples-c").join(source);
    let cpp = source.ends_with(".cpp");
    let bin = out_dir.join(Path::new(source).file_stem().unwrap());
    let built = lib_dir().join("libswapper.so");
    assert!(
        built.exists(),
        "no {}: run `cargo build --features fault-injection` first (scripts/test.sh does)",
        built.display()
    );
    // The library's soname is libswapper.so.<soversion>: link against a folder that has both names.
    let lib = out_dir.join("lib");
    if !lib.exists() {
        std::fs::create_dir(&lib).unwrap();
        for name in ["libswapper.so", &format!("libswapper.so.{}", common::soversion())] {
            std::os::unix::fs::symlink(&built, lib.join(name)).unwrap();
        }
    }
    let mut cmd = Command::new(if cpp { "c++" } else { "cc" });
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-O1"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lswapper", "-lpthread"]);
    let out = cmd.output().expect("a C compiler (cc) is installed");
    assert!(
        out.status.success(),
        "compiling {source} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Runs a compiled example with a temporary folder; under valgrind when `valgrind` is true.
pub fn run(bin: &Path, valgrind: bool) {
    let dir = common::disk_dir();
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        // valgrind cannot see what the kernel writes through io_uring: the blocking backend
        // lets it check every byte.
        c.env("SWAPPER_IO_BACKEND", "blocking");
        c.args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--quiet",
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{} {}failed ({}):\nstdout:\n{}\nstderr:\n{}",
        bin.display(),
        if valgrind { "under valgrind " } else { "" },
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": ok"),
        "no success line"
    );
}

fn examples() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("examples-c"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".c") || n.ends_with(".cpp"))
        .collect();
    v.sort();
    v
}

#[test]
fn c_examples_build_and_run() {
    let out = tempfile::tempdir().unwrap();
    let list = examples();
    assert!(!list.is_empty());
    for source in list {
        let bin = compile(&source, out.path());
        run(&bin, false);
    }
}

#[test]
fn c_examples_are_clean_under_valgrind() {
    if !have("valgrind") {
        eprintln!("valgrind is not installed: skipping (CI installs it)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    for source in examples() {
        let bin = compile(&source, out.path());
        run(&bin, true);
    }
}
