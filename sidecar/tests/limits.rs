//! Bounded resources (issue 17, item 5), end to end: the real `sidecar`
//! binary, the real control plane (dir source, plaintext xDS) and nginx, on
//! loopback. Thousands of slowloris and idle client connections are closed
//! by the head read and idle timeouts (and counted), while ordinary requests
//! keep being answered; the proxy's memory comes back down once they are
//! gone; over-limit heads get 431; a full listener closes new connections.
//!
//! The outbound listener is addressed directly (`--capture false`), with the
//! service's name as Host; the inbound listener forwards to nginx
//! (`--inbound-target`), so it serves the plaintext path through hyper.

use kube_harness::{free_port, wait_for, workspace_bin, Process};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "web.demo";

fn need(tool: &str, install: &str) {
    let found = std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()));
    assert!(found, "{tool} is not installed; install it with: {install}");
}

/// nginx (the app), the control plane, and one sidecar run with `flags`.
struct Rig {
    sidecar: Process,
    outbound: SocketAddr,
    inbound: SocketAddr,
    metrics: SocketAddr,
    // Dropped last: the processes above write their logs here.
    _control_plane: Process,
    _nginx: Process,
    _dir: tempfile::TempDir,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(flags: &[&str]) -> Rig {
    need("nginx", "apt-get install nginx");
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let port = |_| free_port().expect("free port");
    let [app, xds, tls, debug, outbound, inbound, admin, metrics, ready] = [0; 9].map(port);

    let conf = work.join("nginx.conf");
    let w = work.display();
    std::fs::write(
        &conf,
        format!(
            "master_process off; daemon off; worker_processes 1; pid {w}/nginx.pid; error_log {w}/nginx-error.log;\n\
             events {{ worker_connections 8192; }}\n\
             http {{ access_log off; keepalive_requests 100000; client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w}; uwsgi_temp_path {w}; scgi_temp_path {w};\n\
             server {{ listen 127.0.0.1:{app}; location / {{ return 200 'ok'; }} }} }}\n"
        ),
    )
    .expect("nginx.conf");
    let mut nginx = Command::new("nginx");
    nginx.args(["-c", &conf.display().to_string()]);
    let nginx = Process::spawn("nginx", nginx, work).expect("nginx");

    let mesh = work.join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh dir");
    // `web` is routed by Host. `declared` makes the outbound listener's own
    // address a service port declared HTTP (as a captured app's service
    // address would be), so that a client's first bytes are waited for
    // rather than taken as a server-first protocol after 100 ms: under a
    // flood on a loaded machine, a client can be that slow to write.
    let service = |name: &str, cluster_ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: {port}, targetPort: {app}}}]\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: demo}}\nsubsets:\n- addresses: [{{ip: 127.0.0.1}}]\n  ports: [{{name: http, port: {app}}}]\n---\n"
        )
    };
    std::fs::write(mesh.join("mesh.yaml"), service("web", "10.96.0.10", 80) + &service("declared", "127.0.0.1", outbound)).expect("mesh manifests");
    let control_plane_bin = workspace_bin("control-plane").expect("the control-plane binary (cargo build -p control-plane)");
    let mut cp = Command::new(control_plane_bin);
    let addr = |p: u16| loopback(p).to_string();
    cp.args(["--revision", "limits", "--source", &format!("dir:{}", mesh.display())]);
    cp.args(["--xds-listen", &addr(xds), "--tls-listen", &addr(tls), "--debug-listen", &addr(debug)]);
    let control_plane = Process::spawn("control-plane", cp, work).expect("control plane");

    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_sidecar"));
    sidecar.args(["run", "--revision", "limits", "--control-plane", &addr(xds), "--xds-plaintext", "--capture", "false"]);
    sidecar.args(["--outbound-listen", &addr(outbound), "--inbound-listen", &addr(inbound), "--inbound-target", &addr(app)]);
    sidecar.args(["--admin-listen", &addr(admin), "--metrics-listen", &addr(metrics), "--ready-listen", &addr(ready)]);
    sidecar.args(["--log-level", "warn", "--worker-threads", "1"]).args(flags);
    let sidecar = Process::spawn("sidecar", sidecar, work).expect("sidecar");
    let rig = Rig { sidecar, outbound: loopback(outbound), inbound: loopback(inbound), metrics: loopback(metrics), _control_plane: control_plane, _nginx: nginx, _dir: dir };
    let get = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    wait_for("the sidecar to route web.demo to nginx", Duration::from_secs(30), || Ok(blocking_exchange(rig.outbound, &get).filter(|answer| status(answer) == Some(200)).map(|_| ())))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.sidecar.log_tail(30)));
    rig
}

