//! The sidecar in network namespaces this test makes (run as root): an "app"
//! namespace with `sidecar init`'s rules, the real control plane (dir mode,
//! xDS over TLS) and the proxy running as uid 1337; a "server" namespace with
//! real nginx and a TCP echo server. Traffic is sent by curl, h2load, and by a
//! counting HTTP/1.1 client running on a thread inside the app namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn need(tool: &str, install: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is missing: {install}");
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn output(mut c: Command) -> (bool, String) {
    let out = c.output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Runs `f` on a thread whose sockets live in namespace `ns`.
fn on_thread_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

fn nginx(dir: &Path, ns: &str, name: &str, listen: &str, body: &str, status: u16) -> Killed {
    let root = dir.join(format!("nginx-{name}"));
    std::fs::create_dir_all(&root).expect("nginx dir");
    let conf = format!(
        "master_process off; daemon off; pid {r}/pid; error_log {r}/error.log;\nevents {{}}\nhttp {{ access_log off; client_body_temp_path {r}; proxy_temp_path {r}; fastcgi_temp_path {r}; uwsgi_temp_path {r}; scgi_temp_path {r};\n  server {{ listen {listen}; keepalive_requests 100000; location / {{ return {status} '{body}'; }} }} }}\n",
        r = root.display()
    );
    std::fs::write(root.join("nginx.conf"), conf).expect("conf");
    Killed(in_ns(ns, &["nginx", "-c", &root.join("nginx.conf").display().to_string()]).stderr(Stdio::null()).spawn().expect("nginx"))
}

/// One HTTP/1.1 GET on a keep-alive connection; reconnects when needed.
/// Returns the status, or None if the exchange failed.
fn get(conn: &mut Option<BufReader<std::net::TcpStream>>, addr: &str, host: &str) -> Option<u16> {
    if conn.is_none() {
        let s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        *conn = Some(BufReader::new(s));
    }
    let reader = conn.as_mut()?;
    reader.get_mut().write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).ok()?;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    if close {
        *conn = None;
    }
    Some(status)
}

/// An HTTP/1.1 server that answers a POST with its body (length-delimited or
/// chunked) and a GET with "ready".
const HTTP_ECHO: &str = r#"import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.answer(b"ready")
    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("10.77.0.2", 8090), H).serve_forever()
"#;

