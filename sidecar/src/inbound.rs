//! The inbound listener (15006): traffic captured on its way into the pod.
//!
//! * mTLS from a peer proxy, recognised by the ALPN of its ClientHello
//!   (`revmesh-h2` or `revmesh-tcp`), is terminated. The peer must present
//!   a certificate from the mesh root. Its SPIFFE identity is passed to the
//!   app in `x-revmesh-peer-identity` (any such header from outside is
//!   replaced) and to metrics as `source_principal`.
//! * Anything else is plaintext (or the app's own TLS). PERMISSIVE passes it
//!   through as bytes; STRICT refuses it.
//!
//! Traffic goes on to the address it was sent to (the pod's IP and port), as
//! Istio does since 1.10, so apps bound to the pod IP or to 0.0.0.0 both work.
//! The proxy's own uid keeps that connection out of the capture.

use crate::h1_forward::UpstreamPool;
use crate::http1;
use crate::mesh_h2::{send_body, RecvBody};
use crate::metrics::{HandleCache, Metrics, RequestLabels, TcpLabels};
use crate::proxy::{accept_loop, original_destination, BoxError, Drain};
use crate::tls::{client_hello_alpn, spiffe_id, Mesh, ALPN_HTTP, ALPN_TCP};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::body::Body as _;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

pub const PEER_IDENTITY_HEADER: &str = "x-revmesh-peer-identity";
static PEER_IDENTITY_HEADER_NAME: hyper::header::HeaderName = hyper::header::HeaderName::from_static(PEER_IDENTITY_HEADER);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// mTLS from meshed peers, plaintext from the rest.
    #[value(name = "PERMISSIVE", alias = "permissive")]
    Permissive,
    /// mTLS only.
    #[value(name = "STRICT", alias = "strict")]
    Strict,
}

pub struct Inbound {
    pub mesh: Option<Mesh>,
    pub mode: Mode,
    pub metrics: Arc<Metrics>,
    pub workload: String,
    pub revision: String,
    pub drain: Arc<Drain>,
    /// Without capture there is no original destination: everything goes here.
    pub fixed_target: Option<SocketAddr>,
    /// Requests with a body, streamed (hyper's HTTP/1 client).
    app: Client<HttpConnector, crate::proxy::Body>,
    /// Requests without one (most): written whole on a pooled connection.
    app_pool: Arc<UpstreamPool>,
    handles: HandleCache,
}

/// How long connecting to the app may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the first bytes of an inbound connection are.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    MeshHttp,
    MeshTcp,
    Other,
}

