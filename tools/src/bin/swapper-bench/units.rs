//! Sizes on the command line ("2GiB", "64M", "4096") and in the table.

/// Parses a byte count: an integer with an optional binary suffix K, M, G, T, optionally
/// followed by "iB" or "B" (K, KiB and KB are all 1024), or a plain "B".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number with an optional suffix K, M, G, T (or KiB, MiB, GiB, TiB)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: the number is too large"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown suffix {other:?} (use K, M, G, T, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// A byte count for people: "2 GiB", "1 MiB", "12345 B".
pub fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift {
            return if bytes % (1 << shift) == 0 {
                format!("{} {unit}", bytes >> shift)
            } else {
                format!("{:.2} {unit}", bytes as f64 / (1u64 << shift) as f64)
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size(" 1 KiB "), Ok(1024));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("3X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn prints_sizes() {
        assert_eq!(human(2 << 30), "2 GiB");
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(1536 << 10), "1.50 MiB");
        assert_eq!(human(100), "100 B");
    }
}
