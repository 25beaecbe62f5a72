//! Who may read xDS on the TLS port (15012), and which proxy it may claim to be.
//!
//! A caller proves its workload identity with one of:
//! * its mesh certificate (mTLS): the TLS layer has checked the chain against
//!   the mesh root; the certificate's SPIFFE URI names the identity;
//! * its projected service-account token as gRPC metadata
//!   `authorization: Bearer <token>`, checked the way the CA checks it (a
//!   TokenReview with audience `revmesh-ca` on the Kubernetes source, the
//!   bootstrap tokens on the dir source). Results are cached for
//!   `--xds-token-cache-ttl`, never past the token's own expiry, so proxies
//!   reconnecting together do not each cost a TokenReview.
//!
//! The stream's node must then claim exactly that identity (node metadata
//! `NAMESPACE` and `SERVICE_ACCOUNT`, and the namespace of an Istio-style node
//! id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`), and when the token is
//! bound to a pod, that pod must carry this revision's `revmesh.io/rev` label.
//! Missing or invalid credentials are refused with UNAUTHENTICATED, a claim
//! that does not match with PERMISSION_DENIED; each message says what to fix.
//!
//! The plaintext port (15010) checks nobody: it is for local development and
//! listens on loopback unless told otherwise.

use crate::ca::Identity;
use crate::ca_server::{AuthError, CaService};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use crate::status::ProxyRegistry;
use hyper::header::{HeaderMap, AUTHORIZATION};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tonic::Status;

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Certificate,
    Token,
}

impl std::fmt::Display for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proof::Certificate => "client certificate",
            Proof::Token => "service-account token",
        })
    }
}

/// The pod a bound token belongs to, and its `revmesh.io/rev` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub revision: Option<String>,
}

/// Who opened an xDS stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// On the plaintext development port: nobody is checked.
    Unchecked,
    Proven { identity: Identity, proof: Proof, pod: Option<BoundPod> },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    revision: String,
    /// authenticated, unauthenticated, unavailable or permission_denied.
    outcome: &'static str,
    /// certificate, token or none.
    proof: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

/// `revmesh_control_plane_xds_auth_total` and `..._xds_token_reviews_total`:
/// operators see refused proxies, and whether the token cache works.
#[derive(Clone)]
struct AuthMetrics {
    revision: String,
    outcomes: Family<OutcomeLabels, Counter>,
    reviews: Family<RevisionLabels, Counter>,
}

impl AuthMetrics {
    fn register(registry: &ProxyRegistry, revision: &str) -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let reviews = Family::<RevisionLabels, Counter>::default();
        if let Ok(mut r) = registry.metrics.lock() {
            r.register("xds_auth", "xDS calls on the TLS port by authentication outcome and the proof presented", outcomes.clone());
            r.register("xds_token_reviews", "xDS tokens checked with the authenticator (TokenReview or bootstrap tokens), not answered from the cache", reviews.clone());
        }
        AuthMetrics { revision: revision.into(), outcomes, reviews }
    }

    fn count(&self, outcome: &'static str, proof: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabels { revision: self.revision.clone(), outcome, proof }).inc();
    }
}

fn proof_label(proof: Option<Proof>) -> &'static str {
    match proof {
        Some(Proof::Certificate) => "certificate",
        Some(Proof::Token) => "token",
        None => "none",
    }
}

/// A call let through the gate: who the caller is, and where its claim's
/// refusal is counted.
#[derive(Clone)]
pub struct Admitted {
    pub caller: Caller,
    metrics: Option<AuthMetrics>,
}

impl Admitted {
    /// A call on the plaintext development port.
    pub fn unchecked() -> Self {
        Admitted { caller: Caller::Unchecked, metrics: None }
    }
}

/// What the TLS layer learned from a connection's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCertificate {
    None,
    /// Chains to the mesh root and names a workload of the trust domain.
    Workload(Identity),
    /// Chains to the mesh root but names no workload of the trust domain.
    Unusable(String),
}

