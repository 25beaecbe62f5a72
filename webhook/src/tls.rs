//! The serving certificate, swappable at run time: cert-manager or a Secret
//! update rewrites the files, and new handshakes pick up the new pair.

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("the key in {path} is not supported: {reason}")]
    BadKey { path: String, reason: String },
}

/// Parses a PEM certificate chain and key into a signing-ready pair.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8], cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path.display().to_string() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey { path: key_path.display().to_string() })?;
    let signing_key = any_supported_type(&key).map_err(|e| TlsError::BadKey { path: key_path.display().to_string(), reason: e.to_string() })?;
    Ok(CertifiedKey::new(chain, signing_key))
}

pub fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    Ok((read(cert_path)?, read(key_path)?))
}

/// Hands out whatever pair was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn new(initial: CertifiedKey) -> Self {
        ReloadingCert { current: RwLock::new(Arc::new(initial)) }
    }

    pub fn replace(&self, next: CertifiedKey) {
        if let Ok(mut guard) = self.current.write() {
            *guard = Arc::new(next);
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|g| Arc::clone(&g))
    }
}

/// A rustls server config offering h2 and HTTP/1.1 with the reloading certificate.
pub fn server_config(resolver: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    // An explicit provider: no process-wide default has to be installed first.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
