//! The proxy's operator ports:
//! * admin (localhost:15000): `GET /config_dump`, `GET /xds`, `GET /server_info`
//!   (version, revision, node id), and
//!   `POST /logging?level=<filter>` to change the log level at runtime;
//! * metrics (15020): `GET /metrics`, and the app's HTTP probes rewritten by
//!   the webhook, `GET /app-health/<container>/<kind>` ([`crate::app_probe`]);
//! * readiness (15021): `GET /healthz/ready`, 200 once the first config is
//!   applied and until SIGTERM.

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::proxy::Drain;
use crate::xds::XdsStatus;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

/// Changes the log filter of the running process.
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Admin,
    Metrics,
    Readiness,
}

#[derive(Clone)]
pub struct Admin {
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    pub xds: Arc<XdsStatus>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    pub set_log_level: SetLogLevel,
    /// With mTLS on, readiness also waits for the first certificate.
    pub mesh: Option<crate::tls::Mesh>,
    pub server_info: ServerInfo,
    /// The app's HTTP probes the kubelet sends here (`/app-health/...`).
    pub app_probes: Arc<crate::app_probe::AppProbes>,
}

/// Who this proxy is, for `GET /server_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `--proxy-version` / `REVMESH_PROXY_VERSION`.
    pub version: String,
    pub revision: String,
    pub node: String,
}

pub fn config_dump(config: &ProxyConfig) -> serde_json::Value {
    let mut clusters: Vec<_> = config
        .clusters
        .values()
        .map(|c| json!({"name": c.name, "http2": c.http2, "lb": format!("{:?}", c.lb), "endpoints": c.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>()}))
        .collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let hosts: Vec<_> = config
        .virtual_hosts
        .iter()
        .map(|v| {
            let routes: Vec<_> = v
                .routes
                .iter()
                .map(|r| json!({"path": format!("{:?}", r.path), "headers": r.headers.iter().map(|h| h.name.clone()).collect::<Vec<_>>(), "clusters": r.clusters, "timeoutMs": r.timeout.map(|t| t.as_millis() as u64), "retries": r.retry.as_ref().map(|p| p.attempts)}))
                .collect();
            json!({"name": v.name, "domains": v.domains, "routes": routes})
        })
        .collect();
    let mut tcp: Vec<_> = config.tcp.iter().map(|(dst, c)| json!({"destination": dst.to_string(), "cluster": c})).collect();
    tcp.sort_by(|a, b| a["destination"].as_str().cmp(&b["destination"].as_str()));
    json!({"clusters": clusters, "virtualHosts": hosts, "tcp": tcp})
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}

impl Admin {
    fn ready(&self) -> bool {
        self.xds.synced.load(Ordering::Relaxed) && !*self.drain.draining.borrow() && !self.drain.terminating.load(Ordering::Acquire) && self.mesh.as_ref().is_none_or(|m| m.has_certificate())
    }

    fn handle(&self, req: &Request<hyper::body::Incoming>, port: Port) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let allowed = match port {
            Port::Admin => true,
            Port::Metrics => path == "/metrics" || path == "/healthz/ready",
            Port::Readiness => path == "/healthz/ready",
        };
        if !allowed {
            return reply(StatusCode::NOT_FOUND, "text/plain", "not served on this port\n".into());
        }
        match (req.method(), path) {
            (&Method::GET, "/config_dump") => reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(&config_dump(&self.config.borrow())).unwrap_or_default()),
            (&Method::GET, "/xds") => {
                let last_nack = self.xds.last_nack.lock().ok().and_then(|n| n.clone());
                let body = json!({
                    "connected": self.xds.connected.load(Ordering::Relaxed),
                    "synced": self.xds.synced.load(Ordering::Relaxed),
                    "acks": self.xds.acks.load(Ordering::Relaxed),
                    "nacks": self.xds.nacks.load(Ordering::Relaxed),
                    "lastNack": last_nack,
                });
                reply(StatusCode::OK, "application/json", body.to_string())
            }
            (&Method::GET, "/server_info") => {
                let info = &self.server_info;
                reply(StatusCode::OK, "application/json", json!({"version": info.version, "revision": info.revision, "node": info.node}).to_string())
            }
            (&Method::POST, "/logging") => {
                let level = req.uri().query().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("level="));
                match level.map(|l| (self.set_log_level)(l)) {
                    Some(Ok(())) => reply(StatusCode::OK, "text/plain", format!("log level is now {}\n", level.unwrap_or_default())),
                    Some(Err(e)) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                    None => reply(StatusCode::BAD_REQUEST, "text/plain", "POST /logging?level=<filter, e.g. debug or sidecar=trace>\n".into()),
                }
            }
            (&Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.encode()),
            (&Method::GET, "/healthz/ready") if self.ready() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            (&Method::GET, "/healthz/ready") => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: no config yet, or draining\n".into()),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "see /config_dump, /xds, /server_info, /logging, /metrics, /healthz/ready\n".into()),
        }
    }

    /// The kubelet's probe of an app container, asked of the app on localhost:
    /// the app's status when it answered, 503 with the reason when it did not.
    async fn app_health(&self, path: &str) -> Response<Full<Bytes>> {
        let Some(probe) = self.app_probes.get(path) else {
            return reply(StatusCode::NOT_FOUND, "text/plain", format!("no app probe is registered for {path}\n"));
        };
        match crate::app_probe::check(probe, std::time::Duration::from_secs(10)).await {
            Ok(code) => reply(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY), "text/plain", format!("app answered {code}\n")),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        }
    }

    /// Serves one of the ports. Only the admin port (on localhost) can change
    /// or dump anything; the pod-facing ports serve metrics and readiness.
    pub async fn serve(self, listener: tokio::net::TcpListener, port: Port) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move {
                        if port == Port::Metrics && req.uri().path().starts_with("/app-health/") {
                            return Ok::<_, std::convert::Infallible>(admin.app_health(req.uri().path()).await);
                        }
                        Ok::<_, std::convert::Infallible>(admin.handle(&req, port))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    }
}