/// Reads the workload identity from a verified client certificate chain.
pub fn peer_certificate(chain: Option<&[CertificateDer<'_>]>, trust_domain: &str) -> PeerCertificate {
    let Some(leaf) = chain.and_then(|c| c.first()) else { return PeerCertificate::None };
    let uris: Vec<String> = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        Err(e) => return PeerCertificate::Unusable(format!("the client certificate does not parse: {e}")),
    };
    match uris.iter().find_map(|u| identity_of_spiffe(u, trust_domain)) {
        Some(identity) => PeerCertificate::Workload(identity),
        None => PeerCertificate::Unusable(format!("the client certificate names no workload of trust domain {trust_domain} (spiffe://{trust_domain}/ns/<ns>/sa/<sa>); its URIs: {uris:?}")),
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` of the given trust domain.
pub fn identity_of_spiffe(uri: &str, trust_domain: &str) -> Option<Identity> {
    let path = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix("/ns/")?;
    let (namespace, rest) = path.split_once('/')?;
    let service_account = rest.strip_prefix("sa/")?;
    let fine = |s: &str| !s.is_empty() && !s.contains('/');
    (fine(namespace) && fine(service_account)).then(|| Identity { namespace: namespace.into(), service_account: service_account.into() })
}

/// Cached token results at most; beyond, expired ones go, then all.
const MAX_CACHED_TOKENS: usize = 10_000;

struct Cached {
    caller: Caller,
    until: Instant,
}

/// Authenticates xDS callers on the TLS port.
pub struct XdsAuth {
    ca: Arc<CaService>,
    metrics: AuthMetrics,
    cache_ttl: Duration,
    /// Keyed by the whole token: a shorter key would let a crafted token
    /// collide with a cached one.
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for XdsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the cached tokens.
        f.debug_struct("XdsAuth").field("cache_ttl", &self.cache_ttl).finish_non_exhaustive()
    }
}

const HOW_TO_AUTHENTICATE: &str =
    "send the pod's projected service-account token (audience revmesh-ca) as gRPC metadata `authorization: Bearer <token>`, or present the workload's mesh certificate (mTLS)";

impl XdsAuth {
    /// `registry` takes this port's metrics, labelled with `revision`.
    pub fn new(ca: Arc<CaService>, cache_ttl: Duration, registry: &ProxyRegistry, revision: &str) -> Self {
        XdsAuth { ca, metrics: AuthMetrics::register(registry, revision), cache_ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// Authenticates one xDS call and counts the outcome.
    pub async fn admit(&self, headers: &HeaderMap, peer: &PeerCertificate) -> Result<Admitted, Status> {
        let presented = match (peer, headers.contains_key(AUTHORIZATION)) {
            (PeerCertificate::Workload(_), _) => Some(Proof::Certificate),
            (_, true) => Some(Proof::Token),
            _ => None,
        };
        match self.authenticate(headers, peer).await {
            Ok(caller) => {
                self.metrics.count("authenticated", proof_label(presented));
                Ok(Admitted { caller, metrics: Some(self.metrics.clone()) })
            }
            Err(status) => {
                self.metrics.count(if status.code() == tonic::Code::Unavailable { "unavailable" } else { "unauthenticated" }, proof_label(presented));
                Err(status)
            }
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.ca.ca.trust_domain
    }

    /// Who the caller of one xDS call is: its certificate when it presented
    /// one, else its token.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: &PeerCertificate) -> Result<Caller, Status> {
        if let PeerCertificate::Workload(identity) = peer {
            return Ok(Caller::Proven { identity: identity.clone(), proof: Proof::Certificate, pod: None });
        }
        let token = match headers.get(AUTHORIZATION) {
            None => {
                return Err(Status::unauthenticated(match peer {
                    PeerCertificate::Unusable(why) => format!("{why}; {HOW_TO_AUTHENTICATE}"),
                    _ => format!("xDS on this port needs credentials: {HOW_TO_AUTHENTICATE}"),
                }))
            }
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Status::unauthenticated("the authorization metadata is not `Bearer <token>`"))?,
        };
        if let Some(caller) = self.cached(token) {
            return Ok(caller);
        }
        self.metrics.reviews.get_or_create(&RevisionLabels { revision: self.metrics.revision.clone() }).inc();
        let reviewed = match self.ca.auth.review(token).await {
            Ok(r) => r,
            Err(e @ AuthError::Review(_)) => {
                tracing::error!(error = %e, "TokenReview for an xDS caller failed");
                return Err(Status::unavailable("the token could not be reviewed (the Kubernetes API did not answer); retry"));
            }
            Err(e) => {
                return Err(Status::unauthenticated(format!("{e}: send a current projected service-account token of audience revmesh-ca (or a bootstrap token on the dir source)")))
            }
        };
        let pod = match (&reviewed.pod, self.ca.auth.kube_client()) {
            (Some(name), Some(client)) => Some(BoundPod { name: name.clone(), revision: pod_revision(client, &reviewed.identity.namespace, name).await? }),
            _ => None,
        };
        let caller = Caller::Proven { identity: reviewed.identity, proof: Proof::Token, pod };
        self.remember(token, &caller);
        Ok(caller)
    }

    fn cached(&self, token: &str) -> Option<Caller> {
        let cache = self.cache.lock().ok()?;
        cache.get(token).filter(|c| c.until > Instant::now()).map(|c| c.caller.clone())
    }

    fn remember(&self, token: &str, caller: &Caller) {
        let mut until = Instant::now() + self.cache_ttl;
        if let Some(expiry) = jwt_expiry(token) {
            // A cached answer must not outlive the token.
            match expiry.duration_since(SystemTime::now()) {
                Ok(left) => until = until.min(Instant::now() + left),
                Err(_) => return,
            }
        }
        let Ok(mut cache) = self.cache.lock() else { return };
        if cache.len() >= MAX_CACHED_TOKENS {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), Cached { caller: caller.clone(), until });
    }
}

/// The `revmesh.io/rev` label of a pod.
async fn pod_revision(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<String>, Status> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), namespace);
    match pods.get_opt(name).await {
        Ok(Some(pod)) => Ok(pod.metadata.labels.and_then(|l| l.get("revmesh.io/rev").cloned())),
        Ok(None) => Err(Status::unauthenticated(format!("the token is bound to pod {namespace}/{name}, which no longer exists"))),
        Err(e) => {
            tracing::error!(error = %e, pod = %format!("{namespace}/{name}"), "reading the token's pod failed");
            Err(Status::unavailable(format!("the pod {namespace}/{name} could not be read to check its revision; retry")))
        }
    }
}

/// The `exp` claim of a JWT, read without checking the signature: it only
/// shortens how long a reviewed answer is cached.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    let exp = u64::try_from(claims["exp"].as_i64()?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// Unpadded base64url (RFC 4648 §5), as JWT segments are.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

fn metadata_string<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    match &node.metadata.as_ref()?.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The namespace in an Istio-style node id, `<type>~<ip>~<pod>.<ns>~<ns>.svc.<domain>`.
fn node_id_namespace(id: &str) -> Option<&str> {
    let parts: Vec<&str> = id.split('~').collect();
    match parts.as_slice() {
        [_, _, _, domain] => domain.split_once(".svc").map(|(ns, _)| ns).filter(|ns| !ns.is_empty() && !ns.contains('.')),
        _ => None,
    }
}

/// Checks that the node of a stream claims the caller's identity, and that a
/// pod the caller's token is bound to belongs to `revision`; counts a refusal.
pub fn authorize(admitted: &Admitted, node: Option<&Node>, revision: &str) -> Result<(), Status> {
    let result = check_claim(&admitted.caller, node, revision);
    if let (Err(status), Some(metrics), Caller::Proven { proof, .. }) = (&result, &admitted.metrics, &admitted.caller) {
        if status.code() == tonic::Code::PermissionDenied {
            metrics.count("permission_denied", proof_label(Some(*proof)));
        }
    }
    result
}

fn check_claim(caller: &Caller, node: Option<&Node>, revision: &str) -> Result<(), Status> {
    let Caller::Proven { identity, proof, pod } = caller else { return Ok(()) };
    let Some(node) = node else { return Err(Status::invalid_argument("the first request on a stream must carry the node (id and metadata)")) };
    let who = format!("{}/{}", identity.namespace, identity.service_account);
    let claim = format!(
        "set node metadata NAMESPACE: {:?} and SERVICE_ACCOUNT: {:?} (the sidecar's --pod-namespace and --service-account)",
        identity.namespace, identity.service_account
    );
    let meta_namespace = metadata_string(node, "NAMESPACE");
    let id_namespace = node_id_namespace(&node.id);
    let refuse = |what: String| {
        tracing::info!(proxy = %node.id, caller = %who, %proof, refused = %what, "xDS stream refused");
        Err(Status::permission_denied(what))
    };
    match (meta_namespace, id_namespace) {
        (None, None) => return refuse(format!("proxy {} authenticated as {who} ({proof}) but claims no namespace: {claim}", node.id)),
        (Some(m), Some(i)) if m != i => {
            return refuse(format!("proxy {} claims namespace {m:?} in its metadata but {i:?} in its node id; they must agree ({claim})", node.id))
        }
        _ => {}
    }
    let claimed_namespace = meta_namespace.or(id_namespace).unwrap_or_default();
    let Some(claimed_account) = metadata_string(node, "SERVICE_ACCOUNT") else {
        return refuse(format!("proxy {} authenticated as {who} ({proof}) but claims no service account: {claim}", node.id));
    };
    if claimed_namespace != identity.namespace || claimed_account != identity.service_account {
        return refuse(format!(
            "proxy {} authenticated as {who} ({proof}) but claims to be {claimed_namespace}/{claimed_account}: a proxy gets only its own workload's config; \
             run it with the credentials of {claimed_namespace}/{claimed_account}, or {claim}",
            node.id
        ));
    }
    if let Some(pod) = pod {
        match pod.revision.as_deref() {
            Some(r) if r == revision => {}
            Some(r) => {
                return refuse(format!(
                    "pod {}/{} (the token's pod) is of revision {r} (label revmesh.io/rev), but this control plane serves revision {revision} only; connect to control-plane-{r}",
                    identity.namespace, pod.name
                ))
            }
            None => {
                return refuse(format!(
                    "pod {}/{} (the token's pod) has no revmesh.io/rev label, so it is of no revision; this control plane serves proxies of revision {revision} only",
                    identity.namespace, pod.name
                ))
            }
        }
    }
    Ok(())
}

/// The caller an xDS call was admitted as, put on the call by the gRPC layer.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Admitted, Status> {
    // A call that did not pass the gate is refused rather than trusted.
    request.extensions().get::<Admitted>().cloned().ok_or_else(|| Status::internal("the xDS call was not admitted through the control plane's authentication"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(id: &str, meta: &[(&str, &str)]) -> Node {
        let fields = meta.iter().map(|(k, v)| (k.to_string(), Value { kind: Some(Kind::StringValue(v.to_string())) })).collect();
        Node { id: id.into(), metadata: Some(Struct { fields }), ..Default::default() }
    }

    fn proven(ns: &str, sa: &str, pod: Option<BoundPod>) -> Caller {
        Caller::Proven { identity: Identity { namespace: ns.into(), service_account: sa.into() }, proof: Proof::Token, pod }
    }

    #[test]
    fn the_node_must_claim_the_proven_identity() {
        let web = proven("shop", "web", None);
        let id = "sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local";
        assert!(check_claim(&web, Some(&node(id, &[("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "web")])), "1-25-2").is_ok());
        assert!(check_claim(&web, Some(&node("anything", &[("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "web")])), "1-25-2").is_ok());
        // The namespace may come from the node id alone.
        assert!(check_claim(&web, Some(&node(id, &[("SERVICE_ACCOUNT", "web")])), "1-25-2").is_ok());
        let other_account = check_claim(&web, Some(&node(id, &[("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "admin")])), "1-25-2").expect_err("other account");
        assert_eq!(other_account.code(), tonic::Code::PermissionDenied);
        assert!(other_account.message().contains("authenticated as shop/web") && other_account.message().contains("claims to be shop/admin"), "{}", other_account.message());
        let other_namespace = check_claim(&web, Some(&node("sidecar~10.0.0.1~web-0.bank~bank.svc.cluster.local", &[("SERVICE_ACCOUNT", "web")])), "1-25-2").expect_err("ns");
        assert!(other_namespace.message().contains("claims to be bank/web"), "{}", other_namespace.message());
        let disagree = check_claim(&web, Some(&node("sidecar~10.0.0.1~web-0.bank~bank.svc.cluster.local", &[("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "web")])), "1-25-2").expect_err("disagree");
        assert!(disagree.message().contains("must agree"), "{}", disagree.message());
        let silent = check_claim(&web, Some(&node("p1", &[])), "1-25-2").expect_err("no claim");
        assert!(silent.message().contains("NAMESPACE: \"shop\" and SERVICE_ACCOUNT: \"web\""), "{}", silent.message());
        assert_eq!(check_claim(&web, Some(&node("p1", &[("NAMESPACE", "shop")])), "1-25-2").expect_err("no account").code(), tonic::Code::PermissionDenied);
        // The development port checks nothing.
        assert!(check_claim(&Caller::Unchecked, Some(&node("p1", &[])), "1-25-2").is_ok());
    }

    #[test]
    fn a_bound_pod_must_be_of_this_revision() {
        let meta = [("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "web")];
        let of = |revision: Option<&str>| proven("shop", "web", Some(BoundPod { name: "web-0".into(), revision: revision.map(str::to_string) }));
        assert!(check_claim(&of(Some("1-25-2")), Some(&node("p", &meta)), "1-25-2").is_ok());
        let older = check_claim(&of(Some("1-24-5")), Some(&node("p", &meta)), "1-25-2").expect_err("other revision");
        assert_eq!(older.code(), tonic::Code::PermissionDenied);
        assert!(older.message().contains("pod shop/web-0") && older.message().contains("connect to control-plane-1-24-5"), "{}", older.message());
        assert!(check_claim(&of(None), Some(&node("p", &meta)), "1-25-2").expect_err("no label").message().contains("no revmesh.io/rev label"));
    }

    #[test]
    fn spiffe_uris_of_the_trust_domain_only() {
        let web = Identity { namespace: "shop".into(), service_account: "web".into() };
        assert_eq!(identity_of_spiffe("spiffe://cluster.local/ns/shop/sa/web", "cluster.local"), Some(web));
        assert_eq!(identity_of_spiffe("spiffe://other.domain/ns/shop/sa/web", "cluster.local"), None);
        assert_eq!(identity_of_spiffe("spiffe://cluster.localx/ns/shop/sa/web", "cluster.local"), None);
        assert_eq!(identity_of_spiffe("spiffe://cluster.local/ns/shop/sa/web/extra", "cluster.local"), None);
        assert_eq!(identity_of_spiffe("spiffe://cluster.local/ns//sa/web", "cluster.local"), None);
        assert_eq!(node_id_namespace("sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local"), Some("shop"));
        assert_eq!(node_id_namespace("envoy-1"), None);
    }

    #[test]
    fn certificates_name_their_workload() {
        let ca = crate::ca::Ca::generate("cluster.local").expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
        let who = Identity { namespace: "shop".into(), service_account: "web".into() };
        let (pem, _) = ca.sign(&csr, &who, Duration::from_secs(600)).expect("signed");
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("pem");
        assert_eq!(peer_certificate(Some(&chain), "cluster.local"), PeerCertificate::Workload(who));
        assert!(matches!(peer_certificate(Some(&chain), "other.domain"), PeerCertificate::Unusable(m) if m.contains("no workload of trust domain other.domain")));
        assert_eq!(peer_certificate(None, "cluster.local"), PeerCertificate::None);
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        // {"alg":"none"} . {"sub":"x","exp":2000000000} . (no signature)
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjoyMDAwMDAwMDAwfQ.";
        assert_eq!(jwt_expiry(token), Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)));
        assert_eq!(jwt_expiry("bootstrap-token-0123456789"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(base64url_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64url_decode("_-8"), Some(vec![0xff, 0xef]));
    }

    #[tokio::test]
    async fn tokens_are_checked_and_cached() {
        let tokens = crate::ca::parse_bootstrap_tokens("bootstrap-token-0123456789 shop/web\n").expect("tokens");
        let ca = crate::ca::Ca::generate("cluster.local").expect("ca");
        let svc = Arc::new(CaService { ca, auth: crate::ca_server::Authenticator::Bootstrap(tokens), default_ttl: Duration::from_secs(60) });
        let registry = ProxyRegistry::new("dev");
        let auth = XdsAuth::new(svc, Duration::from_secs(60), &registry, "dev");
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v.parse().expect("header"));
            h
        };
        let caller = auth.authenticate(&headers("Bearer bootstrap-token-0123456789"), &PeerCertificate::None).await.expect("known token");
        assert_eq!(caller, proven("shop", "web", None));
        assert!(auth.cached("bootstrap-token-0123456789").is_some());
        let wrong = auth.authenticate(&headers("Bearer bootstrap-token-wrong"), &PeerCertificate::None).await.expect_err("unknown token");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(auth.cached("bootstrap-token-wrong").is_none(), "refusals are not cached");
        let none = auth.authenticate(&HeaderMap::new(), &PeerCertificate::None).await.expect_err("no credentials");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(none.message().contains("authorization: Bearer"), "{}", none.message());
        assert_eq!(auth.authenticate(&headers("Basic abc"), &PeerCertificate::None).await.expect_err("not bearer").code(), tonic::Code::Unauthenticated);
        let unusable = auth.authenticate(&HeaderMap::new(), &PeerCertificate::Unusable("names no workload".into())).await.expect_err("unusable");
        assert!(unusable.message().starts_with("names no workload"), "{}", unusable.message());
        // A certificate wins over a token.
        let by_cert = PeerCertificate::Workload(Identity { namespace: "bank".into(), service_account: "teller".into() });
        let caller = auth.authenticate(&headers("Bearer bootstrap-token-0123456789"), &by_cert).await.expect("certificate");
        assert!(matches!(caller, Caller::Proven { proof: Proof::Certificate, ref identity, .. } if identity.namespace == "bank"));
        // Counted: by outcome and proof, and the reviews the cache did not answer.
        let admitted = auth.admit(&headers("Bearer bootstrap-token-0123456789"), &PeerCertificate::None).await.expect("admitted");
        assert!(auth.admit(&HeaderMap::new(), &PeerCertificate::None).await.is_err());
        let meta = [("NAMESPACE", "bank"), ("SERVICE_ACCOUNT", "web")];
        assert_eq!(authorize(&admitted, Some(&node("p", &meta)), "dev").expect_err("impostor").code(), tonic::Code::PermissionDenied);
        let metrics = registry.encode_metrics();
        for line in [
            r#"revmesh_control_plane_xds_auth_total{revision="dev",outcome="authenticated",proof="token"} 1"#,
            r#"revmesh_control_plane_xds_auth_total{revision="dev",outcome="unauthenticated",proof="none"} 1"#,
            r#"revmesh_control_plane_xds_auth_total{revision="dev",outcome="permission_denied",proof="token"} 1"#,
            r#"revmesh_control_plane_xds_token_reviews_total{revision="dev"} 2"#,
        ] {
            assert!(metrics.contains(line), "{line} in\n{metrics}");
        }
        // An expired JWT is never cached.
        auth.remember("eyJhbGciOiJub25lIn0.eyJleHAiOjEwMDB9.", &proven("a", "b", None));
        assert!(auth.cached("eyJhbGciOiJub25lIn0.eyJleHAiOjEwMDB9.").is_none());
    }
}
