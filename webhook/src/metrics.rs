//! Prometheus metrics of the injector, served on their own plain-HTTP port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// injected, skipped, denied, allowed (not a pod create), dry-run-injected
    pub result: String,
    /// The mesh version chosen, or "" when none was.
    pub version: String,
    /// Skip reason or "".
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BadRequestLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// over-capacity (refused at the connection cap), read-timeout (TLS
    /// handshake or request headers too slow), idle-timeout
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    /// rollouts or tls
    pub file: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub bad_requests: Family<BadRequestLabels, Counter>,
    pub latency: Histogram,
    pub reloads: Family<FileLabels, Counter>,
    pub reload_failures: Family<FileLabels, Counter>,
    /// 1 while the newest file on disk is the one in force, 0 while a bad file is being ignored.
    pub config_in_sync: Family<FileLabels, Gauge>,
    /// Client connections open now (HTTPS port).
    pub open_connections: Gauge,
    /// Client connections the webhook closed or refused, by why.
    pub connections_closed: Family<ClosedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("revmesh_webhook");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register("admissions", "AdmissionReviews answered, by result, version and skip reason", admissions.clone());
        let bad_requests = Family::<BadRequestLabels, Counter>::default();
        registry.register("bad_requests", "HTTP requests refused before admission (malformed, oversized, wrong method)", bad_requests.clone());
        // 50 µs .. ~0.8 s
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 15));
        registry.register("admission_duration_seconds", "Time to answer one AdmissionReview, body read to response", latency.clone());
        let reloads = Family::<FileLabels, Counter>::default();
        registry.register("reloads", "Successful reloads of a watched file", reloads.clone());
        let reload_failures = Family::<FileLabels, Counter>::default();
        registry.register("reload_failures", "Changed files that were refused; the last good one stays in force", reload_failures.clone());
        let config_in_sync = Family::<FileLabels, Gauge>::default();
        registry.register("config_in_sync", "1 when the file on disk is the one in force, 0 when it was refused", config_in_sync.clone());
        let open_connections = Gauge::default();
        registry.register("open_connections", "Client connections open on the HTTPS port", open_connections.clone());
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register("connections_closed", "Client connections the webhook closed or refused: over-capacity, read-timeout, idle-timeout", connections_closed.clone());
        Metrics { registry, admissions, bad_requests, latency, reloads, reload_failures, config_in_sync, open_connections, connections_closed }
    }
}

impl Metrics {
    pub fn admission(&self, result: &str, version: &str, reason: &str) {
        self.admissions
            .get_or_create(&AdmissionLabels { result: result.into(), version: version.into(), reason: reason.into() })
            .inc();
    }

    pub fn bad_request(&self, reason: &str) {
        self.bad_requests.get_or_create(&BadRequestLabels { reason: reason.into() }).inc();
    }

    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed.get_or_create(&ClosedLabels { reason: reason.into() }).inc();
    }

    pub fn file_reloaded(&self, file: &str, ok: bool) {
        let labels = FileLabels { file: file.into() };
        if ok {
            self.reloads.get_or_create(&labels).inc();
        } else {
            self.reload_failures.get_or_create(&labels).inc();
        }
        self.config_in_sync.get_or_create(&labels).set(i64::from(ok));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
