//! The ADS server: State-of-the-World and Delta, per Envoy's xds_protocol.
//!
//! * Each stream belongs to one proxy; its first request must carry the node,
//!   whose metadata `REVMESH_REVISION` must name this control plane's revision,
//!   and which must claim the identity the caller proved ([`crate::xds_auth`]).
//! * Per type, the server tracks the subscription, the nonce of its last
//!   response and what the proxy ACKed or NACKed. A NACK leaves the proxy on its
//!   last good config; the server does not resend until the config changes.
//! * LDS and CDS are wildcard (all resources) unless the first request names
//!   resources; EDS and RDS are by name.
//! * A listener asked for by name that names a Service port (`<host>:<port>`)
//!   is a proxyless gRPC client's API listener ([`crate::proxyless`]), made for
//!   that stream only: wildcard subscribers never see one. A name that exists
//!   nowhere is left out of State-of-the-World responses (gRPC then reports it
//!   missing after its does-not-exist timer) and is answered in Delta's
//!   `removed_resources`; both are logged with the reason.
//! * Pushes go in make-before-break order: clusters, endpoints, listeners, routes.

use crate::model::MeshModel;
use crate::proxyless;
use crate::status::{ProxyRegistry, TypeStatus};
use crate::translate::{self, ProxyContext, Resources, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::{value::Kind, Any};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Push order: a listener or route never names a cluster the proxy lacks.
pub const TYPE_ORDER: [&str; 4] = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];

/// A model with the version it was published under.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub version: u64,
    pub model: MeshModel,
}

pub struct AdsServer {
    pub revision: String,
    model: watch::Receiver<Arc<Published>>,
    /// An async lock held across translation: when a change wakes every stream,
    /// one translates and the others wait for its result, instead of each
    /// translating (and holding) a copy of the whole mesh.
    cache: tokio::sync::Mutex<HashMap<ProxyContext, Arc<Snapshot>>>,
    pub registry: Arc<ProxyRegistry>,
    /// Bounds the proxies being pushed to at once: a stream takes a permit for
    /// its responses and gives it back when the proxy has answered them all (or
    /// after PUSH_ANSWER_WAIT). This is what keeps 2,000 proxies connecting at
    /// once from holding 2,000 full configurations in memory.
    push_permits: Arc<Semaphore>,
    /// Proxies by node id, for config_dump.
    proxies: std::sync::Mutex<HashMap<String, ProxyEntry>>,
}

#[derive(Clone)]
struct ProxyEntry {
    ctx: ProxyContext,
    ips: Vec<std::net::IpAddr>,
    /// What a proxyless gRPC client's API listeners depend on: its namespace
    /// and the listener names its streams ask for, with how many streams ask
    /// (gRPC opens one ADS stream per channel target, all with the same node).
    namespace: Option<String>,
    listeners: BTreeMap<String, usize>,
    streams: usize,
}

/// The longest a proxy's silence holds a push permit.
const PUSH_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A stream's push permit, held while some of its responses are unanswered.
#[derive(Default)]
struct PushSlot {
    release: Option<oneshot::Sender<()>>,
    unanswered: BTreeSet<String>,
}

impl PushSlot {
    /// Takes a permit unless this stream holds a live one. True when the type
    /// had no unanswered response before.
    async fn before_send(&mut self, permits: &Arc<Semaphore>, type_url: &str) -> bool {
        if self.release.as_ref().is_none_or(|r| r.is_closed()) {
            // The semaphore is never closed, so acquiring only waits.
            if let Ok(permit) = Arc::clone(permits).acquire_owned().await {
                let (tx, rx) = oneshot::channel::<()>();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(PUSH_ANSWER_WAIT, rx).await;
                    drop(permit);
                });
                self.release = Some(tx);
            }
        }
        self.unanswered.insert(type_url.to_string())
    }

    /// The proxy answered the latest response of a type.
    fn answered(&mut self, type_url: &str) {
        self.unanswered.remove(type_url);
        if self.unanswered.is_empty() {
            self.release = None;
        }
    }
}

