//! Human sizes for command lines and reports: `4096`, `64K`, `1M`, `64G`, `2T`
//! (binary multiples; an optional `iB`/`B` suffix is accepted), and the
//! inverse for display.

/// Parse a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        Some('P' | 'p') => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 64K, 1M, 64G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Format bytes with the largest binary unit that divides them evenly, or
/// with one decimal otherwise.
pub fn format_size(b: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (u, sh) in UNITS {
        if b >= 1u64 << sh {
            return if b % (1u64 << sh) == 0 {
                format!("{}{u}", b >> sh)
            } else {
                format!("{:.1}{u}", b as f64 / (1u64 << sh) as f64)
            };
        }
    }
    format!("{b}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999P").is_err());
        assert_eq!(format_size(64 << 30), "64G");
        assert_eq!(format_size(1536), "1.5K");
        assert_eq!(format_size(100), "100B");
    }
}
