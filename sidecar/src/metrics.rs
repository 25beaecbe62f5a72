//! Prometheus metrics with Istio's names, so existing dashboards read them:
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`,
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use crate::fast_hash::FastMap;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_principal: String,
    pub destination_service: String,
    pub response_code: u16,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub destination_service: String,
    pub revision: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub retries: Counter,
    pub ejections: Counter,
    pub inbound_refused: Counter,
    /// What the bounds on client connections did (`crate::limits`).
    pub limits: crate::limits::LimitMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("istio_requests", "Requests handled by the proxy", requests.clone());
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0].into_iter())
        });
        registry.register("istio_request_duration_milliseconds", "Request duration", duration.clone());
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        registry.register("istio_tcp_sent_bytes", "Bytes sent to the destination over TCP", tcp_sent.clone());
        let tcp_received = Family::<TcpLabels, Counter>::default();
        registry.register("istio_tcp_received_bytes", "Bytes received from the destination over TCP", tcp_received.clone());
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        registry.register("istio_tcp_connections_opened", "TCP connections opened", tcp_opened.clone());
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        registry.register("istio_tcp_connections_closed", "TCP connections closed", tcp_closed.clone());
        let retries = Counter::default();
        registry.register("revmesh_proxy_retries", "Upstream attempts beyond the first", retries.clone());
        let ejections = Counter::default();
        registry.register("revmesh_proxy_outlier_ejections", "Endpoints ejected after consecutive failures", ejections.clone());
        let inbound_refused = Counter::default();
        registry.register("revmesh_proxy_inbound_refused", "Inbound connections refused (plaintext in STRICT mode, failed mTLS)", inbound_refused.clone());
        let limits = crate::limits::LimitMetrics::register(&mut registry);
        Metrics { registry: Mutex::new(registry), requests, duration, tcp_sent, tcp_received, tcp_opened, tcp_closed, retries, ejections, inbound_refused, limits }
    }
}

/// Resolved request metrics of one destination and code, so the hot path
/// neither builds label sets nor hashes them.
#[derive(Clone)]
pub struct RequestHandles {
    pub count: Counter,
    pub duration: Histogram,
}

/// Request handles by service (or peer identity), then response code.
#[derive(Default)]
pub struct HandleCache {
    by_service: std::sync::RwLock<FastMap<String, FastMap<u16, RequestHandles>>>,
}

impl HandleCache {
    /// Counts one request and its duration under `service` and `code`;
    /// `labels` builds the label set the first time they are seen.
    pub fn record(&self, service: &str, code: u16, labels: impl FnOnce() -> RequestLabels, metrics: &Metrics, millis: f64) {
        if let Ok(map) = self.by_service.read() {
            if let Some(handles) = map.get(service).and_then(|c| c.get(&code)) {
                handles.count.inc();
                handles.duration.observe(millis);
                return;
            }
        }
        let labels = labels();
        let handles = RequestHandles { count: metrics.requests.get_or_create(&labels).clone(), duration: metrics.duration.get_or_create(&labels).clone() };
        handles.count.inc();
        handles.duration.observe(millis);
        if let Ok(mut map) = self.by_service.write() {
            map.entry(service.to_string()).or_default().insert(code, handles);
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}
