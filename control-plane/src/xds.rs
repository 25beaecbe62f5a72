//! The ADS server: State-of-the-World and Delta, per Envoy's xds_protocol.
//!
//! * Each stream belongs to one proxy; its first request must carry the node,
//!   whose metadata `REVMESH_REVISION` must name this control plane's revision.
//! * Per type, the server tracks the subscription, the nonce of its last
//!   response and what the proxy ACKed or NACKed. A NACK leaves the proxy on its
//!   last good config; the server does not resend until the config changes.
//! * LDS and CDS are wildcard (all resources); EDS and RDS are by name.
//! * Pushes go in make-before-break order: clusters, endpoints, listeners, routes.

use crate::model::MeshModel;
use crate::status::{ProxyRegistry, TypeStatus};
use crate::translate::{self, ProxyContext, Resources, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::{value::Kind, Any};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
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
}

impl AdsServer {
    pub fn new(revision: String, model: watch::Receiver<Arc<Published>>, registry: Arc<ProxyRegistry>) -> Self {
        AdsServer { revision, model, cache: tokio::sync::Mutex::new(HashMap::new()), registry }
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

/// Content version of a set of resources.
fn version_of<'a>(items: impl Iterator<Item = (&'a str, &'a Any)>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, any) in items {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(&any.value);
    }
    format!("{:016x}", h.digest())
}

fn resource_version(any: &Any) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&any.value))
}

/// The translated resources for one proxy context at one model version, with
/// each resource's version and what changed since the previous snapshot, both
/// computed once and shared by every stream.
pub struct Snapshot {
    pub version: u64,
    pub resources: Resources,
    versions: HashMap<&'static str, HashMap<String, String>>,
    /// The snapshot `changed` is relative to (0: none).
    prev_version: u64,
    /// Per type: names added, changed or removed since `prev_version`.
    changed: HashMap<&'static str, BTreeSet<String>>,
}

impl Snapshot {
    pub fn new(version: u64, resources: Resources, prev: Option<&Snapshot>) -> Snapshot {
        let versions: HashMap<&'static str, HashMap<String, String>> =
            resources.iter().map(|(t, m)| (*t, m.iter().map(|(n, a)| (n.clone(), resource_version(a))).collect())).collect();
        let mut changed: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
        if let Some(prev) = prev {
            for type_url in TYPE_ORDER {
                let empty = HashMap::new();
                let now = versions.get(type_url).unwrap_or(&empty);
                let before = prev.versions.get(type_url).unwrap_or(&empty);
                let set = changed.entry(type_url).or_default();
                set.extend(now.iter().filter(|(n, v)| before.get(*n) != Some(*v)).map(|(n, _)| n.clone()));
                set.extend(before.keys().filter(|n| !now.contains_key(*n)).cloned());
            }
        }
        Snapshot { version, resources, versions, prev_version: prev.map_or(0, |p| p.version), changed }
    }
}

/// One type's resources as a proxy sees them: the shared snapshot plus the
/// proxy's own (inbound) resources, whose names never collide with shared ones.
pub struct TypeView<'a> {
    shared: Option<&'a BTreeMap<String, Any>>,
    shared_versions: Option<&'a HashMap<String, String>>,
    own: Option<&'a BTreeMap<String, Any>>,
    /// Names changed since the snapshot the stream last processed, if known.
    changed: Option<&'a BTreeSet<String>>,
}

impl<'a> TypeView<'a> {
    fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Any)> + '_ {
        self.shared.into_iter().flatten().chain(self.own.into_iter().flatten()).map(|(n, a)| (n.as_str(), a))
    }

    fn get(&self, name: &str) -> Option<&'a Any> {
        self.shared.and_then(|m| m.get(name)).or_else(|| self.own.and_then(|m| m.get(name)))
    }

    fn version(&self, name: &str) -> Option<String> {
        self.shared_versions.and_then(|m| m.get(name).cloned()).or_else(|| self.own.and_then(|m| m.get(name)).map(resource_version))
    }
}

/// A proxy's resources: the shared snapshot and the few that are its own.
pub struct ProxyResources {
    pub shared: Arc<Snapshot>,
    pub own: Resources,
}

