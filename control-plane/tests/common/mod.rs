//! Helpers shared by the control plane's integration tests: real nginx, real
//! Envoy, the control-plane binary, curl.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    kube_harness::free_port().expect("free port")
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn need(tool: &str, install: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(found, "{tool} is not installed; install it with: {install}");
}

/// An nginx answering every request with `body`.
pub fn nginx(dir: &Path, name: &str, body: &str) -> (Proc, u16) {
    let port = free_port();
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let conf = format!(
        "master_process off; daemon off; pid {p}/nginx.pid; error_log {p}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{ access_log off; client_body_temp_path {p}; proxy_temp_path {p}; fastcgi_temp_path {p}; uwsgi_temp_path {p}; scgi_temp_path {p};\n  server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{body}'; }} }} }}\n",
        p = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).expect("conf");
    let child = Command::new("nginx").args(["-c", &d.join("nginx.conf").display().to_string(), "-p", &d.display().to_string()]).stderr(Stdio::null()).spawn().expect("nginx starts");
    (Proc(child), port)
}

pub fn write(path: &Path, text: &str) {
    // Write then rename, as a GitOps sync would, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).and_then(|mut f| f.write_all(text.as_bytes())).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn service(name: &str) -> String {
    let ip = 10 + name.len(); // distinct per test service name
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n")
}

pub fn endpoints(name: &str, ports: &[u16]) -> String {
    let subsets: Vec<String> = ports.iter().map(|p| format!("  - addresses: [{{ip: 127.0.0.1}}]\n    ports: [{{name: http, port: {p}}}]\n")).collect();
    format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: demo}}\nsubsets:\n{}", subsets.concat())
}

pub struct ControlPlane {
    pub proc: Proc,
    pub xds: u16,
    pub debug: u16,
    pub ca: u16,
    pub log: PathBuf,
}

pub fn control_plane(dir: &Path, mesh: &Path, revision: &str) -> ControlPlane {
    control_plane_with(dir, &format!("dir:{}", mesh.display()), revision, &[], &[])
}

