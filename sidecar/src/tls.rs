//! TLS to the control plane: the server's certificate must chain to the mesh
//! root and name the revision's service.

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

pub fn root_store(root_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(root_pem.as_bytes()).collect::<Result<_, _>>()?;
    anyhow::ensure!(!certs.is_empty(), "the mesh root file holds no PEM certificate");
    for c in certs {
        roots.add(c)?;
    }
    Ok(roots)
}

pub type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A connector for tonic that speaks TLS (ALPN h2) to the control plane.
pub fn control_plane_connector(
    root_pem: &str,
    server_name: &str,
) -> anyhow::Result<impl tower::Service<hyper::Uri, Response = TlsIo, Error = std::io::Error, Future = impl std::future::Future<Output = std::io::Result<TlsIo>> + Send> + Clone + Send + 'static>
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(root_store(root_pem)?).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| anyhow::anyhow!("control-plane name {server_name:?}: {e}"))?;
    Ok(tower::service_fn(move |uri: hyper::Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let host = uri.host().unwrap_or_default().trim_matches(|c| c == '[' || c == ']').to_string();
            let port = uri.port_u16().unwrap_or(15012);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        }
    }))
}

// ---- Mesh mTLS between proxies ----

use identity::Credentials;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Mutex;
use tokio::sync::watch;

/// ALPN of proxy-to-proxy HTTP (HTTP/2 inside mTLS).
pub const ALPN_HTTP: &[u8] = b"revmesh-h2";
/// ALPN of proxy-to-proxy opaque TCP inside mTLS.
pub const ALPN_TCP: &[u8] = b"revmesh-tcp";

pub type CredentialsRx = watch::Receiver<Option<Arc<Credentials>>>;

/// The proxy's current certificate, as rustls wants it; follows renewals, so
/// new handshakes use the fresh certificate and open connections are untouched.
#[derive(Debug)]
struct CurrentCert {
    creds: CredentialsRx,
    cache: Mutex<Option<(Arc<Credentials>, Arc<CertifiedKey>)>>,
}

impl CurrentCert {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        let creds = self.creds.borrow().clone()?;
        let mut cache = self.cache.lock().ok()?;
        if let Some((held, key)) = cache.as_ref() {
            if Arc::ptr_eq(held, &creds) {
                return Some(Arc::clone(key));
            }
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(creds.chain_pem.as_bytes()).collect::<Result<_, _>>().ok()?;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).ok()?;
        let key = Arc::new(CertifiedKey::new(chain, rustls::crypto::ring::sign::any_supported_type(&der).ok()?));
        *cache = Some((creds, Arc::clone(&key)));
        Some(key)
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// The SPIFFE URI a certificate names, if any.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    })
}

/// Checks a peer proxy's certificate: it chains to the mesh root and names
/// exactly the identity the control plane said the endpoint has.
#[derive(Debug)]
struct PeerIdentity {
    chain: Arc<dyn ClientCertVerifier>,
    expected: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PeerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Workload certificates carry a URI, not a DNS name: the chain is
        // checked by the client-certificate verifier (no name check), then the URI.
        self.chain.verify_client_cert(end_entity, intermediates, now)?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!("the peer is {id}, not the expected {}", self.expected))),
            None => Err(rustls::Error::General("the peer's certificate names no SPIFFE identity".into())),
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// mTLS between proxies.
#[derive(Debug, Clone)]
pub struct Mesh {
    cert: Arc<CurrentCert>,
    chain: Arc<dyn ClientCertVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    server: Arc<rustls::ServerConfig>,
    pub trust_domain: String,
}

impl Mesh {
    pub fn new(root_pem: &str, trust_domain: &str, creds: CredentialsRx) -> anyhow::Result<Mesh> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(root_store(root_pem)?);
        let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider)).build()?;
        let cert = Arc::new(CurrentCert { creds, cache: Mutex::new(None) });
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::clone(&chain))
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn rustls::server::ResolvesServerCert>);
        server.alpn_protocols = vec![ALPN_HTTP.to_vec(), ALPN_TCP.to_vec()];
        Ok(Mesh { cert, chain, provider, server: Arc::new(server), trust_domain: trust_domain.into() })
    }

    pub fn has_certificate(&self) -> bool {
        self.cert.get().is_some()
    }

    /// `namespace/serviceaccount` → the SPIFFE URI in this trust domain.
    pub fn spiffe(&self, identity: &str) -> String {
        let (ns, sa) = identity.split_once('/').unwrap_or(("default", identity));
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain)
    }

    /// Connects to a meshed endpoint that must prove `identity` (namespace/sa).
    pub async fn connect(&self, endpoint: std::net::SocketAddr, identity: &str, alpn: &[u8], timeout: std::time::Duration) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let verifier = Arc::new(PeerIdentity { chain: Arc::clone(&self.chain), expected: self.spiffe(identity), provider: Arc::clone(&self.provider) });
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::clone(&self.cert) as Arc<dyn rustls::client::ResolvesClientCert>);
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(endpoint)).await.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        // The name is not checked (the identity is); it only fills the SNI.
        let name = ServerName::try_from("proxy.revmesh.internal").map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }
}

/// The ALPN protocols a TLS ClientHello offers, from the first bytes of a
/// connection; None when the bytes are not (yet) a whole ClientHello.
pub fn client_hello_alpn(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    fn u16_at(b: &[u8], i: usize) -> Option<usize> {
        Some(usize::from(*b.get(i)?) << 8 | usize::from(*b.get(i + 1)?))
    }
    if bytes.first()? != &0x16 {
        return None;
    }
    let record_len = u16_at(bytes, 3)?;
    let hs = bytes.get(5..5 + record_len)?;
    if hs.first()? != &1 {
        return None;
    }
    let body = hs.get(4..)?;
    let mut i = 2 + 32; // version, random
    i += 1 + usize::from(*body.get(i)?); // session id
    i += 2 + u16_at(body, i)?; // cipher suites
    i += 1 + usize::from(*body.get(i)?); // compression methods
    let ext_end = i + 2 + u16_at(body, i)?;
    i += 2;
    while i + 4 <= ext_end {
        let (kind, len) = (u16_at(body, i)?, u16_at(body, i + 2)?);
        if kind == 16 {
            let list = body.get(i + 6..i + 4 + len)?;
            let mut out = Vec::new();
            let mut j = 0;
            while j < list.len() {
                let n = usize::from(list[j]);
                out.push(list.get(j + 1..j + 1 + n)?.to_vec());
                j += 1 + n;
            }
            return Some(out);
        }
        i += 4 + len;
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_alpn_of_a_real_client_hello() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = root_store(&rcgen::generate_simple_self_signed(vec!["x".to_string()]).expect("cert").cert.pem()).expect("roots");
        let mut config = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("versions").with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP.to_vec(), ALPN_TCP.to_vec()];
        let mut conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("x").expect("name")).expect("client");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("hello");
        assert_eq!(client_hello_alpn(&hello), Some(vec![ALPN_HTTP.to_vec(), ALPN_TCP.to_vec()]));
        assert_eq!(client_hello_alpn(&hello[..20]), None, "truncated");
        assert_eq!(client_hello_alpn(b"GET / HTTP/1.1\r\n"), None);
    }
}
