//! Sizes on the command line ("2GiB", "64M", "4096") and in the table.

use humansize::{format_size, BINARY};
use parse_size::Config;

/// Parses a byte count: a number with an optional suffix K, M, G, T (up to E), optionally
/// followed by "iB" or "B"; every suffix is binary (K, KiB and KB are all 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    const SIZES: Config = Config::new().with_binary();
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("invalid size {text:?}: a size cannot be negative"));
    }
    SIZES.parse_size(t).map_err(|e| {
        format!(
            "invalid size {text:?} ({e}): expected a number with an optional suffix K, M, G, T (or KiB, MiB, GiB, TiB)"
        )
    })
}

/// A byte count for people: "2 GiB", "1 MiB", "1.50 MiB", "12345 B".
pub fn human(bytes: u64) -> String {
    format_size(bytes, BINARY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MB"), Ok(8 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size(" 1 KiB "), Ok(1024));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("3X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn prints_sizes() {
        assert_eq!(human(2 << 30), "2 GiB");
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(1536 << 10), "1.50 MiB");
        assert_eq!(human(64 << 10), "64 KiB");
        assert_eq!(human(100), "100 B");
    }
}
