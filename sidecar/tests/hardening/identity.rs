//! Issue 17, items 3 and 4: the peer-identity header reaches the app only
//! from a verified certificate (here: never, as every client is plaintext),
//! on every PERMISSIVE path; a port declared HTTP stays HTTP however slowly
//! its client speaks, inbound and outbound.

use crate::common::{outbound_on, read_for, responses, routes, status, Recorder};
use sidecar::config::{DeclaredProtocol, ProxyConfig};
use sidecar::inbound::{Inbound, Mode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IDENTITY: &str = "x-revmesh-peer-identity";
/// Longer than the sniffing time (100 ms): the client's first bytes come late.
const SLOW: Duration = Duration::from_millis(350);

/// A PERMISSIVE inbound listener in front of `app`, with `app`'s port
/// declared as `declared` (None: undeclared, so sniffed).
async fn inbound(app: SocketAddr, declared: Option<DeclaredProtocol>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut config = ProxyConfig::default();
    if let Some(protocol) = declared {
        config.inbound_ports.insert(app.port(), protocol);
    }
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    std::mem::forget(tx);
    let mut proxy = Inbound::new(None, Mode::Permissive, Arc::new(sidecar::metrics::Metrics::default()), "app".into(), "test".into(), Arc::new(sidecar::proxy::Drain::default()));
    proxy.fixed_target = Some(app);
    proxy.config = Some(rx);
    tokio::spawn(Arc::new(proxy).serve(listener));
    addr
}

/// Forged identity fields in every spelling an app might read.
const FORGED: &str = "x-revmesh-peer-identity: spiffe://forged/ns/a/sa/admin\r\nX-Revmesh-Peer-Identity: spiffe://forged/2\r\nx_revmesh_peer_identity: spiffe://forged/3\r\n";

fn forged_request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: app\r\n{FORGED}\r\n")
}

/// Sends `parts` with `pause` before the first, and reads until `expected`
/// responses have come (or a second of silence).
async fn send_slowly(addr: SocketAddr, pause: Duration, parts: &[&[u8]], expected: usize) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(pause).await;
    for part in parts {
        tcp.write_all(part).await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Expecting no HTTP response: whatever comes within a second.
    let mut got = if expected == 0 { read_for(&mut tcp, Duration::from_secs(1)).await } else { Vec::new() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while responses(&got) < expected && tokio::time::Instant::now() < deadline {
        let more = read_for(&mut tcp, Duration::from_secs(1)).await;
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_path_lets_a_client_forge_the_peer_identity() {
    let app = Recorder::start().await;
    let chunked_with_trailer = format!("POST /trailer HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: {IDENTITY}\r\n{FORGED}\r\n5\r\nhello\r\n0\r\n{IDENTITY}: spiffe://forged/trailer\r\n\r\n");
    let pipelined = [forged_request("GET", "/one"), forged_request("POST", "/two").replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n"), forged_request("GET", "/three")].concat();
    let cases: Vec<(&str, Vec<Vec<u8>>, usize)> = vec![
        ("pipelined requests", vec![pipelined.into_bytes()], 3),
        ("a request in small pieces", forged_request("GET", "/pieces").into_bytes().chunks(7).map(<[u8]>::to_vec).collect(), 1),
        ("an extension method", vec![forged_request("PURGE", "/ext").into_bytes()], 1),
        ("a lowercase method", vec![forged_request("get", "/lower").into_bytes()], 1),
        ("leading empty lines", vec![format!("\r\n\r\n{}", forged_request("GET", "/leading")).into_bytes()], 1),
        ("a forged trailer", vec![chunked_with_trailer.into_bytes()], 1),
    ];
    for declared in [Some(DeclaredProtocol::Http), None] {
        let proxy = inbound(app.addr, declared).await;
        for pause in [Duration::ZERO, SLOW] {
            for (name, parts, expected) in &cases {
                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                let got = send_slowly(proxy, pause, &parts, *expected).await;
                let seen = app.take();
                let context = format!("{name}, port declared {declared:?}, first bytes after {pause:?}: client got {:?}, app got {seen:#?}", String::from_utf8_lossy(&got));
                assert_eq!((responses(&got), status(&got)), (*expected, Some(200)), "{context}");
                assert_eq!(seen.len(), *expected, "{context}");
                assert!(seen.iter().all(|r| !r.has_field_like(IDENTITY)), "{context}");
            }
        }
    }
}

/// An app that echoes bytes, greeting first when `greeting` is set (a
/// server-first protocol, such as SMTP or MySQL).
async fn echo_app(greeting: Option<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    let _ = tcp.write_all(g).await;
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_protocols_still_pass_as_bytes() {
    // A text protocol whose first line is not a request line, on an undeclared port.
    let echo = echo_app(None).await;
    let proxy = inbound(echo, None).await;
    let got = send_slowly(proxy, Duration::ZERO, &[b"SET key value\r\n"], 0).await;
    assert_eq!(got, b"SET key value\r\n");
    // A server-first protocol: the client waits for the greeting.
    let greeter = echo_app(Some(b"220 ready\r\n")).await;
    let proxy = inbound(greeter, None).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(3), tcp.read_exact(&mut greeting)).await.expect("greeting in time").unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    tcp.write_all(b"EHLO client\r\n").await.unwrap();
    let mut echoed = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(3), tcp.read_exact(&mut echoed)).await.expect("echo in time").unwrap();
    assert_eq!(&echoed, b"EHLO client\r\n");
    // A port declared TCP is bytes, whatever they look like.
    let proxy = inbound(echo, Some(DeclaredProtocol::Tcp)).await;
    let request = forged_request("GET", "/");
    let got = send_slowly(proxy, Duration::ZERO, &[request.as_bytes()], 0).await;
    assert_eq!(got, request.as_bytes());
}

/// Item 4: outbound, a destination the control plane declares HTTP keeps its
/// route however late the first bytes come; any method token is HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_is_never_downgraded_on_a_declared_port() {
    let upstream = Recorder::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listener.local_addr().unwrap();
    let mut config = routes(&[("*", vec![upstream.addr])], 0);
    // Not captured, the proxy's destination is its own address: declare it.
    config.http_destinations.insert(own, ());
    let (declared, _) = outbound_on(listener, config).await;
    let request = b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n";
    let got = send_slowly(declared, SLOW, &[&request[..5], &request[5..]], 1).await;
    assert_eq!(status(&got), Some(200), "{:?}", String::from_utf8_lossy(&got));
    let seen = upstream.take();
    assert_eq!((seen.len(), seen[0].target.as_str(), seen[0].header("host")), (1, "/slow", Some("web")), "routed as HTTP: {seen:?}");

    // Undeclared, an extension method and leading empty lines are HTTP too.
    let (undeclared, _) = crate::common::outbound(routes(&[("*", vec![upstream.addr])], 0)).await;
    let got = send_slowly(undeclared, Duration::ZERO, &[b"\r\nREPORT /ext HTTP/1.1\r\nHost: web\r\n\r\n"], 1).await;
    assert_eq!(status(&got), Some(200), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(upstream.take().iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), ["REPORT"]);
}

/// The framing refusals hold on the inbound plaintext path too, and what
/// is refused never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_plaintext_refuses_what_outbound_refuses() {
    let app = Recorder::start().await;
    let proxy = inbound(app.addr, Some(DeclaredProtocol::Http)).await;
    for (bytes, expected) in [
        (&b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"[..], 404),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", 400),
    ] {
        let got = send_slowly(proxy, Duration::ZERO, &[bytes], 1).await;
        assert_eq!(status(&got), Some(expected), "{:?}: {:?}", String::from_utf8_lossy(bytes), String::from_utf8_lossy(&got));
    }
    assert!(app.take().is_empty(), "nothing refused reached the app");
}

/// A mesh root and a workload's credentials under it (rcgen), as the CA
/// would issue them: the SPIFFE ID as a URI SAN.
fn credentials(root: &(rcgen::Certificate, rcgen::KeyPair), spiffe: &str) -> identity::Credentials {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe).expect("URI"))];
    let cert = params.signed_by(&key, &root.0, &root.1).expect("leaf");
    let now = std::time::SystemTime::now();
    identity::Credentials { chain_pem: cert.pem(), key_pem: key.serialize_pem(), root_pem: root.0.pem(), identity: spiffe.into(), issued_at: now, not_after: now + Duration::from_secs(3600) }
}

