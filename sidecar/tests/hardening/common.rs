//! Real components the tests share: a recording HTTP/1 server (hyper), a
//! proxy built from a routing table, and a raw client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sidecar::config::{ClusterConfig, PathMatch, ProxyConfig, RouteRule, VirtualHost};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as an upstream or app server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The body as decoded, or why it could not be read whole.
    pub body: Result<Vec<u8>, String>,
    pub trailers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Any header or trailer whose name reads as `name` with `_` for `-`.
    pub fn has_field_like(&self, name: &str) -> bool {
        let same = |n: &str| n.len() == name.len() && n.bytes().zip(name.bytes()).all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'));
        self.headers.iter().chain(&self.trailers).any(|(n, _)| same(n))
    }
}

/// A real HTTP/1 server (hyper) that records every request and answers
/// `200 ok` (keep-alive).
pub struct Recorder {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let (parts, body) = req.into_parts();
                            let (body, trailers) = match body.collect().await {
                                Ok(c) => {
                                    let trailers = c.trailers().map(fields).unwrap_or_default();
                                    (Ok(c.to_bytes().to_vec()), trailers)
                                }
                                Err(e) => (Err(e.to_string()), Vec::new()),
                            };
                            log.lock().unwrap().push(Received { method: parts.method.to_string(), target: parts.uri.to_string(), headers: fields(&parts.headers), body, trailers });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
                });
            }
        });
        Recorder { addr, received }
    }

    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

fn fields(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// A routing table: each (domain, endpoints) pair is a virtual host routing
/// everything to a plaintext HTTP/1 cluster of those endpoints.
pub fn routes(hosts: &[(&str, Vec<SocketAddr>)], retries: u32) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    for (i, (domain, endpoints)) in hosts.iter().enumerate() {
        let name = format!("outbound|80||c{i}.test.svc.cluster.local");
        let cluster = ClusterConfig {
            name: name.clone(),
            http2: false,
            connect_timeout: Duration::from_secs(1),
            lb: Default::default(),
            endpoints: endpoints.clone(),
            mtls: Default::default(),
            balancer: Default::default(),
        };
        config.clusters.insert(name.clone(), Arc::new(cluster));
        let retry = (retries > 0).then(|| sidecar::config::RetryPolicy { attempts: retries, status_codes: vec![], on_5xx: true, on_connect_failure: true, backoff: Duration::from_millis(1) });
        config.virtual_hosts.push(VirtualHost {
            name: format!("vh{i}"),
            domains: vec![domain.to_string()],
            routes: vec![RouteRule { path: PathMatch::Prefix("/".into()), headers: vec![], clusters: vec![(name, 1)], timeout: Some(Duration::from_secs(5)), retry }],
        });
    }
    config
}

/// An outbound proxy (not captured: its destination is its own address)
/// serving `config` on a loopback port.
pub async fn outbound(config: ProxyConfig) -> (SocketAddr, Arc<sidecar::metrics::Metrics>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    outbound_on(listener, config).await
}

pub async fn outbound_on(listener: TcpListener, config: ProxyConfig) -> (SocketAddr, Arc<sidecar::metrics::Metrics>) {
    let addr = listener.local_addr().expect("local address");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    // The sender lives as long as the test: leaked on purpose.
    std::mem::forget(_tx);
    let metrics = Arc::new(sidecar::metrics::Metrics::default());
    let proxy = Arc::new(sidecar::proxy::Outbound::new(rx, Arc::clone(&metrics), false, "test".into(), "test".into(), Arc::new(sidecar::proxy::Drain::default()), None));
    tokio::spawn(proxy.serve(listener));
    (addr, metrics)
}

/// Sends `bytes` on a new connection and reads what comes back until the
/// peer closes, or until `wait` passes without more.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(bytes).await;
    read_for(&mut tcp, wait).await
}

pub async fn read_for(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(wait, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return out,
        }
    }
}

/// The status of the first response in `bytes`; None when there is none.
pub fn status(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|b| *b == b'\n').next()?;
    let code = line.strip_prefix(b"HTTP/1.1 ").or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(code.get(..3)?).ok()?.parse().ok()
}

/// How many responses `bytes` holds (status lines: `HTTP/1.1 ` and three
/// digits; the tests' bodies hold none).
pub fn responses(bytes: &[u8]) -> usize {
    bytes.windows(13).filter(|w| w.starts_with(b"HTTP/1.1 ") && w[9..12].iter().all(u8::is_ascii_digit) && w[12] == b' ').count()
}
