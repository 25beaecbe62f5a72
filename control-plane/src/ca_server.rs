//! The CA's HTTPS endpoint and the ways a caller proves who it is.

use crate::ca::{Ca, Identity};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const MAX_BODY: usize = 64 * 1024;

pub enum Authenticator {
    /// Dir mode: tokens from a file, each bound to one identity.
    Bootstrap(HashMap<String, Identity>),
    /// Kubernetes mode: a TokenReview of the projected service-account token.
    TokenReview { client: kube::Client, audience: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token was not accepted")]
    Rejected,
    #[error("the token is not a service account's")]
    NotAServiceAccount,
    #[error("the token could not be reviewed: {0}")]
    Review(String),
}

/// What a token proved: the service account, and the pod when the token is
/// bound to one (projected tokens are; TokenReview names the pod in `extra`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub identity: Identity,
    /// The pod's name (in the identity's namespace).
    pub pod: Option<String>,
}

/// TokenReview's `extra` key naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

impl Authenticator {
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.review(token).await.map(|r| r.identity)
    }

    /// Checks a token and says whom it belongs to.
    pub async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
        match self {
            Authenticator::Bootstrap(tokens) => tokens.get(token).cloned().map(|identity| Reviewed { identity, pod: None }).ok_or(AuthError::Rejected),
            Authenticator::TokenReview { client, audience } => {
                let review = TokenReview {
                    spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![audience.clone()]) },
                    ..Default::default()
                };
                let api: Api<TokenReview> = Api::all(client.clone());
                let result = api.create(&PostParams::default(), &review).await.map_err(|e| AuthError::Review(e.to_string()))?;
                let status = result.status.ok_or(AuthError::Rejected)?;
                if status.authenticated != Some(true) {
                    return Err(AuthError::Rejected);
                }
                if let Some(auds) = &status.audiences {
                    if !auds.iter().any(|a| a == audience) {
                        return Err(AuthError::Rejected);
                    }
                }
                let user = status.user.ok_or(AuthError::NotAServiceAccount)?;
                let pod = user.extra.as_ref().and_then(|e| e.get(POD_NAME_EXTRA)).and_then(|v| v.first()).filter(|p| !p.is_empty()).cloned();
                let identity = user.username.as_deref().and_then(Identity::from_service_account_username).ok_or(AuthError::NotAServiceAccount)?;
                Ok(Reviewed { identity, pod })
            }
        }
    }

    /// The Kubernetes client, when tokens are reviewed by the API server.
    pub fn kube_client(&self) -> Option<&kube::Client> {
        match self {
            Authenticator::TokenReview { client, .. } => Some(client),
            Authenticator::Bootstrap(_) => None,
        }
    }
}

pub struct CaService {
    pub ca: Ca,
    pub auth: Authenticator,
    pub default_ttl: Duration,
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, "application/json", json!({"error": message}).to_string())
}

/// Serves one CA request.
pub async fn handle(req: Request<Incoming>, svc: Arc<CaService>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/root") => reply(StatusCode::OK, "application/x-pem-file", svc.ca.root_pem().to_string()),
        (&Method::POST, "/v1/certificate") => {
            let token = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            // The body is read before any refusal: answering while the client
            // still sends makes HTTP/2 reset the stream, and the client then
            // sees a framing error instead of the status.
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the request exceeds 64 KiB"),
            };
            let Some(token) = token else {
                return error(StatusCode::UNAUTHORIZED, "send the workload's token as Authorization: Bearer <token>");
            };
            let request: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")),
            };
            let Some(csr) = request["csr"].as_str() else {
                return error(StatusCode::BAD_REQUEST, "the body needs \"csr\": a PEM certificate signing request");
            };
            let ttl = request["ttlSeconds"].as_u64().map(Duration::from_secs).unwrap_or(svc.default_ttl);
            let identity = match svc.auth.authenticate(&token).await {
                Ok(i) => i,
                Err(e @ AuthError::Review(_)) => {
                    tracing::error!(error = %e, "TokenReview failed");
                    return error(StatusCode::SERVICE_UNAVAILABLE, "the token could not be reviewed; retry");
                }
                Err(e) => {
                    tracing::info!(reason = %e, "certificate request refused");
                    return error(StatusCode::UNAUTHORIZED, &e.to_string());
                }
            };
            match svc.ca.sign(csr, &identity, ttl) {
                Ok((pem, not_after)) => {
                    let uri = identity.spiffe(&svc.ca.trust_domain);
                    tracing::info!(identity = %uri, "certificate issued");
                    reply(
                        StatusCode::OK,
                        "application/json",
                        json!({"certificateChain": pem, "root": svc.ca.root_pem(), "identity": uri, "notAfterUnixSeconds": not_after.unix_timestamp()}).to_string(),
                    )
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        (_, "/v1/root" | "/v1/certificate") => error(StatusCode::METHOD_NOT_ALLOWED, "GET /v1/root, POST /v1/certificate"),
        _ => error(StatusCode::NOT_FOUND, "GET /v1/root, POST /v1/certificate"),
    }
}

/// The control plane's TLS certificate, issued by its own CA and re-issued
/// when half its lifetime has passed, so the port never serves an expired one.
#[derive(Debug)]
pub struct SelfIssued {
    svc: Arc<CaService>,
    dns_names: Vec<String>,
    current: std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, std::time::Instant)>,
}

const SERVING_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl SelfIssued {
    pub fn new(svc: Arc<CaService>, dns_names: Vec<String>) -> anyhow::Result<Self> {
        let first = Self::issue(&svc, &dns_names)?;
        Ok(SelfIssued { svc, dns_names, current: std::sync::RwLock::new((first, std::time::Instant::now())) })
    }

    fn issue(svc: &CaService, dns_names: &[String]) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
        use rustls::pki_types::pem::PemObject;
        let (cert_pem, key_pem) = svc.ca.serving_cert(dns_names, SERVING_LIFETIME)?;
        let mut chain: Vec<rustls::pki_types::CertificateDer<'static>> = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        chain.extend(rustls::pki_types::CertificateDer::pem_slice_iter(svc.ca.root_pem().as_bytes()).collect::<Result<Vec<_>, _>>()?);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
    }

    fn get(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let (key, issued) = self.current.read().ok()?.clone();
        if issued.elapsed() < SERVING_LIFETIME / 2 {
            return Some(key);
        }
        match Self::issue(&self.svc, &self.dns_names) {
            Ok(fresh) => {
                if let Ok(mut c) = self.current.write() {
                    *c = (Arc::clone(&fresh), std::time::Instant::now());
                }
                Some(fresh)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not re-issue the serving certificate; keeping the current one");
                Some(key)
            }
        }
    }
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService").field("trust_domain", &self.ca.trust_domain).finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for SelfIssued {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.get()
    }
}

/// TLS for the xDS + CA port: h2 for gRPC, HTTP/1.1 for plain CA clients.
pub fn tls_acceptor(svc: Arc<CaService>, dns_names: Vec<String>) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(SelfIssued::new(Arc::clone(&svc), dns_names)?);
    // A client certificate is optional (CA clients have none yet), but one that
    // is presented must chain to the mesh root: xDS then trusts its SPIFFE URI.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(svc.ca.root_pem().as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider)).allow_unauthenticated().build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_client_cert_verifier(verifier).with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
