//! The app's HTTP probes, forwarded by the proxy (like Istio's app prober).
//!
//! The webhook points the kubelet's HTTP probes of app containers at the
//! metrics port (`/app-health/<container>/<kind>`, see `webhook::inject`) and
//! gives the proxy the originals in `REVMESH_APP_PROBES`: without that, a
//! STRICT proxy would refuse the kubelet's plaintext probe, and a PERMISSIVE
//! one would let anybody reach the app's health port. The proxy asks the app
//! on localhost, which the capture rules leave alone for the proxy's uid.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One original probe: where on localhost and what to send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AppProbe {
    pub port: u16,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub headers: Vec<ProbeHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

fn root() -> String {
    "/".into()
}

/// Health path (`/app-health/app/readyz`) → the app's probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    #[error("REVMESH_APP_PROBES is not a JSON object of health path to {{port, path, headers}}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("REVMESH_APP_PROBES: {path:?} is not an /app-health/ path")]
    Path { path: String },
    #[error("REVMESH_APP_PROBES: the probe of {path:?} has a path or header that cannot be sent in a request head (it must be printable, without CR or LF)")]
    Unsafe { path: String },
}

impl AppProbes {
    /// Reads the webhook's `REVMESH_APP_PROBES` value (empty: no probes).
    pub fn parse(text: &str) -> Result<AppProbes, ProbesError> {
        if text.trim().is_empty() {
            return Ok(AppProbes::default());
        }
        let map: BTreeMap<String, AppProbe> = serde_json::from_str(text)?;
        for (path, probe) in &map {
            if !path.starts_with("/app-health/") {
                return Err(ProbesError::Path { path: path.clone() });
            }
            let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b));
            let header_ok = |h: &ProbeHeader| printable(&h.name) && h.value.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
            if !probe.path.starts_with('/') || !printable(&probe.path) || !probe.headers.iter().all(header_ok) {
                return Err(ProbesError::Unsafe { path: path.clone() });
            }
        }
        Ok(AppProbes(map))
    }

    pub fn get(&self, health_path: &str) -> Option<&AppProbe> {
        self.0.get(health_path)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The request head the proxy sends to the app for `probe`.
pub fn request_head(probe: &AppProbe) -> String {
    let mut head = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: revmesh-app-prober\r\nConnection: close\r\n", probe.path, probe.port);
    for h in &probe.headers {
        // A Host header given in the probe replaces ours, as the kubelet does.
        if h.name.eq_ignore_ascii_case("host") {
            head = head.replacen(&format!("Host: 127.0.0.1:{}\r\n", probe.port), "", 1);
        }
        head.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    head.push_str("\r\n");
    head
}

/// The status code in an HTTP/1.x status line, if `head` starts with one.
pub fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let mut parts = line.split(|b| *b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.trim().parse().ok()
}

/// Asks the app; the kubelet's rule: 200-399 is healthy. Any failure to
/// connect or answer within `timeout` is unhealthy, with the reason.
pub async fn check(probe: &AppProbe, timeout: Duration) -> Result<u16, String> {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", probe.port)).await.map_err(|e| format!("connecting to the app on port {}: {e}", probe.port))?;
        tcp.write_all(request_head(probe).as_bytes()).await.map_err(|e| format!("sending the probe: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = tcp.read(&mut buf).await.map_err(|e| format!("reading the app's answer: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        status_of(&head).ok_or_else(|| "the app did not answer with an HTTP status line".to_string())
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("the app did not answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_webhooks_value_and_refuses_what_cannot_be_sent() {
        let probes = AppProbes::parse(r#"{"/app-health/app/readyz": {"port": 8080, "path": "/healthz", "headers": [{"name": "X-A", "value": "b c"}]}}"#).expect("valid");
        let p = probes.get("/app-health/app/readyz").expect("probe");
        assert_eq!((p.port, p.path.as_str(), p.headers.len()), (8080, "/healthz", 1));
        assert!(AppProbes::parse("").expect("empty").is_empty());
        assert!(matches!(AppProbes::parse(r#"{"/metrics": {"port": 1}}"#), Err(ProbesError::Path { .. })));
        assert!(matches!(AppProbes::parse(r#"{"/app-health/a/readyz": {"port": 1, "path": "/x\r\nEvil: 1"}}"#), Err(ProbesError::Unsafe { .. })));
        assert!(matches!(AppProbes::parse(r#"{"/app-health/a/readyz": {"port": 1, "headers": [{"name": "A", "value": "x\ny"}]}}"#), Err(ProbesError::Unsafe { .. })));
        assert!(matches!(AppProbes::parse("[1]"), Err(ProbesError::Json(_))));
    }

    #[test]
    fn the_request_carries_the_probes_path_and_headers() {
        let probe = AppProbe { port: 8080, path: "/healthz?x=1".into(), headers: vec![ProbeHeader { name: "Host".into(), value: "app.local".into() }] };
        let head = request_head(&probe);
        assert!(head.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"));
        assert!(head.contains("Host: app.local\r\n") && !head.contains("127.0.0.1:8080"), "{head}");
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"SSH-2.0-x\r\n"), None);
    }

    #[tokio::test]
    async fn asks_the_app_on_localhost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let status = if buf[..n].starts_with(b"GET /ok ") { "200 OK" } else { "500 Internal Server Error" };
                let _ = tcp.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let ok = AppProbe { port, path: "/ok".into(), headers: vec![] };
        assert_eq!(check(&ok, Duration::from_secs(2)).await, Ok(200));
        let bad = AppProbe { port, path: "/bad".into(), headers: vec![] };
        assert_eq!(check(&bad, Duration::from_secs(2)).await, Ok(500));
        let closed = AppProbe { port: 1, path: "/".into(), headers: vec![] };
        assert!(check(&closed, Duration::from_secs(2)).await.is_err());
    }
}
