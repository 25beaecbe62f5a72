//! The sidecar against the real control plane's TLS port, on loopback (no
//! capture): it proves its identity with its token and claims it in its node
//! metadata. A claim the token does not prove is refused, and the proxy says
//! why and stays unready. The token is read again on every reconnect, as
//! kubelet rotates projected tokens.

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

fn free_port() -> u16 {
    kube_harness::free_port().expect("free port")
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET on loopback: (status, body), or None when nothing answered.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// A mesh root that survives a control-plane restart.
fn mesh_root(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "test mesh root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).expect("root");
    let (cert_path, key_path) = (dir.join("root.pem"), dir.join("root.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write root");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

struct ControlPlane {
    _proc: Killed,
    debug: u16,
}

fn control_plane(dir: &Path, tls: u16, root: &(PathBuf, PathBuf), log: &str) -> ControlPlane {
    let debug = free_port();
    let bin = kube_harness::workspace_bin("control-plane").expect("control-plane binary");
    let child = Command::new(bin)
        .args(["--revision", "dev", "--source", &format!("dir:{}", dir.join("mesh").display()), "--poll-interval", "100ms"])
        .args(["--xds-listen", &format!("127.0.0.1:{}", free_port()), "--tls-listen", &format!("127.0.0.1:{tls}"), "--debug-listen", &format!("127.0.0.1:{debug}")])
        .args(["--ca-cert", &root.0.display().to_string(), "--ca-key", &root.1.display().to_string()])
        .args(["--ca-bootstrap-tokens", &dir.join("tokens").display().to_string()])
        .stderr(std::fs::File::create(dir.join(log)).expect("log"))
        .spawn()
        .expect("control plane starts");
    let cp = ControlPlane { _proc: Killed(child), debug };
    wait("the control plane", Duration::from_secs(20), || get(debug, "/ready").is_some_and(|(s, _)| s == 200));
    cp
}

struct Sidecar {
    _proc: Killed,
    ready: u16,
    log: PathBuf,
    node: String,
}

fn sidecar(dir: &Path, tls: u16, root: &Path, pod: &str, service_account: &str, token: &Path) -> Sidecar {
    let bin = kube_harness::workspace_bin("sidecar").expect("sidecar binary");
    let (ready, log) = (free_port(), dir.join(format!("{pod}.log")));
    let child = Command::new(bin)
        .args(["run", "--revision", "dev", "--control-plane", &format!("127.0.0.1:{tls}"), "--control-plane-name", "localhost"])
        .args(["--ca-root", &root.display().to_string(), "--token-path", &token.display().to_string()])
        .args(["--pod-name", pod, "--pod-namespace", "demo", "--service-account", service_account, "--capture", "false"])
        .args(["--outbound-listen", &format!("127.0.0.1:{}", free_port()), "--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()), "--ready-listen", &format!("127.0.0.1:{ready}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("sidecar starts");
    Sidecar { _proc: Killed(child), ready, log, node: format!("sidecar~~{pod}.demo~demo.svc.cluster.local") }
}

impl Sidecar {
    fn is_ready(&self) -> bool {
        get(self.ready, "/healthz/ready").is_some_and(|(s, _)| s == 200)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn served(cp: &ControlPlane, node: &str) -> bool {
    get(cp.debug, "/debug/syncz").is_some_and(|(_, body)| body.contains(&format!("\"{node}\"")))
}

#[test]
fn the_sidecar_authenticates_to_xds_with_its_rotating_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("mesh")).expect("mesh");
    std::fs::write(
        d.join("mesh/web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .expect("service");
    std::fs::write(d.join("tokens"), "token-of-demo-app-0001 demo/app\ntoken-of-demo-app-0002 demo/app\n").expect("tokens");
    let token = d.join("app.token");
    std::fs::write(&token, "token-of-demo-app-0001\n").expect("token");
    let root = mesh_root(d);
    let tls = free_port();
    let cp = control_plane(d, tls, &root, "cp.log");

    // Its own service account: served, and ready (config and certificate).
    let app = sidecar(d, tls, &root.0, "app-0", "app", &token);
    wait("the sidecar to be ready", Duration::from_secs(30), || app.is_ready());
    assert!(served(&cp, &app.node), "{}", app.log());

    // A service account its token does not prove: refused, and it says why.
    let impostor = sidecar(d, tls, &root.0, "impostor-0", "admin", &token);
    let why = "authenticated as demo/app (service-account token) but claims to be demo/admin";
    wait("the impostor to be refused", Duration::from_secs(30), || impostor.log().contains(why));
    assert!(impostor.log().contains("permission"), "the status is PERMISSION_DENIED: {}", impostor.log());
    assert!(!impostor.is_ready() && !served(&cp, &impostor.node));

    // The token is read again on every reconnect: a revoked one is refused after
    // the control plane restarts, and the rotated one is accepted.
    drop(impostor);
    drop(cp);
    std::fs::write(&token, "token-revoked-00000001\n").expect("token");
    let cp = control_plane(d, tls, &root, "cp-2.log");
    wait("the revoked token to be refused", Duration::from_secs(30), || app.log().contains("the token was not accepted: send a current projected service-account token"));
    assert!(!served(&cp, &app.node));
    std::fs::write(&token, "token-of-demo-app-0002\n").expect("token");
    wait("the rotated token to be accepted", Duration::from_secs(30), || served(&cp, &app.node));
    assert!(app.is_ready(), "the proxy kept its config through the outage");
    let logs = format!("{}{}", std::fs::read_to_string(d.join("cp.log")).unwrap_or_default(), std::fs::read_to_string(d.join("cp-2.log")).unwrap_or_default());
    assert!(!logs.contains("token-of-demo-app") && !app.log().contains("token-of-demo-app"), "a token reached a log");
}
