//! `mesh-app load`: a steady request stream spread over targets, with every
//! outcome recorded ([`crate::stats`]) and served as JSON on `/stats`.
//!
//! Each target gets `rate / targets` requests per second on a fixed
//! schedule (open loop: a slow answer does not delay the next request).
//! Requests reuse keep-alive connections; a connection either side closed
//! is replaced by a new one. A request a reused connection closed before it
//! was written is sent again on a new connection, as HTTP clients do, and
//! counted as an unsent retry rather than a failure: nothing reached the server.

use crate::client::{exchange, Attempt, Connection, RequestError, Target};
use crate::serve::Echo;
use crate::stats::{Cause, LoadStats, Outcome, Report, Served};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("--rate {0} is not a positive number of requests per second")]
    Rate(f64),
    #[error("no --target given; name at least one URL")]
    NoTargets,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub targets: Vec<Target>,
    /// Requests per second over all targets.
    pub rate: f64,
    /// None: until stopped.
    pub duration: Option<Duration>,
    /// Bound on one request: connect, send, and the whole answer.
    pub timeout: Duration,
    /// Length of the windows latency and counts are also kept per.
    pub window: Duration,
    /// Require mesh-app's JSON echoing the requested path in 2xx answers.
    pub check_body: bool,
}

impl LoadOptions {
    /// The time between two requests to one target.
    pub fn interval_per_target(&self) -> Result<Duration, LoadError> {
        if self.targets.is_empty() {
            return Err(LoadError::NoTargets);
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(LoadError::Rate(self.rate));
        }
        Ok(Duration::from_secs_f64(self.targets.len() as f64 / self.rate).max(Duration::from_micros(1)))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The stats and the clock they are kept against, shared by the request
/// tasks and the stats server.
pub struct Shared {
    stats: Mutex<LoadStats>,
    epoch: Mutex<(Instant, SystemTime)>,
    running: AtomicBool,
    rate: f64,
}

/// What GET /stats answers.
#[derive(Debug, Clone, Serialize)]
pub struct StatsDocument {
    /// False once the stream has ended (duration reached or stopped).
    pub running: bool,
    pub rate_per_s: f64,
    /// Since the start or the last /reset.
    pub elapsed_s: f64,
    pub since_unix_ms: u64,
    #[serde(flatten)]
    pub report: Report,
}

impl Shared {
    pub fn new(targets: &[Target], rate: f64, window: Duration) -> Shared {
        let urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
        Shared { stats: Mutex::new(LoadStats::new(&urls, window)), epoch: Mutex::new((Instant::now(), SystemTime::now())), running: AtomicBool::new(false), rate }
    }

    fn with_stats<T>(&self, f: impl FnOnce(&mut LoadStats) -> T) -> T {
        // A panicking request task cannot leave the stats half-written in a
        // way that matters more than losing them: keep serving them.
        let mut guard = self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    fn since_epoch(&self) -> Duration {
        self.epoch.lock().map(|e| e.0.elapsed()).unwrap_or_default()
    }

    fn record(&self, target: usize, outcome: Outcome) {
        let at = self.since_epoch();
        let now = unix_ms(SystemTime::now());
        self.with_stats(|s| s.record(target, at, now, outcome));
    }

    pub fn reset(&self) {
        // Hold the stats lock across both, so no outcome lands between them.
        self.with_stats(|s| {
            s.reset();
            if let Ok(mut e) = self.epoch.lock() {
                *e = (Instant::now(), SystemTime::now());
            }
        });
    }

    pub fn report(&self) -> Report {
        self.with_stats(|s| s.report())
    }

    pub fn document(&self) -> StatsDocument {
        let since = self.epoch.lock().map(|e| unix_ms(e.1)).unwrap_or(0);
        StatsDocument { running: self.running.load(Ordering::Relaxed), rate_per_s: self.rate, elapsed_s: self.since_epoch().as_secs_f64(), since_unix_ms: since, report: self.report() }
    }
}

/// Judges a complete answer: any non-2xx is a failure, and with the body
/// check a 2xx must be mesh-app's JSON echoing the requested path.
pub fn judge(target: &Target, status: StatusCode, body: &[u8], check_body: bool) -> Result<Served, RequestError> {
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
    if !status.is_success() {
        return Err(RequestError { cause: Cause::Status(status.as_u16()), detail: format!("{} answered {status}: {}", target.url, snippet()) });
    }
    match serde_json::from_slice::<Echo>(body) {
        Ok(echo) if !check_body || echo.path == target.path => Ok(Served { pod: echo.pod, peer_identity: echo.peer_identity }),
        Ok(echo) => Err(RequestError { cause: Cause::BodyMismatch, detail: format!("{} echoed path {:?}, not {:?}", target.url, echo.path, target.path) }),
        Err(_) if !check_body => Ok(Served::default()),
        Err(e) => Err(RequestError { cause: Cause::BodyMismatch, detail: format!("{} answered {status} with a body that is not mesh-app's JSON ({e}): {}", target.url, snippet()) }),
    }
}

type Pool = Arc<Mutex<Vec<Connection>>>;

fn take_pooled(pool: &Pool) -> Option<Connection> {
    let mut idle = pool.lock().ok()?;
    while let Some(conn) = idle.pop() {
        if conn.reusable() {
            return Some(conn);
        }
    }
    None
}

/// One request: a pooled connection if one is usable, else a new one.
async fn attempt(index: usize, target: &Target, pool: &Pool, shared: &Shared) -> Result<(Connection, bytes::Bytes, StatusCode), RequestError> {
    if let Some(mut conn) = take_pooled(pool) {
        match exchange(&mut conn, target).await {
            Attempt::Answered(a) => return Ok((conn, a.body, a.status)),
            Attempt::NotSent => shared.with_stats(|s| s.unsent_retry(index)),
            Attempt::Failed(e) => return Err(e),
        }
    }
    let mut conn = Connection::open(&target.authority).await?;
    shared.with_stats(|s| s.connection_opened(index));
    match exchange(&mut conn, target).await {
        Attempt::Answered(a) => Ok((conn, a.body, a.status)),
        Attempt::NotSent => Err(RequestError { cause: Cause::Closed, detail: format!("{} closed a new connection before the request was sent", target.authority) }),
        Attempt::Failed(e) => Err(e),
    }
}

async fn one_request(index: usize, target: Arc<Target>, pool: Pool, shared: Arc<Shared>, timeout: Duration, check_body: bool) {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, attempt(index, &target, &pool, &shared)).await;
    let latency = started.elapsed();
    let outcome = match result {
        Err(_) => Outcome::Failed { latency, cause: Cause::Timeout, detail: format!("no complete answer from {} within {timeout:?}", target.url) },
        Ok(Err(e)) => Outcome::Failed { latency, cause: e.cause, detail: e.detail },
        Ok(Ok((conn, body, status))) => {
            let verdict = judge(&target, status, &body, check_body);
            if conn.reusable() {
                if let Ok(mut idle) = pool.lock() {
                    idle.push(conn);
                }
            }
            match verdict {
                Ok(served) => Outcome::Ok { latency, served },
                Err(e) => Outcome::Failed { latency, cause: e.cause, detail: e.detail },
            }
        }
    };
    if let Outcome::Failed { cause, detail, .. } = &outcome {
        tracing::warn!(target = %target.url, %cause, %detail, "request failed");
    }
    shared.record(index, outcome);
}

async fn drive_target(index: usize, target: Arc<Target>, first_at: tokio::time::Instant, interval: Duration, shared: Arc<Shared>, options: Arc<LoadOptions>, mut stop: watch::Receiver<bool>) {
    let pool: Pool = Arc::default();
    let mut in_flight = JoinSet::new();
    let mut ticker = tokio::time::interval_at(first_at, interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                in_flight.spawn(one_request(index, Arc::clone(&target), Arc::clone(&pool), Arc::clone(&shared), options.timeout, options.check_body));
            }
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
        }
        while in_flight.try_join_next().is_some() {}
    }
    // Requests already sent finish (each is bounded by the timeout).
    while in_flight.join_next().await.is_some() {}
}

