//! Prometheus metrics: requests by status, request latency, and fetch
//! latency and failures per subgraph.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubgraphLabels {
    subgraph: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<StatusLabels, Counter>,
    latency: Histogram,
    fetch_latency: Family<SubgraphLabels, Histogram>,
    fetch_errors: Family<SubgraphLabels, Counter>,
    shared_fetches: Family<SubgraphLabels, Counter>,
    pub reloads: Counter,
    pub reloads_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("revmesh_graphql");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "GraphQL HTTP requests by status",
            requests.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "GraphQL request latency",
            latency.clone(),
        );
        let fetch_latency = Family::<SubgraphLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "fetch_duration_seconds",
            "Subgraph fetch latency",
            fetch_latency.clone(),
        );
        let fetch_errors = Family::<SubgraphLabels, Counter>::default();
        registry.register(
            "fetch_errors",
            "Subgraph fetches that failed",
            fetch_errors.clone(),
        );
        let shared_fetches = Family::<SubgraphLabels, Counter>::default();
        registry.register(
            "fetches_shared",
            "Subgraph fetches answered by an identical fetch already in flight (not sent)",
            shared_fetches.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "supergraph_reloads",
            "Supergraph changes applied",
            reloads.clone(),
        );
        let reloads_refused = Counter::default();
        registry.register(
            "supergraph_reloads_refused",
            "Supergraph changes refused as invalid (the old schema keeps serving)",
            reloads_refused.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            fetch_latency,
            fetch_errors,
            shared_fetches,
            reloads,
            reloads_refused,
        }
    }
}

impl Metrics {
    pub fn observe_request(&self, status: u16, seconds: f64) {
        self.requests.get_or_create(&StatusLabels { status }).inc();
        self.latency.observe(seconds);
    }

    pub fn observe_fetch(&self, subgraph: &str, seconds: f64, ok: bool) {
        let labels = SubgraphLabels {
            subgraph: subgraph.to_string(),
        };
        self.fetch_latency.get_or_create(&labels).observe(seconds);
        if !ok {
            self.fetch_errors.get_or_create(&labels).inc();
        }
    }

    pub fn observe_shared_fetch(&self, subgraph: &str) {
        self.shared_fetches
            .get_or_create(&SubgraphLabels {
                subgraph: subgraph.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}
