//! What `mesh-app load` records: per-target counts, failures with their
//! cause, latency histograms overall and per time window. Pure: callers pass
//! the time of each outcome, so everything here is tested without sockets.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Linear sub-buckets per power of two: a recorded latency is reported at
/// most 1/32 (about 3%) above its true value.
const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Latencies are clamped to about 71 minutes (2^32 µs), far past any timeout.
const MAX_MICROS: u64 = (1 << 32) - 1;

/// Failures kept with their details; later ones are only counted, so a
/// long outage cannot grow memory without bound.
pub const MAX_FAILURES_KEPT: usize = 1000;

/// A log-linear latency histogram in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_micros: u64,
}

fn bucket_of(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS);
    if v < 2 * SUB_BUCKETS {
        return v as usize;
    }
    let shift = (63 - v.leading_zeros()) - SUB_BUCKET_BITS;
    // The top SUB_BUCKET_BITS + 1 bits of v, in [SUB_BUCKETS, 2 * SUB_BUCKETS).
    let mantissa = v >> shift;
    (u64::from(shift) * SUB_BUCKETS + mantissa) as usize
}

/// The largest value that falls into `bucket`.
fn bucket_upper(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < 2 * SUB_BUCKETS {
        return b;
    }
    let shift = b / SUB_BUCKETS - 1;
    let mantissa = b - shift * SUB_BUCKETS;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).min(MAX_MICROS);
        let b = bucket_of(micros);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_micros = self.max_micros.max(other.max_micros);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros)
    }

    /// The latency at or below which `quantile` (0..=1) of the recorded
    /// values lie: the upper edge of that value's bucket, never above the
    /// largest value seen. None when nothing was recorded.
    pub fn percentile(&self, quantile: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper(bucket).min(self.max_micros)));
            }
        }
        Some(self.max())
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        LatencySummary { count: self.total, p50_ms: ms(self.percentile(0.5)), p99_ms: ms(self.percentile(0.99)), max_ms: ms((self.total > 0).then(|| self.max())) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Why a request failed. Every non-2xx answer and every transport error is a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    ConnectRefused,
    /// Connecting failed otherwise (unreachable, DNS, ...).
    ConnectError,
    /// The peer reset or broke the connection.
    Reset,
    /// The connection closed before a complete answer arrived.
    Closed,
    Timeout,
    Status(u16),
    /// A 2xx answer whose body is not what the server must send.
    BodyMismatch,
    /// Anything else HTTP itself refused (a malformed answer, ...).
    Protocol,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::ConnectRefused => f.write_str("connect refused"),
            Cause::ConnectError => f.write_str("connect error"),
            Cause::Reset => f.write_str("reset"),
            Cause::Closed => f.write_str("connection closed"),
            Cause::Timeout => f.write_str("timeout"),
            Cause::Status(code) => write!(f, "status {code}"),
            Cause::BodyMismatch => f.write_str("body mismatch"),
            Cause::Protocol => f.write_str("protocol error"),
        }
    }
}

/// What a successful answer said about who served it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub pod: Option<String>,
    pub peer_identity: Option<String>,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok { latency: Duration, served: Served },
    Failed { latency: Duration, cause: Cause, detail: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub target: String,
    pub cause: String,
    pub detail: String,
    /// Seconds since the load started (or was last reset).
    pub at_s: f64,
    pub unix_ms: u64,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Default)]
struct TargetStats {
    url: String,
    ok: u64,
    failed: u64,
    by_cause: BTreeMap<Cause, u64>,
    latency: Histogram,
    pods: BTreeMap<String, u64>,
    peer_identities: BTreeMap<String, u64>,
    connections_opened: u64,
    unsent_retries: u64,
}

#[derive(Debug, Clone, Default)]
struct Window {
    ok: u64,
    failed: u64,
    latency: Histogram,
}

/// Everything recorded since the start or the last reset.
#[derive(Debug, Clone)]
pub struct LoadStats {
    window: Duration,
    targets: Vec<TargetStats>,
    windows: Vec<Window>,
    failures: VecDeque<Failure>,
    failures_not_kept: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    pub url: String,
    pub ok: u64,
    pub failed: u64,
    pub failures_by_cause: BTreeMap<String, u64>,
    pub latency: LatencySummary,
    /// Which pods answered (the server's `pod` field), and how often.
    pub pods: BTreeMap<String, u64>,
    /// The caller identities the server saw (`peer_identity`), and how often;
    /// `(none)` counts answers without one.
    pub peer_identities: BTreeMap<String, u64>,
    pub connections_opened: u64,
    /// Requests a reused keep-alive connection closed before they were
    /// written, then sent on a new connection (as HTTP clients do); not failures.
    pub unsent_retries: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    pub start_s: f64,
    pub ok: u64,
    pub failed: u64,
    pub latency: LatencySummary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    pub failures_by_cause: BTreeMap<String, u64>,
    pub latency: LatencySummary,
    pub window_s: f64,
    pub windows: Vec<WindowReport>,
    pub targets: Vec<TargetReport>,
    /// The first failures in detail (at most MAX_FAILURES_KEPT).
    pub failures: Vec<Failure>,
    pub failures_not_kept: u64,
}

