//! The Delta ADS client of the proxy's own control-plane revision.
//!
//! * Subscribes CDS and LDS as wildcards, then EDS for every cluster and RDS
//!   for every route configuration the listeners name.
//! * Each response is applied to a copy of what is held. If the copy builds
//!   ([`config::build`]), it replaces the running tables and is ACKed.
//!   Otherwise it is NACKed with the error and nothing changes.
//! * When the stream breaks, the proxy keeps running on its last tables and
//!   reconnects with backoff. On reconnect it tells the server what it holds
//!   (`initial_resource_versions`), so only the differences are resent.

use crate::config::{self, ProxyConfig, Resources, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct XdsTarget {
    /// host:port
    pub address: String,
    /// TLS (port 15012): the mesh root and the name the server's certificate
    /// carries. None: plaintext (15010, local development).
    pub tls: Option<(String, String)>,
    /// Who the proxy is and how it proves it.
    pub credentials: Option<XdsCredentials>,
}

/// The workload identity the proxy claims to the control plane, and the token
/// that proves it.
#[derive(Debug, Clone)]
pub struct XdsCredentials {
    /// The projected service-account token (audience revmesh-ca): sent over TLS
    /// only, and read again for every stream because kubelet rotates it.
    pub token: std::path::PathBuf,
    /// Claimed in node metadata `NAMESPACE` and `SERVICE_ACCOUNT` (Istio's
    /// names); the control plane refuses a claim the token does not prove.
    pub namespace: String,
    pub service_account: String,
}

impl XdsCredentials {
    fn claim(&self, node: &mut Node) {
        let fields = &mut node.metadata.get_or_insert_with(Default::default).fields;
        for (key, value) in [("NAMESPACE", &self.namespace), ("SERVICE_ACCOUNT", &self.service_account)] {
            fields.insert(key.to_string(), Value { kind: Some(Kind::StringValue(value.clone())) });
        }
    }
}

/// `Bearer <token>` from the token file, as gRPC metadata.
fn bearer(path: &std::path::Path) -> anyhow::Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let token = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading the service-account token {} for xDS: {e}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "the service-account token file {} is empty", path.display());
    // The token itself never goes into the error: errors reach the logs.
    format!("Bearer {token}").parse().map_err(|_| anyhow::anyhow!("the token in {} holds characters a gRPC header cannot carry", path.display()))
}

/// The proxy as the control plane sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub revision: String,
    pub outbound_address: std::net::SocketAddr,
    pub captured: bool,
    pub instance_ips: Vec<std::net::IpAddr>,
    /// The proxy build's version as reported to the control plane
    /// (node metadata `REVMESH_PROXY_VERSION` and the user agent version).
    pub proxy_version: String,
}

impl NodeInfo {
    fn node(&self) -> Node {
        let s = |v: String| Value { kind: Some(Kind::StringValue(v)) };
        let mut fields = HashMap::from([
            ("REVMESH_REVISION".to_string(), s(self.revision.clone())),
            ("REVMESH_OUTBOUND_ADDRESS".to_string(), s(self.outbound_address.to_string())),
            ("REVMESH_INTERCEPTION".to_string(), s(if self.captured { "REDIRECT" } else { "NONE" }.into())),
            ("REVMESH_PROXY_VERSION".to_string(), s(self.proxy_version.clone())),
        ]);
        if !self.instance_ips.is_empty() {
            fields.insert("INSTANCE_IPS".into(), s(self.instance_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")));
        }
        Node {
            id: self.id.clone(),
            cluster: "revmesh".into(),
            metadata: Some(Struct { fields }),
            user_agent_name: "revmesh-sidecar".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(self.proxy_version.clone())),
            ..Default::default()
        }
    }
}

/// What the admin port shows about the xDS session.
#[derive(Debug, Default)]
pub struct XdsStatus {
    pub connected: std::sync::atomic::AtomicBool,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub last_nack: Mutex<Option<String>>,
    /// Set once the first complete config was applied.
    pub synced: std::sync::atomic::AtomicBool,
}

/// Everything held, with the server's version of each resource.
#[derive(Debug, Default, Clone)]
pub struct Held {
    pub resources: Resources,
    versions: BTreeMap<String, BTreeMap<String, String>>,
    subscribed: BTreeMap<String, BTreeSet<String>>,
}

impl Held {
    /// Applies a Delta response to a copy; the caller keeps the copy only if it builds.
    pub fn with_response(&self, resp: &DeltaDiscoveryResponse) -> Held {
        let mut next = self.clone();
        let res = next.resources.entry(resp.type_url.clone()).or_default();
        let ver = next.versions.entry(resp.type_url.clone()).or_default();
        for r in &resp.resources {
            if let Some(any) = &r.resource {
                res.insert(r.name.clone(), any.clone());
                ver.insert(r.name.clone(), r.version.clone());
            }
        }
        for name in &resp.removed_resources {
            res.remove(name);
            ver.remove(name);
        }
        next
    }