impl AdsServer {
    pub fn new(revision: String, model: watch::Receiver<Arc<Published>>, registry: Arc<ProxyRegistry>, max_concurrent_pushes: usize) -> Self {
        AdsServer {
            revision,
            model,
            cache: tokio::sync::Mutex::new(HashMap::new()),
            registry,
            push_permits: Arc::new(Semaphore::new(max_concurrent_pushes.max(1))),
            proxies: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn stream_opened(&self, node_id: &str, ctx: &ProxyContext, ips: &[std::net::IpAddr]) {
        if let Ok(mut p) = self.proxies.lock() {
            let e = p.entry(node_id.to_string()).or_insert_with(|| ProxyEntry {
                ctx: ctx.clone(),
                ips: ips.to_vec(),
                namespace: None,
                listeners: BTreeMap::new(),
                streams: 0,
            });
            e.ctx = ctx.clone();
            e.ips = ips.to_vec();
            e.streams += 1;
        }
    }

    /// Records that a stream of `node_id` now asks for the listeners `after`
    /// instead of `before`, for config_dump.
    fn listeners_asked(&self, node_id: &str, namespace: Option<&str>, before: &BTreeSet<String>, after: &BTreeSet<String>) {
        if let Ok(mut p) = self.proxies.lock() {
            if let Some(e) = p.get_mut(node_id) {
                e.namespace = namespace.map(str::to_string);
                for name in before {
                    if let Some(count) = e.listeners.get_mut(name) {
                        *count -= 1;
                        if *count == 0 {
                            e.listeners.remove(name);
                        }
                    }
                }
                for name in after {
                    *e.listeners.entry(name.clone()).or_default() += 1;
                }
            }
        }
    }

    fn stream_closed(&self, node_id: &str) {
        if let Ok(mut p) = self.proxies.lock() {
            if let Some(e) = p.get_mut(node_id) {
                e.streams -= 1;
                if e.streams == 0 {
                    p.remove(node_id);
                }
            }
        }
    }

    /// Whether the source has published its first model. The Kubernetes source
    /// publishes only once every watch has listed, so before that there is no
    /// true mesh to serve: streams wait and `/ready` says not ready.
    pub fn has_model(&self) -> bool {
        self.model.borrow().version > 0
    }

    /// A receiver of the model that has waited for the first published one. A
    /// proxy served the empty model instead would drop every cluster it holds
    /// (a replaced control-plane pod would cut the mesh's traffic). None when
    /// the proxy went away meanwhile, or when the source stopped before it
    /// published anything (the proxy is then told so, and tries again).
    async fn first_model<R>(&self, tx: &mpsc::Sender<Result<R, Status>>) -> Option<watch::Receiver<Arc<Published>>> {
        let mut model = self.model.clone();
        if !self.has_model() {
            tracing::info!("waiting for the source's first model before answering");
        }
        let published = tokio::select! {
            seen = model.wait_for(|p| p.version > 0) => seen.is_ok(),
            _ = tx.closed() => return None,
        };
        if !published {
            let _ = tx.send(Err(Status::unavailable("the control plane's config source stopped before its first model; see its log"))).await;
            return None;
        }
        Some(model)
    }

    /// The resources a connected proxy is served now, or None if no proxy of
    /// that id is connected.
    pub async fn proxy_resources(&self, node_id: &str) -> Option<ProxyResources> {
        let entry = self.proxies.lock().ok()?.get(node_id).cloned()?;
        let published = self.model.borrow().clone();
        let shared = self.resources(&entry.ctx, &published).await;
        let own = own_resources(&published.model, &entry.ips, &entry.ctx, entry.namespace.as_deref(), entry.listeners.keys().map(String::as_str));
        Some(ProxyResources { shared, own })
    }

    /// Resources for a proxy context at the current model version; proxies with
    /// the same context share one translation.
    async fn resources(&self, ctx: &ProxyContext, published: &Published) -> Arc<Snapshot> {
        let mut cache = self.cache.lock().await;
        if let Some(snap) = cache.get(ctx) {
            if snap.version >= published.version {
                return Arc::clone(snap);
            }
        }
        let snap = Arc::new(Snapshot::new(published.version, translate::translate(&published.model, ctx), cache.get(ctx).map(|s| &**s)));
        cache.insert(ctx.clone(), Arc::clone(&snap));
        snap
    }
}

fn metadata_string(node: &Node, key: &str) -> Option<String> {
    let field = node.metadata.as_ref()?.fields.get(key)?;
    match &field.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Checks the proxy's revision and reads its translation context.
pub fn admit_node(node: Option<&Node>, revision: &str) -> Result<(String, ProxyContext, Vec<std::net::IpAddr>), Status> {
    let node = node.ok_or_else(|| Status::invalid_argument("the first request on a stream must carry the node (id and metadata)"))?;
    match metadata_string(node, "REVMESH_REVISION") {
        Some(r) if r == revision => {}
        Some(r) => {
            return Err(Status::permission_denied(format!(
                "proxy {} is of revision {r}, but this control plane serves revision {revision} only; connect to control-plane-{r}",
                node.id
            )))
        }
        None => {
            return Err(Status::permission_denied(format!(
                "proxy {} names no revision (node metadata REVMESH_REVISION); this control plane serves revision {revision} only",
                node.id
            )))
        }
    }
    let mut ctx = ProxyContext::default();
    if let Some(addr) = metadata_string(node, "REVMESH_OUTBOUND_ADDRESS") {
        ctx.outbound_address = addr
            .parse()
            .map_err(|_| Status::invalid_argument(format!("node metadata REVMESH_OUTBOUND_ADDRESS {addr:?} is not ip:port")))?;
    }
    if let Some(mode) = metadata_string(node, "REVMESH_INTERCEPTION") {
        ctx.captured = match mode.as_str() {
            "REDIRECT" => true,
            "NONE" => false,
            other => return Err(Status::invalid_argument(format!("node metadata REVMESH_INTERCEPTION {other:?} is not REDIRECT or NONE"))),
        };
    }
    // Istio's name for the pod's addresses: they select the inbound ports.
    let mut ips = Vec::new();
    for ip in metadata_string(node, "INSTANCE_IPS").unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
        ips.push(ip.parse().map_err(|_| Status::invalid_argument(format!("node metadata INSTANCE_IPS entry {ip:?} is not an IP address")))?);
    }
    Ok((node.id.clone(), ctx, ips))
}

/// The build a proxy says it runs: node metadata `REVMESH_PROXY_VERSION`
/// (Revmesh's sidecar sets it from its image), shown in `/debug/syncz` so
/// `meshctl proxy-status` tells two builds of one revision apart.
pub fn reported_proxy_version(node: Option<&Node>) -> Option<String> {
    node.and_then(|n| metadata_string(n, "REVMESH_PROXY_VERSION")).filter(|v| !v.is_empty())
}

/// The namespace a client says it runs in (node metadata `NAMESPACE`, as
/// Istio names it): where a proxyless gRPC client's short host names resolve.
pub fn node_namespace(node: Option<&Node>) -> Option<String> {
    node.and_then(|n| metadata_string(n, "NAMESPACE")).filter(|ns| !ns.is_empty())
}

/// The resources that are one stream's alone: its inbound listener and
/// clusters, and the API listeners among the listener names it asked for.
fn own_resources<'a>(
    model: &MeshModel,
    ips: &[std::net::IpAddr],
    ctx: &ProxyContext,
    namespace: Option<&str>,
    listener_names: impl Iterator<Item = &'a str>,
) -> Resources {
    let mut own = translate::inbound(model, ips, ctx);
    let named: Vec<&str> = listener_names.filter(|n| !is_proxy_listener(n)).collect();
    if !named.is_empty() {
        let api = proxyless::api_listeners(model, named, namespace);
        if !api.is_empty() {
            own.entry(LISTENER_TYPE).or_default().extend(api);
        }
    }
    own
}

/// The listeners Envoy and the sidecar get, which are never API listeners.
fn is_proxy_listener(name: &str) -> bool {
    name == translate::OUTBOUND_LISTENER || name == translate::INBOUND_LISTENER
}

/// Logs, with the reason, each newly asked-for listener name that names
/// nothing: the client is told by absence only, so the operator must be told here.
fn log_unknown_listeners<'a>(model: &MeshModel, namespace: Option<&str>, shared: &Snapshot, names: impl Iterator<Item = &'a str>) {
    for name in names.filter(|n| !is_proxy_listener(n) && shared.entries(LISTENER_TYPE).is_none_or(|m| !m.contains_key(*n))) {
        if let Err(reason) = proxyless::resolve(model, name, namespace) {
            tracing::warn!(listener = %name, %reason, "a client asked for a listener that does not exist (a gRPC client fails its RPCs with UNAVAILABLE once it gives up waiting)");
        }
    }
}

