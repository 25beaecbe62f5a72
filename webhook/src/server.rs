//! The HTTPS edge: AdmissionReview in, AdmissionReview out; metrics on their own port.

use crate::admission::{self, AdmissionRequest};
use crate::conn::{Activity, ConnectionLimits, Tracked, Verdict};
use crate::echo;
use crate::inject::{self, InjectorConfig, NamespaceContext, Outcome};
use crate::metrics::Metrics;
use crate::reload::{self, SharedRollouts};
use crate::tls::{self, ReloadingCert};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rollouts::Rollouts;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// The API server never sends more than 3 MiB for one object (etcd's limit is
/// 1.5 MiB); anything larger is not a real AdmissionReview.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Request headers (HTTP/1 head, HTTP/2 header list) larger than this are
/// refused: the API server sends a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// HTTP/2 flow-control windows: what a client may send before the webhook
/// reads it. A stream waiting for its review turn holds at most this much, and
/// a connection at most [`H2_CONNECTION_WINDOW`] (hyper's defaults are 1 MiB,
/// which 512 connections would turn into 512 MiB of buffered bodies).
pub const H2_STREAM_WINDOW: u32 = 128 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Flags of the `webhook` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "webhook", about = "Revmesh sidecar injector: a mutating admission webhook (AdmissionReview v1 over HTTPS)")]
pub struct Settings {
    /// HTTPS address for AdmissionReviews (paths /inject and /inject/rev/<version>).
    #[arg(long, default_value = "0.0.0.0:15017", env = "REVMESH_WEBHOOK_LISTEN")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /metrics and /healthz/ready.
    #[arg(long, default_value = "0.0.0.0:15014", env = "REVMESH_WEBHOOK_METRICS_LISTEN")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain served to the API server; re-read when it changes.
    #[arg(long, env = "REVMESH_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long, env = "REVMESH_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// rollouts.yml (a mounted ConfigMap); re-read when it changes.
    #[arg(long, env = "REVMESH_ROLLOUTS")]
    pub rollouts: PathBuf,
    /// How often the mounted files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = revmesh_duration::parse)]
    pub reload_interval: Duration,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// How long a client may take for the TLS handshake, for a request's
    /// headers (from their first byte) and for its body; slower ones are cut off.
    #[arg(long, default_value = "10s", value_parser = revmesh_duration::parse)]
    pub read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    #[arg(long, default_value = "60s", value_parser = revmesh_duration::parse)]
    pub idle_timeout: Duration,
    /// Client connections open at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// AdmissionReviews read and answered at once (bodies up to 3 MiB each);
    /// more wait up to --read-timeout for a turn, then get 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_reviews: u32,
}

impl Settings {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            read_timeout: self.read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections as usize,
            max_concurrent_reviews: self.max_concurrent_reviews as usize,
        }
    }
}


pub struct AppState {
    pub rollouts: SharedRollouts,
    pub injector: InjectorConfig,
    pub metrics: Arc<Metrics>,
    pub limits: ConnectionLimits,
    /// Turns to read and answer an AdmissionReview ([`ConnectionLimits::max_concurrent_reviews`]).
    reviews: Semaphore,
}

impl AppState {
    pub fn new(rollouts: SharedRollouts, injector: InjectorConfig, metrics: Arc<Metrics>, limits: ConnectionLimits) -> AppState {
        let reviews = Semaphore::new(limits.max_concurrent_reviews.max(1));
        AppState { rollouts, injector, metrics, limits, reviews }
    }
}

/// What one AdmissionReview produced, for the response and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub response: Value,
    pub result: &'static str,
    pub version: String,
    pub reason: String,
}

