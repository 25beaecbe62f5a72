//! What each connected proxy has been sent and has ACKed or NACKed, for
//! `/debug/syncz`, metrics, and the convergence histogram.

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// What one request on a type said about the previous response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeStatus {
    /// A subscription request (no response to answer yet).
    Request,
    Ack { version: String, nonce: String },
    Nack { version: String, nonce: String, message: String },
}

impl TypeStatus {
    pub fn from_sotw(r: &DiscoveryRequest) -> Self {
        Self::classify(&r.response_nonce, &r.version_info, r.error_detail.as_ref().map(|e| e.message.clone()))
    }

    pub fn from_delta(r: &DeltaDiscoveryRequest) -> Self {
        Self::classify(&r.response_nonce, "", r.error_detail.as_ref().map(|e| e.message.clone()))
    }

    fn classify(nonce: &str, version: &str, error: Option<String>) -> Self {
        match (nonce.is_empty(), error) {
            (true, _) => TypeStatus::Request,
            (false, Some(message)) => TypeStatus::Nack { version: version.into(), nonce: nonce.into(), message },
            (false, None) => TypeStatus::Ack { version: version.into(), nonce: nonce.into() },
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeSync {
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    pub acked_nonce: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<Nack>,
    /// Model version of the last response sent.
    #[serde(skip)]
    sent_model_version: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    pub nonce: String,
    pub message: String,
    pub at_unix_seconds: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySync {
    pub id: String,
    pub revision: String,
    /// The build the proxy says it runs (node metadata `REVMESH_PROXY_VERSION`,
    /// which Revmesh's sidecar sends); absent for clients that do not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    /// sotw or delta
    pub mode: String,
    pub connected_unix_seconds: u64,
    /// Short type name (Cluster, ClusterLoadAssignment, Listener, RouteConfiguration) → state
    pub types: BTreeMap<String, TypeSync>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    revision: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

pub struct ProxyRegistry {
    revision: String,
    next_id: AtomicU64,
    proxies: Mutex<HashMap<u64, ProxySync>>,
    published_at: Mutex<BTreeMap<u64, Instant>>,
    pub metrics: Mutex<Registry>,
    connected: Family<RevisionLabels, Gauge>,
    pushes: Family<TypeLabels, Counter>,
    acks: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    convergence: Family<RevisionLabels, Histogram>,
    config_refused: Family<RevisionLabels, Counter>,
}

fn short(type_url: &str) -> String {
    type_url.rsplit('.').next().unwrap_or(type_url).to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ProxyRegistry {
    pub fn new(revision: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix("revmesh_control_plane");
        let connected = Family::<RevisionLabels, Gauge>::default();
        registry.register("proxies_connected", "Proxies with an open ADS stream", connected.clone());
        let pushes = Family::<TypeLabels, Counter>::default();
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        let acks = Family::<TypeLabels, Counter>::default();
        registry.register("xds_acks", "xDS ACKs received, by type", acks.clone());
        let nacks = Family::<TypeLabels, Counter>::default();
        registry.register("xds_nacks", "xDS NACKs received (the proxy kept its last good config), by type", nacks.clone());
        let convergence = Family::<RevisionLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register("convergence_seconds", "From a config change seen to a proxy's ACK of it", convergence.clone());
        let config_refused = Family::<RevisionLabels, Counter>::default();
        registry.register("config_refused", "Source changes refused as invalid (the last good config keeps serving)", config_refused.clone());
        Arc::new(ProxyRegistry {
            revision: revision.into(),
            next_id: AtomicU64::new(1),
            proxies: Mutex::new(HashMap::new()),
            published_at: Mutex::new(BTreeMap::new()),
            metrics: Mutex::new(registry),
            connected,
            pushes,
            acks,
            nacks,
            convergence,
            config_refused,
        })
    }

    fn rev(&self) -> RevisionLabels {
        RevisionLabels { revision: self.revision.clone() }
    }

    fn type_labels(&self, type_url: &str) -> TypeLabels {
        TypeLabels { revision: self.revision.clone(), r#type: short(type_url) }
    }

    /// A new model version became visible now.
    pub fn model_published(&self, version: u64) {
        if let Ok(mut p) = self.published_at.lock() {
            p.insert(version, Instant::now());
            while p.len() > 256 {
                p.pop_first();
            }
        }
    }

    pub fn config_refused(&self) {
        self.config_refused.get_or_create(&self.rev()).inc();
    }

    pub fn connect(self: &Arc<Self>, node_id: &str, revision: &str, mode: &str) -> ProxyHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.proxies.lock() {
            p.insert(id, ProxySync { id: node_id.into(), revision: revision.into(), proxy_version: None, mode: mode.into(), connected_unix_seconds: unix_now(), types: BTreeMap::new() });
        }
        self.connected.get_or_create(&self.rev()).inc();
        ProxyHandle { registry: Arc::clone(self), id }
    }

    pub fn syncz(&self) -> Vec<ProxySync> {
        let mut all: Vec<ProxySync> = self.proxies.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.metrics.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

/// A connected proxy; dropping it marks the proxy gone.
pub struct ProxyHandle {
    registry: Arc<ProxyRegistry>,
    id: u64,
}

impl ProxyHandle {
    /// Records the version the proxy reported when it connected.
    pub fn set_proxy_version(&self, version: Option<String>) {
        if let Ok(mut p) = self.registry.proxies.lock() {
            if let Some(proxy) = p.get_mut(&self.id) {
                proxy.proxy_version = version;
            }
        }
    }

    fn with_type(&self, type_url: &str, f: impl FnOnce(&mut TypeSync)) {
        if let Ok(mut p) = self.registry.proxies.lock() {
            if let Some(proxy) = p.get_mut(&self.id) {
                f(proxy.types.entry(short(type_url)).or_default());
            }
        }
    }

    /// The proxy answered: record ACK or NACK, and convergence on ACK.
    pub fn record(&self, type_url: &str, status: TypeStatus, _model_version: u64) {
        let labels = self.registry.type_labels(type_url);
        let mut converged_model: Option<u64> = None;
        match status {
            TypeStatus::Request => {}
            TypeStatus::Ack { version, nonce } => {
                self.registry.acks.get_or_create(&labels).inc();
                self.with_type(type_url, |t| {
                    if t.sent_nonce == nonce {
                        converged_model = Some(t.sent_model_version);
                    }
                    t.acked_version = if version.is_empty() { t.sent_version.clone() } else { version };
                    t.acked_nonce = nonce;
                });
            }
            TypeStatus::Nack { nonce, message, .. } => {
                self.registry.nacks.get_or_create(&labels).inc();
                tracing::warn!(r#type = %short(type_url), %nonce, error = %message, "proxy NACKed config; it keeps its last good version");
                self.with_type(type_url, |t| t.last_nack = Some(Nack { nonce, message, at_unix_seconds: unix_now() }));
            }
        }
        if let Some(v) = converged_model {
            let at = self.registry.published_at.lock().ok().and_then(|p| p.get(&v).copied());
            if let Some(at) = at {
                self.registry.convergence.get_or_create(&self.registry.rev()).observe(at.elapsed().as_secs_f64());
            }
        }
    }

    pub fn sent(&self, type_url: &str, version: &str, nonce: &str, model_version: u64) {
        self.registry.pushes.get_or_create(&self.registry.type_labels(type_url)).inc();
        self.with_type(type_url, |t| {
            t.sent_version = version.into();
            t.sent_nonce = nonce.into();
            t.sent_model_version = model_version;
        });
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Ok(mut p) = self.registry.proxies.lock() {
            p.remove(&self.id);
        }
        self.registry.connected.get_or_create(&self.registry.rev()).dec();
    }
}
