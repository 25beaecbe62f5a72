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
/// How many first bytes detection looks at: a request line longer than this
/// that is still plausible is taken for HTTP/1.
pub(crate) const DETECT_PEEK: usize = 1024;
/// How long a client on a port declared HTTP may stay silent before its
/// connection is closed (it is never passed on as bytes).
pub const DECLARED_FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

/// An RFC 9110 `tchar`: the bytes of a token, such as a method.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies the first bytes; None while they are too few to tell.
///
/// HTTP/1 is a request line: any method token (RFC 9110 §9: extension
/// methods and any case), a target of visible ASCII, and `HTTP/1.`, after
/// any empty lines (RFC 9112 §2.2). HTTP/2 is the prior-knowledge preface.
/// Anything else (TLS from the app, a text protocol whose first line is not
/// a request line) is opaque.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if H2_PREFACE.starts_with(bytes) {
        return None;
    }
    // Only empty lines so far: not yet a request line.
    let start = bytes.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let line = &bytes[start..];
    let method = line.iter().position(|b| !is_tchar(*b)).unwrap_or(line.len());
    if method == line.len() {
        return None;
    }
    if method == 0 || line[method] != b' ' {
        return Some(Protocol::Opaque);
    }
    let rest = &line[method + 1..];
    let target = rest.iter().position(|b| !(0x21..0x7f).contains(b)).unwrap_or(rest.len());
    if target == rest.len() {
        return None;
    }
    if target == 0 || rest[target] != b' ' {
        return Some(Protocol::Opaque);
    }
    // Any `HTTP/` version, in any case: a lenient app could read such a
    // line as HTTP, so it meets the proxy's parser (and its 400) rather than
    // reaching the app as bytes.
    let version = &rest[target + 1..];
    const HTTP: &[u8] = b"HTTP/";
    let seen = version.len().min(HTTP.len());
    match version[..seen].eq_ignore_ascii_case(&HTTP[..seen]) {
        true if seen < HTTP.len() => None,
        true => Some(Protocol::Http1),
        false => Some(Protocol::Opaque),
    }
}

/// What undecided first bytes are taken for when no more come in time (or
/// the peek is full): a plausible start of a request line is HTTP, so that a
/// slow client's bytes do not decide its treatment; nothing, or only empty
/// lines, is opaque (server-first protocols never speak first).
pub(crate) fn classify_undecided(bytes: &[u8]) -> Protocol {
    match classify(bytes) {
        Some(p) => p,
        None if bytes.len() >= 2 && H2_PREFACE.starts_with(bytes) => Protocol::Http2,
        None if bytes.iter().any(|b| *b != b'\r' && *b != b'\n') => Protocol::Http1,
        None => Protocol::Opaque,
    }
}

/// Detects the protocol of a connection whose destination the control plane
/// does not declare: from its first bytes, waiting at most [`DETECT_TIMEOUT`].
pub(crate) async fn detect(tcp: &TcpStream) -> Protocol {
    sniff_first_bytes(tcp).await.unwrap_or(Protocol::Opaque)
}

/// As [`detect`], but None when no byte came in time (rather than opaque).
pub(crate) async fn sniff_first_bytes(tcp: &TcpStream) -> Option<Protocol> {
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let mut buf = [0u8; DETECT_PEEK];
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                seen = n;
                if let Some(p) = classify(&buf[..n]) {
                    return Some(p);
                }
                if n == buf.len() {
                    return Some(classify_undecided(&buf[..n]));
                }
                // A partial request line or preface: wait for more.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Closed or failed: nothing to proxy either way.
            Ok(_) => return Some(Protocol::Opaque),
            Err(_) if seen == 0 => return None,
            Err(_) => return Some(classify_undecided(&buf[..seen])),
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(classify_undecided(&buf[..seen]));
        }
    }
}

