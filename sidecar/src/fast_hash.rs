//! A fast hash for the maps the proxy looks up on every request.
//!
//! Their keys are endpoints, cluster names and peer identities from the
//! mesh's own config and verified certificates, not attacker-chosen strings,
//! so SipHash's flood resistance buys nothing there. Each request did about
//! six SipHash lookups (cluster, balancer, endpoint stats, mTLS identity,
//! peer connection, metric handles).

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed through [`WordHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// A multiply-rotate hash over 8-byte words.
#[derive(Default)]
pub struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // Folds the well-mixed high bits into the low ones, which pick the bucket.
        self.0 ^ (self.0 >> 29)
    }
}

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn endpoints_that_differ_in_one_field_spread_over_buckets() {
        // 256 endpoints differing only in the last octet, then only in the
        // port: the low 6 bits (a 64-bucket table) should take most values.
        let hash = |a: &SocketAddr| std::hash::BuildHasher::hash_one(&BuildHasherDefault::<WordHasher>::default(), a);
        let by_ip: std::collections::HashSet<u64> = (0..=255u8).map(|i| hash(&SocketAddr::from(([10, 0, 0, i], 80))) & 63).collect();
        let by_port: std::collections::HashSet<u64> = (0..256u16).map(|p| hash(&SocketAddr::from(([10, 0, 0, 1], 8000 + p))) & 63).collect();
        assert!(by_ip.len() > 48, "{}", by_ip.len());
        assert!(by_port.len() > 48, "{}", by_port.len());
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map: FastMap<String, usize> = FastMap::default();
        for i in 0..1000 {
            map.insert(format!("outbound|80||svc-{i}.demo.svc.cluster.local"), i);
        }
        assert!((0..1000).all(|i| map.get(&format!("outbound|80||svc-{i}.demo.svc.cluster.local")) == Some(&i)));
        assert_eq!(map.get("outbound|80||nope"), None);
    }
}