fn mesh(root: &(rcgen::Certificate, rcgen::KeyPair), spiffe: &str) -> sidecar::tls::Mesh {
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(credentials(root, spiffe))));
    std::mem::forget(tx);
    sidecar::tls::Mesh::new(&root.0.pem(), "cluster.local", rx).expect("mesh")
}

/// A peer's `revmesh-tcp` tunnel to a port declared HTTP is served as HTTP:
/// the app gets the peer's verified identity, never the one in its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnel_to_a_port_declared_http_carries_only_the_verified_identity() {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let root = (params.self_signed(&key).expect("root"), key);
    let app = Recorder::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_addr = listener.local_addr().expect("address");
    let mut config = ProxyConfig::default();
    config.inbound_ports.insert(app.addr.port(), DeclaredProtocol::Http);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    std::mem::forget(tx);
    let mut server = Inbound::new(Some(mesh(&root, "spiffe://cluster.local/ns/demo/sa/web")), Mode::Strict, Arc::new(sidecar::metrics::Metrics::default()), "web".into(), "test".into(), Arc::new(sidecar::proxy::Drain::default()));
    server.fixed_target = Some(app.addr);
    server.config = Some(rx);
    tokio::spawn(Arc::new(server).serve(listener));

    let client = mesh(&root, "spiffe://cluster.local/ns/demo/sa/app");
    let mut tunnel = client.connect(server_addr, "demo/web", sidecar::tls::ALPN_TCP, Duration::from_secs(2)).await.expect("mTLS to the server proxy");
    tunnel.write_all(forged_request("GET", "/tunnel").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while responses(&got) < 1 {
        match tokio::time::timeout(Duration::from_secs(3), tunnel.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    assert_eq!(status(&got), Some(200), "{:?}", String::from_utf8_lossy(&got));
    let seen = app.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header(IDENTITY), Some("spiffe://cluster.local/ns/demo/sa/app"), "{seen:?}");
    assert_eq!(seen[0].headers.iter().filter(|(n, _)| n.replace('_', "-").eq_ignore_ascii_case(IDENTITY)).count(), 1, "only the verified one: {seen:?}");
}
