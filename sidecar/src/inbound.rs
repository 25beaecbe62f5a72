//! The inbound listener (15006): traffic captured on its way into the pod.
//!
//! * mTLS from a peer proxy, recognised by the ALPN of its ClientHello
//!   (`revmesh-h2` or `revmesh-tcp`), is terminated. The peer must present
//!   a certificate from the mesh root. Its SPIFFE identity is passed to the
//!   app in `x-revmesh-peer-identity` (any such header from outside is
//!   replaced) and to metrics as `source_principal`.
//! * Anything else is plaintext (or the app's own TLS). STRICT refuses it.
//!   PERMISSIVE serves it by the protocol the control plane declares for the
//!   port (HTTP with any identity header from the client removed, or bytes);
//!   an undeclared port is sniffed (see [`Inbound::plaintext`]).
//!
//! Traffic goes on to the address it was sent to (the pod's IP and port), as
//! Istio does since 1.10, so apps bound to the pod IP or to 0.0.0.0 both work.
//! The proxy's own uid keeps that connection out of the capture.

use crate::h1_forward::UpstreamPool;
use crate::http1;
use crate::mesh_h2::{send_body, RecvBody};
use crate::metrics::{HandleCache, Metrics, RequestLabels, TcpLabels};
use crate::config::{DeclaredProtocol, ProxyConfig};
use crate::proxy::{accept_loop, original_destination, BoxError, Drain, Protocol};
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