/// How the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    DurationReached,
    Stopped,
}

/// Sends the stream until the duration is reached or `stop` completes,
/// then waits for the requests in flight.
pub async fn run(options: LoadOptions, shared: Arc<Shared>, stop: impl Future<Output = ()>) -> Result<Ended, LoadError> {
    let interval = options.interval_per_target()?;
    let spacing = Duration::from_secs_f64(1.0 / options.rate);
    let options = Arc::new(options);
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = tokio::time::Instant::now();
    shared.running.store(true, Ordering::Relaxed);
    let mut drivers = JoinSet::new();
    for (index, target) in options.targets.iter().enumerate() {
        // Targets take turns, so the total stream is even rather than bursty.
        let first_at = start + (spacing * index as u32).min(interval);
        drivers.spawn(drive_target(index, Arc::new(target.clone()), first_at, interval, Arc::clone(&shared), Arc::clone(&options), stop_rx.clone()));
    }
    tracing::info!(targets = options.targets.len(), rate = options.rate, ?interval, duration = ?options.duration, "load started");
    let ended = match options.duration {
        Some(d) => tokio::select! {
            _ = tokio::time::sleep(d) => Ended::DurationReached,
            _ = stop => Ended::Stopped,
        },
        None => {
            stop.await;
            Ended::Stopped
        }
    };
    let _ = stop_tx.send(true);
    while drivers.join_next().await.is_some() {}
    shared.running.store(false, Ordering::Relaxed);
    let (ok, failed) = shared.with_stats(|s| (s.ok(), s.failed()));
    tracing::info!(?ended, ok, failed, "load ended");
    Ok(ended)
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn stats_answer<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => json_response(StatusCode::OK, serde_json::to_string_pretty(&shared.document()).unwrap_or_default()),
        (&Method::GET | &Method::POST, "/reset") => {
            shared.reset();
            json_response(StatusCode::OK, "{\"reset\":true}\n".into())
        }
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, "{\"ok\":true}\n".into()),
        _ => json_response(StatusCode::NOT_FOUND, "{\"error\":\"try GET /stats or POST /reset\"}\n".into()),
    }
}

