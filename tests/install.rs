//! `make install` as a C library: the installed files, then io_roundtrip.c built by a
//! consumer that knows nothing but pkg-config (and, where cmake is installed, a CMake
//! project using pkg_check_modules), linked against the installed copy and run.

mod common;

use common::{have, lib_dir, root};

use std::path::{Path, PathBuf};
use std::process::Command;

fn ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_example(bin: &Path) {
    let dir = common::disk_dir();
    let stdout = ok(Command::new(bin).arg(dir.path()), &bin.display().to_string());
    assert!(stdout.contains(": ok"), "no success line from {}", bin.display());
}

/// `make install PREFIX=<prefix>`, reusing the library cargo just built (BUILD=0): a
/// nested cargo build would wait on the lock this test run holds.
fn make_install(prefix: &Path) {
    ok(
        Command::new("make")
            .arg("-C")
            .arg(root())
            .arg("install")
            .arg(format!("PREFIX={}", prefix.display()))
            .arg("BUILD=0")
            .arg(format!("LIB_DIR={}", lib_dir().display())),
        "make install",
    );
}

#[test]
fn make_install_then_consume_with_pkg_config_and_cmake() {
    assert!(
        have("make"),
        "make is needed for `make install`: install it (apt-get install make)"
    );
    let work = common::disk_dir();
    let prefix = work.path().join("prefix");
    make_install(&prefix);

    let lib = prefix.join("lib");
    let version = env!("CARGO_PKG_VERSION");
    let sover = common::soversion();
    let real = lib.join(format!("libswapper.so.{version}"));
    assert!(real.is_file() && !real.is_symlink(), "{} missing", real.display());
    assert_eq!(common::dt_soname(&real), format!("libswapper.so.{sover}"));
    let link =
        |name: &str| std::fs::read_link(lib.join(name)).unwrap_or_else(|e| panic!("{name}: not a link: {e}"));
    if sover != version {
        assert_eq!(
            link(&format!("libswapper.so.{sover}")),
            PathBuf::from(format!("libswapper.so.{version}"))
        );
    }
    assert_eq!(
        link("libswapper.so"),
        PathBuf::from(format!("libswapper.so.{sover}"))
    );
    assert!(lib.join("libswapper.a").is_file());
    for h in ["swapper.h", "swapper.hpp"] {
        let installed = std::fs::read(prefix.join("include").join(h)).unwrap();
        assert_eq!(
            installed,
            std::fs::read(root().join("include").join(h)).unwrap(),
            "{h} differs"
        );
    }
    let pc = std::fs::read_to_string(lib.join("pkgconfig/swapper.pc")).unwrap();
    assert!(pc.contains(&format!("prefix={}", prefix.display())), "{pc}");
    assert!(pc.contains(&format!("Version: {version}")), "{pc}");
    assert!(pc.contains("Libs.private: -lpthread -ldl -lm"), "{pc}");

    // Installing again over the same prefix works (symlinks replaced).
    make_install(&prefix);

    let example = root().join("examples-c/io_roundtrip.c");
    let pkg_config_path = lib.join("pkgconfig");
    assert!(
        have("pkg-config"),
        "pkg-config is needed for the consumer build: install it (apt-get install pkg-config)"
    );
    let flags = ok(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "swapper"])
            .env("PKG_CONFIG_PATH", &pkg_config_path),
        "pkg-config",
    );
    let bin = work.path().join("io_roundtrip_pc");
    ok(
        Command::new("cc")
            .arg("-std=c11")
            .arg(&example)
            .args(flags.split_whitespace())
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&bin),
        "cc with pkg-config flags",
    );
    run_example(&bin);

    assert!(
        have("cmake"),
        "cmake is needed for the CMake consumer: install it (apt-get install cmake)"
    );
    let project = work.path().join("cmake-consumer");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.13)\n\
             project(swapper_consumer C)\n\
             find_package(PkgConfig REQUIRED)\n\
             pkg_check_modules(SWAPPER REQUIRED IMPORTED_TARGET swapper)\n\
             add_executable(io_roundtrip \"{}\")\n\
             set_property(TARGET io_roundtrip PROPERTY C_STANDARD 11)\n\
             target_link_libraries(io_roundtrip PRIVATE PkgConfig::SWAPPER)\n",
            example.display()
        ),
    )
    .unwrap();
    let build = project.join("build");
    ok(
        Command::new("cmake")
            .arg("-S")
            .arg(&project)
            .arg("-B")
            .arg(&build)
            .env("PKG_CONFIG_PATH", &pkg_config_path),
        "cmake configure",
    );
    ok(Command::new("cmake").arg("--build").arg(&build), "cmake build");
    run_example(&build.join("io_roundtrip"));
}
