//! Weighted rendezvous hashing: the version a hash key runs.
//!
//! Every version scores the key with `-ln(u) / weight`, where `u` in (0, 1) comes
//! from XXH3-64 of the key and the version name with a fixed seed; the lowest score
//! wins. This is an exponential race, so each version wins with probability
//! `weight / total`, and it has the properties rollouts.yml promises:
//!
//! * deterministic: XXH3 is a specified algorithm over explicit bytes, and `ln` is
//!   the pure-Rust `libm` port, so no seeded hasher or platform libm is involved;
//! * monotone: raising one version's share while the others keep their
//!   proportions only improves that version's scores, so keys move only onto it,
//!   and lowering it back returns exactly those keys (the result is a pure
//!   function of the distribution, so rollback is exact);
//! * accurate: shares converge on their targets (tested over 10,000 keys).
//!
//! The `consistent_hash` crate was considered: it hashes through `std::hash::Hash`,
//! whose output Rust does not promise to keep across releases, and its ring moves
//! a drained version's keys to ring neighbours rather than to the growing version.
//!
//! Changing anything here reshuffles every fleet: it is a wire format.

use crate::model::VersionName;
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed seed ("revmesh" + format 1). Never change it.
const SEED: u64 = 0x7265_766d_6573_6801;

/// The uniform variate in (0, 1) of `key` for `version`.
fn unit(key: &str, version: &str) -> f64 {
    let mut bytes = Vec::with_capacity(key.len() + version.len() + 1);
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(0); // separator: neither keys nor versions contain NUL
    bytes.extend_from_slice(version.as_bytes());
    let h = xxh3_64_with_seed(&bytes, SEED);
    // 53 high bits, centred in their cell so the value is never 0 or 1.
    ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// The version `key` runs under `distribution` (percent per version). Versions
/// with a zero share never win. Returns `None` only if every share is zero,
/// which a parsed rollouts.yml rules out.
pub fn choose<'a>(key: &str, distribution: &'a BTreeMap<VersionName, u32>) -> Option<&'a VersionName> {
    let mut best: Option<(&VersionName, f64)> = None;
    for (version, &weight) in distribution {
        if weight == 0 {
            continue;
        }
        let score = -libm::log(unit(key, version.as_str())) / f64::from(weight);
        // Strict `<` keeps the lexicographically first version on an exact tie.
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((version, score));
        }
    }
    best.map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> VersionName {
        VersionName::new(s).expect("valid test version")
    }

    fn dist(pairs: &[(&str, u32)]) -> BTreeMap<VersionName, u32> {
        pairs.iter().map(|(n, w)| (v(n), *w)).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ns-{i}/workload-{}", i % 7)).collect()
    }

    /// Pinned outputs: if these change, every fleet would be reshuffled on upgrade.
    #[test]
    fn golden_assignments_never_change() {
        let d = dist(&[("1-24-5", 50), ("1-25-2", 50)]);
        let got: Vec<&str> = ["payments", "checkout", "default", "ns-1", "team-a/web"]
            .iter()
            .map(|k| choose(k, &d).expect("non-zero").as_str())
            .collect();
        assert_eq!(got, GOLDEN);
    }
    const GOLDEN: [&str; 5] = ["1-24-5", "1-24-5", "1-25-2", "1-25-2", "1-25-2"];

    #[test]
    fn zero_share_never_wins_and_all_zero_is_none() {
        let d = dist(&[("a", 0), ("b", 100)]);
        assert!(keys(1000).iter().all(|k| choose(k, &d).map(VersionName::as_str) == Some("b")));
        assert_eq!(choose("x", &dist(&[("a", 0)])), None);
    }

    #[test]
    fn accurate_within_one_and_a_half_points_over_10k_keys() {
        for shares in [[90u32, 10, 0], [50, 50, 0], [1, 99, 0], [33, 33, 34], [10, 20, 70]] {
            let d = dist(&[("a", shares[0]), ("b", shares[1]), ("c", shares[2])]);
            let ks = keys(10_000);
            for (i, name) in ["a", "b", "c"].iter().enumerate() {
                let count = ks.iter().filter(|k| choose(k, &d).map(VersionName::as_str) == Some(*name)).count();
                let pct = count as f64 / 100.0;
                assert!((pct - f64::from(shares[i])).abs() <= 1.5, "{name}: {pct}% for target {}% in {shares:?}", shares[i]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Same inputs, same answer, however the map was built.
        #[test]
        fn deterministic(key in "[a-z0-9-]{1,30}(/[a-z0-9-]{1,30})?", a in 0u32..=100) {
            let d1 = dist(&[("x-1", a), ("x-2", 100 - a)]);
            let d2: BTreeMap<_, _> = d1.clone().into_iter().rev().collect();
            prop_assert_eq!(choose(&key, &d1), choose(&key, &d2));
        }

        /// Two versions: raising B from p to q moves only keys onto B, and going
        /// back to p returns exactly the keys that came.
        #[test]
        fn monotone_and_exact_rollback_two_versions(p in 0u32..=100, q in 0u32..=100) {
            let (p, q) = (p.min(q), p.max(q));
            let before = dist(&[("old", 100 - p), ("new", p)]);
            let after = dist(&[("old", 100 - q), ("new", q)]);
            for k in keys(2_000) {
                let b = choose(&k, &before).map(VersionName::as_str);
                let a = choose(&k, &after).map(VersionName::as_str);
                prop_assert!(b == a || a == Some("new"), "{} moved {:?} -> {:?} when new rose {}->{}", k, b, a, p, q);
                // Rollback is the same pure function of `before`.
                prop_assert_eq!(choose(&k, &before).map(VersionName::as_str), b);
            }
        }

        /// Three versions: raising one version's weight while the others keep their
        /// proportions moves keys only onto the raised version.
        #[test]
        fn monotone_with_other_versions_in_proportion(wa in 1u32..50, wc in 1u32..50, wb in 0u32..50, extra in 1u32..50) {
            let before = dist(&[("a", wa), ("b", wb), ("c", wc)]);
            let after = dist(&[("a", wa), ("b", wb + extra), ("c", wc)]);
            for k in keys(2_000) {
                let b = choose(&k, &before).map(VersionName::as_str);
                let a = choose(&k, &after).map(VersionName::as_str);
                prop_assert!(b == a || a == Some("b"));
            }
        }
    }
}