/// A resource name, shared between snapshots and the streams that track it:
/// 2,000 proxies × 2,000 resources must not mean 4 million owned strings.
pub type Name = Arc<str>;

/// Content version of one encoded resource.
pub fn resource_version(any: &Any) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&any.value)
}

/// The wire form of a resource version; `parse_version` reads it back.
pub fn format_version(v: u64) -> String {
    format!("{v:016x}")
}

fn parse_version(text: &str) -> Option<u64> {
    (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

/// Content version of a set of resources.
fn version_of(items: impl Iterator<Item = (u64, u64)>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name_hash, version) in items {
        h.update(&name_hash.to_le_bytes());
        h.update(&version.to_le_bytes());
    }
    format_version(h.digest())
}

pub struct Entry {
    pub any: Any,
    pub version: u64,
}

/// The translated resources for one proxy context at one model version, with
/// each resource's version and what changed since the previous snapshot, both
/// computed once and shared by every stream.
pub struct Snapshot {
    pub version: u64,
    pub types: HashMap<&'static str, BTreeMap<Name, Entry>>,
    /// The snapshot `changed` is relative to (0: none).
    prev_version: u64,
    /// Per type: names added, changed or removed since `prev_version`.
    changed: HashMap<&'static str, Vec<Name>>,
}

impl Snapshot {
    pub fn new(version: u64, resources: Resources, prev: Option<&Snapshot>) -> Snapshot {
        let types: HashMap<&'static str, BTreeMap<Name, Entry>> = resources
            .into_iter()
            .map(|(t, m)| {
                // Reuse the previous snapshot's name allocation, which the streams share.
                let before = prev.and_then(|p| p.types.get(t));
                let entries = m
                    .into_iter()
                    .map(|(n, any)| {
                        let name = before.and_then(|b| b.get_key_value(n.as_str())).map_or_else(|| Name::from(n), |(k, _)| Arc::clone(k));
                        let version = resource_version(&any);
                        (name, Entry { any, version })
                    })
                    .collect();
                (t, entries)
            })
            .collect();
        let mut changed: HashMap<&'static str, Vec<Name>> = HashMap::new();
        if let Some(prev) = prev {
            for type_url in TYPE_ORDER {
                let empty = BTreeMap::new();
                let now = types.get(type_url).unwrap_or(&empty);
                let before = prev.types.get(type_url).unwrap_or(&empty);
                let set = changed.entry(type_url).or_default();
                set.extend(now.iter().filter(|(n, e)| before.get(*n).map(|b| b.version) != Some(e.version)).map(|(n, _)| Arc::clone(n)));
                set.extend(before.keys().filter(|n| !now.contains_key(*n)).cloned());
            }
        }
        Snapshot { version, types, prev_version: prev.map_or(0, |p| p.version), changed }
    }

    fn entries(&self, type_url: &str) -> Option<&BTreeMap<Name, Entry>> {
        self.types.get(type_url)
    }

    /// The shared allocation of a name this snapshot holds, or a new one.
    fn intern(&self, type_url: &str, name: &str) -> Name {
        self.entries(type_url).and_then(|m| m.get_key_value(name)).map_or_else(|| Name::from(name), |(k, _)| Arc::clone(k))
    }
}

/// A proxy's resources: the shared snapshot and the few that are its own
/// (inbound), whose names never collide with shared ones.
pub struct ProxyResources {
    pub shared: Arc<Snapshot>,
    pub own: Resources,
}

impl ProxyResources {
    fn get(&self, type_url: &str, name: &str) -> Option<(&Any, u64)> {
        if let Some(e) = self.shared.entries(type_url).and_then(|m| m.get(name)) {
            return Some((&e.any, e.version));
        }
        self.own.get(type_url).and_then(|m| m.get(name)).map(|a| (a, resource_version(a)))
    }

    /// Every resource of a type, shared first, then own.
    pub fn iter(&self, type_url: &str) -> impl Iterator<Item = (&str, &Any, u64)> + '_ {
        let shared = self.shared.entries(type_url).into_iter().flatten().map(|(n, e)| (&**n, &e.any, e.version));
        let own = self.own.get(type_url).into_iter().flatten().map(|(n, a)| (n.as_str(), a, resource_version(a)));
        shared.chain(own)
    }
}

fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

#[derive(Debug, Default)]
struct SotwType {
    names: BTreeSet<String>,
    wildcard: bool,
    nonce: String,
    sent_version: Option<String>,
}

/// The names a State-of-the-World request subscribes to, and whether it is a
/// wildcard subscription. An empty list of a wildcard type means "everything"
/// only on the first request of that type, or while it already meant that:
/// a client that named resources and then names none has unsubscribed from
/// all (gRPC does this when its last channel to a target closes).
fn sotw_subscription(type_url: &str, resource_names: &[String], first_or_wildcard: bool) -> (BTreeSet<String>, bool) {
    let names: BTreeSet<String> = resource_names.iter().filter(|n| *n != "*").cloned().collect();
    let legacy_wildcard = is_wildcard_type(type_url) && resource_names.is_empty() && first_or_wildcard;
    (names, legacy_wildcard || resource_names.iter().any(|n| n == "*"))
}

/// The State-of-the-World response for one type, if it differs from what was sent.
fn sotw_response(t: &mut SotwType, type_url: &str, resources: &ProxyResources, nonce: u64, force: bool) -> Option<DiscoveryResponse> {
    let chosen: Vec<(&str, &Any, u64)> = resources.iter(type_url).filter(|(n, _, _)| t.wildcard || t.names.contains(*n)).collect();
    let version = version_of(chosen.iter().map(|(n, _, v)| (xxhash_rust::xxh3::xxh3_64(n.as_bytes()), *v)));
    if !force && t.sent_version.as_deref() == Some(version.as_str()) {
        return None;
    }
    t.nonce = nonce.to_string();
    t.sent_version = Some(version.clone());
    Some(DiscoveryResponse {
        version_info: version,
        resources: chosen.into_iter().map(|(_, a, _)| a.clone()).collect(),
        type_url: type_url.into(),
        nonce: t.nonce.clone(),
        ..Default::default()
    })
}

