//! Endpoint choice per cluster: round robin, least request (power of two
//! choices) and ring hash, skipping endpoints that outlier detection ejected.
//!
//! Outlier detection follows Envoy's defaults: an endpoint is ejected after
//! 5 consecutive failures (5xx or connect errors) for 30 s × the number of
//! times it was ejected. No more than half of a cluster is ever ejected.
//! The retry budget is also Envoy's: retries may be at most 20% of the
//! requests in flight, with at least 3 allowed.

use crate::config::LbPolicy;
use crate::fast_hash::FastMap;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const CONSECUTIVE_FAILURES: u32 = 5;
pub const BASE_EJECTION: Duration = Duration::from_secs(30);
const MAX_EJECTED_SHARE: f64 = 0.5;

#[derive(Debug, Default, Clone)]
struct EndpointStats {
    active: u32,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// One cluster's balancing state. Endpoints come from the config at each
/// pick, so a config change needs no reset.
#[derive(Debug, Default)]
pub struct ClusterState {
    next: AtomicUsize,
    stats: Mutex<FastMap<SocketAddr, EndpointStats>>,
    in_flight: AtomicUsize,
    retries_in_flight: AtomicUsize,
}

fn ring_hash(key: u64, endpoint: &SocketAddr) -> u64 {
    // Rendezvous hashing: the same key keeps its endpoint while that
    // endpoint lives, and only its keys move when it goes.
    let mut h = key ^ 0x9e37_79b9_7f4a_7c15;
    for b in endpoint.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

impl ClusterState {
    /// Chooses an endpoint not in `exclude`, or None if none is usable.
    pub fn pick(&self, endpoints: &[SocketAddr], policy: LbPolicy, hash_key: u64, exclude: &[SocketAddr], now: Instant) -> Option<SocketAddr> {
        let stats = self.stats.lock().ok()?;
        let available = |e: &SocketAddr| !exclude.contains(e) && stats.get(e).and_then(|s| s.ejected_until).is_none_or(|until| until <= now);
        // Usually every endpoint is: the config's list is used as it is, with
        // no list built per request.
        let usable: Cow<[SocketAddr]> = if endpoints.iter().all(available) {
            Cow::Borrowed(endpoints)
        } else {
            let some: Vec<SocketAddr> = endpoints.iter().copied().filter(available).collect();
            // Everything ejected or tried: fall back to any untried endpoint
            // rather than failing the request outright.
            Cow::Owned(if some.is_empty() { endpoints.iter().copied().filter(|e| !exclude.contains(e)).collect() } else { some })
        };
        if usable.is_empty() {
            return None;
        }
        Some(match policy {
            LbPolicy::RoundRobin => usable[self.next.fetch_add(1, Ordering::Relaxed) % usable.len()],
            LbPolicy::LeastRequest => {
                let a = usable[fastrand::usize(..usable.len())];
                let b = usable[fastrand::usize(..usable.len())];
                let load = |e: &SocketAddr| stats.get(e).map_or(0, |s| s.active);
                if load(&b) < load(&a) { b } else { a }
            }
            LbPolicy::RingHash => *usable.iter().max_by_key(|e| ring_hash(hash_key, e))?,
        })
    }

    pub fn started(&self, endpoint: SocketAddr) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.stats.lock() {
            s.entry(endpoint).or_default().active += 1;
        }
    }

    /// Ends an attempt that says nothing about the endpoint's health (the
    /// client's request was at fault): its failure streak is left as it was.
    pub fn abandoned(&self, endpoint: SocketAddr) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut all) = self.stats.lock() {
            if let Some(s) = all.get_mut(&endpoint) {
                s.active = s.active.saturating_sub(1);
            }
        }
    }

    /// Records the outcome; true when this failure ejected the endpoint.
    pub fn finished(&self, endpoint: SocketAddr, failed: bool, cluster_size: usize, now: Instant) -> bool {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Ok(mut all) = self.stats.lock() else { return false };
        let ejected_now = all.values().filter(|s| s.ejected_until.is_some_and(|u| u > now)).count();
        let s = all.entry(endpoint).or_default();
        s.active = s.active.saturating_sub(1);
        if !failed {
            s.consecutive_failures = 0;
            return false;
        }
        s.consecutive_failures += 1;
        let may_eject = (ejected_now as f64 + 1.0) <= (cluster_size as f64 * MAX_EJECTED_SHARE).max(1.0) && cluster_size > 1;
        if s.consecutive_failures >= CONSECUTIVE_FAILURES && may_eject {
            s.ejections += 1;
            s.consecutive_failures = 0;
            s.ejected_until = Some(now + BASE_EJECTION * s.ejections);
            return true;
        }
        false
    }

    /// Takes a retry from the budget, if it allows one.
    pub fn try_retry(&self) -> bool {
        let budget = (self.in_flight.load(Ordering::Relaxed) / 5).max(3);
        if self.retries_in_flight.fetch_add(1, Ordering::Relaxed) < budget {
            true
        } else {
            self.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }

    pub fn retry_done(&self) {
        self.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cluster config's link to its balancing state, filled on first use. It
/// is not part of the config's value: configs that differ only here are equal.
#[derive(Debug, Default, Clone)]
pub struct BalancerSlot(std::sync::OnceLock<std::sync::Arc<ClusterState>>);

impl PartialEq for BalancerSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The balancing state of every cluster, by name.
#[derive(Debug, Default)]
pub struct Balancers {
    clusters: Mutex<FastMap<String, std::sync::Arc<ClusterState>>>,
}

impl Balancers {
    pub fn cluster(&self, name: &str) -> std::sync::Arc<ClusterState> {
        let mut all = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = all.get(name) {
            return std::sync::Arc::clone(state);
        }
        std::sync::Arc::clone(all.entry(name.to_string()).or_default())
    }

    /// The balancing state of `cluster`, cached in its config.
    pub fn of<'a>(&self, cluster: &'a crate::config::ClusterConfig) -> &'a ClusterState {
        cluster.balancer.0.get_or_init(|| self.cluster(&cluster.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))).collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint() {
        let s = ClusterState::default();
        let e = eps(3);
        let now = Instant::now();
        let picks: Vec<SocketAddr> = (0..6).filter_map(|_| s.pick(&e, LbPolicy::RoundRobin, 0, &[], now)).collect();
        assert_eq!(picks, [e[0], e[1], e[2], e[0], e[1], e[2]]);
        assert_eq!(s.pick(&e, LbPolicy::RoundRobin, 0, &e[..2], now), Some(e[2]), "tried endpoints are skipped");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let s = ClusterState::default();
        let e = eps(2);
        for _ in 0..10 {
            s.started(e[0]);
        }
        let now = Instant::now();
        let idle = (0..200).filter(|_| s.pick(&e, LbPolicy::LeastRequest, 0, &[], now) == Some(e[1])).count();
        // P2C picks the busy one only when both draws land on it (1 in 4).
        assert!(idle > 120, "{idle}");
    }

    #[test]
    fn ring_hash_is_sticky_and_moves_only_the_lost_endpoints_keys() {
        let s = ClusterState::default();
        let e = eps(4);
        let now = Instant::now();
        let before: Vec<SocketAddr> = (0..100u64).filter_map(|k| s.pick(&e, LbPolicy::RingHash, k, &[], now)).collect();
        let again: Vec<SocketAddr> = (0..100u64).filter_map(|k| s.pick(&e, LbPolicy::RingHash, k, &[], now)).collect();
        assert_eq!(before, again);
        let fewer = &e[..3];
        for (k, was) in before.iter().enumerate() {
            let now_at = s.pick(fewer, LbPolicy::RingHash, k as u64, &[], now).expect("pick");
            if *was != e[3] {
                assert_eq!(now_at, *was, "key {k} moved although its endpoint stayed");
            }
        }
    }

    #[test]
    fn consecutive_failures_eject_but_never_the_whole_cluster() {
        let s = ClusterState::default();
        let e = eps(2);
        let now = Instant::now();
        let mut ejected = false;
        for _ in 0..CONSECUTIVE_FAILURES {
            s.started(e[0]);
            ejected |= s.finished(e[0], true, 2, now);
        }
        assert!(ejected);
        assert!((0..10).all(|_| s.pick(&e, LbPolicy::RoundRobin, 0, &[], now) == Some(e[1])));
        // The other one failing too may not eject it: half the cluster at most.
        for _ in 0..CONSECUTIVE_FAILURES {
            s.started(e[1]);
            assert!(!s.finished(e[1], true, 2, now));
        }
        // After the ejection time the endpoint is back.
        assert!((0..10).any(|_| s.pick(&e, LbPolicy::RoundRobin, 0, &[], now + BASE_EJECTION) == Some(e[0])));
    }

    #[test]
    fn a_new_config_of_a_cluster_finds_its_balancing_state() {
        let balancers = Balancers::default();
        let config = |endpoints| crate::config::ClusterConfig {
            name: "outbound|80||web.demo.svc.cluster.local".into(),
            http2: false,
            connect_timeout: Duration::from_secs(1),
            lb: LbPolicy::RoundRobin,
            endpoints,
            mtls: Default::default(),
            balancer: Default::default(),
        };
        let (old, new) = (config(eps(2)), config(eps(3)));
        let e = eps(1)[0];
        balancers.of(&old).started(e);
        // Cached in the old config, looked up by name for the new one.
        assert!(std::ptr::eq(balancers.of(&old), balancers.of(&old)));
        assert!(std::ptr::eq(balancers.of(&old), balancers.of(&new)));
        assert_eq!(balancers.of(&new).stats.lock().unwrap().get(&e).map(|s| s.active), Some(1));
        assert_eq!(old.balancer, new.balancer, "the cache is not part of the config's value");
    }

    #[test]
    fn retry_budget_allows_three_when_idle() {
        let s = ClusterState::default();
        assert!(s.try_retry() && s.try_retry() && s.try_retry());
        assert!(!s.try_retry());
        s.retry_done();
        assert!(s.try_retry());
    }
}
