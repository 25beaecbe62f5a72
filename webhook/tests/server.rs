//! The webhook binary over real HTTPS (curl as the client): good reviews, bad
//! bodies, and certificate and rollouts reloads, without restarting it.

use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROLLOUTS: &str = "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  1-24-5: {proxyImage: img:1.24.5}\n  1-25-2: {proxyImage: img:1.25.2}\nrules:\n  - namespaces: [\"*\"]\n    distribution: {1-24-5: 100}\n";

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let p = kube_harness::tls::loopback_pki("revmesh-webhook").expect("test certificates");
    Pki { ca: p.ca_pem, cert: p.cert_pem, key: p.key_pem }
}

fn free_port() -> u16 {
    kube_harness::free_port().expect("free port")
}

struct Webhook {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start() -> Webhook {
        Self::start_with(&[])
    }

    /// Starts the webhook binary with `extra` flags after the usual ones.
    fn start_with(extra: &[&str]) -> Webhook {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pki();
        std::fs::write(dir.path().join("tls.crt"), &p.cert).expect("write");
        std::fs::write(dir.path().join("tls.key"), &p.key).expect("write");
        std::fs::write(dir.path().join("ca.crt"), &p.ca).expect("write");
        std::fs::write(dir.path().join("rollouts.yml"), ROLLOUTS).expect("write");
        let (port, metrics_port) = (free_port(), free_port());
        let d = |n: &str| dir.path().join(n).display().to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_webhook"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--tls-cert", &d("tls.crt"), "--tls-key", &d("tls.key"), "--rollouts", &d("rollouts.yml"), "--reload-interval", "100ms"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("webhook.log")).expect("log"))
            .spawn()
            .expect("webhook starts");
        let w = Webhook { child, dir, port, metrics_port };
        w.wait("readiness", || w.metrics().is_some());
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; log:\n{}", std::fs::read_to_string(self.path("webhook.log")).unwrap_or_default());
    }

    /// (HTTP status, body) of a curl request, verifying the server with `ca`.
    fn curl(&self, method: &str, path: &str, body: Option<&Path>, content_type: &str, ca: &Path) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-X", method, "--cacert", &ca.display().to_string(), "-H", &format!("Content-Type: {content_type}")]);
        cmd.args(["-w", "\n%{http_code}", &format!("https://127.0.0.1:{}{path}", self.port)]);
        if let Some(b) = body {
            cmd.args(["--data-binary", &format!("@{}", b.display())]);
        }
        let out = cmd.output().expect("curl runs (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let code = code.trim().parse().unwrap_or(0);
        if code == 0 {
            // curl could not complete the exchange (TLS or connection): report why.
            return (0, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        (code, body.to_string())
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        let file = self.path("body.json");
        std::fs::write(&file, body).expect("write body");
        self.curl("POST", path, Some(&file), "application/json", &self.path("ca.crt"))
    }

    fn metrics(&self) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.1 200").then_some(out)
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        self.metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn review(pod: Value, operation: &str, resource: &str, dry_run: bool) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b6a5b3c-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "operation": operation,
            "namespace": "shop",
            "object": pod,
            "dryRun": dry_run,
        }
    })
    .to_string()
}

fn pod(annotations: Value) -> Value {
    json!({"metadata": {"generateName": "web-", "annotations": annotations}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}})
}

fn response(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "0b6a5b3c-1111-2222-3333-444455556666");
    v["response"].clone()
}