/// The HTTP version on a connection to a port declared HTTP: HTTP/2 if it
/// opens with the preface, HTTP/1 otherwise (whatever is not HTTP gets the
/// HTTP/1 parser's 400). No timeout turns it into TCP; a client silent for
/// [`DECLARED_FIRST_BYTES_TIMEOUT`] gets None (close it).
pub(crate) async fn detect_declared_http(tcp: &TcpStream) -> Option<Protocol> {
    let deadline = tokio::time::Instant::now() + DECLARED_FIRST_BYTES_TIMEOUT;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) if n == H2_PREFACE.len() || !H2_PREFACE.starts_with(&buf[..n]) => {
                return Some(if buf[..n] == *H2_PREFACE { Protocol::Http2 } else { Protocol::Http1 });
            }
            // A part of the preface: wait for the rest. Peeking sees the same
            // bytes until more come, so the pauses grow: a client stalled
            // mid-preface costs a few wake-ups a second, not a thousand.
            Ok(Ok(_)) if tokio::time::Instant::now() + pause >= deadline => return None,
            Ok(Ok(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
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
    /// SIGTERM arrived: readiness fails, traffic is still served as before
    /// until draining starts (`--drain-delay`).
    pub terminating: std::sync::atomic::AtomicBool,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { draining: watch::channel(false).0, open: AtomicUsize::new(0), terminating: Default::default() }
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
/// task and counted as open in `drain` and in `stats` while it lasts. A
/// connection past `max_connections` open is closed at once (and counted).
pub async fn accept_loop<F, Fut>(listener: TcpListener, drain: Arc<Drain>, listener_name: &'static str, max_connections: usize, stats: crate::limits::ListenerStats, handle: F)
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
        let Some(slot) = crate::limits::ActiveConnection::admit(&stats, max_connections) else {
            tracing::debug!(listener = listener_name, %peer, max_connections, "listener full; connection closed");
            continue;
        };
        drain.open.fetch_add(1, Ordering::AcqRel);
        let (drain, work) = (Arc::clone(&drain), handle(tcp, peer));
        tokio::spawn(async move {
            let _open = OpenGuard(&drain.open);
            let _slot = slot;
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
    /// Bounds on the app's connections (`sidecar run` flags).
    pub limits: crate::limits::Limits,
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
        Outbound { config, balancers: Balancers::default(), metrics, captured, workload, revision, drain, mesh, http1, http2, mesh_connections: Default::default(), handles: Default::default(), h1_pool: Default::default(), limits: Default::default() }
    }

    /// Accepts until the task is stopped (after the drain).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = Arc::clone(&self.drain);
        let (max, stats) = (self.limits.max_connections, self.metrics.limits.outbound.clone());
        accept_loop(listener, drain, "outbound", max, stats, move |tcp, peer| {
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
        // A destination the control plane declares HTTP keeps its routes,
        // retries and mTLS however its first bytes come: never raw TCP.
        let declared_http = self.config.borrow().declared_http(&destination);
        let protocol = if declared_http {
            match detect_declared_http(&tcp).await {
                Some(p) => p,
                None => return tracing::debug!(%peer, %destination, "silent client on a port declared HTTP; closed"),
            }
        } else {
            detect(&tcp).await
        };
        match protocol {
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
        let (tcp, traffic) = crate::limits::Watched::new(tcp);
        let io = TokioIo::new(tcp);
        let stats = &self.metrics.limits.outbound;
        if protocol == Protocol::Http1 {
            // Draining closes HTTP/1 connections through `Connection: close` on responses.
            let mut builder = hyper::server::conn::http1::Builder::new();
            self.limits.hyper_http1(&mut builder);
            return crate::limits::serve_watched(builder.serve_connection(io, service), &traffic, &self.limits, stats, crate::limits::hyper_error).await;
        }
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        self.limits.hyper_http2(&mut builder);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = self.drain.draining.subscribe();
        let serving = async {
            tokio::select! {
                served = conn.as_mut() => served,
                _ = wait_draining(&mut draining) => {
                    // GOAWAY: streams in flight finish, new ones go to a new connection.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        };
        crate::limits::serve_watched(serving, &traffic, &self.limits, stats, crate::limits::hyper_error).await
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
        if let Some((status, why)) = refusal(&req) {
            let mut response = text_response(status, why);
            if version < hyper::Version::HTTP_2 {
                // What follows the head may be a tunnel's or a mis-framed body's bytes.
                response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            }
            let code = status.as_u16();
            self.handles.record(BLACKHOLE, code, || self.request_labels(BLACKHOLE, code), &self.metrics, started.elapsed().as_secs_f64() * 1000.0);
            return response;
        }
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
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (buffered, mut streaming) = if route.retry.as_ref().is_some_and(|r| r.attempts > 0) {
            match Limited::new(body, RETRY_BUFFER).collect().await {
                Ok(b) => (Some(b.to_bytes()), None),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large to retry\n"),
                Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("the request body is malformed or incomplete: {e}\n")),
            }
        } else {
            (None, Some(ClientBody { inner: body, broken: Arc::clone(&broken) }))
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
                (None, Some(s)) => s.boxed_unsync(),
                (None, None) => return Err(LocalReply::new(StatusCode::BAD_GATEWAY, "request body already sent\n")),
            };
            let upstream = Request::from_parts(upstream_parts, body);
            let broken = Arc::clone(&broken);
            // An exchange that failed because the app's body broke is the app's
            // error: a 400, not a failure of the endpoint (outlier detection
            // and retries never see it).
            let blame = move |e: String| {
                if broken.load(Ordering::Acquire) {
                    Failure::Client(LocalReply::new(StatusCode::BAD_REQUEST, format!("the request body is malformed or incomplete: {e}\n")))
                } else {
                    Failure::Upstream(e)
                }
            };
            Ok(async move {
                let response: Response<Body> = match meshed {
                    Some((identity, mesh)) => {
                        let mut sender = self.mesh_sender(mesh, endpoint, identity, cluster.connect_timeout).await?;
                        let response = crate::mesh_h2::round_trip(&mut sender, upstream).await.map_err(|e| blame(e.to_string()))?;
                        response.map(|b| crate::mesh_h2::RecvBody::new(b).map_err(|e| Box::new(e) as BoxError).boxed_unsync())
                    }
                    None => self.client(cluster.http2).request(upstream).await.map_err(|e| blame(e.to_string()))?.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
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
        Fut: std::future::Future<Output = Result<(R, u16), Failure>>,
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
                Err(Some(Failure::Client(reply))) => {
                    // Says nothing about the endpoint's health; not retried.
                    state.abandoned(endpoint);
                    return Err(reply);
                }
                Err(timeout_or_error) => {
                    if state.finished(endpoint, true, cluster.endpoints.len(), Instant::now()) {
                        self.metrics.ejections.inc();
                    }
                    let retriable = route.retry.as_ref().is_some_and(|p| p.on_connect_failure || p.on_5xx);
                    match timeout_or_error {
                        None => (false, Err(LocalReply::new(StatusCode::GATEWAY_TIMEOUT, format!("upstream {endpoint} timed out\n")))),
                        Some(Failure::Upstream(e)) => (retriable, Err(LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, format!("upstream {endpoint}: {e}\n")))),
                        Some(Failure::Client(reply)) => (false, Err(reply)),
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
                crate::limits::copy_until_idle(&mut inbound, &mut upstream, &self.limits, &self.metrics.limits.outbound).await
            }
            None => {
                let Ok(Ok(mut upstream)) = tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await else {
                    tracing::debug!(%target, "TCP upstream unreachable");
                    return;
                };
                let _ = upstream.set_nodelay(true);
                self.metrics.tcp_opened.get_or_create(&labels).inc();
                crate::limits::copy_until_idle(&mut inbound, &mut upstream, &self.limits, &self.metrics.limits.outbound).await
            }
        };
        if let Ok((sent, received)) = copied {
            self.metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
            self.metrics.tcp_received.get_or_create(&labels).inc_by(received);
        }
        self.metrics.tcp_closed.get_or_create(&labels).inc();
    }
}

/// Why an attempt got no usable answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The upstream's fault (no connection, a reset, a bad answer): counted
    /// by outlier detection, and retried per the route's policy.
    Upstream(String),
    /// The client's (its request body broke): answered as it is, never
    /// counted against the endpoint nor retried.
    Client(LocalReply),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Upstream(e)
    }
}

/// A client's request body that notes whether reading it failed (bad chunked
/// framing, a client gone mid-upload): whatever error the exchange with the
/// upstream then reports is the client's.
struct ClientBody {
    inner: Incoming,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &polled {
            self.broken.store(true, Ordering::Release);
        }
        polled.map(|frame| frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What the HTTP/1 fast path's parser refuses, refused on hyper's path too
/// (it serves the connections handed to it, and HTTP/2): CONNECT (no route
/// allows it: 404, as Envoy), transfer codings other than one `chunked`
/// (501), and a missing, repeated or invalid Host, or one a Connection
/// header names (400).
pub(crate) fn refusal(req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
    use hyper::header::{CONNECTION, HOST, TRANSFER_ENCODING};
    if req.method() == hyper::Method::CONNECT {
        return Some((StatusCode::NOT_FOUND, "no route allows CONNECT\n"));
    }
    if req.version() >= hyper::Version::HTTP_2 {
        return None;
    }
    let headers = req.headers();
    if headers.contains_key(TRANSFER_ENCODING) && !crate::http1::only_chunked(headers.get_all(TRANSFER_ENCODING).iter().map(|v| v.as_bytes())) {
        return Some((StatusCode::NOT_IMPLEMENTED, "only a single `chunked` transfer coding is supported\n"));
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Some((StatusCode::BAD_REQUEST, "more than one Host header\n")),
        (None, None) if req.version() == hyper::Version::HTTP_11 && req.uri().authority().is_none() => return Some((StatusCode::BAD_REQUEST, "an HTTP/1.1 request without Host\n")),
        (Some(h), None) if !crate::http1::valid_host(h.as_bytes()) => return Some((StatusCode::BAD_REQUEST, "an invalid Host\n")),
        _ => {}
    }
    let names_host = headers.get_all(CONNECTION).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).any(|t| t.trim_ascii().eq_ignore_ascii_case(b"host"));
    names_host.then_some((StatusCode::BAD_REQUEST, "a Connection header names Host\n"))
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
    // Content-Length and Host stay even when named: a Connection header must
    // not take away a body's framing or a request's authority.
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|n| n != "content-length" && n != "host")
        .collect();
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
        assert_eq!(classify(b"POST /x"), None, "the request line is not complete yet");
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"GE"), None, "too short to tell");
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Protocol::Opaque), "TLS from the app");
        assert_eq!(classify(b"\x00\x00\x00\x08"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GETX / HTTP/1.1\r\n"), Some(Protocol::Http1), "an extension method");
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Some(Protocol::Http1), "methods are case-sensitive tokens");
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"\r\n\r\nGET / HTTP/1.1\r\n"), Some(Protocol::Http1), "leading empty lines");
        assert_eq!(classify(b"\r\n"), None);
        assert_eq!(classify(b"GET /abc"), None, "a request line still arriving");
        assert_eq!(classify(b"SET k v\r\n"), Some(Protocol::Opaque), "Redis inline: not a request line");
        assert_eq!(classify(b"EHLO x\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET  / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / http/1.1\r\n"), Some(Protocol::Http1), "lenient apps read it; the parser refuses it");
        assert_eq!(classify(b"GET / FTP/1.0\r\n"), Some(Protocol::Opaque));
        // A client that stalls mid-line is still HTTP; silence is opaque.
        assert_eq!(classify_undecided(b"GE"), Protocol::Http1);
        assert_eq!(classify_undecided(b"PRI * HT"), Protocol::Http2);
        assert_eq!(classify_undecided(b""), Protocol::Opaque);
        assert_eq!(classify_undecided(b"\r\n"), Protocol::Opaque);
    }

    #[test]
    fn service_names_from_clusters() {
        assert_eq!(cluster_service("outbound|80||web.demo.svc.cluster.local"), "web.demo.svc.cluster.local");
    }
}