async fn sniff(tcp: &TcpStream) -> Kind {
    let deadline = tokio::time::Instant::now() + crate::proxy::DETECT_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Kind::Other,
        };
        if buf[0] != 0x16 {
            return Kind::Other;
        }
        if let Some(alpn) = client_hello_alpn(&buf[..n]) {
            return if alpn.iter().any(|a| a == ALPN_HTTP) {
                Kind::MeshHttp
            } else if alpn.iter().any(|a| a == ALPN_TCP) {
                Kind::MeshTcp
            } else {
                Kind::Other
            };
        }
        if n == buf.len() || tokio::time::Instant::now() >= deadline {
            return Kind::Other;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Inbound {
    pub fn new(mesh: Option<Mesh>, mode: Mode, metrics: Arc<Metrics>, workload: String, revision: String, drain: Arc<Drain>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(APP_CONNECT_TIMEOUT));
        let app = Client::builder(TokioExecutor::new()).build(connector);
        Inbound { mesh, mode, metrics, workload, revision, drain, fixed_target: None, app, app_pool: Default::default(), handles: Default::default() }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = Arc::clone(&self.drain);
        accept_loop(listener, drain, "inbound", move |tcp, peer| {
            let this = Arc::clone(&self);
            async move { this.connection(tcp, peer).await }
        })
        .await
    }

    fn refused(&self, peer: SocketAddr, why: &str) {
        self.metrics.inbound_refused.inc();
        tracing::info!(%peer, reason = why, "inbound connection refused");
    }

    async fn connection(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let destination = match self.fixed_target {
            Some(t) => t,
            None => match original_destination(&tcp) {
                Ok(d) => d,
                Err(_) => return,
            },
        };
        let kind = sniff(&tcp).await;
        let mesh = match (&self.mesh, kind) {
            (Some(mesh), Kind::MeshHttp | Kind::MeshTcp) => mesh,
            (None, Kind::MeshHttp | Kind::MeshTcp) => return self.refused(peer, "mTLS offered, but this proxy has no identity"),
            (_, Kind::Other) if self.mode == Mode::Strict => return self.refused(peer, "plaintext in STRICT mode"),
            (_, Kind::Other) => return self.plaintext(tcp, destination).await,
        };
        let tls = match mesh.acceptor().accept(tcp).await {
            Ok(t) => t,
            Err(e) => return self.refused(peer, &format!("mTLS handshake failed: {e}")),
        };
        let (_, session) = tls.get_ref();
        let Some(identity) = session.peer_certificates().and_then(|c| c.first()).and_then(spiffe_id) else {
            return self.refused(peer, "the peer's certificate names no SPIFFE identity");
        };
        if session.alpn_protocol() == Some(ALPN_TCP) {
            return self.tcp_to_app(tls, destination, identity).await;
        }
        self.serve_peer_http(tls, destination, identity).await
    }

    /// HTTP/2 from a peer proxy. Each stream is answered inside this
    /// connection's task rather than in a task of its own (as hyper does):
    /// no spawn per request, and answers the app has ready when the task
    /// wakes leave in one write.
    async fn serve_peer_http(&self, tls: tokio_rustls::server::TlsStream<TcpStream>, destination: SocketAddr, identity: String) {
        let (io, uncork) = crate::mesh_h2::cork(tls);
        let handshake = std::pin::pin!(crate::mesh_h2::server_builder().handshake::<_, Bytes>(io));
        let mut connection = match crate::mesh_h2::drive(handshake, &uncork).await {
            Ok(c) => c,
            Err(e) => return tracing::debug!(error = %e, %identity, "HTTP/2 handshake from a peer failed"),
        };
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut draining = self.drain.draining.subscribe();
        // Made once: a watch future made per turn registers a waiter per turn.
        let mut drain_started = std::pin::pin!(crate::proxy::wait_draining(&mut draining));
        let mut shutting_down = false;
        loop {
            let accepted = tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                // Answers queued by the streams above are written here.
                accepted = std::future::poll_fn(|cx| {
                    let accepted = connection.poll_accept(cx);
                    let _ = uncork.poll_release(cx);
                    accepted
                }) => accepted,
                _ = drain_started.as_mut(), if !shutting_down => {
                    // GOAWAY: no new streams; accept() ends once the open ones have.
                    connection.graceful_shutdown();
                    shutting_down = true;
                    continue;
                }
            };
            match accepted {
                Some(Ok((request, respond))) => in_flight.push(self.answer_peer(request, respond, destination, &identity)),
                Some(Err(e)) => return tracing::debug!(error = %e, %identity, "HTTP/2 connection from a peer ended"),
                None => return,
            }
        }
    }

    async fn answer_peer(&self, request: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>, destination: SocketAddr, identity: &str) {
        // A peer that cancels the stream (its client went away) stops the
        // wait for the app.
        let response = tokio::select! {
            biased;
            response = self.to_app(request.map(RecvBody::new), destination, identity) => response,
            reset = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
                return tracing::debug!(reason = ?reset.ok(), "a peer cancelled a request");
            }
        };
        let (mut parts, body) = response.into_parts();
        crate::proxy::strip_hop_by_hop(&mut parts.headers);
        let end = body.is_end_stream();
        let mut send = match respond.send_response(Response::from_parts(parts, ()), end) {
            Ok(send) => send,
            Err(e) => return tracing::debug!(error = %e, "sending an answer to a peer"),
        };
        if !end {
            if let Err(e) = send_body(body, &mut send).await {
                tracing::debug!(error = %e, "streaming an answer to a peer");
            }
        }
    }

    /// PERMISSIVE plaintext. HTTP is proxied (not passed as bytes) so that a
    /// client without mTLS cannot hand the app a forged identity header;
    /// anything else is passed through as bytes.
    async fn plaintext(self: &Arc<Self>, tcp: TcpStream, destination: SocketAddr) {
        let mut first = [0u8; 24];
        let n = match tokio::time::timeout(crate::proxy::DETECT_TIMEOUT, tcp.peek(&mut first)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if !matches!(crate::proxy::classify(&first[..n]), Some(crate::proxy::Protocol::Http1 | crate::proxy::Protocol::Http2) | None) || n == 0 {
            return self.tcp_to_app(tcp, destination, String::new()).await;
        }
        let this = Arc::clone(self);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = Arc::clone(&this);
            async move { Ok::<_, std::convert::Infallible>(this.to_app(req, destination, "").await) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), service).await;
    }

    /// Forwards a request to the app; `identity` (empty for plaintext) goes in
    /// the peer-identity header, and any such header from the client is dropped.
    async fn to_app<B>(&self, req: Request<B>, destination: SocketAddr, identity: &str) -> Response<crate::proxy::Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(&PEER_IDENTITY_HEADER_NAME);
        let uri = std::mem::take(&mut parts.uri);
        let destination_text;
        let host = match uri.authority() {
            Some(authority) => authority.as_str(),
            None => {
                destination_text = destination.to_string();
                &destination_text
            }
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let response = if body.is_end_stream() {
            // No body: the request is one write, on the fast path's pool.
            let mut out = Vec::with_capacity(512);
            let identity_header = [(PEER_IDENTITY_HEADER, identity)];
            let extra: &[(&str, &str)] = if identity.is_empty() { &[] } else { &identity_header };
            http1::write_request_head_from(&mut out, &parts.method, path, host, &parts.headers, extra);
            let idempotent = http1::idempotent_method(parts.method.as_str().as_bytes());
            match self.app_pool.exchange(destination, APP_CONNECT_TIMEOUT, &out, parts.method == Method::HEAD, idempotent).await {
                Ok(answer) => answer.into_response(&self.app_pool),
                Err(e) => crate::proxy::text_response(hyper::StatusCode::BAD_GATEWAY, format!("the app at {destination}: {e}\n")),
            }
        } else {
            // Boxed: hyper's client makes this future large, and it would
            // otherwise be moved with every bodiless request's future.
            Box::pin(self.streamed_to_app(parts, body, destination, host, path, identity)).await
        };
        let code = response.status().as_u16();
        let labels = || RequestLabels {
            reporter: "destination",
            source_workload: String::new(),
            source_principal: identity.to_string(),
            destination_service: self.workload.clone(),
            response_code: code,
            revision: self.revision.clone(),
        };
        self.handles.record(identity, code, labels, &self.metrics, started.elapsed().as_secs_f64() * 1000.0);
        response
    }

    /// A request with a body, streamed to the app with hyper's client.
    async fn streamed_to_app<B>(&self, mut parts: hyper::http::request::Parts, body: B, destination: SocketAddr, host: &str, path: &str, identity: &str) -> Response<crate::proxy::Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        parts.uri = match format!("http://{destination}{path}").parse() {
            Ok(u) => u,
            Err(_) => return crate::proxy::text_response(hyper::StatusCode::BAD_REQUEST, "bad path\n"),
        };
        parts.version = hyper::Version::HTTP_11;
        if !identity.is_empty() {
            if let Ok(v) = hyper::header::HeaderValue::from_str(identity) {
                parts.headers.insert(PEER_IDENTITY_HEADER, v);
            }
        }
        if let Ok(v) = hyper::header::HeaderValue::from_str(host) {
            parts.headers.insert(hyper::header::HOST, v);
        }
        let upstream = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        match self.app.request(upstream).await {
            Ok(r) => r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            Err(e) => crate::proxy::text_response(hyper::StatusCode::BAD_GATEWAY, format!("the app at {destination}: {e}\n")),
        }
    }

    async fn tcp_to_app<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut inbound: S, destination: SocketAddr, identity: String) {
        let Ok(Ok(mut app)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(destination)).await else { return };
        let _ = app.set_nodelay(true);
        let labels = TcpLabels { reporter: "destination", source_workload: identity, destination_service: self.workload.clone(), revision: self.revision.clone() };
        self.metrics.tcp_opened.get_or_create(&labels).inc();
        if let Ok((from_peer, from_app)) = tokio::io::copy_bidirectional(&mut inbound, &mut app).await {
            self.metrics.tcp_received.get_or_create(&labels).inc_by(from_peer);
            self.metrics.tcp_sent.get_or_create(&labels).inc_by(from_app);
        }
        self.metrics.tcp_closed.get_or_create(&labels).inc();
    }
}