/// Answers one AdmissionRequest. Pure: no I/O, so it is unit-tested directly.
pub fn admit(request: &AdmissionRequest, namespace_pin: Option<&str>, rollouts: &Rollouts, cfg: &InjectorConfig) -> Admitted {
    let is_pod = request.resource.as_ref().is_some_and(|r| r.group.is_empty() && r.resource == "pods");
    let is_create = request.operation == "CREATE" && request.sub_resource.as_deref().unwrap_or("").is_empty();
    let allow_untouched = |reason: &str| Admitted {
        response: admission::allow(&request.uid, None),
        result: "allowed",
        version: String::new(),
        reason: reason.into(),
    };
    if !is_pod || !is_create {
        return allow_untouched("not-a-pod-create");
    }
    let Some(pod) = request.object.as_ref() else {
        return allow_untouched("no-object");
    };
    let namespace = request
        .namespace
        .as_deref()
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default");
    let ns = NamespaceContext { namespace, pin: namespace_pin, disabled: false };
    match inject::decide(pod, ns, None, rollouts, cfg) {
        // Another mesh's pod is let through untouched, with a warning the user
        // sees (kubectl prints admission warnings), since it is not meshed by us.
        Outcome::Skip(skip @ inject::Skip::OtherMesh { .. }) => Admitted {
            response: admission::allow_with_warning(&request.uid, &format!("revmesh: sidecar not injected: {}", skip.explain())),
            result: "skipped",
            version: String::new(),
            reason: skip.metric_label().into(),
        },
        Outcome::Skip(skip) => Admitted {
            response: admission::allow(&request.uid, None),
            result: "skipped",
            version: String::new(),
            reason: skip.metric_label().into(),
        },
        Outcome::Deny { message } => Admitted {
            response: admission::deny(&request.uid, &message),
            result: "denied",
            version: String::new(),
            reason: message,
        },
        Outcome::Inject { version, patch, status } => Admitted {
            response: admission::allow(&request.uid, Some(&patch)),
            result: if request.dry_run == Some(true) { "dry-run-injected" } else { "injected" },
            version: version.to_string(),
            reason: status.reason,
        },
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(value: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `/inject` → no namespace pin; `/inject/rev/<version>` → namespace pinned.
fn route(path: &str) -> Option<Option<&str>> {
    match path {
        "/inject" | "/inject/" => Some(None),
        p => p.strip_prefix("/inject/rev/").filter(|v| !v.is_empty() && !v.contains('/')).map(Some),
    }
}

async fn handle(req: Request<Incoming>, state: Arc<AppState>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    if req.method() == Method::GET && path == "/healthz/ready" {
        return text(StatusCode::OK, "ready\n");
    }
    let Some(namespace_pin) = route(&path) else {
        state.metrics.bad_request("not-found");
        return text(StatusCode::NOT_FOUND, format!("no such path {}: AdmissionReviews go to /inject or /inject/rev/<version>\n", echo::quoted(&path)));
    };
    if req.method() != Method::POST {
        state.metrics.bad_request("method");
        return text(StatusCode::METHOD_NOT_ALLOWED, "AdmissionReviews are POSTed\n");
    }
    let json_content = req
        .headers()
        .get(CONTENT_TYPE)
        .is_none_or(|ct| ct.to_str().unwrap_or("").to_ascii_lowercase().starts_with("application/json"));
    if !json_content {
        state.metrics.bad_request("content-type");
        let _ = tokio::time::timeout(state.limits.read_timeout, drain(req.into_body())).await;
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the AdmissionReview as application/json\n");
    }
    // A turn first, so that at most max_concurrent_reviews bodies are in memory.
    let turn = match tokio::time::timeout(state.limits.read_timeout, state.reviews.acquire()).await {
        Ok(Ok(turn)) => turn,
        _ => {
            state.metrics.bad_request("busy");
            return text(StatusCode::SERVICE_UNAVAILABLE, "too many AdmissionReviews at once; retry\n");
        }
    };
    let mut body = req.into_body();
    let collected = match tokio::time::timeout(state.limits.read_timeout, Limited::new(&mut body, MAX_BODY_BYTES).collect()).await {
        Ok(collected) => collected,
        Err(_) => {
            state.metrics.bad_request("body-timeout");
            let mut r = text(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {:?}\n", state.limits.read_timeout));
            r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            state.metrics.bad_request(if too_large { "too-large" } else { "body-read" });
            // The turn is for bodies that will be answered; a refused one gives it back.
            drop(turn);
            return if too_large {
                let _ = tokio::time::timeout(state.limits.read_timeout, drain(body)).await;
                text(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {MAX_BODY_BYTES} bytes\n"))
            } else {
                text(StatusCode::BAD_REQUEST, format!("reading the body failed: {e}\n"))
            };
        }
    };
    let request = match admission::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.bad_request("malformed");
            return text(StatusCode::BAD_REQUEST, format!("not an AdmissionReview v1: {e}\n"));
        }
    };
    let namespace_pin = namespace_pin.map(str::to_owned);
    let pod_name = request
        .object
        .as_ref()
        .and_then(|o| o.pointer("/metadata/name").or_else(|| o.pointer("/metadata/generateName")))
        .and_then(Value::as_str)
        .unwrap_or("");
    // Names as the client sent them, before the API server's validation: cut.
    let span = tracing::info_span!(
        "admission",
        uid = %echo::cut(&request.uid, 64),
        namespace = %echo::cut(request.namespace.as_deref().unwrap_or(""), 253),
        pod = %echo::cut(pod_name, 253)
    );
    let rollouts = match state.rollouts.read() {
        Ok(g) => Arc::clone(&g),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    };
    let admitted = span.in_scope(|| {
        let a = admit(&request, namespace_pin.as_deref(), &rollouts, &state.injector);
        match a.result {
            "denied" => tracing::warn!(reason = %a.reason, "pod refused"),
            "injected" | "dry-run-injected" => tracing::debug!(version = %a.version, reason = %a.reason, "sidecar injected"),
            _ => tracing::debug!(result = a.result, reason = %a.reason, "pod left alone"),
        }
        a
    });
    // Denial messages are free text; keep the label's cardinality bounded.
    let reason_label = if admitted.result == "denied" { "invalid" } else { admitted.reason.as_str() };
    state.metrics.admission(admitted.result, &admitted.version, reason_label);
    state.metrics.latency.observe(started.elapsed().as_secs_f64());
    json_response(&admitted.response)
}

/// Reads and drops what is left of a refused body (up to a bound), so that the
/// client, still sending, sees the error status instead of a reset connection.
async fn drain(mut body: Incoming) {
    const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
    let mut seen = 0usize;
    while seen < DRAIN_LIMIT {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

async fn handle_metrics(req: Request<Incoming>, state: Arc<AppState>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
            r
        }
        "/healthz/ready" => text(StatusCode::OK, "ready\n"),
        // The rollouts in force, so `meshctl upgrade restart` can wait until a
        // synced change is loaded before it creates pods.
        "/debug/rollouts" => {
            let current = match state.rollouts.read() {
                Ok(g) => Arc::clone(&g),
                Err(poisoned) => Arc::clone(&poisoned.into_inner()),
            };
            let mut r = text(StatusCode::OK, serde_json::to_string(&*current).unwrap_or_default());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz/ready or /debug/rollouts\n"),
    }
}

/// Serves AdmissionReviews over TLS until `shutdown` resolves, within
/// `state.limits`: a connection cap, and read and idle timeouts per connection.
pub async fn serve_https(listener: TcpListener, tls: Arc<rustls::ServerConfig>, state: Arc<AppState>, shutdown: impl std::future::Future<Output = ()>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(state.limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Closed at once: the kernel's backlog would otherwise hold the
            // client waiting with no answer. Counted, not logged one by one
            // (a flood would flood the log too).
            state.metrics.connection_closed("over-capacity");
            tracing::debug!(%peer, max = state.limits.max_connections, "connection refused: at the connection cap");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(tcp, acceptor.clone(), Arc::clone(&state), slot).instrument(tracing::debug_span!("connection", %peer)));
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> OpenConnection {
        metrics.open_connections.inc();
        OpenConnection(Arc::clone(metrics))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// One client connection: TLS handshake, then HTTP/1.1 or HTTP/2 (ALPN) with
/// a watchdog that closes it when the client is too slow or idle too long.
async fn serve_connection(tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor, state: Arc<AppState>, _slot: OwnedSemaphorePermit) {
    let _open = OpenConnection::new(&state.metrics);
    let limits = state.limits;
    let stream = match tokio::time::timeout(limits.read_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.connection_closed("read-timeout");
            tracing::debug!("TLS handshake not done within the read timeout");
            return;
        }
    };
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    serve_watched(stream, http2, limits, Some(&state.metrics), {
        let state = Arc::clone(&state);
        move |req| handle(req, Arc::clone(&state))
    })
    .await;
}

/// Serves HTTP on one connection with a watchdog: closed when the client is
/// too slow with a request's headers or idle too long ([`Activity::verdict`]).
/// Closes are counted in `metrics` when given (the AdmissionReview port).
async fn serve_watched<I, H, F>(io: I, http2: bool, limits: ConnectionLimits, metrics: Option<&Metrics>, handler: H)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Tracked::new(io, Arc::clone(&activity)));
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req| {
            let in_flight = activity.request_started();
            let answer = handler(req);
            async move {
                let response = answer.await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        let check_at = match activity.verdict(Instant::now(), &limits, http2) {
            Verdict::Open { check_at } => check_at,
            Verdict::Close(reason) => {
                if let Some(m) = metrics {
                    m.connection_closed(reason);
                }
                tracing::debug!(reason, "closing the connection");
                if http2 {
                    // GOAWAY, so the client opens a new connection for its next request.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                }
                return;
            }
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(check_at.into()) => {}
            _ = activity.changed() => {}
        }
    }
}

/// Connections the metrics port keeps open at once (scrapers and probes).
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// Serves /metrics, /healthz/ready and /debug/rollouts over plain HTTP/1.1,
/// with the same read and idle timeouts as the HTTPS port and a cap of its
/// own: the two ports share the process's file descriptors.
pub async fn serve_metrics(listener: TcpListener, state: Arc<AppState>) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the metrics port");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: at the connection cap");
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let limits = state.limits;
            serve_watched(tcp, false, limits, None, move |req| handle_metrics(req, Arc::clone(&state))).await;
        });
    }
}

