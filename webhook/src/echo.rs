//! Values from outside the process, quoted back in denials, errors and logs.
//! An annotation value can be a megabyte long: it is cut to a bounded length
//! and its full length stated, so one bad pod cannot flood the API server's
//! answer to the user or the webhook's log.

/// How many bytes of a value are quoted.
pub const MAX_QUOTED: usize = 64;

/// `text` Debug-quoted, cut to [`MAX_QUOTED`] bytes (at a character boundary)
/// with `... (N bytes in all)` after the quote when it was longer.
pub fn quoted(text: &str) -> String {
    quoted_max(text, MAX_QUOTED)
}

/// [`quoted`] with another bound (for longer free text such as messages).
pub fn quoted_max(text: &str, max: usize) -> String {
    if text.len() <= max {
        return format!("{text:?}");
    }
    format!("{:?}... ({} bytes in all)", &text[..boundary(text, max)], text.len())
}

/// `text` unquoted, cut to `max` bytes with `... (N bytes in all)` appended.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!("{}... ({} bytes in all)", &text[..boundary(text, max)], text.len())
}

fn boundary(text: &str, max: usize) -> usize {
    (0..=max.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_long_ones_cut_with_their_length() {
        assert_eq!(quoted("80,x"), "\"80,x\"");
        let long = "é".repeat(600_000);
        let q = quoted(&long);
        assert!(q.len() < 120 && q.ends_with("... (1200000 bytes in all)"), "{q}");
        assert_eq!(cut("abcdef", 3), "abc... (6 bytes in all)");
        assert_eq!(cut("abc", 3), "abc");
    }
}