/// What a proxy holds of one resource, when that differs from what its
/// stream's base snapshot implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Absent,
    Version(u64),
    /// Declared on reconnect with a version this server did not write.
    Unknown,
}

/// One type of a Delta stream. What the proxy holds is kept as "the wanted part
/// of `base`", plus `overrides` where it differs, so a proxy in sync costs a
/// pointer rather than a copy of every name and version.
#[derive(Default)]
struct DeltaType {
    subscribed: BTreeSet<Name>,
    wildcard: bool,
    /// The snapshot whose wanted resources the proxy holds (sent, maybe not yet ACKed).
    base: Option<Arc<Snapshot>>,
    overrides: HashMap<Name, Held>,
    /// Names subscribed since the last response: each one that does not exist
    /// is reported in that response's `removed_resources` (xds_protocol: the
    /// Delta client learns of absence at once, with no timer).
    asked: BTreeSet<Name>,
    nonce: String,
}

impl DeltaType {
    fn wanted(&self, name: &str) -> bool {
        self.wildcard || self.subscribed.contains(name)
    }

    fn held(&self, type_url: &str, name: &str) -> Held {
        if let Some(h) = self.overrides.get(name) {
            return *h;
        }
        match self.base.as_ref().and_then(|b| b.entries(type_url)).and_then(|m| m.get(name)) {
            Some(e) if self.wanted(name) => Held::Version(e.version),
            _ => Held::Absent,
        }
    }

    fn base_has(&self, type_url: &str, name: &str) -> bool {
        self.base.as_ref().and_then(|b| b.entries(type_url)).is_some_and(|m| m.contains_key(name))
    }

    fn subscribe(&mut self, type_url: &str, name: Name) {
        // Newly wanted: the proxy does not have it, whatever the base says.
        if !self.wanted(&name) && !self.overrides.contains_key(&name) && self.base_has(type_url, &name) {
            self.overrides.insert(Arc::clone(&name), Held::Absent);
        }
        self.asked.insert(Arc::clone(&name));
        self.subscribed.insert(name);
    }

    fn unsubscribe(&mut self, name: &str) {
        // The proxy forgets it; with it unwanted, the base implies Absent.
        self.subscribed.remove(name);
        self.overrides.remove(name);
        self.asked.remove(name);
    }

    fn subscribe_wildcard(&mut self, type_url: &str) {
        if !self.wildcard {
            let newly: Vec<Name> = match self.base.as_ref().and_then(|b| b.entries(type_url)) {
                Some(m) => m.keys().filter(|n| !self.subscribed.contains(&***n) && !self.overrides.contains_key(&***n)).cloned().collect(),
                None => Vec::new(),
            };
            self.overrides.extend(newly.into_iter().map(|n| (n, Held::Absent)));
            self.wildcard = true;
        }
    }

    fn unsubscribe_wildcard(&mut self) {
        self.wildcard = false;
        let subscribed = &self.subscribed;
        self.overrides.retain(|n, _| subscribed.contains(n));
    }
}

/// The Delta response for one type: changed and removed resources, if any.
/// Afterwards the proxy is taken to hold the wanted part of `current`.
fn delta_response(t: &mut DeltaType, type_url: &str, current: &ProxyResources, system_version: u64, nonce: u64, force: bool) -> Option<DeltaDiscoveryResponse> {
    let snapshot = &current.shared;
    let base_version = t.base.as_ref().map(|b| b.version);
    let own = current.own.get(type_url);
    // Only names that may differ: those changed since the base (when the base is
    // this snapshot or its predecessor), the proxy's own few, and the overrides.
    let mut candidates: BTreeSet<Name> = t.overrides.keys().cloned().collect();
    candidates.extend(own.into_iter().flatten().map(|(n, _)| Name::from(n.as_str())));
    let incremental = !force && base_version.is_some();
    if incremental && t.base.as_ref().is_some_and(|b| Arc::ptr_eq(b, snapshot)) {
        // Nothing shared changed.
    } else if incremental && snapshot.prev_version != 0 && base_version == Some(snapshot.prev_version) {
        candidates.extend(snapshot.changed.get(type_url).into_iter().flatten().cloned());
    } else {
        candidates.extend(snapshot.entries(type_url).into_iter().flatten().map(|(n, _)| Arc::clone(n)));
        if let Some(base) = t.base.as_ref().and_then(|b| b.entries(type_url)) {
            candidates.extend(base.keys().cloned());
        }
    }
    let mut resources = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let mut own_held: Vec<(Name, u64)> = Vec::new();
    for name in candidates {
        let held = t.held(type_url, &name);
        match current.get(type_url, &name) {
            Some((any, version)) if t.wanted(&name) => {
                if own.is_some_and(|m| m.contains_key(&*name)) {
                    own_held.push((Arc::clone(&name), version));
                }
                if held != Held::Version(version) {
                    resources.push(Resource { name: name.to_string(), version: format_version(version), resource: Some(any.clone()), ..Default::default() });
                }
            }
            _ => {
                if held != Held::Absent {
                    removed.push(name.to_string());
                }
            }
        }
    }
    for name in std::mem::take(&mut t.asked) {
        if t.wanted(&name) && current.get(type_url, &name).is_none() && !removed.iter().any(|r| **r == *name) {
            removed.push(name.to_string());
        }
    }
    // The proxy now holds the wanted part of this snapshot, plus its own.
    t.base = Some(Arc::clone(snapshot));
    t.overrides = own_held.into_iter().map(|(n, v)| (n, Held::Version(v))).collect();
    if resources.is_empty() && removed.is_empty() && !force {
        return None;
    }
    t.nonce = nonce.to_string();
    Some(DeltaDiscoveryResponse {
        system_version_info: system_version.to_string(),
        resources,
        type_url: type_url.into(),
        removed_resources: removed,
        nonce: t.nonce.clone(),
        ..Default::default()
    })
}

/// Resources per Delta response part.
const DELTA_PART_RESOURCES: usize = 100;