impl LoadStats {
    pub fn new(targets: &[String], window: Duration) -> Self {
        LoadStats {
            window: window.max(Duration::from_millis(1)),
            targets: targets.iter().map(|url| TargetStats { url: url.clone(), ..Default::default() }).collect(),
            windows: Vec::new(),
            failures: VecDeque::new(),
            failures_not_kept: 0,
        }
    }

    /// Starts over with the same targets and window length.
    pub fn reset(&mut self) {
        let urls: Vec<String> = self.targets.iter().map(|t| t.url.clone()).collect();
        *self = LoadStats::new(&urls, self.window);
    }

    fn window_at(&mut self, at: Duration) -> &mut Window {
        let index = (at.as_nanos() / self.window.as_nanos()) as usize;
        if self.windows.len() <= index {
            self.windows.resize_with(index + 1, Window::default);
        }
        &mut self.windows[index]
    }

    pub fn connection_opened(&mut self, target: usize) {
        if let Some(t) = self.targets.get_mut(target) {
            t.connections_opened += 1;
        }
    }

    pub fn unsent_retry(&mut self, target: usize) {
        if let Some(t) = self.targets.get_mut(target) {
            t.unsent_retries += 1;
        }
    }

    /// Records one request to `target` that ended `at` after the start.
    pub fn record(&mut self, target: usize, at: Duration, unix_ms: u64, outcome: Outcome) {
        let Some(t) = self.targets.get_mut(target) else { return };
        match outcome {
            Outcome::Ok { latency, served } => {
                t.ok += 1;
                t.latency.record(latency);
                *t.pods.entry(served.pod.unwrap_or_else(|| "(none)".into())).or_default() += 1;
                *t.peer_identities.entry(served.peer_identity.unwrap_or_else(|| "(none)".into())).or_default() += 1;
                let w = self.window_at(at);
                w.ok += 1;
                w.latency.record(latency);
            }
            Outcome::Failed { latency, cause, detail } => {
                t.failed += 1;
                *t.by_cause.entry(cause).or_default() += 1;
                let failure = Failure { target: t.url.clone(), cause: cause.to_string(), detail, at_s: at.as_secs_f64(), unix_ms, latency_ms: latency.as_secs_f64() * 1000.0 };
                self.window_at(at).failed += 1;
                if self.failures.len() < MAX_FAILURES_KEPT {
                    self.failures.push_back(failure);
                } else {
                    self.failures_not_kept += 1;
                }
            }
        }
    }

    pub fn failed(&self) -> u64 {
        self.targets.iter().map(|t| t.failed).sum()
    }

    pub fn ok(&self) -> u64 {
        self.targets.iter().map(|t| t.ok).sum()
    }