/// Loads the files, binds the ports and serves until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let (rollouts, rollouts_bytes) = reload::load_rollouts(&settings.rollouts)?;
    let pair = tls::read_pair(&settings.tls_cert, &settings.tls_key)?;
    let cert = tls::load_pair(&pair.0, &pair.1, &settings.tls_cert, &settings.tls_key)?;
    let resolver = Arc::new(ReloadingCert::new(cert));
    let tls_config = tls::server_config(Arc::clone(&resolver))?;
    let metrics = Arc::new(Metrics::default());
    metrics.file_reloaded("rollouts", true);
    metrics.file_reloaded("tls", true);
    let shared: SharedRollouts = Arc::new(RwLock::new(Arc::new(rollouts)));
    let state = Arc::new(AppState::new(Arc::clone(&shared), InjectorConfig::default(), Arc::clone(&metrics), settings.limits()));

    let https = TcpListener::bind(settings.listen).await.map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.listen))?;
    let metrics_listener = TcpListener::bind(settings.metrics_listen).await.map_err(|e| anyhow::anyhow!("binding {}: {e}", settings.metrics_listen))?;
    tracing::info!(
        listen = %https.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        rollouts = %settings.rollouts.display(),
        "webhook serving"
    );
    tokio::spawn(reload::watch_rollouts(settings.rollouts.clone(), rollouts_bytes, shared, Arc::clone(&metrics), settings.reload_interval));
    tokio::spawn(reload::watch_tls(settings.tls_cert.clone(), settings.tls_key.clone(), pair, resolver, Arc::clone(&metrics), settings.reload_interval));
    tokio::spawn(serve_metrics(metrics_listener, Arc::clone(&state)));
    serve_https(https, tls_config, state, shutdown_signal()).await;
    tracing::info!("webhook stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
