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
