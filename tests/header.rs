//! The committed header must be exactly what cbindgen generates from the sources (build.rs
//! writes it into OUT_DIR only, never into include/), and its version macros must be
//! Cargo.toml's version, as `swapper_version()` is.

use std::ffi::CStr;

fn committed_header() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/swapper.h");
    std::fs::read_to_string(path).expect("include/swapper.h is committed")
}

/// The value of `#define NAME value` in `header`.
fn define<'a>(header: &'a str, name: &str) -> &'a str {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the header has no #define {name}"))
        .trim()
}

#[test]
fn committed_header_matches_the_sources() {
    let generated =
        std::fs::read_to_string(swapper::generated_header_path()).expect("build.rs wrote the header");
    let committed = committed_header();
    assert!(
        generated == committed,
        "include/swapper.h differs from the header generated from the sources ({}). \
         Run scripts/gen-header.sh to refresh it, and commit it.",
        swapper::generated_header_path()
    );
}

#[test]
fn version_macros_and_swapper_version_are_cargo_tomls_version() {
    let header = committed_header();
    assert_eq!(
        define(&header, "SWAPPER_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        define(&header, "SWAPPER_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        define(&header, "SWAPPER_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    let quoted = format!("\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(define(&header, "SWAPPER_VERSION"), quoted);
    // SAFETY: swapper_version returns a static NUL-terminated string.
    let runtime = unsafe { CStr::from_ptr(swapper::ffi::common::swapper_version()) };
    assert_eq!(runtime.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_exported_function_is_documented() {
    let header =
        std::fs::read_to_string(swapper::generated_header_path()).expect("build.rs wrote the header");
    let lines: Vec<&str> = header.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let is_decl = line.contains("swapper_")
            && line.contains('(')
            && !line.starts_with(' ')
            && !line.starts_with('#');
        if !is_decl || line.trim_start().starts_with('*') {
            continue;
        }
        // cbindgen puts SWAPPER_MUST_USE on a line of its own before a long declaration.
        let above = match i {
            0 => "",
            _ if lines[i - 1].trim() == "SWAPPER_MUST_USE" && i > 1 => lines[i - 2],
            _ => lines[i - 1],
        };
        assert!(above.trim() == "*/", "no doc comment before: {line}");
    }
}

/// Every name the header puts into a C program's namespace (macros, types, functions,
/// enum values) carries the library's prefix: a bare `FORMAT` or `MAX_BYTES` macro
/// would rename a user's own identifiers. cbindgen exports every `pub const` of the
/// crate, so a new one leaks unless cbindgen.toml excludes it; this catches it before
/// anyone's build breaks.
#[test]
fn every_name_the_header_declares_carries_the_prefix() {
    let header = committed_header();
    let prefixed = |name: &str| {
        ["SWAPPER", "swapper_", "Swapper"]
            .iter()
            .any(|p| name.starts_with(p))
    };
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut bare = Vec::new();
    for line in header.lines() {
        let line = line.trim();
        let name = if let Some(rest) = line.strip_prefix("#define ") {
            ident(rest)
        } else if let Some(at) = line.find("(*").filter(|_| line.starts_with("typedef")) {
            // A function pointer type.
            ident(&line[at + 2..])
        } else if let Some(rest) = line.strip_prefix("} ") {
            // The name of a typedef'd enum or struct.
            ident(rest)
        } else if line.starts_with(|c: char| c.is_ascii_uppercase())
            && (line.ends_with(',') || line.contains(" = "))
        {
            // An enum value.
            ident(line)
        } else if let Some(open) = line.find('(').filter(|_| !line.starts_with(['*', '/', '#'])) {
            // A function declaration: the identifier before the parenthesis.
            let before = line[..open].trim_end();
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            before[start..].to_string()
        } else {
            continue;
        };
        if !name.is_empty() && !prefixed(&name) {
            bare.push(format!("{name}  ({line})"));
        }
    }
    assert!(
        bare.is_empty(),
        "names without the SWAPPER_/swapper_/Swapper prefix in include/swapper.h:\n{}",
        bare.join("\n")
    );
}