/// Splits a Delta response into parts of at most `per_part` resources, each
/// with its own nonce; removals go in the last part. Delta responses are
/// independent, so a proxy applies and answers each part on its own.
fn split_delta(mut resp: DeltaDiscoveryResponse, per_part: usize, nonce: &mut u64) -> Vec<DeltaDiscoveryResponse> {
    if resp.resources.len() <= per_part {
        return vec![resp];
    }
    let mut parts = Vec::new();
    let all = std::mem::take(&mut resp.resources);
    let removed = std::mem::take(&mut resp.removed_resources);
    let count = all.len().div_ceil(per_part);
    let mut it = all.into_iter();
    for i in 0..count {
        if i > 0 {
            *nonce += 1;
        }
        parts.push(DeltaDiscoveryResponse {
            system_version_info: resp.system_version_info.clone(),
            resources: it.by_ref().take(per_part).collect(),
            type_url: resp.type_url.clone(),
            removed_resources: if i + 1 == count { removed.clone() } else { Vec::new() },
            nonce: nonce.to_string(),
            ..Default::default()
        });
    }
    parts
}

type SotwStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

/// The next thing a stream must react to: a request from the proxy (`Some`),
/// or a new model (`None` inside). `None` outside: the stream is over.
async fn next_event<R>(pending: &mut Option<R>, inbound: &mut Streaming<R>, model: &mut watch::Receiver<Arc<Published>>) -> Option<Option<R>> {
    if let Some(first) = pending.take() {
        return Some(Some(first));
    }
    tokio::select! {
        next = inbound.next() => match next {
            Some(Ok(r)) => Some(Some(r)),
            Some(Err(e)) => {
                tracing::info!(error = %e, "stream error");
                None
            }
            None => None,
        },
        changed = model.changed() => changed.ok().map(|_| None),
    }
}