    pub fn report(&self) -> Report {
        let cause_names = |m: &BTreeMap<Cause, u64>| m.iter().map(|(c, n)| (c.to_string(), *n)).collect::<BTreeMap<_, _>>();
        let mut all = Histogram::default();
        let mut by_cause: BTreeMap<Cause, u64> = BTreeMap::new();
        for t in &self.targets {
            all.merge(&t.latency);
            for (c, n) in &t.by_cause {
                *by_cause.entry(*c).or_default() += n;
            }
        }
        Report {
            ok: self.ok(),
            failed: self.failed(),
            failures_by_cause: cause_names(&by_cause),
            latency: all.summary(),
            window_s: self.window.as_secs_f64(),
            windows: self
                .windows
                .iter()
                .enumerate()
                .map(|(i, w)| WindowReport { start_s: (self.window * i as u32).as_secs_f64(), ok: w.ok, failed: w.failed, latency: w.latency.summary() })
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|t| TargetReport {
                    url: t.url.clone(),
                    ok: t.ok,
                    failed: t.failed,
                    failures_by_cause: cause_names(&t.by_cause),
                    latency: t.latency.summary(),
                    pods: t.pods.clone(),
                    peer_identities: t.peer_identities.clone(),
                    connections_opened: t.connections_opened,
                    unsent_retries: t.unsent_retries,
                })
                .collect(),
            failures: self.failures.iter().cloned().collect(),
            failures_not_kept: self.failures_not_kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut previous = 0;
        for v in (0..100_000u64).chain([MAX_MICROS - 1, MAX_MICROS]) {
            let b = bucket_of(v);
            assert!(b >= previous, "bucket order broke at {v}");
            assert!(bucket_upper(b) >= v, "{v} is above its bucket's upper edge {}", bucket_upper(b));
            // The reported value is at most 1/32 above the true one.
            assert!(bucket_upper(b) - v <= v / SUB_BUCKETS, "{v} reported as {}", bucket_upper(b));
            if b > 0 {
                assert!(bucket_upper(b - 1) < v, "{v} belongs below bucket {b}");
            }
            previous = b;
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 100));
        }
        let p50 = h.percentile(0.5).unwrap().as_micros() as f64;
        let p99 = h.percentile(0.99).unwrap().as_micros() as f64;
        assert!((50_000.0..=50_000.0 * 1.04).contains(&p50), "p50 {p50}");
        assert!((99_000.0..=99_000.0 * 1.04).contains(&p99), "p99 {p99}");
        assert_eq!(h.percentile(1.0), Some(ms(100)));
        assert_eq!(h.max(), ms(100));
        // One slow outlier moves the max and p100, not the median.
        h.record(Duration::from_secs(3));
        assert_eq!(h.max(), Duration::from_secs(3));
        assert!(h.percentile(0.5).unwrap() < ms(53));
    }

    #[test]
    fn a_single_value_is_every_percentile() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(1234));
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(h.percentile(q), Some(Duration::from_micros(1234)), "q={q}");
        }
    }

    #[test]
    fn merged_histograms_equal_one_fed_both_streams() {
        let (mut a, mut b, mut both) = (Histogram::default(), Histogram::default(), Histogram::default());
        for i in 0..500u64 {
            a.record(Duration::from_micros(i * 7));
            both.record(Duration::from_micros(i * 7));
        }
        for i in 0..300u64 {
            b.record(ms(i));
            both.record(ms(i));
        }
        a.merge(&b);
        assert_eq!(a, both);
    }

    #[test]
    fn counts_per_target_window_and_cause() {
        let targets = vec!["http://a/x".to_string(), "http://b/x".to_string()];
        let mut s = LoadStats::new(&targets, Duration::from_secs(1));
        let ok = |pod: &str| Outcome::Ok { latency: ms(2), served: Served { pod: Some(pod.into()), peer_identity: Some("spiffe://cluster.local/ns/n/sa/load".into()) } };
        s.record(0, ms(100), 1, ok("a-1"));
        s.record(0, ms(900), 2, ok("a-2"));
        s.record(1, ms(1500), 3, ok("b-1"));
        s.record(1, ms(2100), 4, Outcome::Failed { latency: ms(5), cause: Cause::Status(503), detail: "no healthy upstream".into() });
        s.record(0, ms(2200), 5, Outcome::Failed { latency: ms(1), cause: Cause::ConnectRefused, detail: "connection refused".into() });
        s.record(7, ms(2300), 6, ok("nobody")); // unknown target: ignored
        s.connection_opened(0);
        s.unsent_retry(0);

        let r = s.report();
        assert_eq!((r.ok, r.failed), (3, 2));
        assert_eq!(r.failures_by_cause, BTreeMap::from([("connect refused".to_string(), 1), ("status 503".to_string(), 1)]));
        assert_eq!(r.targets[0].ok, 2);
        assert_eq!(r.targets[0].pods, BTreeMap::from([("a-1".to_string(), 1), ("a-2".to_string(), 1)]));
        assert_eq!(r.targets[0].peer_identities.get("spiffe://cluster.local/ns/n/sa/load"), Some(&2));
        assert_eq!((r.targets[0].connections_opened, r.targets[0].unsent_retries), (1, 1));
        assert_eq!(r.targets[1].failures_by_cause, BTreeMap::from([("status 503".to_string(), 1)]));
        let windows: Vec<(f64, u64, u64)> = r.windows.iter().map(|w| (w.start_s, w.ok, w.failed)).collect();
        assert_eq!(windows, vec![(0.0, 2, 0), (1.0, 1, 0), (2.0, 0, 2)]);
        assert_eq!(r.windows[2].latency.p50_ms, None, "failed requests are not in the latency histogram");
        assert_eq!(r.failures[0].target, "http://b/x");
        assert_eq!(r.failures[0].cause, "status 503");
        assert_eq!(r.failures[0].at_s, 2.1);
        assert_eq!(r.latency.count, 3);

        s.reset();
        let r = s.report();
        assert_eq!((r.ok, r.failed, r.windows.len(), r.failures.len()), (0, 0, 0, 0));
        assert_eq!(r.targets.len(), 2, "a reset keeps the targets");
    }

    #[test]
    fn failures_beyond_the_cap_are_counted_not_kept() {
        let mut s = LoadStats::new(&["http://a/".to_string()], Duration::from_secs(5));
        for i in 0..(MAX_FAILURES_KEPT as u64 + 25) {
            s.record(0, ms(i), i, Outcome::Failed { latency: ms(1), cause: Cause::Timeout, detail: String::new() });
        }
        let r = s.report();
        assert_eq!(r.failed, MAX_FAILURES_KEPT as u64 + 25);
        assert_eq!(r.failures.len(), MAX_FAILURES_KEPT);
        assert_eq!(r.failures_not_kept, 25);
    }
}