impl ProxyResources {
    /// The view of one type; `since` is the snapshot version the stream last
    /// processed, which lets it look at changed names only.
    pub fn of_type(&self, type_url: &str, since: Option<u64>) -> TypeView<'_> {
        let changed = match since {
            Some(v) if v != 0 && v == self.shared.prev_version => self.shared.changed.get(type_url),
            _ => None,
        };
        TypeView {
            shared: self.shared.resources.get(type_url),
            shared_versions: self.shared.versions.get(type_url),
            own: self.own.get(type_url),
            changed,
        }
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

/// The State-of-the-World response for one type, if it differs from what was sent.
fn sotw_response(t: &mut SotwType, type_url: &str, of_type: &TypeView<'_>, nonce: u64, force: bool) -> Option<DiscoveryResponse> {
    let chosen: Vec<(&str, &Any)> = of_type.iter().filter(|(n, _)| t.wildcard || t.names.contains(*n)).collect();
    let version = version_of(chosen.iter().copied());
    if !force && t.sent_version.as_deref() == Some(version.as_str()) {
        return None;
    }
    t.nonce = nonce.to_string();
    t.sent_version = Some(version.clone());
    Some(DiscoveryResponse {
        version_info: version,
        resources: chosen.into_iter().map(|(_, a)| a.clone()).collect(),
        type_url: type_url.into(),
        nonce: t.nonce.clone(),
        ..Default::default()
    })
}

#[derive(Debug, Default)]
struct DeltaType {
    subscribed: BTreeSet<String>,
    wildcard: bool,
    /// name → version the proxy has (sent, or declared on reconnect)
    known: BTreeMap<String, String>,
    nonce: String,
}

/// The Delta response for one type: changed and removed resources, if any.
fn delta_response(t: &mut DeltaType, type_url: &str, of_type: &TypeView<'_>, system_version: u64, nonce: u64, force: bool) -> Option<DeltaDiscoveryResponse> {
    let mut resources = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let wanted = |t: &DeltaType, n: &str| t.wildcard || t.subscribed.contains(n);
    // Only names that changed since the last processed snapshot (plus the proxy's
    // own few) when that is known; every name otherwise.
    let candidates: Vec<String> = match (of_type.changed, force) {
        (Some(changed), false) => changed.iter().cloned().chain(of_type.own.into_iter().flatten().map(|(n, _)| n.clone())).collect(),
        _ => of_type.iter().map(|(n, _)| n.to_string()).chain(t.known.keys().cloned()).collect::<BTreeSet<String>>().into_iter().collect(),
    };
    for name in candidates {
        match (of_type.get(&name), wanted(t, &name)) {
            (Some(any), true) => {
                let version = of_type.version(&name).unwrap_or_default();
                if t.known.get(&name) != Some(&version) {
                    t.known.insert(name.clone(), version.clone());
                    resources.push(Resource { name, version, resource: Some(any.clone()), ..Default::default() });
                }
            }
            _ => {
                if t.known.remove(&name).is_some() {
                    removed.push(name);
                }
            }
        }
    }
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
        let mut inbound = request.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("the stream closed before its first request"))??;
        let (node_id, ctx, ips) = admit_node(first.node.as_ref(), &self.0.revision)?;
        let (tx, rx) = mpsc::channel(16);
        let server = Arc::clone(&self.0);
        let proxy = server.registry.connect(&node_id, &server.revision, "sotw");
        let span = tracing::info_span!("ads", proxy = %node_id, mode = "sotw");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tracing::info!("proxy connected");
                let mut model = server.model.clone();
                let mut types: HashMap<String, SotwType> = HashMap::new();
                let mut nonce = 0u64;
                let mut pending = Some(first);
                while let Some(request) = next_event(&mut pending, &mut inbound, &mut model).await {
                    // Only a model event marks the model seen: a change that lands
                    // while a request is handled must still wake this stream.
                    let published = if request.is_some() { model.borrow().clone() } else { model.borrow_and_update().clone() };
                    let resources = ProxyResources { shared: server.resources(&ctx, &published).await, own: translate::inbound(&published.model, &ips, &ctx) };
                    let mut sends: Vec<(String, bool)> = Vec::new();
                    match request {
                        Some(req) => {
                            let type_url = req.type_url.clone();
                            let t = types.entry(type_url.clone()).or_default();
                            let status = TypeStatus::from_sotw(&req);
                            // Stale: an answer to a response that was superseded. A nonce
                            // from a previous stream (nothing sent here yet) is not stale.
                            if !req.response_nonce.is_empty() && !t.nonce.is_empty() && req.response_nonce != t.nonce {
                                continue;
                            }
                            proxy.record(&type_url, status, published.version);
                            let names: BTreeSet<String> = req.resource_names.iter().filter(|n| *n != "*").cloned().collect();
                            let wildcard = req.resource_names.iter().any(|n| n == "*") || (is_wildcard_type(&type_url) && req.resource_names.is_empty());
                            let changed = names != t.names || wildcard != t.wildcard || t.sent_version.is_none();
                            t.names = names;
                            t.wildcard = wildcard;
                            if changed {
                                sends.push((type_url, t.sent_version.is_none()));
                            }
                        }
                        None => sends.extend(TYPE_ORDER.iter().filter(|u| types.contains_key(**u)).map(|u| (u.to_string(), false))),
                    }
                    for (type_url, first_time) in sends {
                        let Some(t) = types.get_mut(&type_url) else { continue };
                        nonce += 1;
                        if let Some(resp) = sotw_response(t, &type_url, &resources.of_type(&type_url, None), nonce, first_time) {
                            proxy.sent(&type_url, &resp.version_info, &resp.nonce, published.version);
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tracing::info!("proxy disconnected");
                drop(proxy);
            },
            span,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(&self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Result<Response<DeltaStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("the stream closed before its first request"))??;
        let (node_id, ctx, ips) = admit_node(first.node.as_ref(), &self.0.revision)?;
        let (tx, rx) = mpsc::channel(16);
        let server = Arc::clone(&self.0);
        let proxy = server.registry.connect(&node_id, &server.revision, "delta");
        let span = tracing::info_span!("ads", proxy = %node_id, mode = "delta");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tracing::info!("proxy connected");
                let mut model = server.model.clone();
                let mut types: HashMap<String, DeltaType> = HashMap::new();
                // The snapshot version whose changes this stream has fully pushed.
                let mut synced: Option<u64> = None;
                let mut nonce = 0u64;
                let mut pending = Some(first);
                while let Some(request) = next_event(&mut pending, &mut inbound, &mut model).await {
                    // Only a model event marks the model seen: a change that lands
                    // while a request is handled must still wake this stream.
                    let published = if request.is_some() { model.borrow().clone() } else { model.borrow_and_update().clone() };
                    let is_model_event = request.is_none();
                    let resources = ProxyResources { shared: server.resources(&ctx, &published).await, own: translate::inbound(&published.model, &ips, &ctx) };
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
                                    t.known.insert(name.clone(), version.clone());
                                }
                            }
                            let ack_or_nack = !req.response_nonce.is_empty();
                            if ack_or_nack && !t.nonce.is_empty() && req.response_nonce != t.nonce && req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
                                continue; // stale
                            }
                            proxy.record(&type_url, TypeStatus::from_delta(&req), published.version);
                            for n in &req.resource_names_subscribe {
                                if n == "*" { t.wildcard = true } else { t.subscribed.insert(n.clone()); }
                            }
                            for n in &req.resource_names_unsubscribe {
                                if n == "*" { t.wildcard = false } else { t.subscribed.remove(n); t.known.remove(n); }
                            }
                            let subscription_changed = !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
                            if is_new || subscription_changed {
                                sends.push((type_url, is_new));
                            }
                        }
                        None => sends.extend(TYPE_ORDER.iter().filter(|u| types.contains_key(**u)).map(|u| (u.to_string(), false))),
                    }
                    let since = if is_model_event { synced } else { None };
                    for (type_url, force) in sends {
                        let Some(t) = types.get_mut(&type_url) else { continue };
                        nonce += 1;
                        if let Some(resp) = delta_response(t, &type_url, &resources.of_type(&type_url, since), published.version, nonce, force) {
                            proxy.sent(&type_url, &resp.system_version_info, &resp.nonce, published.version);
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    if is_model_event {
                        synced = Some(resources.shared.version);
                    }
                }
                tracing::info!("proxy disconnected");
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

    fn resources(items: &[(&str, &[u8])]) -> ProxyResources {
        let mut r: Resources = BTreeMap::new();
        let m = r.entry(ENDPOINT_TYPE).or_default();
        for (n, b) in items {
            m.insert(n.to_string(), any(b));
        }
        ProxyResources { shared: Arc::new(Snapshot::new(1, r, None)), own: BTreeMap::new() }
    }

    fn node(revision: Option<&str>) -> Node {
        let mut fields = std::collections::HashMap::new();
        if let Some(r) = revision {
            fields.insert("REVMESH_REVISION".to_string(), Value { kind: Some(Kind::StringValue(r.into())) });
        }
        Node { id: "p1".into(), metadata: Some(Struct { fields }), ..Default::default() }
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
        let resp = sotw_response(&mut t, ENDPOINT_TYPE, &r1.of_type(ENDPOINT_TYPE, None), 1, true).expect("first response");
        assert_eq!(resp.resources.len(), 1, "only the subscribed name");
        assert_eq!(resp.nonce, "1");
        // Same content: nothing to send.
        assert!(sotw_response(&mut t, ENDPOINT_TYPE, &r1.of_type(ENDPOINT_TYPE, None), 2, false).is_none());
        // A change to an unsubscribed resource: nothing either.
        assert!(sotw_response(&mut t, ENDPOINT_TYPE, &resources(&[("a", b"1"), ("b", b"3")]).of_type(ENDPOINT_TYPE, None), 3, false).is_none());
        // A change to the subscribed one: a new version and nonce.
        let resp2 = sotw_response(&mut t, ENDPOINT_TYPE, &resources(&[("a", b"9")]).of_type(ENDPOINT_TYPE, None), 4, false).expect("changed");
        assert_ne!(resp2.version_info, resp.version_info);
        assert_eq!(t.nonce, "4");
    }

    #[test]
    fn delta_looks_only_at_changed_names_when_in_sync() {
        let build = |items: &[(&str, &[u8])]| {
            let mut r: Resources = BTreeMap::new();
            let m = r.entry(ENDPOINT_TYPE).or_default();
            for (n, b) in items {
                m.insert(n.to_string(), any(b));
            }
            r
        };
        let s1 = Arc::new(Snapshot::new(1, build(&[("a", b"1"), ("b", b"2"), ("c", b"3")]), None));
        let s2 = Arc::new(Snapshot::new(2, build(&[("a", b"1"), ("b", b"9")]), Some(&s1)));
        assert_eq!(s2.changed[ENDPOINT_TYPE].iter().map(String::as_str).collect::<Vec<_>>(), ["b", "c"]);
        let mut t = DeltaType { wildcard: true, ..Default::default() };
        let p1 = ProxyResources { shared: Arc::clone(&s1), own: BTreeMap::new() };
        delta_response(&mut t, ENDPOINT_TYPE, &p1.of_type(ENDPOINT_TYPE, None), 1, 1, true).expect("initial");
        let p2 = ProxyResources { shared: s2, own: BTreeMap::new() };
        let view = p2.of_type(ENDPOINT_TYPE, Some(1));
        assert!(view.changed.is_some(), "in sync with the previous snapshot: incremental");
        let resp = delta_response(&mut t, ENDPOINT_TYPE, &view, 2, 2, false).expect("diff");
        assert_eq!(resp.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(resp.removed_resources, ["c"]);
        assert!(p2.of_type(ENDPOINT_TYPE, Some(0)).changed.is_none(), "out of sync: full diff");
    }

    #[test]
    fn delta_sends_changes_and_removals_and_honours_initial_versions() {
        let mut t = DeltaType { wildcard: true, ..Default::default() };
        let r1 = resources(&[("a", b"1"), ("b", b"2")]);
        let first = delta_response(&mut t, ENDPOINT_TYPE, &r1.of_type(ENDPOINT_TYPE, None), 1, 1, true).expect("initial");
        assert_eq!(first.resources.len(), 2);
        let r2 = resources(&[("a", b"1"), ("c", b"3")]);
        let next = delta_response(&mut t, ENDPOINT_TYPE, &r2.of_type(ENDPOINT_TYPE, None), 2, 2, false).expect("diff");
        assert_eq!(next.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(next.removed_resources, ["b"]);
        assert!(delta_response(&mut t, ENDPOINT_TYPE, &r2.of_type(ENDPOINT_TYPE, None), 3, 3, false).is_none());

        // A reconnecting proxy that already has "a" at its version gets only "c".
        let mut again = DeltaType { wildcard: true, ..Default::default() };
        again.known.insert("a".into(), resource_version(&any(b"1")));
        let resp = delta_response(&mut again, ENDPOINT_TYPE, &r2.of_type(ENDPOINT_TYPE, None), 4, 1, true).expect("resync");
        assert_eq!(resp.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c"]);

        // Explicit subscription: unsubscribed names are removed.
        let mut named = DeltaType { subscribed: ["a".to_string()].into(), ..Default::default() };
        assert_eq!(delta_response(&mut named, ENDPOINT_TYPE, &r2.of_type(ENDPOINT_TYPE, None), 1, 1, true).expect("a").resources.len(), 1);
        named.subscribed.clear();
        assert_eq!(delta_response(&mut named, ENDPOINT_TYPE, &r2.of_type(ENDPOINT_TYPE, None), 2, 2, false).expect("removal").removed_resources, ["a"]);
    }
}