fn decoded_patch(resp: &Value) -> Vec<Value> {
    assert_eq!(resp["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(resp["patch"].as_str().expect("patch")).expect("base64");
    serde_json::from_slice(&bytes).expect("patch JSON")
}

#[test]
fn answers_reviews_and_refuses_bad_bodies_without_crashing() {
    let w = Webhook::start();

    let (code, body) = w.post("/inject", &review(pod(json!({})), "CREATE", "pods", false));
    assert_eq!(code, 200, "{body}");
    let resp = response(&body);
    assert_eq!(resp["allowed"], true);

    let patch = decoded_patch(&resp);
    assert!(patch.iter().any(|op| op["path"] == "/spec/containers/-" && op["value"]["name"] == "revmesh-proxy"), "{patch:?}");

    // Namespace pinned through the path.
    let (_, body) = w.post("/inject/rev/1-25-2", &review(pod(json!({})), "CREATE", "pods", false));
    let patch = decoded_patch(&response(&body));
    assert!(patch.iter().any(|op| op["value"]["image"] == "img:1.25.2"), "{patch:?}");

    // dryRun gets the same answer; it is counted apart.
    let (_, body) = w.post("/inject", &review(pod(json!({})), "CREATE", "pods", true));
    assert!(!decoded_patch(&response(&body)).is_empty());

    // Not a pod create: allowed untouched.
    let (_, body) = w.post("/inject", &review(pod(json!({})), "UPDATE", "pods", false));
    let resp = response(&body);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());

    // Invalid annotation: denied, naming it.
    let (code, body) = w.post("/inject", &review(pod(json!({"sidecar.revmesh.io/excludeOutboundPorts": "80,x"})), "CREATE", "pods", false));
    assert_eq!(code, 200);
    let resp = response(&body);
    assert_eq!(resp["allowed"], false);
    assert!(resp["status"]["message"].as_str().expect("message").contains("sidecar.revmesh.io/excludeOutboundPorts"));

    // Bad bodies: 4xx, and the process lives on.
    assert_eq!(w.post("/inject", "this is not json").0, 400);
    assert_eq!(w.post("/inject", "{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}").0, 400);
    assert_eq!(w.post("/inject", "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}").0, 400);
    assert_eq!(w.post("/inject", "{\"request\": [").0, 400);
    let big = w.path("big.json");
    std::fs::write(&big, vec![b' '; 4 * 1024 * 1024]).expect("write");
    let (code, why) = w.curl("POST", "/inject", Some(&big), "application/json", &w.path("ca.crt"));
    assert_eq!(code, 413, "{why}");
    assert_eq!(w.curl("POST", "/inject", Some(&big), "text/plain", &w.path("ca.crt")).0, 415);
    assert_eq!(w.curl("GET", "/inject", None, "application/json", &w.path("ca.crt")).0, 405);
    assert_eq!(w.curl("POST", "/mutate", None, "application/json", &w.path("ca.crt")).0, 404);
    let (code, _) = w.post("/inject", &review(pod(json!({})), "CREATE", "pods", false));
    assert_eq!(code, 200, "the webhook still serves after bad input");

    assert!(w.metric("revmesh_webhook_bad_requests_total{reason=\"malformed\"}") >= 4.0);
    assert!(w.metric("revmesh_webhook_bad_requests_total{reason=\"too-large\"}") >= 1.0);
    assert!(w.metric("revmesh_webhook_admissions_total{result=\"injected\"") >= 3.0);
    assert!(w.metric("revmesh_webhook_admissions_total{result=\"dry-run-injected\"") >= 1.0);
    assert!(w.metric("revmesh_webhook_admissions_total{result=\"denied\"") >= 1.0);
    assert!(w.metric("revmesh_webhook_admission_duration_seconds_count") >= 6.0);
}

#[test]
fn reloads_certificate_and_rollouts_keeping_last_good() {
    let w = Webhook::start();
    // A new certificate from a new CA: new handshakes use it.
    let next = pki();
    std::fs::write(w.path("ca2.crt"), &next.ca).expect("write");
    std::fs::write(w.path("tls.key"), &next.key).expect("write");
    std::fs::write(w.path("tls.crt"), &next.cert).expect("write");
    let body = w.path("r.json");
    std::fs::write(&body, review(pod(json!({})), "CREATE", "pods", false)).expect("write");
    w.wait("the new certificate", || w.curl("POST", "/inject", Some(&body), "application/json", &w.path("ca2.crt")).0 == 200);
    assert_ne!(w.curl("POST", "/inject", Some(&body), "application/json", &w.path("ca.crt")).0, 200, "the old CA no longer verifies");

    // rollouts.yml moves everything to 1-25-2.
    std::fs::write(w.path("rollouts.yml"), ROLLOUTS.replace("{1-24-5: 100}", "{1-25-2: 100}")).expect("write");
    let version_now = || {
        let (_, text) = w.curl("POST", "/inject", Some(&body), "application/json", &w.path("ca2.crt"));
        let resp: Value = serde_json::from_str(&text).unwrap_or_default();
        decoded_patch(&resp["response"]).iter().find(|op| op["path"] == "/metadata/labels").map(|op| op["value"]["revmesh.io/rev"].clone())
    };
    w.wait("the new rollouts", || version_now() == Some(json!("1-25-2")));

    // An invalid file: refused, counted, last good kept.
    std::fs::write(w.path("rollouts.yml"), "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions: {}\n").expect("write");
    w.wait("the refusal", || w.metric("revmesh_webhook_reload_failures_total{file=\"rollouts\"}") >= 1.0);
    assert_eq!(version_now(), Some(json!("1-25-2")));
    assert_eq!(w.metric("revmesh_webhook_config_in_sync{file=\"rollouts\"}"), 0.0);
    let log = std::fs::read_to_string(w.path("webhook.log")).unwrap_or_default();
    assert!(log.contains("last good one stays in force") && log.contains("versions is empty"), "{log}");
}

/// The version the webhook assigns right now (from the label it patches in).
fn version_now(w: &Webhook) -> Option<Value> {
    let (_, text) = w.post("/inject", &review(pod(json!({})), "CREATE", "pods", false));
    let resp: Value = serde_json::from_str(&text).unwrap_or_default();
    decoded_patch(&resp["response"]).iter().find(|op| op["path"] == "/metadata/labels").map(|op| op["value"]["revmesh.io/rev"].clone())
}

/// Through the real reload path: files `meshctl rollouts validate` refuses are
/// refused here too (both call `rollouts::validate_bytes`), and the running
/// webhook keeps serving with its last good file.
#[test]
fn hostile_rollouts_files_are_refused_on_reload_and_the_last_good_one_stays() {
    let w = Webhook::start();
    assert_eq!(version_now(&w), Some(json!("1-24-5")));
    let failures = || w.metric("revmesh_webhook_reload_failures_total{file=\"rollouts\"}");

    // A few KB of nested block lists: this used to overflow the stack and kill the process.
    let mut deep = String::from("apiVersion: revmesh.io/v1\nkind: Rollouts\nrules:\n");
    for depth in 0..150 {
        deep.push_str(&" ".repeat(depth));
        deep.push_str("-\n");
    }
    std::fs::write(w.path("rollouts.yml"), &deep).expect("write");
    w.wait("the deep file's refusal", || failures() >= 1.0);
    assert_eq!(version_now(&w), Some(json!("1-24-5")), "still serving, with the last good file");
    let log = std::fs::read_to_string(w.path("webhook.log")).unwrap_or_default();
    assert!(log.contains("rollouts.yml:35:") && log.contains("nest deeper than 32 levels"), "{log}");

    // A valid file except for a Latin-1 byte in a comment: refused, as meshctl refuses it.
    let mut latin1 = b"# r\xe9sum\xe9\n".to_vec();
    latin1.extend_from_slice(ROLLOUTS.replace("{1-24-5: 100}", "{1-25-2: 100}").as_bytes());
    std::fs::write(w.path("rollouts.yml"), &latin1).expect("write");
    w.wait("the non-UTF-8 file's refusal", || failures() >= 2.0);
    assert_eq!(version_now(&w), Some(json!("1-24-5")));
    let log = std::fs::read_to_string(w.path("webhook.log")).unwrap_or_default();
    assert!(log.contains("rollouts.yml:1:4: byte 0xe9 is not UTF-8"), "{log}");

    // The same file in UTF-8 is taken.
    std::fs::write(w.path("rollouts.yml"), format!("# résumé\n{}", ROLLOUTS.replace("{1-24-5: 100}", "{1-25-2: 100}"))).expect("write");
    w.wait("the good file", || version_now(&w) == Some(json!("1-25-2")));
    assert_eq!(w.metric("revmesh_webhook_config_in_sync{file=\"rollouts\"}"), 1.0);
}

/// Pods that already carry another mesh's proxy, Istio's opt-out, a resource
/// override above the default limit, and a megabyte annotation value.
#[test]
fn other_meshes_resource_crossings_and_huge_values_through_the_server() {
    let w = Webhook::start();
    let with_containers = |containers: Value, init: Value| {
        json!({"metadata": {"generateName": "web-"}, "spec": {"containers": containers, "initContainers": init}})
    };
    // Istio's sidecar and init container: let through untouched, with a warning naming it.
    let istio = with_containers(json!([{"name": "app", "image": "nginx"}, {"name": "istio-proxy", "image": "istio/proxyv2"}]), json!([{"name": "istio-init", "image": "istio/proxyv2"}]));
    let (code, body) = w.post("/inject", &review(istio, "CREATE", "pods", false));
    assert_eq!(code, 200, "{body}");
    let resp = response(&body);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "no second proxy: {resp}");
    let warning = resp["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("istio-proxy") && warning.contains("not injected"), "{resp}");
    // Linkerd's proxy as a native sidecar (an init container).
    let linkerd = with_containers(json!([{"name": "app", "image": "nginx"}]), json!([{"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy", "restartPolicy": "Always"}]));
    let resp = response(&w.post("/inject", &review(linkerd, "CREATE", "pods", false)).1);
    assert!(resp.get("patch").is_none() && resp["warnings"][0].as_str().unwrap_or_default().contains("linkerd-proxy"), "{resp}");

    // sidecar.istio.io/inject: "false", as an annotation or a label: skipped.
    let resp = response(&w.post("/inject", &review(pod(json!({"sidecar.istio.io/inject": "false"})), "CREATE", "pods", false)).1);
    assert!(resp["allowed"] == true && resp.get("patch").is_none(), "{resp}");
    let labelled = json!({"metadata": {"generateName": "web-", "labels": {"sidecar.istio.io/inject": "false"}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
    let resp = response(&w.post("/inject", &review(labelled, "CREATE", "pods", false)).1);
    assert!(resp.get("patch").is_none(), "{resp}");
    // "true" is no opt-out.
    let resp = response(&w.post("/inject", &review(pod(json!({"sidecar.istio.io/inject": "true"})), "CREATE", "pods", false)).1);
    assert!(!decoded_patch(&resp).is_empty());

    // A CPU request above the default limit (2): denied, naming the annotation to add.
    let resp = response(&w.post("/inject", &review(pod(json!({"sidecar.revmesh.io/proxyCPU": "4"})), "CREATE", "pods", false)).1);
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("sidecar.revmesh.io/proxyCPU=\"4\"") && message.contains("sidecar.revmesh.io/proxyCPULimit"), "{message}");
    let resp = response(&w.post("/inject", &review(pod(json!({"sidecar.revmesh.io/proxyCPU": "4", "sidecar.revmesh.io/proxyCPULimit": "4"})), "CREATE", "pods", false)).1);
    let patch = decoded_patch(&resp);
    let proxy = patch.iter().find(|op| op["value"]["name"] == "revmesh-proxy").expect("proxy added");
    assert_eq!(proxy["value"]["resources"], json!({"requests": {"cpu": "4", "memory": "64Mi"}, "limits": {"cpu": "4", "memory": "256Mi"}}));

    // A 1 MiB annotation value: the denial and the log quote 64 bytes of it and its length.
    let huge = format!("{},x", "9".repeat(1024 * 1024));
    let resp = response(&w.post("/inject", &review(pod(json!({"sidecar.revmesh.io/excludeInboundPorts": huge})), "CREATE", "pods", false)).1);
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap_or_default();
    assert!(message.len() < 2048 && message.contains(&format!("({} bytes in all)", huge.len())), "{} bytes: {}", message.len(), &message[..message.len().min(300)]);

    assert!(w.metric("revmesh_webhook_admissions_total{result=\"skipped\",version=\"\",reason=\"other-mesh\"}") >= 2.0);
    assert!(w.metric("revmesh_webhook_admissions_total{result=\"skipped\",version=\"\",reason=\"istio-opted-out\"}") >= 2.0);
    let log_size = std::fs::metadata(w.path("webhook.log")).map(|m| m.len()).unwrap_or(0);
    assert!(log_size < 64 * 1024, "the log holds {log_size} bytes: a value was echoed whole");
}

/// A TLS client of the webhook over a plain blocking socket (HTTP/1.1 by ALPN).
fn tls_connect(w: &Webhook) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(w.path("ca.crt")).expect("ca.crt") {
        roots.add(cert.expect("CA certificate")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", w.port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("TLS handshake");
    }
    rustls::StreamOwned::new(conn, sock)
}

/// Waits up to `within` for the peer to close `stream`; returns how long it took.
fn closed_within(stream: &mut impl Read, set_timeout: impl Fn(Duration), within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        set_timeout(Duration::from_millis(200));
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Whether the peer has closed `sock`, checked without waiting long.
fn tcp_closed(sock: &mut std::net::TcpStream) -> bool {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 16];
    match sock.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// Reads one HTTP/1.1 response (head and Content-Length body) as text.
fn read_response(stream: &mut impl Read) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Real sockets against the real binary: stalled handshakes, headers and
/// bodies are cut off after the read timeout, idle connections after the idle
/// timeout, connections past the cap are closed at once, and normal requests
/// are answered all the while.
#[test]
fn slow_idle_and_excess_connections_are_closed_while_normal_requests_are_served() {
    let w = Webhook::start_with(&["--read-timeout", "1s", "--idle-timeout", "4s", "--max-connections", "4"]);
    let good = review(pod(json!({})), "CREATE", "pods", false);

    // A client that never starts TLS, and one that sends half of its headers.
    let opened = Instant::now();
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", w.port)).expect("connect");
    let mut half = tls_connect(&w);
    half.write_all(b"POST /inject HTTP/1.1\r\nHost: webhook\r\n").expect("write");
    half.flush().expect("flush");
    // Meanwhile a normal request is served (the third connection).
    assert_eq!(w.post("/inject", &good).0, 200);
    let silent_sock = silent.try_clone().expect("clone");
    closed_within(&mut silent, |t| { let _ = silent_sock.set_read_timeout(Some(t)); }, Duration::from_secs(8)).expect("the silent client is closed");
    assert!(opened.elapsed() >= Duration::from_millis(900), "closed {:?} after opening, before the read timeout", opened.elapsed());
    let half_sock = half.sock.try_clone().expect("clone");
    closed_within(&mut half, |t| { let _ = half_sock.set_read_timeout(Some(t)); }, Duration::from_secs(8)).expect("the half-headers client is closed");
    assert!(w.metric("revmesh_webhook_connections_closed_total{reason=\"read-timeout\"}") >= 2.0);

    // The plain-HTTP metrics port cuts off a half-sent request the same way.
    let mut metrics_half = std::net::TcpStream::connect(("127.0.0.1", w.metrics_port)).expect("connect");
    metrics_half.write_all(b"GET /metrics HTTP/1.1\r\nHost: webhook\r\n").expect("write");
    let metrics_sock = metrics_half.try_clone().expect("clone");
    closed_within(&mut metrics_half, |t| { let _ = metrics_sock.set_read_timeout(Some(t)); }, Duration::from_secs(8)).expect("the metrics client is closed");

    // A body that stalls: 408 after the read timeout, and the connection closes.
    let mut slow_body = tls_connect(&w);
    write!(slow_body, "POST /inject HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", good.len(), &good[..10]).expect("write");
    slow_body.flush().expect("flush");
    let answer = read_response(&mut slow_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(w.metric("revmesh_webhook_bad_requests_total{reason=\"body-timeout\"}") >= 1.0);

    // Idle: one whole request answered, then nothing. Still open past the read
    // timeout (idle is not slow), closed after the idle timeout.
    let mut idle = tls_connect(&w);
    write!(idle, "POST /inject HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{good}", good.len()).expect("write");
    idle.flush().expect("flush");
    let answer = read_response(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answered = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let idle_sock = idle.sock.try_clone().expect("clone");
    assert!(
        closed_within(&mut idle, |t| { let _ = idle_sock.set_read_timeout(Some(t)); }, Duration::from_millis(300)).is_none(),
        "an idle connection outlives the read timeout"
    );
    closed_within(&mut idle, |t| { let _ = idle_sock.set_read_timeout(Some(t)); }, Duration::from_secs(10)).expect("the idle client is closed");
    assert!(answered.elapsed() >= Duration::from_millis(3500), "closed {:?} after its answer", answered.elapsed());
    assert!(w.metric("revmesh_webhook_connections_closed_total{reason=\"idle-timeout\"}") >= 1.0);

    // The cap: four open connections fill it; a fifth is closed at once, and a
    // request gets no answer until the stalled ones are cut off.
    let mut fillers: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(("127.0.0.1", w.port)).expect("connect")).collect();
    w.wait("four open connections", || w.metric("revmesh_webhook_open_connections") >= 4.0);
    let mut fifth = std::net::TcpStream::connect(("127.0.0.1", w.port)).expect("the kernel accepts");
    assert!(tcp_closed(&mut fifth), "the fifth connection is closed by the webhook");
    assert!(w.metric("revmesh_webhook_connections_closed_total{reason=\"over-capacity\"}") >= 1.0);
    w.wait("the fillers to be cut off", || fillers.iter_mut().all(tcp_closed));
    assert_eq!(w.post("/inject", &good).0, 200, "served again once the stalled connections are gone");
}
