//! The kernel command line (QEMU's `-append`): `key=value` words and `memparse` sizes.
//!
//! The boot script passes the machine's RAM size as `mmkit.expect_mem=512M`, so the kernels can
//! check the firmware map against what QEMU was asked for rather than against a constant.

/// The value of the last `key=value` word on `cmdline` (the last one wins, as in Linux's
/// `early_param` handling), or `None` if the key does not occur.
pub fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// A size in Linux `memparse` notation: decimal digits with an optional `K`, `M`, `G` or `T`
/// suffix (either case). `None` if malformed or if it overflows 64 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        b't' | b'T' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    value.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_finds_the_last_value_of_a_key() {
        let line = "console=ttyS0 mmkit.expect_mem=256M quiet mmkit.expect_mem=512M";
        assert_eq!(param(line, "mmkit.expect_mem"), Some("512M"));
        assert_eq!(param(line, "console"), Some("ttyS0"));
        assert_eq!(param(line, "quiet"), None);
        assert_eq!(param(line, "mmkit"), None);
        assert_eq!(param("", "console"), None);
    }

    #[test]
    fn parse_size_understands_memparse_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1t"), Some(1 << 40));
    }

    #[test]
    fn parse_size_rejects_malformed_and_overflowing_sizes() {
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("-1M"), None);
        assert_eq!(parse_size("1 M"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
    }
}
