//! The outbound listener: captured connections, protocol detection, HTTP
//! routing with retries, timeouts and load balancing, TCP proxying, and a
//! graceful drain.

use crate::config::{pick_weighted, ClusterConfig, ProxyConfig, RouteRule};
use crate::lb::Balancers;
use crate::metrics::{Metrics, RequestLabels, TcpLabels};
use crate::tls::{Mesh, ALPN_HTTP, ALPN_TCP};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long a silent client may take before its connection is treated as
/// opaque TCP (server-first protocols such as MySQL never speak first).
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Metric labels of traffic outside the mesh's services, as Istio names them.
/// Never the destination itself: label values must not grow with what apps
/// (or the Host headers they send) happen to contact.
pub(crate) const PASSTHROUGH: &str = "PassthroughCluster";
pub(crate) const BLACKHOLE: &str = "BlackHoleCluster";

/// Largest request body buffered so that it can be retried.
pub(crate) const RETRY_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// TLS from the app, or anything else: proxied as bytes.
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

/// Classifies the first bytes; None while they are too few to tell.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    let could_be = |full: &[u8]| bytes.len() < full.len() && full.starts_with(bytes);
    if bytes.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if METHODS.iter().any(|m| bytes.starts_with(m)) {
        return Some(Protocol::Http1);
    }
    if could_be(H2_PREFACE) || METHODS.iter().any(|m| could_be(m)) {
        return None;
    }
    Some(Protocol::Opaque)
}

async fn detect(tcp: &TcpStream) -> Protocol {
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let mut buf = [0u8; 24];
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if let Some(p) = classify(&buf[..n]) {
                    return p;
                }
                // A partial method or preface: wait for more.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return Protocol::Opaque,
        }
        if tokio::time::Instant::now() >= deadline {
            return Protocol::Opaque;
        }
    }
}

/// The address a REDIRECTed connection was headed for.
pub fn original_destination(tcp: &TcpStream) -> std::io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `tcp`; addr and len describe a
    // buffer of the size passed.
    let rc = unsafe { libc::getsockopt(tcp.as_raw_fd(), libc::SOL_IP, libc::SO_ORIGINAL_DST, std::ptr::addr_of_mut!(addr).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
}

/// Connections in flight, and the signal to drain them.
#[derive(Debug)]
pub struct Drain {
    pub draining: watch::Sender<bool>,
    pub open: AtomicUsize,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { draining: watch::channel(false).0, open: AtomicUsize::new(0) }
    }
}

