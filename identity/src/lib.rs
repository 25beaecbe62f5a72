//! A workload's mesh identity, as a proxy holds it:
//!
//! * the private key is generated here and never leaves the process;
//! * a CSR goes to the control plane's CA (`POST /v1/certificate` on the TLS
//!   port), authenticated by the pod's projected service-account token, over a
//!   TLS connection verified against the mesh root;
//! * [`keep_fresh`] renews at a fraction of the lifetime (half, like Istio) and
//!   publishes each new certificate on a watch channel. Listeners that resolve
//!   their certificate per handshake pick it up, and open connections are left
//!   alone.
//!
//! The decision of when to renew is the pure [`renew_at`]; the rest is I/O.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the mesh root is not a PEM certificate: {0}")]
    Root(String),
    #[error("reading the service-account token {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("generating the key or CSR: {0}")]
    Key(String),
    #[error("connecting to the CA at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the CA refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the CA's answer is not usable: {0}")]
    BadAnswer(String),
}

/// Where the bearer token comes from. Kubelet rotates projected tokens, so a
/// file is read again for every request.
#[derive(Clone)]
pub enum TokenSource {
    File(PathBuf),
    Fixed(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "File({})", p.display()),
            // Never print a token.
            TokenSource::Fixed(_) => write!(f, "Fixed(<redacted>)"),
        }
    }
}

impl TokenSource {
    fn read(&self) -> Result<String, IdentityError> {
        match self {
            TokenSource::File(path) => std::fs::read_to_string(path).map(|t| t.trim().to_string()).map_err(|source| IdentityError::Token { path: path.clone(), source }),
            TokenSource::Fixed(t) => Ok(t.clone()),
        }
    }
}

/// A certificate chain and its private key.
#[derive(Clone)]
pub struct Credentials {
    pub chain_pem: String,
    pub key_pem: String,
    pub root_pem: String,
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`
    pub identity: String,
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("identity", &self.identity).field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// The CA of one control-plane revision.
#[derive(Debug, Clone)]
pub struct CaClient {
    /// host:port of the TLS port (15012).
    pub addr: String,
    /// The name its certificate carries: `control-plane-<rev>.revmesh-system.svc`.
    pub server_name: String,
    pub root_pem: String,
    pub token: TokenSource,
}

const MAX_ANSWER: usize = 64 * 1024;

impl CaClient {
    fn tls(&self) -> Result<tokio_rustls::TlsConnector, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.root_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| IdentityError::Root(e.to_string()))?;
        if certs.is_empty() {
            return Err(IdentityError::Root("no certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| IdentityError::Root(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Root(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// Generates a key, sends its CSR and returns the issued credentials.
    pub async fn request(&self, ttl: Duration) -> Result<Credentials, IdentityError> {
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
        // The CA names the certificate after the token's identity; the CSR only carries the key.
        let csr = rcgen::CertificateParams::default().serialize_request(&key).and_then(|r| r.pem()).map_err(|e| IdentityError::Key(e.to_string()))?;
        let body = serde_json::json!({"csr": csr, "ttlSeconds": ttl.as_secs()}).to_string();
        let token = self.token.read()?;
        let connect_err = |message: String| IdentityError::Connect { addr: self.addr.clone(), message };

        let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| connect_err(e.to_string()))?;
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| connect_err(format!("server name {:?}: {e}", self.server_name)))?;
        let tls = self.tls()?.connect(name, tcp).await.map_err(|e| connect_err(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| connect_err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::post("/v1/certificate")
            .header(hyper::header::HOST, &self.server_name)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_err(e.to_string()))?;
        let issued_at = SystemTime::now();
        let response = sender.send_request(request).await.map_err(|e| connect_err(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| IdentityError::BadAnswer(e.to_string()))?.to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| IdentityError::BadAnswer(format!("not JSON: {e}")))?;
        if status != 200 {
            return Err(IdentityError::Refused { status, message: answer["error"].as_str().unwrap_or("no reason given").to_string() });
        }
        let field = |k: &str| answer[k].as_str().map(str::to_string).ok_or_else(|| IdentityError::BadAnswer(format!("no \"{k}\"")));
        let not_after = answer["notAfterUnixSeconds"].as_i64().and_then(|s| u64::try_from(s).ok()).ok_or_else(|| IdentityError::BadAnswer("no \"notAfterUnixSeconds\"".into()))?;
        Ok(Credentials {
            chain_pem: field("certificateChain")?,
            key_pem: key.serialize_pem(),
            root_pem: field("root")?,
            identity: field("identity")?,
            issued_at,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after),
        })
    }
}

/// When to renew: `fraction` of the way from issue to expiry.
pub fn renew_at(issued_at: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let lifetime = not_after.duration_since(issued_at).unwrap_or_default();
    issued_at + lifetime.mul_f64(fraction.clamp(0.0, 1.0))
}

/// How long to wait before retrying after the `attempt`-th failure in a row.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << attempt.min(6))).min(Duration::from_secs(30))
}

/// Keeps fresh credentials on `out` until every receiver is gone. A failed
/// renewal is retried with backoff while the current certificate stays in use.
pub async fn keep_fresh(ca: CaClient, ttl: Duration, renew_fraction: f64, out: watch::Sender<Option<Arc<Credentials>>>) {
    let mut failures = 0u32;
    loop {
        let wait = match ca.request(ttl).await {
            Ok(creds) => {
                failures = 0;
                let at = renew_at(creds.issued_at, creds.not_after, renew_fraction);
                tracing::info!(identity = %creds.identity, "certificate issued");
                if out.send(Some(Arc::new(creds))).is_err() {
                    return;
                }
                at.duration_since(SystemTime::now()).unwrap_or_default()
            }
            Err(e) => {
                failures += 1;
                let still_valid = out.borrow().as_ref().is_some_and(|c| c.not_after > SystemTime::now());
                tracing::warn!(error = %e, still_valid, "certificate request failed; retrying");
                retry_delay(failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_halfway_by_default_and_clamps() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let end = t0 + Duration::from_secs(3_600);
        assert_eq!(renew_at(t0, end, 0.5), t0 + Duration::from_secs(1_800));
        assert_eq!(renew_at(t0, end, 2.0), end);
        // A certificate that expired before it was issued (clock skew): renew now.
        assert_eq!(renew_at(end, t0, 0.5), end);
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(0), Duration::from_millis(500));
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(40), Duration::from_secs(30));
    }

    #[test]
    fn tokens_never_print() {
        assert_eq!(format!("{:?}", TokenSource::Fixed("secret-token".into())), "Fixed(<redacted>)");
    }
}
