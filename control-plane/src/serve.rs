//! The control plane's two serving ports, per DESIGN.md:
//! * 15010: xDS over plaintext gRPC, for local development (no caller is
//!   authenticated; it listens on loopback by default);
//! * 15012: xDS and the CA over TLS, with the serving certificate issued by the
//!   mesh CA, so proxies verify it with the root they were given. xDS callers
//!   prove their workload identity ([`crate::xds_auth`]).
//!
//! Both run on hyper. ADS calls go to [`grpc::serve_ads`] and everything else
//! on the TLS port goes to the CA.

use crate::ca_server::{self, CaService};
use crate::grpc::{self, Gate, HttpBody};
use crate::xds_auth::{self, XdsAuth};
use crate::xds::AdsService;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;

/// Streams one connection may carry: a proxy needs one, the load tool many.
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

#[derive(Clone)]
pub struct Endpoints {
    pub ads: AdsService,
    /// Served on the TLS port only: tokens never travel in plaintext.
    pub ca: Option<Arc<CaService>>,
    /// On the TLS port: xDS callers must prove their workload identity.
    /// None (the plaintext port): xDS is open, for local development.
    pub xds_auth: Option<Arc<XdsAuth>>,
}

async fn route(request: Request<hyper::body::Incoming>, endpoints: Endpoints, gate: Gate) -> Response<HttpBody> {
    if grpc::is_ads(request.uri().path()) {
        return grpc::serve_ads(&endpoints.ads, request, &gate).await;
    }
    match endpoints.ca {
        Some(ca) => ca_server::handle(request, ca).await.map(|b| b.map_err(|never| match never {}).boxed_unsync()),
        None => {
            let body = http_body_util::Full::new(Bytes::from_static(b"this port serves xDS (gRPC) only; the CA is on the TLS port (15012)\n"));
            let mut r = Response::new(body.map_err(|never| match never {}).boxed_unsync());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// Accepts connections until the process ends; `tls` makes it the TLS port.
pub async fn serve(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, endpoints: Endpoints) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (tls, endpoints, builder) = (tls.clone(), endpoints.clone(), Arc::clone(&builder));
        tokio::spawn(async move {
            let identity_check = endpoints.xds_auth.clone();
            let service = |gate: Gate| {
                hyper::service::service_fn(move |req| {
                    let (endpoints, gate) = (endpoints.clone(), gate.clone());
                    async move { Ok::<_, std::convert::Infallible>(route(req, endpoints, gate).await) }
                })
            };
            let result = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        // The certificate (if any) was verified against the mesh root in the handshake.
                        let gate = match &identity_check {
                            Some(auth) => Gate::Authenticated { peer: xds_auth::peer_certificate(stream.get_ref().1.peer_certificates(), auth.trust_domain()), auth: Arc::clone(auth) },
                            None => Gate::Open,
                        };
                        builder.serve_connection(TokioIo::new(stream), service(gate)).await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(tcp), service(Gate::Open)).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
