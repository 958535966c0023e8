//! The committed header must be exactly what cbindgen generates from the sources.

#[test]
fn committed_header_matches_the_sources() {
    let generated =
        std::fs::read_to_string(swapper::generated_header_path()).expect("build.rs wrote the header");
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/swapper.h");
    let committed = std::fs::read_to_string(committed_path).expect("include/swapper.h is committed");
    assert!(
        generated == committed,
        "include/swapper.h differs from the header generated from the sources ({}). \
         Build once outside CI (cargo build) to refresh it, and commit it.",
        swapper::generated_header_path()
    );
}

#[test]
fn every_exported_function_is_documented() {
    let header = std::fs::read_to_string(swapper::generated_header_path()).unwrap();
    let lines: Vec<&str> = header.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let is_decl = line.contains("swapper_")
            && line.contains('(')
            && !line.starts_with(' ')
            && !line.starts_with('#');
        if !is_decl || line.trim_start().starts_with('*') {
            continue;
        }
        assert!(
            i > 0 && lines[i - 1].trim() == "*/",
            "no doc comment before: {line}"
        );
    }
}