/// One request on a fresh connection, read to the end (blocking; for set-up).
fn blocking_exchange(addr: SocketAddr, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// One request on a fresh connection, read until the proxy closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut tcp, &mut answer)).await.map_err(|_| std::io::Error::other("no end within 20 s"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Reads until EOF or a reset (what was read before a reset is kept).
async fn read_until_closed(tcp: &mut TcpStream, into: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
        into.extend_from_slice(&buf[..n]);
    }
}

fn status(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn ordinary_request(addr: SocketAddr) -> Option<u16> {
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes()).await.ok().and_then(|a| status(&a))
}

/// The value of a `revmesh_proxy_downstream_*` metric of one listener.
fn metric(rig: &Rig, name: &str, listener: &str) -> i64 {
    let text = blocking_exchange(rig.metrics, "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").expect("metrics");
    let series = format!("{name}{{listener=\"{listener}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {series}in\n{text}"))
}

/// How many files (sockets, mostly) the sidecar has open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The sidecar's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Keeps sending ordinary requests until `stop`, and returns how many got
/// each answer (0: none).
async fn ordinary_traffic(addr: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> std::collections::BTreeMap<u16, u32> {
    let mut seen = std::collections::BTreeMap::new();
    while !*stop.borrow() {
        *seen.entry(ordinary_request(addr).await.unwrap_or(0)).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// Samples the sidecar's RSS until `stop` (or until it is gone); the highest seen.
async fn peak_rss(pid: u32, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut peak = 0;
    while !*stop.borrow() && Path::new(&format!("/proc/{pid}/status")).exists() {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// A slowloris client: the request line and Host at once, then one more
/// header line every 500 ms, never the end of the head. Returns the answer
/// it got before the proxy closed, and after how long.
async fn slowloris(addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let Ok(mut tcp) = TcpStream::connect(addr).await else { return (String::from("connect failed"), started.elapsed()) };
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes()).await;
    let mut line = 0;
    // Bounded: the proxy is expected to close it after 2 s.
    while started.elapsed() < Duration::from_secs(60) {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                line += 1;
                let _ = tcp.write_all(format!("X-Slow-{line}: y\r\n").as_bytes()).await;
            }
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

/// An idle keep-alive client: one request answered, then nothing. Returns
/// the answer's status and how long the connection stayed open after it.
async fn idle_client(addr: SocketAddr) -> (Option<u16>, Duration) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else { return (None, Duration::ZERO) };
    if tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.is_err() {
        return (None, Duration::ZERO);
    }
    // nginx answers `ok`: the answer ends with it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        match tcp.read(&mut buf).await {
            Ok(n @ 1..) => answer.extend_from_slice(&buf[..n]),
            _ => return (None, Duration::ZERO),
        }
    }
    let answered = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), read_until_closed(&mut tcp, &mut rest)).await;
    (status(&String::from_utf8_lossy(&answer)), answered.elapsed())
}

const FLOOD: usize = 2000;
/// How far above its start the proxy's RSS may stay once the floods are
/// gone: a leak check (4,000 connections' worth of anything kept would be
/// far more), not a performance bound.
const RSS_SLACK_KIB: u64 = 24 * 1024;
/// How far above its start the RSS may stay once the pooled upstream
/// connections made during the floods have expired too.
const RSS_SETTLED_KIB: u64 = 8 * 1024;

/// Starts `FLOOD` clients, 100 every 25 ms (4,000 a second): all of them are
/// open at once, and each sends its first bytes well within the 100 ms in
/// which the proxy tells HTTP from protocols where the server speaks first.
async fn flood<F, Fut>(client: F) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut tasks = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tasks.push(tokio::spawn(client()));
    }
    tasks
}

