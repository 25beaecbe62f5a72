//! `mesh-app serve`: answers every path with JSON saying which workload
//! answered and whom the mesh says called it. On shutdown it fails its
//! health check, stops accepting, finishes what is in flight, then returns.

use crate::client::PEER_IDENTITY_HEADER;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Longest `?delay_ms=` honoured, so a request cannot pin a connection for long.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The `name` field of every answer.
    pub name: String,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// After the shutdown signal, keep serving this long (with /healthz
    /// failing) before closing the listener, so endpoints can be removed first.
    pub shutdown_delay: Duration,
    /// How long requests in flight may take to finish after the listener closes.
    pub drain_timeout: Duration,
}

/// The body of every answer but /healthz.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Echo {
    pub name: String,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub peer_identity: Option<String>,
    pub path: String,
}

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    pub requests: u64,
    /// Connections still open when the drain timeout ran out.
    pub connections_cut: usize,
}

struct State {
    options: ServeOptions,
    draining: AtomicBool,
    requests: AtomicU64,
}

/// `?status=NNN&delay_ms=N`: lets tests ask for failures and slow answers.
fn query_params(query: Option<&str>) -> (Option<StatusCode>, Duration) {
    let mut status = None;
    let mut delay = Duration::ZERO;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("status", v)) => status = v.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()),
            Some(("delay_ms", v)) => delay = v.parse::<u64>().map(Duration::from_millis).unwrap_or_default().min(MAX_DELAY),
            _ => {}
        }
    }
    (status, delay)
}

/// The answer to one request (pure but for the delay).
fn answer<B>(state: &State, req: &Request<B>) -> (StatusCode, Duration, String) {
    let path = req.uri().path();
    if path == "/healthz" {
        return if state.draining.load(Ordering::Relaxed) { (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO, "draining\n".into()) } else { (StatusCode::OK, Duration::ZERO, "ok\n".into()) };
    }
    let (status, delay) = query_params(req.uri().query());
    let echo = Echo {
        name: state.options.name.clone(),
        pod: state.options.pod.clone(),
        namespace: state.options.namespace.clone(),
        peer_identity: req.headers().get(PEER_IDENTITY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string),
        path: path.to_string(),
    };
    (status.unwrap_or(StatusCode::OK), delay, serde_json::to_string(&echo).unwrap_or_default() + "\n")
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let (status, delay, body) = answer(&state, &req);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let ctype = if req.uri().path() == "/healthz" { "text/plain" } else { "application/json" };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    Ok(response)
}

/// Serves until `shutdown` completes, then drains (see [`ServeOptions`]).
pub async fn serve(listener: TcpListener, options: ServeOptions, shutdown: impl Future<Output = ()>) -> ServeSummary {
    let state = Arc::new(State { options, draining: AtomicBool::new(false), requests: AtomicU64::new(0) });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %local, name = %state.options.name, "serving");

    tokio::pin!(shutdown);
    // Armed when the shutdown signal arrives; until then it never fires.
    let stop_accepting = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(stop_accepting);
    let mut shutting_down = false;
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                state.draining.store(true, Ordering::Relaxed);
                tracing::info!(delay = ?state.options.shutdown_delay, "shutdown requested: health check fails from now on");
                stop_accepting.as_mut().reset(tokio::time::Instant::now() + state.options.shutdown_delay);
            }
            _ = &mut stop_accepting, if shutting_down => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let state = Arc::clone(&state);
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        // The guard wait_for returns must not live across the await below.
                        _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                            // Idle connections close now; busy ones after their answer.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(open = connections.len(), timeout = ?state.options.drain_timeout, "listener closed; finishing requests in flight");
    let drained = tokio::time::timeout(state.options.drain_timeout, async { while connections.join_next().await.is_some() {} }).await;
    let connections_cut = if drained.is_err() { connections.len() } else { 0 };
    connections.abort_all();
    let summary = ServeSummary { requests: state.requests.load(Ordering::Relaxed), connections_cut };
    tracing::info!(requests = summary.requests, connections_cut, "stopped");
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(draining: bool) -> State {
        State {
            options: ServeOptions { name: "server-1".into(), pod: Some("server-1-abc".into()), namespace: Some("apps".into()), shutdown_delay: Duration::ZERO, drain_timeout: Duration::ZERO },
            draining: AtomicBool::new(draining),
            requests: AtomicU64::new(0),
        }
    }

    #[test]
    fn echoes_who_answered_and_who_called() {
        let req = Request::builder().uri("/anything/x?y=1").header(PEER_IDENTITY_HEADER, "spiffe://cluster.local/ns/apps/sa/load").body(()).unwrap();
        let (status, delay, body) = answer(&state(false), &req);
        assert_eq!((status, delay), (StatusCode::OK, Duration::ZERO));
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(
            echo,
            Echo { name: "server-1".into(), pod: Some("server-1-abc".into()), namespace: Some("apps".into()), peer_identity: Some("spiffe://cluster.local/ns/apps/sa/load".into()), path: "/anything/x".into() }
        );
        let (_, _, body) = answer(&state(false), &Request::builder().uri("/").body(()).unwrap());
        assert!(body.contains("\"peer_identity\":null"), "{body}");
    }

    #[test]
    fn health_fails_while_draining() {
        let req = Request::builder().uri("/healthz").body(()).unwrap();
        assert_eq!(answer(&state(false), &req).0, StatusCode::OK);
        assert_eq!(answer(&state(true), &req).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn status_and_delay_on_request() {
        assert_eq!(query_params(Some("status=503&delay_ms=20")), (Some(StatusCode::SERVICE_UNAVAILABLE), Duration::from_millis(20)));
        assert_eq!(query_params(Some("delay_ms=99999999")), (None, MAX_DELAY));
        assert_eq!(query_params(Some("status=abc&other=1")), (None, Duration::ZERO));
        assert_eq!(query_params(None), (None, Duration::ZERO));
    }
}
