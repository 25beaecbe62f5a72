//! One reader for the durations every Revmesh binary takes in flags and
//! config files, so `500ms`, `2s` and `1m` mean the same everywhere.

use std::time::Duration;

/// `500ms`, `2s`, `1m`, or a bare number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let bad = || format!("{text:?} is not a duration like 500ms, 2s or 1m");
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_refusals() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "s", "1h", "-1s", "1.5s", "99999999999999999999m"] {
            assert!(parse(bad).unwrap_err().contains("is not a duration"), "{bad}");
        }
    }
}