/// The control-plane binary with any `--source` and extra environment.
pub fn control_plane_with(dir: &Path, source: &str, revision: &str, env: &[(&str, &str)], args: &[&str]) -> ControlPlane {
    let (xds, debug, ca) = (free_port(), free_port(), free_port());
    let log = dir.join(format!("control-plane-{revision}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["--revision", revision, "--source", source, "--ca-listen", &format!("127.0.0.1:{ca}")])
        .args(args)
        .envs(env.iter().copied())
        .args(["--xds-listen", &format!("127.0.0.1:{xds}"), "--debug-listen", &format!("127.0.0.1:{debug}"), "--poll-interval", "100ms"])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("control plane starts");
    let mut cp = ControlPlane { proc: Proc(child), xds, debug, ca, log };
    let start = Instant::now();
    while http_get(cp.debug, "/ready").is_none() {
        let exited = cp.proc.0.try_wait().ok().flatten();
        if exited.is_some() || start.elapsed() > Duration::from_secs(20) {
            panic!("the control plane did not become ready ({exited:?}); its log:\n{}", std::fs::read_to_string(&cp.log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cp
}

/// Envoy bootstrapped to ADS on the control plane; `delta` picks DELTA_GRPC.
pub fn envoy(dir: &Path, name: &str, xds: u16, revision: &str, delta: bool) -> (Proc, u16, u16) {
    envoy_with(dir, name, xds, revision, delta, "REVMESH_INTERCEPTION: NONE")
}

/// Envoy with extra node metadata (YAML flow-mapping entries).
pub fn envoy_with(dir: &Path, name: &str, xds: u16, revision: &str, delta: bool, metadata: &str) -> (Proc, u16, u16) {
    envoy_full(dir, name, xds, revision, delta, metadata, None)
}

/// How an Envoy on the TLS port proves its workload identity.
pub enum Credential<'a> {
    None,
    /// Sent as gRPC metadata `authorization: Bearer <token>` (bootstrap `initial_metadata`).
    Token(&'a str),
    /// A mesh certificate chain and its key (PEM files), presented in the TLS handshake.
    Certificate { chain: &'a Path, key: &'a Path },
}

/// Envoy reaching ADS on the TLS port, verifying the control plane's
/// certificate against the mesh root and its service name, as a sidecar does;
/// `metadata` holds the identity it claims (`NAMESPACE: x, SERVICE_ACCOUNT: y`).
pub fn envoy_over_tls(dir: &Path, name: &str, tls_port: u16, revision: &str, root: &Path, metadata: &str, credential: Credential<'_>) -> (Proc, u16, u16) {
    envoy_full(dir, name, tls_port, revision, true, &format!("REVMESH_INTERCEPTION: NONE, {metadata}"), Some((root, credential)))
}

/// Envoy's log with the percent-encoding of gRPC status messages undone.
pub fn envoy_log(dir: &Path, name: &str) -> String {
    let raw = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let bytes = raw.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn envoy_full(dir: &Path, name: &str, xds: u16, revision: &str, delta: bool, metadata: &str, tls: Option<(&Path, Credential<'_>)>) -> (Proc, u16, u16) {
    let (listen, admin) = (free_port(), free_port());
    let (client_certificate, initial_metadata) = match tls.as_ref().map(|(_, c)| c) {
        Some(Credential::Certificate { chain, key }) => {
            (format!("          tls_certificates: [{{certificate_chain: {{filename: \"{}\"}}, private_key: {{filename: \"{}\"}}}}]\n", chain.display(), key.display()), String::new())
        }
        Some(Credential::Token(token)) => (String::new(), format!("{{key: authorization, value: \"Bearer {token}\"}}")),
        _ => (String::new(), String::new()),
    };
    let transport = match tls.as_ref().map(|(root, _)| root) {
        None => String::new(),
        Some(root) => format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: control-plane-{revision}.revmesh-system.svc
        common_tls_context:
          alpn_protocols: [h2]
          validation_context:
            trusted_ca: {{filename: "{}"}}
            match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: control-plane-{revision}.revmesh-system.svc}}}}]
{client_certificate}"#,
            root.display()
        ),
    };
    let metadata = format!(r#"REVMESH_REVISION: "{revision}", REVMESH_OUTBOUND_ADDRESS: "127.0.0.1:{listen}", {metadata}"#);
    let bootstrap = kube_harness::envoy::ads_bootstrap_authenticated(&kube_harness::envoy::AdsBootstrap {
        node_id: name,
        node_cluster: "test",
        metadata: &metadata,
        admin_port: admin,
        xds_port: xds,
        delta,
        transport: &transport,
    }, &initial_metadata);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, bootstrap).expect("bootstrap");
    let child = Command::new("envoy")
        .args(["-c", &path.display().to_string(), "--base-id", &free_port().to_string(), "-l", "warning", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).expect("log"))
        .spawn()
        .expect("envoy starts");
    (Proc(child), listen, admin)
}

/// The mesh root the control plane serves (fetched without verification, as a
/// test stands in for the ConfigMap the webhook mounts).
pub fn fetch_root(dir: &Path, tls_port: u16) -> PathBuf {
    let root = dir.join(format!("root-{tls_port}.pem"));
    if !root.exists() {
        let out = Command::new("curl").args(["-sk", &format!("https://127.0.0.1:{tls_port}/v1/root")]).output().expect("curl");
        assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"), "no root from the TLS port");
        std::fs::write(&root, &out.stdout).expect("root");
    }
    root
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl").args(["-s", "--max-time", "2", &format!("http://127.0.0.1:{port}{path}")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// GET through Envoy with a Host header; the body, if the status was 200.
pub fn via(listen: u16, host: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2", "-H", &format!("Host: {host}"), "-w", "\n%{http_code}", &format!("http://127.0.0.1:{listen}/")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    (code == "200").then(|| body.to_string())
}

pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}


/// A fresh EC key and CSR from openssl; returns the CSR PEM.
pub fn openssl_csr(dir: &Path, name: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ok = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=ignored.example"])
        .args(["-keyout", &key.display().to_string(), "-out", &csr.display().to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl req failed");
    std::fs::read_to_string(csr).expect("csr")
}

/// POSTs a CSR to the CA over HTTPS: (status, JSON body). Retries, as a proxy
/// does, when the CA could not answer (503: the TokenReview failed) or the
/// exchange broke.
pub fn request_certificate(dir: &Path, ca_port: u16, token: Option<&str>, csr: &str) -> (u16, serde_json::Value) {
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..3 {
        last = request_certificate_once(dir, ca_port, token, csr);
        if last.0 != 0 && last.0 != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    last
}

fn request_certificate_once(dir: &Path, ca_port: u16, token: Option<&str>, csr: &str) -> (u16, serde_json::Value) {
    let root = fetch_root(dir, ca_port);
    let body = dir.join("csr.json");
    std::fs::write(&body, serde_json::json!({"csr": csr, "ttlSeconds": 600}).to_string()).expect("body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert", &root.display().to_string(), "-X", "POST", "--data-binary", &format!("@{}", body.display()), "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("https://127.0.0.1:{ca_port}/v1/certificate")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        return (0, serde_json::json!({"curl": String::from_utf8_lossy(&out.stderr), "stdout": text}));
    }
    (code, serde_json::from_str(json).unwrap_or_default())
}

/// The SAN URIs of a PEM certificate, via openssl.
pub fn san_uris(dir: &Path, pem: &str) -> String {
    let path = dir.join("issued.pem");
    std::fs::write(&path, pem).expect("write");
    let out = Command::new("openssl").args(["x509", "-noout", "-ext", "subjectAltName", "-in", &path.display().to_string()]).output().expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