/// Serves `/stats`, `/reset` and `/healthz` until the task is dropped.
pub async fn serve_stats(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "stats port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = stats_answer(&shared, &req);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::parse("http://server.apps:8080/anything").unwrap()
    }

    #[test]
    fn rate_is_spread_over_targets() {
        let mut o = LoadOptions { targets: vec![target(); 4], rate: 200.0, duration: None, timeout: Duration::from_secs(1), window: Duration::from_secs(1), check_body: true };
        assert_eq!(o.interval_per_target(), Ok(Duration::from_millis(20)));
        o.rate = 0.0;
        assert_eq!(o.interval_per_target(), Err(LoadError::Rate(0.0)));
        o.rate = f64::NAN;
        assert!(o.interval_per_target().is_err());
        o.targets.clear();
        o.rate = 1.0;
        assert_eq!(o.interval_per_target(), Err(LoadError::NoTargets));
    }

    #[test]
    fn answers_are_judged_by_status_and_body() {
        let t = target();
        let echo = br#"{"name":"s","pod":"s-1","namespace":"apps","peer_identity":"spiffe://cluster.local/ns/apps/sa/load","path":"/anything"}"#;
        assert_eq!(judge(&t, StatusCode::OK, echo, true), Ok(Served { pod: Some("s-1".into()), peer_identity: Some("spiffe://cluster.local/ns/apps/sa/load".into()) }));
        assert_eq!(judge(&t, StatusCode::SERVICE_UNAVAILABLE, b"upstream connect error", true).unwrap_err().cause, Cause::Status(503));
        let wrong_path = br#"{"name":"s","pod":null,"namespace":null,"peer_identity":null,"path":"/other"}"#;
        assert_eq!(judge(&t, StatusCode::OK, wrong_path, true).unwrap_err().cause, Cause::BodyMismatch);
        assert_eq!(judge(&t, StatusCode::OK, b"<html>", true).unwrap_err().cause, Cause::BodyMismatch);
        // Without the check, any 2xx is a success.
        assert_eq!(judge(&t, StatusCode::NO_CONTENT, b"", false), Ok(Served::default()));
        assert!(judge(&t, StatusCode::OK, wrong_path, false).is_ok());
    }
}