/// What one round of floods measured.
struct Round {
    peak: u64,
    after: u64,
}

/// 2,000 slowloris clients, then 2,000 idle keep-alive clients, with
/// ordinary requests throughout; checks what the proxy did with each, and
/// measures its RSS at the peak and once they are all gone.
async fn flood_round(rig: &Rig, round: i64) -> Round {
    let pid = rig.sidecar.pid();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(ordinary_traffic(rig.outbound, stop.clone()));
    let peak = tokio::spawn(peak_rss(pid, stop.clone()));
    let clients = flood(|| slowloris(rig.outbound)).await;
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    let mut longest = Duration::ZERO;
    for client in clients {
        let (answer, open_for) = client.await.expect("slowloris task");
        longest = longest.max(open_for);
        *answers.entry(answer.lines().next().unwrap_or("(closed without an answer)").to_string()).or_default() += 1;
    }
    assert_eq!(answers.get("HTTP/1.1 408 Request Timeout"), Some(&FLOOD), "every slow head gets a 408: {answers:?}\n{}", rig.sidecar.log_tail(20));
    assert_eq!(metric(rig, "revmesh_proxy_downstream_rq_header_timeout_total", "outbound"), round * FLOOD as i64);

    let clients = flood(|| idle_client(rig.outbound)).await;
    let mut closed_after = Vec::new();
    for client in clients {
        let (code, open_for) = client.await.expect("idle task");
        assert_eq!(code, Some(200), "the idle clients' request is answered");
        closed_after.push(open_for);
    }
    let _ = stop_tx.send(true);
    let served = traffic.await.expect("ordinary traffic");
    let peak = peak.await.expect("rss sampler");
    closed_after.sort();
    let (first, last) = (closed_after[0], closed_after[FLOOD - 1]);
    assert!(first >= Duration::from_millis(2900), "an idle connection closed after {first:?}, before the 3 s idle timeout");
    assert!(last < Duration::from_secs(60), "an idle connection was still open after {last:?}");
    assert_eq!(metric(rig, "revmesh_proxy_downstream_cx_idle_timeout_total", "outbound"), round * FLOOD as i64);

    // Ordinary requests were answered all along, and only with 200.
    assert_eq!(served.keys().copied().collect::<Vec<_>>(), [200], "ordinary requests during the floods: {served:?}");
    assert!(served[&200] >= 10, "ordinary requests during the floods: {served:?}");

    wait_for("the outbound listener to hold no connection", Duration::from_secs(30), || Ok((metric(rig, "revmesh_proxy_downstream_cx_active", "outbound") == 0).then_some(())))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Freed pages go back as the proxy keeps working (as a proxy in
    // service does): a few ordinary requests, then the measure.
    for _ in 0..20 {
        assert_eq!(ordinary_request(rig.outbound).await, Some(200));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    eprintln!("round {round}: RSS {peak} KiB at the peak of {FLOOD} slowloris then {FLOOD} idle connections, {after} KiB after with {} open files; slowloris held up to {longest:?}; idle connections closed {first:?}..{last:?} after their answer; ordinary requests {served:?}", open_files(pid));
    Round { peak, after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_floods_are_closed_counted_and_let_go_while_requests_are_served() {
    let rig = start(&["--request-headers-timeout", "2s", "--idle-timeout", "3s"]);
    // Warm up (the proxy's pools and tables), then take the baseline.
    for _ in 0..50 {
        assert_eq!(ordinary_request(rig.outbound).await, Some(200));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(rig.sidecar.pid());
    let first = flood_round(&rig, 1).await;
    let second = flood_round(&rig, 2).await;
    // The upstream pool keeps up to 256 idle connections to nginx, made
    // during the idle flood, for 30 s: past that, a request clears them.
    let files_before_expiry = open_files(rig.sidecar.pid());
    tokio::time::sleep(Duration::from_secs(31)).await;
    for _ in 0..20 {
        assert_eq!(ordinary_request(rig.outbound).await, Some(200));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = rss_kib(rig.sidecar.pid());
    eprintln!(
        "sidecar RSS: {baseline} KiB before; {} then {} KiB at the peaks; {} then {} KiB after; {settled} KiB once the upstream pool's idle connections expired ({files_before_expiry} then {} open files)",
        first.peak, second.peak, first.after, second.after, open_files(rig.sidecar.pid())
    );
    // Leak checks, not performance bounds. Right after the floods, what
    // stays is well below their peak (the allocator keeps some pages, and
    // the pooled upstream connections pin others); once those have
    // expired, the proxy is back near where it started, after two rounds
    // of 4,000 connections: nothing is kept per connection.
    for (round, r) in [(1, &first), (2, &second)] {
        assert!(r.after <= baseline + RSS_SLACK_KIB, "round {round}: RSS {} KiB after the floods, {baseline} KiB before (peak {} KiB)", r.after, r.peak);
    }
    assert!(settled <= baseline + RSS_SETTLED_KIB, "RSS {settled} KiB once the floods and the pooled connections are gone, {baseline} KiB before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_limits_get_431_on_both_paths_and_slow_heads_end_on_hyper_too() {
    let rig = start(&["--max-request-headers-kb", "8", "--max-request-headers", "20", "--request-headers-timeout", "1s"]);
    let head = |headers: usize, value: usize| {
        let fields: String = (0..headers).map(|i| format!("X-Field-{i}: {}\r\n", "v".repeat(value))).collect();
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{fields}\r\n")
    };
    for (listener, addr) in [("outbound", rig.outbound), ("inbound", rig.inbound)] {
        // Host, Connection and 18 more: 20 fields, within the limit.
        assert_eq!(status(&exchange(addr, head(18, 10).as_bytes()).await.unwrap()), Some(200), "{listener}");
        let many = exchange(addr, head(19, 10).as_bytes()).await.unwrap();
        assert_eq!(status(&many), Some(431), "{listener}: 21 header fields: {many:?}");
        let large = exchange(addr, head(2, 5000).as_bytes()).await.unwrap();
        assert_eq!(status(&large), Some(431), "{listener}: a 10 KiB head: {large:?}");
        assert_eq!(metric(&rig, "revmesh_proxy_downstream_rq_headers_too_large_total", listener), 2, "{listener}");
    }

    // hyper (the inbound plaintext path) closes a slow head without an answer.
    let (answer, open_for) = slowloris(rig.inbound).await;
    assert!(open_for < Duration::from_secs(10), "a slow head on the inbound listener stayed {open_for:?} (answer {answer:?})");
    assert_eq!(metric(&rig, "revmesh_proxy_downstream_rq_header_timeout_total", "inbound"), 1);
    // On the fast path it gets a 408.
    let (answer, _) = slowloris(rig.outbound).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer:?}");
    assert_eq!(metric(&rig, "revmesh_proxy_downstream_rq_header_timeout_total", "outbound"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_closes_new_connections_and_counts_them() {
    const CAP: usize = 100;
    let rig = start(&["--max-downstream-connections", &CAP.to_string()]);
    // The set-up's requests have ended; wait until their slots are free.
    wait_for("the outbound listener to hold no connection", Duration::from_secs(10), || Ok((metric(&rig, "revmesh_proxy_downstream_cx_active", "outbound") == 0).then_some(())))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut tcp = TcpStream::connect(rig.outbound).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = [0u8; 512];
        let n = tcp.read(&mut answer).await.unwrap();
        assert_eq!(status(&String::from_utf8_lossy(&answer[..n])), Some(200));
        held.push(tcp);
    }
    assert_eq!(metric(&rig, "revmesh_proxy_downstream_cx_active", "outbound"), CAP as i64);
    for _ in 0..20 {
        let answer = exchange(rig.outbound, request.as_bytes()).await.unwrap_or_default();
        assert!(answer.is_empty(), "past the cap, a connection is closed unanswered: {answer:?}");
    }
    assert_eq!(metric(&rig, "revmesh_proxy_downstream_cx_overflow_total", "outbound"), 20);
    // The inbound listener has its own count.
    assert_eq!(ordinary_request(rig.inbound).await, Some(200));
    // A slot freed is a connection served again.
    held.truncate(CAP - 10);
    wait_for("freed slots", Duration::from_secs(10), || Ok((metric(&rig, "revmesh_proxy_downstream_cx_active", "outbound") == (CAP - 10) as i64).then_some(())))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ordinary_request(rig.outbound).await, Some(200));
    assert_eq!(metric(&rig, "revmesh_proxy_downstream_cx_overflow_total", "outbound"), 20);
    assert_eq!(metric(&rig, "revmesh_proxy_downstream_cx_overflow_total", "inbound"), 0);
}

/// A mesh root, and a proxy's mTLS side with a workload certificate under
/// it (rcgen), as the control plane's CA issues them: the SPIFFE ID as a URI SAN.
fn mesh_root() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    (params.self_signed(&key).expect("root"), key)
}

fn mesh(root: &(rcgen::Certificate, rcgen::KeyPair), spiffe: &str) -> sidecar::tls::Mesh {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe).expect("URI"))];
    let cert = params.signed_by(&key, &root.0, &root.1).expect("leaf");
    let now = std::time::SystemTime::now();
    let creds = identity::Credentials { chain_pem: cert.pem(), key_pem: key.serialize_pem(), root_pem: root.0.pem(), identity: spiffe.into(), issued_at: now, not_after: now + Duration::from_secs(3600) };
    let (tx, rx) = tokio::sync::watch::channel(Some(std::sync::Arc::new(creds)));
    std::mem::forget(tx);
    sidecar::tls::Mesh::new(&root.0.pem(), "cluster.local", rx).expect("mesh")
}

/// An app on loopback that answers every HTTP/1.1 request `ok` (keep-alive).
async fn ok_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// A peer proxy's HTTP/2 connection inside mTLS: a head over the limit gets
/// 431 (from h2), and the connection, once it carries no request, is closed
/// after the idle timeout and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_mtls_connections_have_the_head_limit_and_the_idle_timeout() {
    use sidecar::inbound::{Inbound, Mode};
    let root = mesh_root();
    let app = ok_app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = listener.local_addr().expect("address");
    let metrics = std::sync::Arc::new(sidecar::metrics::Metrics::default());
    let mut server = Inbound::new(Some(mesh(&root, "spiffe://cluster.local/ns/demo/sa/web")), Mode::Strict, std::sync::Arc::clone(&metrics), "web".into(), "test".into(), std::sync::Arc::new(sidecar::proxy::Drain::default()));
    server.fixed_target = Some(app);
    server.limits = sidecar::limits::Limits { idle_timeout: Some(Duration::from_secs(1)), head: sidecar::http1::HeadLimits { max_bytes: 8192, max_headers: 100 }, ..Default::default() };
    tokio::spawn(std::sync::Arc::new(server).serve(listener));

    let client = mesh(&root, "spiffe://cluster.local/ns/demo/sa/app");
    let tls = client.connect(proxy, "demo/web", sidecar::tls::ALPN_HTTP, Duration::from_secs(5)).await.expect("mTLS to the proxy");
    let (mut sender, connection) = h2::client::handshake(tls).await.expect("HTTP/2 to the proxy");
    let connection = tokio::spawn(connection);
    let mut get = |big: Option<usize>| {
        let mut request = hyper::Request::builder().uri("http://web.demo/");
        if let Some(n) = big {
            request = request.header("x-big", "v".repeat(n));
        }
        let (answer, _) = sender.send_request(request.body(()).expect("request"), true).expect("stream");
        async move { answer.await.map(|a| a.status().as_u16()) }
    };
    assert_eq!(get(None).await.expect("answer"), 200);
    assert_eq!(get(Some(10_000)).await.expect("answer"), 431, "a 10 KiB head over the 8 KiB limit");
    assert_eq!(get(None).await.expect("answer"), 200, "the connection goes on after a 431");
    let quiet = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the idle peer connection is still open after 10 s");
    assert!(quiet.elapsed() >= Duration::from_secs(1), "closed after {:?}, before the 1 s idle timeout", quiet.elapsed());
    assert_eq!(metrics.limits.inbound.idle_timeout.get(), 1);
    drop(sender);
}