impl Drain {
    /// Starts draining: readiness fails, HTTP/1 responses carry
    /// `Connection: close`, HTTP/2 connections get GOAWAY, and the listener
    /// keeps accepting (a client that reconnects is still served). Returns
    /// when no connection has been open for a moment, or when `grace` is over,
    /// with the number still open.
    pub async fn drain(&self, grace: Duration) -> usize {
        let _ = self.draining.send(true);
        let until = Instant::now() + grace;
        let mut idle_since: Option<Instant> = None;
        while Instant::now() < until {
            if self.open.load(Ordering::Acquire) == 0 {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(500) {
                    break;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// Resolves when draining starts (the watch's borrow is not held across awaits).
pub(crate) async fn wait_draining(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await.map(|_| ());
}

/// Accepts connections until the task is stopped, each handled on its own
/// task and counted as open in `drain` while it lasts.
pub async fn accept_loop<F, Fut>(listener: TcpListener, drain: Arc<Drain>, listener_name: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(listener = listener_name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        drain.open.fetch_add(1, Ordering::AcqRel);
        let (drain, work) = (Arc::clone(&drain), handle(tcp, peer));
        tokio::spawn(async move {
            let _open = OpenGuard(&drain.open);
            work.await;
        });
    }
}

struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Outbound {
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    pub balancers: Balancers,
    pub metrics: Arc<Metrics>,
    pub captured: bool,
    pub workload: String,
    pub revision: String,
    pub drain: Arc<Drain>,
    /// mTLS to meshed endpoints; None: plaintext everywhere (no identity).
    pub mesh: Option<Mesh>,
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
    /// One multiplexed HTTP/2-over-mTLS connection per meshed endpoint.
    mesh_connections: std::sync::Mutex<crate::fast_hash::FastMap<SocketAddr, h2::client::SendRequest<Bytes>>>,
    pub(crate) handles: crate::metrics::HandleCache,
    /// Idle connections of the HTTP/1 fast path.
    pub(crate) h1_pool: crate::h1_forward::UpstreamPool,
}

/// A reply the proxy makes itself (no route, no healthy upstream, …).
#[derive(Debug)]
pub struct LocalReply {
    pub status: StatusCode,
    pub text: String,
}

impl LocalReply {
    pub fn new(status: StatusCode, text: impl Into<String>) -> Self {
        LocalReply { status, text: text.into() }
    }
}

pub fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.into())).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

impl Outbound {
    pub fn new(config: watch::Receiver<Arc<ProxyConfig>>, metrics: Arc<Metrics>, captured: bool, workload: String, revision: String, drain: Arc<Drain>, mesh: Option<Mesh>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let http1 = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        Outbound { config, balancers: Balancers::default(), metrics, captured, workload, revision, drain, mesh, http1, http2, mesh_connections: Default::default(), handles: Default::default(), h1_pool: Default::default() }
    }

    /// Accepts until the task is stopped (after the drain).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = Arc::clone(&self.drain);
        accept_loop(listener, drain, "outbound", move |tcp, peer| {
            let this = Arc::clone(&self);
            async move { this.connection(tcp, peer).await }
        })
        .await
    }

    async fn connection(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let destination = if self.captured { original_destination(&tcp) } else { tcp.local_addr() };
        let destination = match destination {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "no original destination");
                return;
            }
        };
        match detect(&tcp).await {
            Protocol::Opaque => self.tcp_proxy(tcp, destination).await,
            Protocol::Http1 => self.serve_http1(tcp, destination).await,
            Protocol::Http2 => self.serve_http(tcp, destination, Protocol::Http2).await,
        }
    }