fn mesh(dir: &Path) -> PathBuf {
    let mesh = dir.join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh");
    let service = |name: &str, ip: &str, port_name: &str, port: u16, target: u16| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]\n---\n")
    };
    let endpoints = |name: &str, ips: &[&str], port_name: &str, port: u16| {
        let addrs: Vec<String> = ips.iter().map(|i| format!("{{ip: {i}}}")).collect();
        format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: demo}}\nsubsets:\n- addresses: [{}]\n  ports: [{{name: {port_name}, port: {port}}}]\n---\n", addrs.join(", "))
    };
    let text = [
        service("web", "10.96.0.10", "http", 80, 8080),
        endpoints("web", &["10.77.0.2"], "http", 8080),
        service("flaky", "10.96.0.20", "http", 80, 8080),
        endpoints("flaky", &["10.77.0.2", "10.77.0.3"], "http", 8080),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: flaky, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: flaky, port: 80}]\n  rules:\n  - backendRefs: [{name: flaky, port: 80}]\n    retry: {attempts: 3, codes: [503]}\n---\n".to_string(),
        service("ejecting", "10.96.0.40", "http", 80, 8080),
        endpoints("ejecting", &["10.77.0.2", "10.77.0.3"], "http", 8080),
        service("echo", "10.96.0.30", "tcp-echo", 9000, 9000),
        endpoints("echo", &["10.77.0.2"], "tcp-echo", 9000),
        service("upload", "10.96.0.50", "http", 80, 8090),
        endpoints("upload", &["10.77.0.2"], "http", 8090),
        // The server pod is injected: its address is reached with mTLS as demo/web.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: demo, labels: {revmesh.io/rev: dev}}\nspec: {serviceAccountName: web}\nstatus: {podIP: 10.77.0.2}\n---\n".to_string(),
    ]
    .concat();
    std::fs::write(mesh.join("mesh.yaml"), text).expect("mesh yaml");
    mesh
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl(ns: &str, url: &str) -> (bool, String) {
    output(in_ns(ns, &["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url]))
}

#[test]
fn captured_traffic_flows_through_the_sidecar() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes network namespaces: run it as root (CI does)");
    for (tool, install) in [("iptables", "apt-get install iptables"), ("nginx", "apt-get install nginx"), ("curl", "apt-get install curl"), ("h2load", "apt-get install nghttp2-client"), ("nsenter", "apt-get install util-linux")] {
        need(tool, install);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let id = std::process::id() % 100_000;
    let (app, srv) = (format!("rm-app-{id}"), format!("rm-srv-{id}"));
    let (va, vs) = (format!("va{id}"), format!("vs{id}"));
    sh(&["ip", "netns", "add", &app]);
    let _app_ns = Netns(app.clone());
    sh(&["ip", "netns", "add", &srv]);
    let _srv_ns = Netns(srv.clone());
    sh(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vs]);
    sh(&["ip", "link", "set", &va, "netns", &app]);
    sh(&["ip", "link", "set", &vs, "netns", &srv]);
    for (ns, dev, addrs) in [(&app, &va, vec!["10.77.0.1/24"]), (&srv, &vs, vec!["10.77.0.2/24", "10.77.0.3/24"])] {
        for a in addrs {
            sh(&["ip", "-n", ns, "addr", "add", a, "dev", dev]);
        }
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // Service IPs exist nowhere: only the capture makes them reachable.
    sh(&["ip", "-n", &app, "route", "add", "default", "dev", &va]);

    // The good backend shows the identity its sidecar passed on.
    let _good = nginx(dir.path(), &srv, "good", "10.77.0.2:8080", "backend-a $http_x_revmesh_peer_identity", 200);
    let _bad = nginx(dir.path(), &srv, "bad", "10.77.0.3:8080", "broken", 503);
    let echo_script = "import socketserver\nclass H(socketserver.StreamRequestHandler):\n    def handle(self):\n        for line in self.rfile:\n            self.wfile.write(line)\nsocketserver.ThreadingTCPServer.allow_reuse_address = True\nsocketserver.ThreadingTCPServer(('10.77.0.2', 9000), H).serve_forever()\n";
    let _echo = Killed(in_ns(&srv, &["python3", "-c", echo_script]).spawn().expect("echo server"));
    let _http_echo = Killed(in_ns(&srv, &["python3", "-c", HTTP_ECHO]).spawn().expect("HTTP echo server"));

    // sidecar init: dry run, then applied twice with one copy of each rule.
    let sidecar_bin = dir.path().join("sidecar");
    std::fs::copy(kube_harness::workspace_bin("sidecar").expect("sidecar binary"), &sidecar_bin).expect("copy sidecar");
    std::fs::set_permissions(&sidecar_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sidecar = sidecar_bin.display().to_string();
    // The control plane in the app namespace serves the server's sidecar too.
    let init = ["init", "--proxy-uid", "1337", "--exclude-inbound-ports", "15012,15020,15021", "--exclude-outbound-ports", "15012"];
    let (ok, dry) = output(in_ns(&app, &[&sidecar, init[0], "--dry-run"]));
    assert!(ok && dry.contains("-A REVMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN"), "{dry}");
    for _ in 0..2 {
        let args: Vec<&str> = std::iter::once(sidecar.as_str()).chain(init).collect();
        let (ok, text) = output(in_ns(&app, &args));
        assert!(ok, "{text}");
    }
    let (ok, text) = output(in_ns(&srv, &[&sidecar, "init", "--exclude-inbound-ports", "15020,15021"]));
    assert!(ok, "{text}");
    let rules = sh(&["ip", "netns", "exec", &app, "iptables-save", "-t", "nat"]);
    assert_eq!(rules.matches("-A OUTPUT -p tcp -j REVMESH_OUTPUT").count(), 1, "{rules}");
    assert_eq!(rules.matches("-A PREROUTING -p tcp -j REVMESH_INBOUND").count(), 1, "{rules}");
    assert_eq!(rules.matches("--uid-owner 1337").count(), 1, "{rules}");

    // The real control plane, in the app namespace, serving xDS over TLS.
    let mesh = mesh(dir.path());
    let cp_bin = kube_harness::workspace_bin("control-plane").expect("control-plane binary");
    let cp_log = dir.path().join("cp.log");
    let readable = |path: &Path, text: &str| {
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    };
    readable(&dir.path().join("tokens"), "token-of-the-app-000 demo/app\ntoken-of-the-web-000 demo/web\n");
    readable(&dir.path().join("app.token"), "token-of-the-app-000");
    readable(&dir.path().join("web.token"), "token-of-the-web-000");
    let mut control_plane = Killed(
        in_ns(&app, &[&cp_bin.display().to_string(), "--revision", "dev", "--source", &format!("dir:{}", mesh.display()), "--poll-interval", "100ms"])
            .args(["--xds-listen", "127.0.0.1:15010", "--tls-listen", "0.0.0.0:15012", "--debug-listen", "127.0.0.1:15014"])
            .args(["--ca-bootstrap-tokens", &dir.path().join("tokens").display().to_string()])
            .stderr(std::fs::File::create(&cp_log).expect("log"))
            .spawn()
            .expect("control plane"),
    );
    let root = dir.path().join("root-cert.pem");
    wait("the control plane's root", Duration::from_secs(20), || {
        let (ok, pem) = output(in_ns(&app, &["curl", "-sk", "https://127.0.0.1:15012/v1/root"]));
        ok && pem.contains("BEGIN CERTIFICATE") && std::fs::write(&root, pem).is_ok()
    });
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // The proxies, as uid 1337 like the injected container: the app's, and
    // the server's (inbound capture in front of nginx and the echo server).
    let start_proxy = |ns: &str, name: &str, control_plane: &str, mode: &str, log: &Path| {
        Killed(
            Command::new("nsenter")
                .args([&format!("--net=/run/netns/{ns}"), "--setuid", "1337", "--setgid", "1337", &sidecar, "run", "--revision", "dev"])
                .args(["--control-plane", control_plane, "--control-plane-name", "control-plane-dev.revmesh-system.svc", "--ca-root", &root.display().to_string()])
                .args(["--pod-name", &format!("{name}-0"), "--pod-namespace", "demo", "--service-account", name, "--workload", name, "--drain-grace", "5", "--drain-delay", "1s", "--inbound-mode", mode])
                .args(["--token-path", &dir.path().join(format!("{name}.token")).display().to_string()])
                // Renewal every 3 s (5% of the CA's shortest lifetime), so that the traffic below crosses renewals.
                .args(["--cert-ttl", "60", "--cert-renew-fraction", "0.05"])
                // As an image's Env sets it: what the proxy reports as its version.
                .env("REVMESH_PROXY_VERSION", if name == "app" { "1.24.5" } else { "1.25.2" })
                .stderr(std::fs::File::create(log).expect("log"))
                .spawn()
                .expect("sidecar"),
        )
    };
    let proxy_log = dir.path().join("sidecar.log");
    let server_log = dir.path().join("server-sidecar.log");
    let mut proxy = start_proxy(&app, "app", "127.0.0.1:15012", "PERMISSIVE", &proxy_log);
    let server_proxy = start_proxy(&srv, "web", "10.77.0.1:15012", "PERMISSIVE", &server_log);
    let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    for ns in [&app, &srv] {
        // Ready means config applied and a certificate in hand.
        wait("the proxies to be ready", Duration::from_secs(30), || output(in_ns(ns, &["curl", "-sf", "http://127.0.0.1:15021/healthz/ready"])).0);
    }

    // HTTP/1.1: curl to a service IP that exists nowhere, through the capture.
    // The server is meshed: mTLS between the proxies, and the app sees who called.
    let (_, body) = curl(&app, "http://10.96.0.10/");
    assert_eq!(body, "backend-a spiffe://cluster.local/ns/demo/sa/app\n200", "proxy log:\n{}\nserver proxy log:\n{}", log(&proxy_log), log(&server_log));

    // HTTP/2 (prior knowledge), detected by its preface: every request succeeds.
    let (ok, h2) = output(in_ns(&app, &["h2load", "-n", "400", "-c", "4", "-m", "8", "http://10.96.0.10/"]));
    assert!(ok && h2.contains("400 succeeded, 0 failed"), "{h2}");

    // Renewal before expiry, without dropping connections. Over 7 s both
    // proxies renew at least twice; one app connection answers throughout,
    // the proxies keep the mTLS connection they had, and a new handshake
    // gets the server proxy's new certificate.
    let issued = |p: &Path| log(p).matches("certificate issued").count();
    let peer_connections = || -> Vec<String> {
        let (_, ss) = output(in_ns(&app, &["ss", "-Htn", "state", "established", "dst", "10.77.0.2:8080"]));
        let mut ends: Vec<String> = ss.lines().map(|l| l.split_whitespace().rev().take(2).collect::<Vec<_>>().join(" ")).collect();
        ends.sort();
        ends
    };
    let server_certificate = || {
        let mut c = Command::new("nsenter");
        c.args([&format!("--net=/run/netns/{app}"), "--setuid", "1337", "--setgid", "1337", "sh", "-c", "timeout 5 openssl s_client -connect 10.77.0.2:8080 -alpn revmesh-h2 </dev/null 2>/dev/null | openssl x509 -noout -serial"]);
        output(c).1
    };
    let (issued_before, server_issued_before, connections_before, certificate_before) = (issued(&proxy_log), issued(&server_log), peer_connections(), server_certificate());
    assert!(!connections_before.is_empty(), "no mTLS connection to the server proxy after the traffic above");
    assert!(certificate_before.starts_with("serial="), "{certificate_before}");
    let steady = on_thread_in(&app, || {
        let mut conn = None;
        // A failed exchange leaves the connection broken, so all 200s means one connection served them all.
        (0..35).map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            get(&mut conn, "10.96.0.10:80", "10.96.0.10")
        }).collect::<Vec<_>>()
    });
    let answers = steady.join().expect("steady client");
    assert!(answers.iter().all(|a| *a == Some(200)), "answers across renewals: {answers:?}");
    assert!(issued(&proxy_log) >= issued_before + 2 && issued(&server_log) >= server_issued_before + 2, "renewals: client {} -> {}, server {} -> {}", issued_before, issued(&proxy_log), server_issued_before, issued(&server_log));
    assert_eq!(peer_connections(), connections_before, "the mTLS connection between the proxies was replaced");
    let certificate_after = server_certificate();
    assert!(certificate_after.starts_with("serial=") && certificate_after != certificate_before, "{certificate_before} then {certificate_after}");
    eprintln!("renewals: client {} -> {}, server {} -> {}; {} answers on one connection", issued_before, issued(&proxy_log), server_issued_before, issued(&server_log), answers.len());

    // Opaque TCP: bytes echo back through the TCP chain for the service IP.
    let echoed = on_thread_in(&app, || {
        let mut s = std::net::TcpStream::connect("10.96.0.30:9000").expect("connect echo");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(b"hello through the mesh\n").expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        line
    })
    .join()
    .expect("echo thread");
    assert_eq!(echoed, "hello through the mesh\n");

    // Request bodies both ways through the mTLS pair: a small one (the
    // HTTP/1 fast path), and 1 MB each way (over flow-control windows).
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 % 251) as u8).collect() };
    for (name, size) in [("small", 3_000), ("large", 1 << 20)] {
        let sent = dir.path().join(format!("{name}.bin"));
        let got = dir.path().join(format!("{name}.out"));
        std::fs::write(&sent, pattern(size)).expect("body file");
        let (ok, code) = output(in_ns(&app, &["curl", "-s", "--max-time", "10", "-H", "Expect:", "--data-binary", &format!("@{}", sent.display()), "-o", &got.display().to_string(), "-w", "%{http_code}", "http://10.96.0.50/echo"]));
        assert!(ok && code == "200", "{name} upload: {code}\nproxy log:\n{}\nserver proxy log:\n{}", log(&proxy_log), log(&server_log));
        assert!(std::fs::read(&got).expect("answer") == pattern(size), "{name}: the echoed body differs");
    }
    // On one connection: a plain GET (fast path), then an upload with
    // `Expect: 100-continue`, which the fast path hands to hyper mid-connection.
    let small = dir.path().join("small.bin");
    let (ok, text) = output(in_ns(&app, &["curl", "-s", "--max-time", "10", "-o", "/dev/null", "http://10.96.0.50/echo", "--next", "-s", "--max-time", "10", "-H", "Expect: 100-continue", "--data-binary", &format!("@{}", small.display()), "-w", "%{num_connects} %{http_code} %{size_download}", "http://10.96.0.50/echo"]));
    assert!(ok && text.ends_with("0 200 3000"), "the second request reuses the connection and is answered in full: {text}");

    // Retries mask the failing endpoint: half the endpoints answer 503.
    for i in 0..20 {
        let (_, body) = curl(&app, "http://10.96.0.20/");
        assert!(body.starts_with("backend-a") && body.ends_with("\n200"), "request {i}: {body}");
    }
    // Outlier detection: without retries, the failing endpoint is ejected
    // after 5 consecutive 5xx and the rest of the requests all succeed.
    let statuses: Vec<String> = (0..40).map(|_| curl(&app, "http://10.96.0.40/").1.rsplit('\n').next().unwrap_or_default().to_string()).collect();
    assert_eq!(statuses.iter().filter(|s| *s == "503").count(), 5, "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| s == "200"), "{statuses:?}");

    // Operations: Istio-named metrics with workload and code, config_dump, xDS state.
    let (_, metrics) = curl(&app, "http://127.0.0.1:15020/metrics");
    assert!(metrics.contains("istio_requests_total{reporter=\"source\",source_workload=\"app\"") && metrics.contains("response_code=\"503\""), "{metrics}");
    let ejections: u64 = metrics.lines().find_map(|l| l.strip_prefix("revmesh_proxy_outlier_ejections_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    assert!(ejections >= 1, "{metrics}");
    assert!(metrics.contains("istio_tcp_sent_bytes_total"), "{metrics}");
    let (_, dump) = curl(&app, "http://127.0.0.1:15000/config_dump");
    assert!(dump.contains("outbound|80||web.demo.svc.cluster.local") && dump.contains("10.77.0.2:8080"), "{dump}");
    let (_, info) = curl(&app, "http://127.0.0.1:15000/server_info");
    let parsed: serde_json::Value = serde_json::from_str(info.rsplit_once('\n').map_or("", |(body, _)| body)).unwrap_or_default();
    assert_eq!((parsed["version"].as_str(), parsed["revision"].as_str()), (Some("1.24.5"), Some("dev")), "the version comes from REVMESH_PROXY_VERSION: {info}");
    assert!(parsed["node"].as_str().is_some_and(|n| n.starts_with("sidecar~") && n.contains("app-0.demo")), "{info}");
    // The control plane shows which build each proxy runs (what meshctl proxy-status prints).
    let (_, syncz) = curl(&app, "http://127.0.0.1:15014/debug/syncz");
    let proxies: serde_json::Value = serde_json::from_str(syncz.rsplit_once('\n').map_or("", |(body, _)| body)).unwrap_or_default();
    let version_of = |pod: &str| proxies.as_array().into_iter().flatten().find(|p| p["id"].as_str().is_some_and(|id| id.contains(pod))).and_then(|p| p["proxyVersion"].as_str()).map(str::to_string);
    assert_eq!((version_of("app-0.demo"), version_of("web-0.demo")), (Some("1.24.5".to_string()), Some("1.25.2".to_string())), "{syncz}");
    let (_, not_here) = curl(&app, "http://127.0.0.1:15020/config_dump");
    assert!(not_here.ends_with("404"), "the pod-facing port dumps nothing: {not_here}");
    let (_, server_metrics) = curl(&srv, "http://127.0.0.1:15020/metrics");
    assert!(server_metrics.contains("reporter=\"destination\"") && server_metrics.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/app\""), "{server_metrics}");

    // Config the proxy cannot apply is NACKed with the reason; the last good config keeps serving.
    let bad_route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"([\"}}]\n    backendRefs: [{name: web, port: 80}]\n";
    std::fs::write(mesh.join("bad-route.yaml"), bad_route).expect("bad route");
    wait("the NACK", Duration::from_secs(10), || curl(&app, "http://127.0.0.1:15000/xds").1.contains("does not compile"));
    assert_eq!(curl(&app, "http://10.96.0.10/").1, "backend-a spiffe://cluster.local/ns/demo/sa/app\n200");
    std::fs::remove_file(mesh.join("bad-route.yaml")).expect("remove");
    // The log level changes at runtime on the admin port.
    let (_, level) = output(in_ns(&app, &["curl", "-s", "-X", "POST", "http://127.0.0.1:15000/logging?level=debug"]));
    assert_eq!(level, "log level is now debug\n");

    // PERMISSIVE: a client without a proxy (uid 1337 skips the capture) is served in plaintext.
    let direct = |extra: &[&str]| {
        let mut c = Command::new("nsenter");
        c.args([&format!("--net=/run/netns/{app}"), "--setuid", "1337", "--setgid", "1337"]).args(extra);
        output(c)
    };
    let (_, plain) = direct(&["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", "http://10.77.0.2:8080/"]);
    assert_eq!(plain, "backend-a \n200", "no identity without mTLS");
    let (_, forged) = direct(&["curl", "-s", "--max-time", "5", "-H", "x-revmesh-peer-identity: spiffe://cluster.local/ns/demo/sa/admin", "-w", "\n%{http_code}", "http://10.77.0.2:8080/"]);
    assert_eq!(forged, "backend-a \n200", "a plaintext client cannot claim an identity");
    // Nor by speaking late (past the 100 ms sniffing time), by pipelining,
    // or with a `_` look-alike of the header (issue 17).
    // (bash's /dev/tcp: no client tool that would need installing.)
    let slow = "exec 3<>/dev/tcp/10.77.0.2/8080; sleep 0.4; printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nx-revmesh-peer-identity: spiffe://cluster.local/ns/demo/sa/admin\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: x\\r\\nx_revmesh_peer_identity: spiffe://cluster.local/ns/demo/sa/admin\\r\\nConnection: close\\r\\n\\r\\n' >&3; timeout 5 cat <&3";
    let (_, late) = direct(&["bash", "-c", slow]);
    // Each body is nginx's `backend-a <identity>`: the identity empty.
    assert_eq!((late.matches("content-length: 10\r\n").count(), late.matches("\r\n\r\nbackend-a ").count(), late.contains("admin")), (2, 2, false), "a slow, pipelining client cannot claim an identity: {late}");
    // STRICT: the same client is refused, and so is a peer whose certificate the mesh did not issue.
    drop(server_proxy);
    let _strict_server_proxy = start_proxy(&srv, "web", "10.77.0.1:15012", "STRICT", &server_log);
    wait("the STRICT server proxy", Duration::from_secs(30), || output(in_ns(&srv, &["curl", "-sf", "http://127.0.0.1:15021/healthz/ready"])).0);
    let (ok, refused) = direct(&["curl", "-s", "--max-time", "5", "http://10.77.0.2:8080/"]);
    assert!(!ok && !refused.contains("backend-a"), "plaintext got through STRICT: {refused}");
    let stranger_key = dir.path().join("stranger.key");
    let stranger_cert = dir.path().join("stranger.pem");
    sh(&["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=stranger", "-days", "1", "-addext", "subjectAltName=URI:spiffe://cluster.local/ns/demo/sa/app", "-keyout", &stranger_key.display().to_string(), "-out", &stranger_cert.display().to_string()]);
    for f in [&stranger_key, &stranger_cert] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let (_, forged) = direct(&["sh", "-c", &format!("printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 5 openssl s_client -quiet -connect 10.77.0.2:8080 -alpn revmesh-h2 -cert {} -key {} 2>&1", stranger_cert.display(), stranger_key.display())]);
    assert!(!forged.contains("backend-a"), "a forged identity got through: {forged}");
    let (_, server_metrics) = curl(&srv, "http://127.0.0.1:15020/metrics");
    let refused_count: u64 = server_metrics.lines().find_map(|l| l.strip_prefix("revmesh_proxy_inbound_refused_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    assert!(refused_count >= 2, "{server_metrics}");
    // Meshed traffic still flows in STRICT mode.
    let (_, body) = curl(&app, "http://10.96.0.10/");
    assert_eq!(body, "backend-a spiffe://cluster.local/ns/demo/sa/app\n200");

    // The control plane dies: traffic keeps flowing on the last config.
    let _ = control_plane.0.kill();
    let _ = control_plane.0.wait();
    wait("the proxy to notice", Duration::from_secs(10), || curl(&app, "http://127.0.0.1:15000/xds").1.contains("\"connected\":false"));
    for _ in 0..10 {
        assert!(curl(&app, "http://10.96.0.10/").1.ends_with("sa/app\n200"));
    }
    assert!(log(&cp_log).contains("control plane serving"), "{}", log(&cp_log));

    // SIGTERM under load: every request sent gets its answer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            on_thread_in(&app, move || {
                let (mut sent, mut ok, mut conn) = (0u32, 0u32, None);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sent += 1;
                    if get(&mut conn, "10.96.0.10:80", "10.96.0.10") == Some(200) {
                        ok += 1;
                    } else {
                        conn = None;
                    }
                }
                (sent, ok)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(proxy.0.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut ok) = (0, 0);
    for c in clients {
        let (s, o) = c.join().expect("client");
        sent += s;
        ok += o;
    }
    eprintln!("during SIGTERM: {ok} of {sent} requests answered");
    assert!(sent > 100, "too little load to mean anything: {sent}");
    assert_eq!(ok, sent, "requests lost during the drain; proxy log:\n{}", log(&proxy_log));
    let exited = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        proxy.0.try_wait().ok().flatten()
    });
    assert!(exited.is_some_and(|s| s.success()), "the proxy exits after draining: {exited:?}");
    assert!(log(&proxy_log).contains("drained"), "{}", log(&proxy_log));
}
