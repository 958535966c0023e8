//! Every exported `swapper_*` function runs its body inside the panic boundary
//! (`ffi_boundary!`, i.e. `guard`/`guard_value` of src/ffi/boundary.rs), directly or
//! through a helper that does, unless it is on the short list of trivial functions below,
//! which cannot panic. Read from the source text of src/ffi/*.rs, so a new export that
//! forgets the boundary fails here.

mod common;

/// Exports that need no boundary, and why.
const TRIVIAL: &[(&str, &str)] = &[
    ("swapper_version", "returns a static string"),
    ("swapper_last_error", "returns the thread's last-error pointer"),
    (
        "swapper_status_name",
        "a match on an integer returning static strings",
    ),
    ("swapper_io_alignment", "returns a constant"),
    ("swapper_io_live_handles", "reads a registry's length"),
    ("swapper_live_handles", "reads a registry's length"),
    (
        "swapper_io_config_default",
        "writes a constant struct through a checked pointer",
    ),
    (
        "swapper_config_default",
        "writes a constant struct through a checked pointer",
    ),
    (
        "swapper_optimizer_config_default",
        "writes a constant struct through a checked pointer",
    ),
    ("swapper_optimizer_live_handles", "reads a registry's length"),
];

/// Helpers of src/ffi/*.rs that exports call instead of writing `ffi_boundary!` themselves;
/// each must itself contain `ffi_boundary!(` (checked in the export's own file).
const HELPERS: &[&str] = &["getter", "submit"];

const BOUNDARY: &str = "ffi_boundary!(";

/// (file, name, text up to the next export) of every export in src/ffi/.
fn exports() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let dir = common::root().join("src/ffi");
    for entry in std::fs::read_dir(&dir).expect("src/ffi is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("an ffi source is readable");
        let starts: Vec<usize> = text
            .match_indices("extern \"C\" fn swapper_")
            .map(|(i, _)| i)
            .collect();
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(text.len());
            let chunk = &text[start..end];
            let name: String = chunk["extern \"C\" fn ".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((path.display().to_string(), name, chunk.to_string()));
        }
    }
    out
}

/// The source text of the helper function `fn NAME` (up to its closing brace) in FILE.
fn helper_body(file: &str, helper: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let at = [format!("fn {helper}("), format!("fn {helper}<")]
        .iter()
        .find_map(|d| text.find(d.as_str()))?;
    let rest = &text[at..];
    let end = rest.find("\n}\n").map_or(rest.len(), |e| e + 3);
    Some(rest[..end].to_string())
}

#[test]
fn every_export_goes_through_the_panic_boundary() {
    let exports = exports();
    assert!(
        exports.len() > 40,
        "found only {} exports: is the scan broken?",
        exports.len()
    );
    let mut missing = Vec::new();
    for (file, name, body) in &exports {
        if TRIVIAL.iter().any(|(t, _)| t == name) {
            continue;
        }
        if body.contains(BOUNDARY) {
            continue;
        }
        let via_helper = HELPERS.iter().any(|h| {
            body.contains(&format!("{h}(")) && helper_body(file, h).is_some_and(|hb| hb.contains(BOUNDARY))
        });
        if !via_helper {
            missing.push(format!("{name} ({file})"));
        }
    }
    assert!(
        missing.is_empty(),
        "exports outside the panic boundary: {missing:?}"
    );
}

#[test]
fn the_trivial_list_names_real_exports_only() {
    let exports = exports();
    for (name, _) in TRIVIAL {
        assert!(
            exports.iter().any(|(_, n, _)| n == name),
            "{name} is on the trivial list but is no export"
        );
    }
}
