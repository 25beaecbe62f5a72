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