    /// Serves HTTP with hyper: HTTP/2 from the app, and HTTP/1 connections
    /// the fast path (`serve_http1`) hands over.
    pub(crate) async fn serve_http<T>(self: &Arc<Self>, tcp: T, destination: SocketAddr, protocol: Protocol)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = Arc::clone(self);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = Arc::clone(&this);
            async move { Ok::<_, std::convert::Infallible>(this.request(req, destination).await) }
        });
        let io = TokioIo::new(tcp);
        if protocol == Protocol::Http1 {
            // Draining closes HTTP/1 connections through `Connection: close` on responses.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            return;
        }
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = self.drain.draining.subscribe();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = wait_draining(&mut draining) => {
                // GOAWAY: streams in flight finish, new ones go to a new connection.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }

    pub(crate) fn request_labels(&self, service: &str, code: u16) -> RequestLabels {
        RequestLabels {
            reporter: "source",
            source_workload: self.workload.clone(),
            source_principal: String::new(),
            destination_service: service.to_string(),
            response_code: code,
            revision: self.revision.clone(),
        }
    }

    async fn request(&self, req: Request<Incoming>, destination: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let version = req.version();
        let host = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string)).unwrap_or_default();
        let config = self.config.borrow().clone();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let route = config.route(&host, &path, req.headers());
        let (response, service) = match route {
            Some(route) => {
                let cluster = pick_weighted(&route.clusters, fastrand::u64(..)).and_then(|name| config.clusters.get(name));
                match cluster {
                    Some(cluster) => {
                        let service = cluster_service(&cluster.name).to_string();
                        (self.forward(req, route, cluster, &host, &path).await, service)
                    }
                    None => (text_response(StatusCode::SERVICE_UNAVAILABLE, "no cluster for this route\n"), BLACKHOLE.to_string()),
                }
            }
            // No mesh route: pass through to where the app was going.
            None if self.captured => (self.passthrough(req, destination, &path).await, PASSTHROUGH.to_string()),
            None => (text_response(StatusCode::NOT_FOUND, format!("no route for host {host:?}\n")), BLACKHOLE.to_string()),
        };
        let mut response = response;
        if self.drain.is_draining() && version < hyper::Version::HTTP_2 {
            // Close after this response; the client reconnects (and is still served).
            response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        }
        let code = response.status().as_u16();
        self.handles.record(&service, code, || self.request_labels(&service, code), &self.metrics, started.elapsed().as_secs_f64() * 1000.0);
        response
    }

    fn client(&self, http2: bool) -> &Client<HttpConnector, Body> {
        if http2 { &self.http2 } else { &self.http1 }
    }

    /// The HTTP/2-over-mTLS connection to a meshed endpoint, made on first use.
    pub(crate) async fn mesh_sender(&self, mesh: &Mesh, endpoint: SocketAddr, identity: &str, timeout: Duration) -> Result<h2::client::SendRequest<Bytes>, String> {
        let cached = self.mesh_connections.lock().ok().and_then(|p| p.get(&endpoint).cloned());
        if let Some(sender) = cached {
            // A connection that failed, or that the peer sent GOAWAY on,
            // refuses new streams; it is replaced.
            match sender.ready().await {
                Ok(sender) => return Ok(sender),
                Err(e) => tracing::debug!(error = %e, %endpoint, "HTTP/2 connection to a peer replaced"),
            }
        }
        let tls = mesh.connect(endpoint, identity, ALPN_HTTP, timeout).await.map_err(|e| format!("mTLS to {endpoint}: {e}"))?;
        let (io, uncork) = crate::mesh_h2::cork(tls);
        let handshake = std::pin::pin!(crate::mesh_h2::client_builder().handshake::<_, Bytes>(io));
        let (sender, mut connection) = crate::mesh_h2::drive(handshake, &uncork).await.map_err(|e| format!("HTTP/2 to {endpoint}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = crate::mesh_h2::drive(&mut connection, &uncork).await {
                tracing::debug!(error = %e, %endpoint, "HTTP/2 connection to a peer ended");
            }
        });
        if let Ok(mut p) = self.mesh_connections.lock() {
            p.insert(endpoint, sender.clone());
        }
        Ok(sender)
    }

    async fn passthrough(&self, req: Request<Incoming>, destination: SocketAddr, path: &str) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        parts.uri = match format!("http://{destination}{path}").parse() {
            Ok(u) => u,
            Err(_) => return text_response(StatusCode::BAD_REQUEST, "bad request path\n"),
        };
        parts.version = hyper::Version::HTTP_11;
        let upstream = Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
        match self.http1.request(upstream).await {
            Ok(r) => r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            Err(e) => text_response(StatusCode::BAD_GATEWAY, format!("upstream {destination}: {e}\n")),
        }
    }

    /// Sends the request to the cluster, retrying per the route's policy.
    async fn forward(&self, req: Request<Incoming>, route: &RouteRule, cluster: &ClusterConfig, host: &str, path: &str) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The app's Host goes upstream, whatever the protocol on either side.
        if let Ok(h) = hyper::header::HeaderValue::from_str(host) {
            parts.headers.insert(hyper::header::HOST, h);
        }
        // A body can be replayed only if it was kept.
        let (buffered, mut streaming) = if route.retry.as_ref().is_some_and(|r| r.attempts > 0) {
            match Limited::new(body, RETRY_BUFFER).collect().await {
                Ok(b) => (Some(b.to_bytes()), None),
                Err(_) => return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large to retry\n"),
            }
        } else {
            (None, Some(body))
        };
        let hash_key = parts.headers.get("x-revmesh-hash-key").map_or(0, |v| hash_key(v.as_bytes()));
        let sent = self.attempts(route, cluster, hash_key, |endpoint, last| {
            let meshed = cluster.mtls.get(&endpoint).zip(self.mesh.as_ref());
            let mut upstream_parts = if last { std::mem::replace(&mut parts, Request::new(()).into_parts().0) } else { parts.clone() };
            // To a peer proxy the app's host travels as :authority.
            let authority = if meshed.is_some() { host.to_string() } else { endpoint.to_string() };
            upstream_parts.uri = format!("http://{authority}{path}").parse().map_err(|_| LocalReply::new(StatusCode::BAD_REQUEST, "bad request path\n"))?;
            upstream_parts.version = if cluster.http2 || meshed.is_some() { hyper::Version::HTTP_2 } else { hyper::Version::HTTP_11 };
            let body: Body = match (&buffered, streaming.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|never| match never {}).boxed_unsync(),
                (None, Some(s)) => s.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                (None, None) => return Err(LocalReply::new(StatusCode::BAD_GATEWAY, "request body already sent\n")),
            };
            let upstream = Request::from_parts(upstream_parts, body);
            Ok(async move {
                let response: Response<Body> = match meshed {
                    Some((identity, mesh)) => {
                        let mut sender = self.mesh_sender(mesh, endpoint, identity, cluster.connect_timeout).await?;
                        let response = crate::mesh_h2::round_trip(&mut sender, upstream).await.map_err(|e| e.to_string())?;
                        response.map(|b| crate::mesh_h2::RecvBody::new(b).map_err(|e| Box::new(e) as BoxError).boxed_unsync())
                    }
                    None => self.client(cluster.http2).request(upstream).await.map_err(|e| e.to_string())?.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
                };
                let code = response.status().as_u16();
                Ok((response, code))
            })
        });
        match sent.await {
            Ok(r) => r,
            Err(local) => text_response(local.status, local.text),
        }
    }

    /// Runs attempts of one request on the cluster's endpoints: picks each
    /// endpoint, applies the route's timeout, records outcomes for outlier
    /// detection, and retries per the route's policy within the retry budget.
    /// `send(endpoint, last)` prepares an attempt (`last`: no retry follows,
    /// so the request may be moved rather than copied); its future gives the
    /// upstream's answer and status code, or why there was none. An answer
    /// that is retried is dropped.
    pub(crate) async fn attempts<R, F, Fut>(&self, route: &RouteRule, cluster: &ClusterConfig, hash_key: u64, mut send: F) -> Result<R, LocalReply>
    where
        F: FnMut(SocketAddr, bool) -> Result<Fut, LocalReply>,
        Fut: std::future::Future<Output = Result<(R, u16), String>>,
    {
        let state = self.balancers.of(cluster);
        let max_attempts = 1 + route.retry.as_ref().map_or(0, |r| r.attempts);
        // Filled only when a request is retried, so most requests allocate nothing.
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(endpoint) = state.pick(&cluster.endpoints, cluster.lb, hash_key, &tried, Instant::now()) else {
                return Err(LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, format!("no healthy upstream in {}\n", cluster.name)));
            };
            let sent = send(endpoint, attempt >= max_attempts)?;
            state.started(endpoint);
            let outcome = match route.timeout {
                Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| None).and_then(|r| r.map_err(Some)),
                None => sent.await.map_err(Some),
            };
            let (retriable, result) = match outcome {
                Ok((answer, code)) => {
                    let retriable = route.retry.as_ref().is_some_and(|p| (p.on_5xx && code >= 500) || p.status_codes.contains(&code));
                    if state.finished(endpoint, code >= 500, cluster.endpoints.len(), Instant::now()) {
                        self.metrics.ejections.inc();
                        tracing::warn!(%endpoint, cluster = %cluster.name, "endpoint ejected after consecutive failures");
                    }
                    (retriable, Ok(answer))
                }
                Err(timeout_or_error) => {
                    if state.finished(endpoint, true, cluster.endpoints.len(), Instant::now()) {
                        self.metrics.ejections.inc();
                    }
                    let retriable = route.retry.as_ref().is_some_and(|p| p.on_connect_failure || p.on_5xx);
                    match timeout_or_error {
                        None => (false, Err(LocalReply::new(StatusCode::GATEWAY_TIMEOUT, format!("upstream {endpoint} timed out\n")))),
                        Some(e) => (retriable, Err(LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, format!("upstream {endpoint}: {e}\n")))),
                    }
                }
            };
            if !retriable || attempt >= max_attempts || !state.try_retry() {
                return result;
            }
            drop(result);
            tried.push(endpoint);
            self.metrics.retries.inc();
            if let Some(p) = &route.retry {
                tokio::time::sleep(p.backoff.mul_f64(fastrand::f64() + 0.5)).await;
            }
            state.retry_done();
            // Let every endpoint be tried again once all have been.
            if tried.len() >= cluster.endpoints.len() {
                tried.clear();
            }
        }
    }

    async fn tcp_proxy(&self, mut inbound: TcpStream, destination: SocketAddr) {
        let config = self.config.borrow().clone();
        let cluster = config.tcp.get(&destination).and_then(|c| config.clusters.get(c)).cloned();
        let (service, target) = match &cluster {
            Some(c) => {
                let state = self.balancers.of(c);
                match state.pick(&c.endpoints, c.lb, 0, &[], Instant::now()) {
                    Some(ep) => (cluster_service(&c.name).to_string(), ep),
                    None => return,
                }
            }
            None if self.captured => (PASSTHROUGH.to_string(), destination),
            None => return,
        };
        let labels = TcpLabels { reporter: "source", source_workload: self.workload.clone(), destination_service: service, revision: self.revision.clone() };
        let connect_timeout = cluster.as_ref().map_or(Duration::from_secs(1), |c| c.connect_timeout);
        let meshed = cluster.as_ref().and_then(|c| c.mtls.get(&target)).zip(self.mesh.as_ref());
        let copied = match meshed {
            Some((identity, mesh)) => {
                let Ok(mut upstream) = mesh.connect(target, identity, ALPN_TCP, connect_timeout).await else {
                    tracing::debug!(%target, "mTLS TCP upstream unreachable");
                    return;
                };
                self.metrics.tcp_opened.get_or_create(&labels).inc();
                tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await
            }
            None => {
                let Ok(Ok(mut upstream)) = tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await else {
                    tracing::debug!(%target, "TCP upstream unreachable");
                    return;
                };
                let _ = upstream.set_nodelay(true);
                self.metrics.tcp_opened.get_or_create(&labels).inc();
                tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await
            }
        };
        if let Ok((sent, received)) = copied {
            self.metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
            self.metrics.tcp_received.get_or_create(&labels).inc_by(received);
        }
        self.metrics.tcp_closed.get_or_create(&labels).inc();
    }
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1).
pub(crate) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];
    // Most messages carry none (and names a Connection header lists only
    // count when there is one): a look at each name is cheaper than the
    // removals' hash lookups.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
        return;
    }
    let named: Vec<String> = headers.get_all(hyper::header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase())).collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// The ring-hash key of an `x-revmesh-hash-key` value.
pub(crate) fn hash_key(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to spread hash keys; not a security boundary.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `outbound|80||web.demo.svc.cluster.local` → `web.demo.svc.cluster.local`.
pub fn cluster_service(cluster: &str) -> &str {
    cluster.rsplit("||").next().unwrap_or(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in [("connection", "X-Trace, keep-alive"), ("x-trace", "1"), ("keep-alive", "timeout=5"), ("te", "trailers"), ("proxy-connection", "close"), ("content-type", "text/plain")] {
            headers.append(name, hyper::header::HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["content-type"]);
        let mut end_to_end = hyper::HeaderMap::new();
        end_to_end.insert("x-trace", hyper::header::HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut end_to_end);
        assert!(end_to_end.contains_key("x-trace"), "named by no Connection header, it stays");
    }

    #[test]
    fn detection_by_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /x"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"GE"), None, "too short to tell");
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Protocol::Opaque), "TLS from the app");
        assert_eq!(classify(b"\x00\x00\x00\x08"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
    }

    #[test]
    fn service_names_from_clusters() {
        assert_eq!(cluster_service("outbound|80||web.demo.svc.cluster.local"), "web.demo.svc.cluster.local");
    }
}
