//! Namespace patterns: `*` matches any run of characters, `?` exactly one,
//! everything else matches itself. Namespaces are DNS labels, so no escaping.

/// True when `name` matches the glob `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    // Iterative glob with single-star backtracking: linear in practice, no recursion.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A pattern is valid when it is made of DNS-label characters and wildcards.
pub fn is_valid(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 63
        && pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*' || b == b'?')
}

/// True when some namespace matches both patterns (so rule order decides
/// between them). Dynamic programming over positions of both globs.
pub fn intersect(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // can[i][j]: the suffixes a[i..] and b[j..] match a common string.
    let mut can = vec![vec![false; b.len() + 1]; a.len() + 1];
    for i in (0..=a.len()).rev() {
        for j in (0..=b.len()).rev() {
            can[i][j] = match (a.get(i), b.get(j)) {
                (None, None) => true,
                (Some(b'*'), _) => can[i + 1][j] || (j < b.len() && can[i][j + 1]),
                (_, Some(b'*')) => can[i][j + 1] || (i < a.len() && can[i + 1][j]),
                (Some(x), Some(y)) => (*x == *y || *x == b'?' || *y == b'?') && can[i + 1][j + 1],
                _ => false,
            };
        }
    }
    can[0][0]
}

/// Rules whose patterns can match the same namespace, apart from the final
/// catch-all `*` rule, which is meant to match what the others leave. Each is
/// `(earlier rule, its pattern, later rule, its pattern)`: the earlier one wins.
pub fn overlaps(rules: &[crate::Rule]) -> Vec<(usize, String, usize, String)> {
    let mut out = Vec::new();
    let last = rules.len().saturating_sub(1);
    for (i, earlier) in rules.iter().enumerate() {
        for (j, later) in rules.iter().enumerate().skip(i + 1) {
            if j == last && later.namespaces.iter().any(|p| p == "*") {
                continue;
            }
            for p in &earlier.namespaces {
                for q in &later.namespaces {
                    if intersect(p, q) {
                        out.push((i, p.clone(), j, q.clone()));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_intersect_when_one_namespace_matches_both() {
        use super::intersect;
        assert!(intersect("pay-*", "*-prod"));
        assert!(intersect("a?c", "*c"));
        assert!(intersect("*", "x"));
        assert!(intersect("team-*", "team-a*"));
        assert!(!intersect("pay-*", "team-*"));
        assert!(!intersect("abc", "abd"));
        assert!(!intersect("a?", "abc"));
        assert!(!intersect("*-prod", "*-dev"));
    }

    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("*", "anything"));
        assert!(matches("*", ""));
        assert!(matches("payments-*", "payments-eu"));
        assert!(!matches("payments-*", "payment-eu"));
        assert!(matches("checkout", "checkout"));
        assert!(!matches("checkout", "checkouts"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("team-?", "team-a"));
        assert!(!matches("team-?", "team-ab"));
        assert!(matches("*-prod", "eu-west-prod"));
    }
}