/// Removes the identity header, and look-alikes with `_` for `-`: servers
/// that map names to CGI-style variables (`HTTP_X_REVMESH_PEER_IDENTITY`)
/// would hand those to the app as the same thing.
pub fn remove_identity_headers(headers: &mut hyper::HeaderMap) {
    headers.remove(&PEER_IDENTITY_HEADER_NAME);
    let look_alike = |name: &hyper::header::HeaderName| {
        let name = name.as_str().as_bytes();
        name.len() == PEER_IDENTITY_HEADER.len() && name.contains(&b'_') && name.iter().zip(PEER_IDENTITY_HEADER.as_bytes()).all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    if headers.keys().any(look_alike) {
        let names: Vec<hyper::header::HeaderName> = headers.keys().filter(|n| look_alike(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

async fn connect_app(destination: SocketAddr) -> Option<TcpStream> {
    let app = tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(destination)).await.ok()?.ok()?;
    let _ = app.set_nodelay(true);
    Some(app)
}

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
    /// The routing tables, for the protocol each port is declared with;
    /// None: every port is sniffed.
    pub config: Option<tokio::sync::watch::Receiver<Arc<ProxyConfig>>>,
    /// Requests with a body, streamed (hyper's HTTP/1 client).
    app: Client<HttpConnector, crate::proxy::Body>,
    /// Requests without one (most): written whole on a pooled connection.
    app_pool: Arc<UpstreamPool>,
    handles: HandleCache,
    /// Bounds on client connections (`sidecar run` flags).
    pub limits: crate::limits::Limits,
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

/// How long a client that must speak first (a port declared HTTP), or one
/// that has begun a TLS handshake, may take over its first bytes. On a loaded
/// node a peer proxy's ClientHello can take longer than the short sniffing
/// time; read as plaintext, the handshake was answered with an HTTP error and
/// the peer saw "received corrupt message" (found in the node upgrade test).
const PATIENT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn sniff(tcp: &TcpStream, client_speaks_first: bool) -> Kind {
    let start = tokio::time::Instant::now();
    let mut deadline = start + if client_speaks_first { PATIENT_DETECT_TIMEOUT } else { crate::proxy::DETECT_TIMEOUT };
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Kind::Other,
        };
        if buf[0] != 0x16 {
            return Kind::Other;
        }
        // A TLS record has begun: wait for the whole ClientHello.
        deadline = deadline.max(start + PATIENT_DETECT_TIMEOUT);
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
        Inbound { mesh, mode, metrics, workload, revision, drain, fixed_target: None, config: None, app, app_pool: Default::default(), handles: Default::default(), limits: Default::default() }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = Arc::clone(&self.drain);
        let (max, stats) = (self.limits.max_connections, self.metrics.limits.inbound.clone());
        accept_loop(listener, drain, "inbound", max, stats, move |tcp, peer| {
            let this = Arc::clone(&self);
            async move { this.connection(tcp, peer).await }
        })
        .await
    }

    /// The protocol the control plane declares for a port of the app.
    fn declared(&self, port: u16) -> Option<DeclaredProtocol> {
        self.config.as_ref().and_then(|c| c.borrow().inbound_protocol(port))
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
        let kind = sniff(&tcp, self.declared(destination.port()) == Some(DeclaredProtocol::Http)).await;
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
            // A peer that took this port for TCP (another Service may declare
            // it so) still speaks to an app port declared HTTP: served as
            // HTTP, so the app gets the verified identity and nothing forged.
            if self.declared(destination.port()) == Some(DeclaredProtocol::Http) {
                return self.http_to_app(tls, destination, identity).await;
            }
            return self.tcp_to_app(tls, destination, identity).await;
        }
        self.serve_peer_http(tls, destination, identity).await
    }

    /// HTTP/2 from a peer proxy. Each stream is answered inside this
    /// connection's task rather than in a task of its own (as hyper does):
    /// no spawn per request, and answers the app has ready when the task
    /// wakes leave in one write.
    async fn serve_peer_http(&self, tls: tokio_rustls::server::TlsStream<TcpStream>, destination: SocketAddr, identity: String) {
        let (tls, traffic) = crate::limits::Watched::new(tls);
        let (io, uncork) = crate::mesh_h2::cork(tls);
        // h2 answers a larger head with 431 itself.
        let mut builder = crate::mesh_h2::server_builder();
        builder.max_header_list_size(self.limits.h2_header_list_size());
        let handshake = std::pin::pin!(builder.handshake::<_, Bytes>(io));
        let mut connection = match crate::mesh_h2::drive(handshake, &uncork).await {
            Ok(c) => c,
            Err(e) => return tracing::debug!(error = %e, %identity, "HTTP/2 handshake from a peer failed"),
        };
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut draining = self.drain.draining.subscribe();
        // Made once: a watch future made per turn registers a waiter per turn.
        let mut drain_started = std::pin::pin!(crate::proxy::wait_draining(&mut draining));
        // Made once too: the quiet time adds up across turns. A connection
        // is idle only with no request in flight (as Envoy's idle timeout).
        let mut idle = std::pin::pin!(traffic.idle(self.limits.idle_timeout));
        let mut shutting_down = false;
        loop {
            let accepted = tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                _ = idle.as_mut(), if in_flight.is_empty() => {
                    self.metrics.limits.inbound.idle_timeout.inc();
                    return tracing::debug!(%identity, "idle HTTP/2 connection from a peer closed");
                }
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
    /// client without mTLS cannot hand the app a forged identity header.
    ///
    /// * A port declared HTTP is HTTP, however slowly its first bytes come.
    /// * A port declared TCP is bytes.
    /// * An undeclared port is sniffed: a request line (any method token,
    ///   after any empty lines) or the HTTP/2 preface is HTTP, other bytes
    ///   are passed on. A client silent for the sniffing time is either
    ///   a server-first protocol or a slow client: the app is connected, and
    ///   whoever speaks first decides. If the client does, its bytes are
    ///   sniffed again, so a slow HTTP client is still served as HTTP.
    async fn plaintext(self: &Arc<Self>, tcp: TcpStream, destination: SocketAddr) {
        match self.declared(destination.port()) {
            Some(DeclaredProtocol::Http) => return self.http_to_app(tcp, destination, String::new()).await,
            Some(DeclaredProtocol::Tcp) => return self.tcp_to_app(tcp, destination, String::new()).await,
            None => {}
        }
        match crate::proxy::sniff_first_bytes(&tcp).await {
            Some(Protocol::Http1 | Protocol::Http2) => return self.http_to_app(tcp, destination, String::new()).await,
            Some(Protocol::Opaque) => return self.tcp_to_app(tcp, destination, String::new()).await,
            None => {}
        }
        let Some(app) = connect_app(destination).await else { return };
        let client_first = tokio::select! {
            biased;
            _ = app.readable() => false,
            _ = tcp.readable() => true,
        };
        if client_first && matches!(crate::proxy::detect(&tcp).await, Protocol::Http1 | Protocol::Http2) {
            drop(app);
            return self.http_to_app(tcp, destination, String::new()).await;
        }
        self.relay_to_app(tcp, app, String::new()).await
    }

    /// Serves HTTP/1 or HTTP/2 (hyper tells them apart) to the app, each
    /// request with `identity` (empty: none) as the only identity header.
    async fn http_to_app<IO>(self: &Arc<Self>, io: IO, destination: SocketAddr, identity: String)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = Arc::clone(self);
        let identity: Arc<str> = identity.into();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (this, identity) = (Arc::clone(&this), Arc::clone(&identity));
            async move {
                // What the outbound side refuses is refused here too, as Envoy does.
                if let Some((status, why)) = crate::proxy::refusal(&req) {
                    let mut refused = crate::proxy::text_response(status, why);
                    refused.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
                    return Ok::<_, std::convert::Infallible>(refused);
                }
                Ok(this.to_app(req, destination, &identity).await)
            }
        });
        let (io, traffic) = crate::limits::Watched::new(io);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        self.limits.hyper_auto(&mut builder);
        let serving = builder.serve_connection(TokioIo::new(io), service);
        crate::limits::serve_watched(serving, &traffic, &self.limits, &self.metrics.limits.inbound, crate::limits::boxed_hyper_error).await;
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
        remove_identity_headers(&mut parts.headers);
        // Trailers could carry one too (to an app that merges them).
        let body = body.map_frame(|frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                remove_identity_headers(&mut trailers);
                hyper::body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        });
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

    async fn tcp_to_app<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, inbound: S, destination: SocketAddr, identity: String) {
        let Some(app) = connect_app(destination).await else { return };
        self.relay_to_app(inbound, app, identity).await
    }

    async fn relay_to_app<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut inbound: S, mut app: TcpStream, identity: String) {
        let labels = TcpLabels { reporter: "destination", source_workload: identity, destination_service: self.workload.clone(), revision: self.revision.clone() };
        self.metrics.tcp_opened.get_or_create(&labels).inc();
        if let Ok((from_peer, from_app)) = crate::limits::copy_until_idle(&mut inbound, &mut app, &self.limits, &self.metrics.limits.inbound).await {
            self.metrics.tcp_received.get_or_create(&labels).inc_by(from_peer);
            self.metrics.tcp_sent.get_or_create(&labels).inc_by(from_app);
        }
        self.metrics.tcp_closed.get_or_create(&labels).inc();
    }
}