/// The tonic service: a cheap handle on the shared server.
#[derive(Clone)]
pub struct AdsService(pub Arc<AdsServer>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(&self, request: Request<Streaming<DiscoveryRequest>>) -> Result<Response<SotwStream>, Status> {
        let caller = crate::xds_auth::caller_of(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("the stream closed before its first request"))??;
        let (node_id, ctx, ips) = admit_node(first.node.as_ref(), &self.0.revision)?;
        crate::xds_auth::authorize(&caller, first.node.as_ref(), &self.0.revision)?;
        let (tx, rx) = mpsc::channel(16);
        let server = Arc::clone(&self.0);
        let proxy = server.registry.connect(&node_id, &server.revision, "sotw");
        proxy.set_proxy_version(reported_proxy_version(first.node.as_ref()));
        let span = tracing::info_span!("ads", proxy = %node_id, mode = "sotw");
        server.stream_opened(&node_id, &ctx, &ips);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tracing::info!("proxy connected");
                let Some(mut model) = server.first_model(&tx).await else {
                    tracing::info!("proxy gone before the first model");
                    server.stream_closed(&node_id);
                    return;
                };
                let mut types: HashMap<String, SotwType> = HashMap::new();
                let mut slot = PushSlot::default();
                let mut nonce = 0u64;
                let namespace = node_namespace(first.node.as_ref());
                let mut asked_listeners: BTreeSet<String> = BTreeSet::new();
                let mut pending = Some(first);
                'stream: while let Some(request) = next_event(&mut pending, &mut inbound, &mut model).await {
                    // Only a model event marks the model seen: a change that lands
                    // while a request is handled must still wake this stream.
                    let published = if request.is_some() { model.borrow().clone() } else { model.borrow_and_update().clone() };
                    let shared = server.resources(&ctx, &published).await;
                    let mut sends: Vec<(String, bool)> = Vec::new();
                    match request {
                        Some(req) => {
                            let type_url = req.type_url.clone();
                            let is_new = !types.contains_key(&type_url);
                            let t = types.entry(type_url.clone()).or_default();
                            let status = TypeStatus::from_sotw(&req);
                            // Stale: an answer to a response that was superseded. A nonce
                            // from a previous stream (nothing sent here yet) is not stale.
                            if !req.response_nonce.is_empty() && !t.nonce.is_empty() && req.response_nonce != t.nonce {
                                continue;
                            }
                            if !req.response_nonce.is_empty() {
                                slot.answered(&type_url);
                            }
                            proxy.record(&type_url, status, published.version);
                            let (names, wildcard) = sotw_subscription(&type_url, &req.resource_names, is_new || t.wildcard);
                            let changed = names != t.names || wildcard != t.wildcard || t.sent_version.is_none();
                            if type_url == LISTENER_TYPE && names != t.names {
                                log_unknown_listeners(&published.model, namespace.as_deref(), &shared, names.difference(&t.names).map(String::as_str));
                                server.listeners_asked(&node_id, namespace.as_deref(), &asked_listeners, &names);
                                asked_listeners = names.clone();
                            }
                            t.names = names;
                            t.wildcard = wildcard;
                            if changed {
                                sends.push((type_url, t.sent_version.is_none()));
                            }
                        }
                        None => sends.extend(TYPE_ORDER.iter().filter(|u| types.contains_key(**u)).map(|u| (u.to_string(), false))),
                    }
                    let listener_names = types.get(LISTENER_TYPE).into_iter().flat_map(|t| t.names.iter().map(String::as_str));
                    let resources = ProxyResources { own: own_resources(&published.model, &ips, &ctx, namespace.as_deref(), listener_names), shared };
                    for (type_url, first_time) in sends {
                        let newly_unanswered = slot.before_send(&server.push_permits, &type_url).await;
                        let Some(t) = types.get_mut(&type_url) else { continue };
                        nonce += 1;
                        match sotw_response(t, &type_url, &resources, nonce, first_time) {
                            Some(resp) => {
                                proxy.sent(&type_url, &resp.version_info, &resp.nonce, published.version);
                                if tx.send(Ok(resp)).await.is_err() {
                                    break 'stream;
                                }
                            }
                            None if newly_unanswered => slot.answered(&type_url),
                            None => {}
                        }
                    }
                }
                tracing::info!("proxy disconnected");
                server.listeners_asked(&node_id, namespace.as_deref(), &asked_listeners, &BTreeSet::new());
                server.stream_closed(&node_id);
                drop(proxy);
            },
            span,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(&self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Result<Response<DeltaStream>, Status> {
        let caller = crate::xds_auth::caller_of(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("the stream closed before its first request"))??;
        let (node_id, ctx, ips) = admit_node(first.node.as_ref(), &self.0.revision)?;
        crate::xds_auth::authorize(&caller, first.node.as_ref(), &self.0.revision)?;
        let (tx, rx) = mpsc::channel(16);
        let server = Arc::clone(&self.0);
        let proxy = server.registry.connect(&node_id, &server.revision, "delta");
        proxy.set_proxy_version(reported_proxy_version(first.node.as_ref()));
        let span = tracing::info_span!("ads", proxy = %node_id, mode = "delta");
        server.stream_opened(&node_id, &ctx, &ips);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tracing::info!("proxy connected");
                let Some(mut model) = server.first_model(&tx).await else {
                    tracing::info!("proxy gone before the first model");
                    server.stream_closed(&node_id);
                    return;
                };
                let mut types: HashMap<String, DeltaType> = HashMap::new();
                let mut slot = PushSlot::default();
                let mut nonce = 0u64;
                let namespace = node_namespace(first.node.as_ref());
                let mut asked_listeners: BTreeSet<String> = BTreeSet::new();
                let mut pending = Some(first);
                'stream: while let Some(request) = next_event(&mut pending, &mut inbound, &mut model).await {
                    // Only a model event marks the model seen: a change that lands
                    // while a request is handled must still wake this stream.
                    let published = if request.is_some() { model.borrow().clone() } else { model.borrow_and_update().clone() };
                    let shared = server.resources(&ctx, &published).await;
                    let mut sends: Vec<(String, bool)> = Vec::new();
                    match request {
                        Some(req) => {
                            let type_url = req.type_url.clone();
                            let is_new = !types.contains_key(&type_url);
                            let t = types.entry(type_url.clone()).or_default();
                            if is_new {
                                t.wildcard = is_wildcard_type(&type_url) && req.resource_names_subscribe.is_empty();
                                // A reconnecting proxy says what it has; do not resend that.
                                for (name, version) in &req.initial_resource_versions {
                                    let held = parse_version(version).map_or(Held::Unknown, Held::Version);
                                    t.overrides.insert(shared.intern(&type_url, name), held);
                                }
                            }
                            // Every Delta response stands alone (a NACK of any part matters),
                            // so there are no stale answers; the latest one frees the push slot.
                            let ack_or_nack = !req.response_nonce.is_empty();
                            if ack_or_nack && req.response_nonce == t.nonce {
                                slot.answered(&type_url);
                            }
                            proxy.record(&type_url, TypeStatus::from_delta(&req), published.version);
                            for n in &req.resource_names_subscribe {
                                if n == "*" {
                                    t.subscribe_wildcard(&type_url);
                                } else {
                                    t.subscribe(&type_url, shared.intern(&type_url, n));
                                }
                            }
                            for n in &req.resource_names_unsubscribe {
                                if n == "*" { t.unsubscribe_wildcard() } else { t.unsubscribe(n) }
                            }
                            let subscription_changed = !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
                            if type_url == LISTENER_TYPE && subscription_changed {
                                let asked = req.resource_names_subscribe.iter().map(String::as_str).filter(|n| *n != "*");
                                log_unknown_listeners(&published.model, namespace.as_deref(), &shared, asked);
                                let now: BTreeSet<String> = t.subscribed.iter().map(|n| n.to_string()).collect();
                                server.listeners_asked(&node_id, namespace.as_deref(), &asked_listeners, &now);
                                asked_listeners = now;
                            }
                            if is_new || subscription_changed {
                                sends.push((type_url, is_new));
                            }
                        }
                        None => sends.extend(TYPE_ORDER.iter().filter(|u| types.contains_key(**u)).map(|u| (u.to_string(), false))),
                    }
                    let listener_names = types.get(LISTENER_TYPE).into_iter().flat_map(|t| t.subscribed.iter().map(|n| &**n));
                    let resources = ProxyResources { own: own_resources(&published.model, &ips, &ctx, namespace.as_deref(), listener_names), shared };
                    for (type_url, force) in sends {
                        let newly_unanswered = slot.before_send(&server.push_permits, &type_url).await;
                        let Some(t) = types.get_mut(&type_url) else { continue };
                        nonce += 1;
                        match delta_response(t, &type_url, &resources, published.version, nonce, force) {
                            Some(resp) => {
                                // Sent in parts: the gRPC encoder keeps a buffer as big as the
                                // largest message it wrote, per stream, for the stream's life.
                                let parts = split_delta(resp, DELTA_PART_RESOURCES, &mut nonce);
                                if let Some(last) = parts.last() {
                                    t.nonce = last.nonce.clone();
                                }
                                for part in parts {
                                    proxy.sent(&type_url, &part.system_version_info, &part.nonce, published.version);
                                    if tx.send(Ok(part)).await.is_err() {
                                        break 'stream;
                                    }
                                }
                            }
                            None if newly_unanswered => slot.answered(&type_url),
                            None => {}
                        }
                    }
                }
                tracing::info!("proxy disconnected");
                server.listeners_asked(&node_id, namespace.as_deref(), &asked_listeners, &BTreeSet::new());
                server.stream_closed(&node_id);
                drop(proxy);
            },
            span,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn any(bytes: &[u8]) -> Any {
        Any { type_url: ENDPOINT_TYPE.into(), value: bytes.to_vec() }
    }

    fn build(items: &[(&str, &[u8])]) -> Resources {
        let mut r: Resources = BTreeMap::new();
        let m = r.entry(ENDPOINT_TYPE).or_default();
        for (n, b) in items {
            m.insert(n.to_string(), any(b));
        }
        r
    }

    fn resources(items: &[(&str, &[u8])]) -> ProxyResources {
        ProxyResources { shared: Arc::new(Snapshot::new(1, build(items), None)), own: BTreeMap::new() }
    }

    fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
        resp.resources.iter().map(|r| r.name.as_str()).collect()
    }

    fn node(revision: Option<&str>) -> Node {
        let mut fields = std::collections::HashMap::new();
        if let Some(r) = revision {
            fields.insert("REVMESH_REVISION".to_string(), Value { kind: Some(Kind::StringValue(r.into())) });
        }
        Node { id: "p1".into(), metadata: Some(Struct { fields }), ..Default::default() }
    }

    #[test]
    fn the_reported_proxy_version_comes_from_node_metadata() {
        let mut n = node(Some("1-25-2"));
        assert_eq!(reported_proxy_version(Some(&n)), None, "Envoy and proxyless clients do not say");
        let fields = &mut n.metadata.as_mut().unwrap().fields;
        fields.insert("REVMESH_PROXY_VERSION".into(), Value { kind: Some(Kind::StringValue("1.25.2".into())) });
        assert_eq!(reported_proxy_version(Some(&n)), Some("1.25.2".into()));
        let registry = crate::status::ProxyRegistry::new("1-25-2");
        let proxy = registry.connect("p1", "1-25-2", "delta");
        proxy.set_proxy_version(reported_proxy_version(Some(&n)));
        let syncz = serde_json::to_value(registry.syncz()).unwrap();
        assert_eq!(syncz[0]["proxyVersion"], "1.25.2", "{syncz}");
        drop(proxy);
        assert_eq!(registry.syncz().len(), 0);
    }

    #[test]
    fn revision_scoping() {
        assert!(admit_node(Some(&node(Some("1-25-2"))), "1-25-2").is_ok());
        let err = admit_node(Some(&node(Some("1-24-5"))), "1-25-2").expect_err("other revision");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("control-plane-1-24-5"), "{}", err.message());
        assert_eq!(admit_node(Some(&node(None)), "1-25-2").expect_err("none").code(), tonic::Code::PermissionDenied);
        assert_eq!(admit_node(None, "1-25-2").expect_err("no node").code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn sotw_sends_by_name_and_only_on_change() {
        let mut t = SotwType { names: ["a".to_string()].into(), ..Default::default() };
        let r1 = resources(&[("a", b"1"), ("b", b"2")]);
        let resp = sotw_response(&mut t, ENDPOINT_TYPE, &r1, 1, true).expect("first response");
        assert_eq!(resp.resources.len(), 1, "only the subscribed name");
        assert_eq!(resp.nonce, "1");
        // Same content: nothing to send.
        assert!(sotw_response(&mut t, ENDPOINT_TYPE, &r1, 2, false).is_none());
        // A change to an unsubscribed resource: nothing either.
        assert!(sotw_response(&mut t, ENDPOINT_TYPE, &resources(&[("a", b"1"), ("b", b"3")]), 3, false).is_none());
        // A change to the subscribed one: a new version and nonce.
        let resp2 = sotw_response(&mut t, ENDPOINT_TYPE, &resources(&[("a", b"9")]), 4, false).expect("changed");
        assert_ne!(resp2.version_info, resp.version_info);
        assert_eq!(t.nonce, "4");
    }

    #[test]
    fn sotw_empty_names_mean_everything_only_at_first() {
        let none: Vec<String> = Vec::new();
        assert_eq!(sotw_subscription(LISTENER_TYPE, &none, true), (BTreeSet::new(), true), "Envoy's wildcard LDS");
        assert_eq!(sotw_subscription(LISTENER_TYPE, &none, false), (BTreeSet::new(), false), "a named client unsubscribing from all");
        assert_eq!(sotw_subscription(ENDPOINT_TYPE, &none, true), (BTreeSet::new(), false), "EDS is never wildcard by omission");
        let named = vec!["echo.demo:50051".to_string()];
        assert!(!sotw_subscription(LISTENER_TYPE, &named, true).1, "names given: not a wildcard");
        assert_eq!(sotw_subscription(CLUSTER_TYPE, &["*".to_string()], false), (BTreeSet::new(), true));
    }

    #[test]
    fn delta_reports_a_subscribed_name_that_does_not_exist_once() {
        let r = resources(&[("a", b"1")]);
        let mut t = DeltaType::default();
        t.subscribe(ENDPOINT_TYPE, "a".into());
        t.subscribe(ENDPOINT_TYPE, "ghost".into());
        let first = delta_response(&mut t, ENDPOINT_TYPE, &r, 1, 1, true).expect("response");
        assert_eq!(names(&first), ["a"]);
        assert_eq!(first.removed_resources, ["ghost"], "absence is said, not left to a timer");
        assert!(delta_response(&mut t, ENDPOINT_TYPE, &r, 1, 2, false).is_none(), "and said once");
        // It springs into existence: sent, as for any wanted name.
        assert_eq!(names(&delta_response(&mut t, ENDPOINT_TYPE, &resources(&[("a", b"1"), ("ghost", b"2")]), 2, 3, false).expect("new")), ["ghost"]);
        // An own resource (an API listener) that exists is not reported absent.
        let mut own: Resources = BTreeMap::new();
        own.entry(ENDPOINT_TYPE).or_default().insert("echo:80".into(), any(b"l"));
        let with_own = ProxyResources { shared: Arc::new(Snapshot::new(3, build(&[]), None)), own };
        let mut named = DeltaType::default();
        named.subscribe(ENDPOINT_TYPE, "echo:80".into());
        let resp = delta_response(&mut named, ENDPOINT_TYPE, &with_own, 3, 1, true).expect("listener");
        assert_eq!((names(&resp), resp.removed_resources.len()), (vec!["echo:80"], 0));
    }

    #[test]
    fn snapshots_share_names_and_know_what_changed() {
        let s1 = Snapshot::new(1, build(&[("a", b"1"), ("b", b"2"), ("c", b"3")]), None);
        let s2 = Snapshot::new(2, build(&[("a", b"1"), ("b", b"9")]), Some(&s1));
        assert_eq!(s2.changed[ENDPOINT_TYPE].iter().map(|n| &**n).collect::<Vec<_>>(), ["b", "c"]);
        let a1 = s1.types[ENDPOINT_TYPE].get_key_value("a").expect("a").0;
        let a2 = s2.types[ENDPOINT_TYPE].get_key_value("a").expect("a").0;
        assert!(Arc::ptr_eq(a1, a2), "one allocation per name across snapshots");
    }

    #[test]
    fn delta_in_sync_diffs_only_changed_names_and_keeps_no_per_name_state() {
        let s1 = Arc::new(Snapshot::new(1, build(&[("a", b"1"), ("b", b"2"), ("c", b"3")]), None));
        let s2 = Arc::new(Snapshot::new(2, build(&[("a", b"1"), ("b", b"9")]), Some(&s1)));
        let mut t = DeltaType { wildcard: true, ..Default::default() };
        let p1 = ProxyResources { shared: Arc::clone(&s1), own: BTreeMap::new() };
        assert_eq!(names(&delta_response(&mut t, ENDPOINT_TYPE, &p1, 1, 1, true).expect("initial")), ["a", "b", "c"]);
        assert!(t.overrides.is_empty(), "in sync: the base snapshot says it all");
        let p2 = ProxyResources { shared: s2, own: BTreeMap::new() };
        let resp = delta_response(&mut t, ENDPOINT_TYPE, &p2, 2, 2, false).expect("diff");
        assert_eq!(names(&resp), ["b"]);
        assert_eq!(resp.removed_resources, ["c"]);
        assert!(delta_response(&mut t, ENDPOINT_TYPE, &p2, 2, 3, false).is_none(), "nothing new");
    }

    #[test]
    fn delta_sends_changes_and_removals_and_honours_initial_versions() {
        let mut t = DeltaType { wildcard: true, ..Default::default() };
        let r1 = resources(&[("a", b"1"), ("b", b"2")]);
        let first = delta_response(&mut t, ENDPOINT_TYPE, &r1, 1, 1, true).expect("initial");
        assert_eq!(first.resources.len(), 2);
        // An unrelated snapshot (not the successor of the base): a full diff.
        let r2 = resources(&[("a", b"1"), ("c", b"3")]);
        let next = delta_response(&mut t, ENDPOINT_TYPE, &r2, 2, 2, false).expect("diff");
        assert_eq!(names(&next), ["c"]);
        assert_eq!(next.removed_resources, ["b"]);
        assert!(delta_response(&mut t, ENDPOINT_TYPE, &r2, 3, 3, false).is_none());

        // A reconnecting proxy that already has "a" at its version, and "x"
        // (gone) at a version this server never wrote: it gets "c" and loses "x".
        let mut again = DeltaType { wildcard: true, ..Default::default() };
        again.overrides.insert("a".into(), Held::Version(resource_version(&any(b"1"))));
        again.overrides.insert("x".into(), parse_version("not-ours").map_or(Held::Unknown, Held::Version));
        let resp = delta_response(&mut again, ENDPOINT_TYPE, &r2, 4, 1, true).expect("resync");
        assert_eq!(names(&resp), ["c"]);
        assert_eq!(resp.removed_resources, ["x"]);

        // Explicit subscription: unsubscribed names are removed, resubscribed ones resent.
        let mut named = DeltaType::default();
        named.subscribe(ENDPOINT_TYPE, "a".into());
        assert_eq!(names(&delta_response(&mut named, ENDPOINT_TYPE, &r2, 1, 1, true).expect("a")), ["a"]);
        named.unsubscribe("a");
        // Envoy drops what it unsubscribes; nothing to remove, nothing to send.
        assert!(delta_response(&mut named, ENDPOINT_TYPE, &r2, 2, 2, false).is_none());
        named.subscribe(ENDPOINT_TYPE, "a".into());
        named.subscribe(ENDPOINT_TYPE, "c".into());
        assert_eq!(names(&delta_response(&mut named, ENDPOINT_TYPE, &r2, 3, 3, true).expect("both")), ["a", "c"]);
    }

    #[test]
    fn delta_subscribing_to_a_name_the_base_already_holds_sends_it() {
        let s1 = Arc::new(Snapshot::new(1, build(&[("a", b"1"), ("b", b"2")]), None));
        let p1 = ProxyResources { shared: Arc::clone(&s1), own: BTreeMap::new() };
        let mut t = DeltaType::default();
        t.subscribe(ENDPOINT_TYPE, "a".into());
        assert_eq!(names(&delta_response(&mut t, ENDPOINT_TYPE, &p1, 1, 1, true).expect("a")), ["a"]);
        // "b" is in the base but was not wanted: the proxy lacks it.
        t.subscribe(ENDPOINT_TYPE, "b".into());
        assert_eq!(names(&delta_response(&mut t, ENDPOINT_TYPE, &p1, 1, 2, false).expect("b")), ["b"]);
        // Wildcard on a named stream behaves the same way.
        let mut w = DeltaType::default();
        w.subscribe(ENDPOINT_TYPE, "a".into());
        delta_response(&mut w, ENDPOINT_TYPE, &p1, 1, 1, true).expect("a");
        w.subscribe_wildcard(ENDPOINT_TYPE);
        assert_eq!(names(&delta_response(&mut w, ENDPOINT_TYPE, &p1, 1, 2, false).expect("b")), ["b"]);
    }

    #[test]
    fn delta_responses_split_into_parts_with_their_own_nonces() {
        let resp = DeltaDiscoveryResponse {
            resources: (0..250).map(|i| Resource { name: format!("r{i}"), ..Default::default() }).collect(),
            removed_resources: vec!["gone".into()],
            nonce: "7".into(),
            ..Default::default()
        };
        let mut nonce = 7;
        let parts = split_delta(resp, 100, &mut nonce);
        assert_eq!(parts.iter().map(|p| p.resources.len()).collect::<Vec<_>>(), [100, 100, 50]);
        assert_eq!(parts.iter().map(|p| p.nonce.as_str()).collect::<Vec<_>>(), ["7", "8", "9"]);
        assert_eq!(nonce, 9);
        assert!(parts[0].removed_resources.is_empty() && parts[2].removed_resources == ["gone"]);
    }

    #[test]
    fn delta_tracks_the_proxys_own_resources() {
        let s1 = Arc::new(Snapshot::new(1, build(&[("a", b"1")]), None));
        let mut own: Resources = BTreeMap::new();
        own.entry(ENDPOINT_TYPE).or_default().insert("inbound".into(), any(b"in1"));
        let p1 = ProxyResources { shared: Arc::clone(&s1), own };
        let mut t = DeltaType { wildcard: true, ..Default::default() };
        assert_eq!(names(&delta_response(&mut t, ENDPOINT_TYPE, &p1, 1, 1, true).expect("initial")), ["a", "inbound"]);
        assert!(delta_response(&mut t, ENDPOINT_TYPE, &p1, 1, 2, false).is_none(), "own resource unchanged");
        let p2 = ProxyResources { shared: Arc::clone(&s1), own: BTreeMap::new() };
        assert_eq!(delta_response(&mut t, ENDPOINT_TYPE, &p2, 1, 3, false).expect("gone").removed_resources, ["inbound"]);
    }
}
