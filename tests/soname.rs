//! The shared library's DT_SONAME carries the soname version (cargo-c's rule: the whole
//! `0.MINOR` for 0.x releases, which promise no ABI stability across minor versions), and
//! the header announces the same one.

mod common;

use common::{dt_soname, lib_dir, soversion};

#[test]
fn dt_soname_is_libswapper_so_with_the_soname_version() {
    let lib = lib_dir().join("libswapper.so");
    assert!(
        lib.exists(),
        "no {}: run `cargo build --features fault-injection` first (scripts/test.sh does)",
        lib.display()
    );
    assert_eq!(dt_soname(&lib), format!("libswapper.so.{}", soversion()));
    let header = std::fs::read_to_string(common::root().join("include/swapper.h")).unwrap();
    let announced = format!("#define SWAPPER_SOVERSION \"{}\"", soversion());
    assert!(
        header.contains(&announced),
        "include/swapper.h lacks `{announced}`"
    );
}