    /// Drops what is no longer subscribed (the server need not say so).
    fn forget_unsubscribed(&mut self, type_url: &str, names: &[String]) {
        for n in names {
            self.resources.entry(type_url.into()).or_default().remove(n);
            self.versions.entry(type_url.into()).or_default().remove(n);
        }
    }
}

/// EDS and RDS names the current config needs.
fn wanted_names(held: &Held, config: &ProxyConfig) -> [(&'static str, BTreeSet<String>); 2] {
    let clusters: BTreeSet<String> = held.resources.get(CLUSTER_TYPE).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    [(ENDPOINT_TYPE, clusters), (ROUTE_TYPE, config.route_names.iter().cloned().collect())]
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(15));
    // Jitter, so proxies cut off together do not reconnect together.
    base + Duration::from_millis(fastrand::u64(0..=base.as_millis() as u64 / 2))
}

async fn channel(target: &XdsTarget) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", target.address))?.connect_timeout(Duration::from_secs(5));
    match &target.tls {
        None => Ok(endpoint.connect().await?),
        Some((root_pem, server_name)) => {
            let connector = crate::tls::control_plane_connector(root_pem, server_name)?;
            Ok(endpoint.connect_with_connector(connector).await?)
        }
    }
}

/// Runs the client until the process ends, publishing each good config.
pub async fn run(target: XdsTarget, node: NodeInfo, out: watch::Sender<Arc<ProxyConfig>>, status: Arc<XdsStatus>) {
    let mut held = Held::default();
    let mut attempt = 0u32;
    loop {
        let acks_before = status.acks.load(Ordering::Relaxed);
        let result = session(&target, &node, &mut held, &out, &status).await;
        status.connected.store(false, Ordering::Relaxed);
        // A stream that delivered config was a success: the next outage
        // (a control-plane pod replaced, say) starts again from the shortest
        // wait, as Envoy resets its backoff on a response.
        if status.acks.load(Ordering::Relaxed) != acks_before {
            attempt = 0;
        }
        match result {
            Ok(()) => tracing::warn!("the control plane closed the xDS stream; keeping the last config"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "xDS stream failed; keeping the last config"),
        }
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

fn subscribe(type_url: &str, held: &Held, names: Vec<String>, node: Option<Node>) -> DeltaDiscoveryRequest {
    let initial: HashMap<String, String> = held.versions.get(type_url).map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    DeltaDiscoveryRequest { node, type_url: type_url.into(), resource_names_subscribe: names, initial_resource_versions: initial, ..Default::default() }
}

async fn session(target: &XdsTarget, node: &NodeInfo, held: &mut Held, out: &watch::Sender<Arc<ProxyConfig>>, status: &XdsStatus) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel(target).await?).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    // Wildcards first (the node rides on the first request), then the named
    // types the proxy already holds, so the server knows what not to resend.
    let mut claimed = node.node();
    if let Some(c) = &target.credentials {
        c.claim(&mut claimed);
    }
    tx.send(subscribe(CLUSTER_TYPE, held, Vec::new(), Some(claimed))).await?;
    tx.send(subscribe(LISTENER_TYPE, held, Vec::new(), None)).await?;
    let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for type_url in [ENDPOINT_TYPE, ROUTE_TYPE] {
        let names: BTreeSet<String> = held.subscribed.get(type_url).cloned().unwrap_or_default();
        if !names.is_empty() {
            tx.send(subscribe(type_url, held, names.iter().cloned().collect(), None)).await?;
        }
        subscribed.insert(type_url, names);
    }
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let (Some(c), Some(_)) = (&target.credentials, &target.tls) {
        call.metadata_mut().insert("authorization", bearer(&c.token)?);
    }
    let mut inbound = client.delta_aggregated_resources(call).await?.into_inner();
    status.connected.store(true, Ordering::Relaxed);
    tracing::info!(control_plane = %target.address, "xDS stream open");
    while let Some(resp) = inbound.message().await? {
        let candidate = held.with_response(&resp);
        match config::build(&candidate.resources) {
            Ok(config) => {
                *held = candidate;
                let wanted = wanted_names(held, &config);
                let _ = out.send(Arc::new(config));
                status.acks.fetch_add(1, Ordering::Relaxed);
                tx.send(DeltaDiscoveryRequest { type_url: resp.type_url.clone(), response_nonce: resp.nonce.clone(), ..Default::default() }).await?;
                for (type_url, names) in wanted {
                    let now = subscribed.entry(type_url).or_default();
                    let add: Vec<String> = names.difference(now).cloned().collect();
                    let remove: Vec<String> = now.difference(&names).cloned().collect();
                    if add.is_empty() && remove.is_empty() {
                        continue;
                    }
                    held.forget_unsubscribed(type_url, &remove);
                    *now = names.clone();
                    held.subscribed.insert(type_url.into(), names);
                    tx.send(DeltaDiscoveryRequest { type_url: type_url.into(), resource_names_subscribe: add, resource_names_unsubscribe: remove, ..Default::default() }).await?;
                }
                if !status.synced.load(Ordering::Relaxed) && held.resources.contains_key(LISTENER_TYPE) && held.resources.contains_key(CLUSTER_TYPE) {
                    status.synced.store(true, Ordering::Relaxed);
                    tracing::info!("first config applied");
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(r#type = %resp.type_url, error = %message, "config refused (NACK); keeping the last good config");
                status.nacks.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = status.last_nack.lock() {
                    *last = Some(message.clone());
                }
                let error_detail = Some(RpcStatus { code: tonic::Code::InvalidArgument as i32, message, details: Vec::new() });
                tx.send(DeltaDiscoveryRequest { type_url: resp.type_url.clone(), response_nonce: resp.nonce.clone(), error_detail, ..Default::default() }).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn the_node_reports_the_proxy_version_in_metadata_and_user_agent() {
        let info = NodeInfo {
            id: "sidecar~10.0.0.7~app-1.apps~apps.svc.cluster.local".into(),
            revision: "1-25-2".into(),
            outbound_address: "0.0.0.0:15001".parse().unwrap(),
            captured: true,
            instance_ips: vec![],
            proxy_version: "1.25.2".into(),
        };
        let node = info.node();
        let meta = &node.metadata.as_ref().unwrap().fields;
        assert_eq!(meta["REVMESH_PROXY_VERSION"].kind, Some(Kind::StringValue("1.25.2".into())));
        assert_eq!(meta["REVMESH_REVISION"].kind, Some(Kind::StringValue("1-25-2".into())));
        assert_eq!(node.user_agent_name, "revmesh-sidecar");
        assert_eq!(node.user_agent_version_type, Some(UserAgentVersionType::UserAgentVersion("1.25.2".into())));
    }

    #[test]
    fn responses_apply_to_a_copy_with_versions_and_removals() {
        let held = Held::default();
        let resp = DeltaDiscoveryResponse {
            type_url: CLUSTER_TYPE.into(),
            resources: vec![Resource { name: "a".into(), version: "v1".into(), resource: Some(Any::default()), ..Default::default() }],
            ..Default::default()
        };
        let next = held.with_response(&resp);
        assert!(held.resources.is_empty(), "the original is untouched");
        assert_eq!(next.versions[CLUSTER_TYPE]["a"], "v1");
        let gone = next.with_response(&DeltaDiscoveryResponse { type_url: CLUSTER_TYPE.into(), removed_resources: vec!["a".into()], ..Default::default() });
        assert!(gone.resources[CLUSTER_TYPE].is_empty());
        let req = subscribe(CLUSTER_TYPE, &next, Vec::new(), None);
        assert_eq!(req.initial_resource_versions["a"], "v1", "a reconnect declares what it holds");
    }

    #[test]
    fn the_token_is_read_for_every_stream() {
        let dir = std::env::temp_dir().join(format!("sidecar-xds-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "first-token\n").expect("write");
        assert_eq!(bearer(&path).expect("token").to_str().expect("ascii"), "Bearer first-token");
        // Kubelet rotated it: the next stream sends the new one.
        std::fs::write(&path, "second-token").expect("write");
        assert_eq!(bearer(&path).expect("token").to_str().expect("ascii"), "Bearer second-token");
        std::fs::write(&path, "  \n").expect("write");
        assert!(bearer(&path).expect_err("empty").to_string().contains("is empty"));
        std::fs::write(&path, "bad\u{7f}token").expect("write");
        let err = bearer(&path).expect_err("not a header value").to_string();
        assert!(!err.contains("bad"), "the token must not reach the error: {err}");
        assert!(bearer(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_node_claims_the_credentials_identity() {
        let creds = XdsCredentials { token: "unused".into(), namespace: "shop".into(), service_account: "web".into() };
        let mut node = Node { id: "sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local".into(), ..Default::default() };
        creds.claim(&mut node);
        let field = |k: &str| node.metadata.as_ref().and_then(|m| m.fields.get(k)).and_then(|v| v.kind.clone());
        assert_eq!(field("NAMESPACE"), Some(Kind::StringValue("shop".into())));
        assert_eq!(field("SERVICE_ACCOUNT"), Some(Kind::StringValue("web".into())));
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_ceiling() {
        assert!(backoff(0) >= Duration::from_millis(200) && backoff(0) <= Duration::from_millis(300));
        assert!(backoff(30) <= Duration::from_millis(22_500));
    }
}
