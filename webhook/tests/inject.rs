//! The injection decision and patch, applied to real pod shapes.

use rollouts::Rollouts;
use serde_json::{json, Value};
use webhook::inject::{decide, InjectorConfig, NamespaceContext, Outcome, Skip, Status};

const ROLLOUTS: &str = r#"
apiVersion: revmesh.io/v1
kind: Rollouts
versions:
  1-24-5: {proxyImage: registry.example/revmesh/sidecar:1.24.5}
  1-25-2: {proxyImage: registry.example/revmesh/sidecar:1.25.2}
rules:
  - namespaces: ["canary-*"]
    hashBy: workload
    distribution: {1-25-2: 100}
  - namespaces: ["*"]
    distribution: {1-24-5: 100}
"#;

fn rollouts() -> Rollouts {
    rollouts::parse(ROLLOUTS).expect("test rollouts")
}

fn ns(namespace: &str) -> NamespaceContext<'_> {
    NamespaceContext { namespace, pin: None, disabled: false }
}

/// A pod as the ReplicaSet controller submits it: generateName, no name.
fn replicaset_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c8f5-",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f5", "controller": true, "uid": "u"}]
        },
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    })
}

fn apply(pod: &Value, outcome: &Outcome) -> Value {
    let Outcome::Inject { patch, .. } = outcome else { panic!("expected injection, got {outcome:?}") };
    let mut out = pod.clone();
    let ops: json_patch::Patch = serde_json::from_value(Value::Array(patch.clone())).expect("patch is JSONPatch");
    json_patch::patch(&mut out, &ops).expect("patch applies");
    out
}

fn names(v: &Value, field: &str) -> Vec<String> {
    v["spec"][field].as_array().map(|a| a.iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect()).unwrap_or_default()
}

#[test]
fn injects_proxy_init_volumes_label_and_status() {
    let pod = replicaset_pod();
    let outcome = decide(&pod, ns("canary-eu"), None, &rollouts(), &InjectorConfig::default());
    let out = apply(&pod, &outcome);
    assert_eq!(out["metadata"]["labels"]["revmesh.io/rev"], "1-25-2");
    assert_eq!(names(&out, "containers"), ["app", "revmesh-proxy"]);
    assert_eq!(names(&out, "initContainers"), ["revmesh-init"]);
    assert_eq!(names(&out, "volumes"), ["revmesh-token", "revmesh-certs", "revmesh-ca-root"]);

    let proxy = &out["spec"]["containers"][1];
    assert_eq!(proxy["image"], "registry.example/revmesh/sidecar:1.25.2");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    assert!(proxy["args"].as_array().expect("args").iter().any(|a| a == "control-plane-1-25-2.revmesh-system.svc:15012"));
    let env: Vec<&str> = proxy["env"].as_array().expect("env").iter().map(|e| e["name"].as_str().unwrap_or("")).collect();
    for needed in ["POD_NAME", "POD_NAMESPACE", "SERVICE_ACCOUNT", "REVMESH_REVISION"] {
        assert!(env.contains(&needed), "{needed} missing from {env:?}");
    }
    let init = &out["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], "init");
    assert_eq!(init["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(init["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(out["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"], "revmesh-ca");

    let status: Status = serde_json::from_str(out["metadata"]["annotations"]["revmesh.io/status"].as_str().expect("status")).expect("status JSON");
    assert_eq!(status.version, "1-25-2");
    assert_eq!(status.reason, "rule");
    assert_eq!(status.hash_key.as_deref(), Some("canary-eu/web"));
    assert_eq!(status.workload, "Deployment/web");
}

#[test]
fn never_injects_twice() {
    let pod = replicaset_pod();
    let once = apply(&pod, &decide(&pod, ns("a"), None, &rollouts(), &InjectorConfig::default()));
    assert_eq!(decide(&once, ns("a"), None, &rollouts(), &InjectorConfig::default()), Outcome::Skip(Skip::AlreadyInjected));
}

#[test]
fn keeps_existing_init_containers_volumes_and_escapes_keys() {
    let mut pod = replicaset_pod();
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "tool"}]);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    pod["metadata"]["annotations"] = json!({"team.io/owner": "x"});
    let out = apply(&pod, &decide(&pod, ns("a"), None, &rollouts(), &InjectorConfig::default()));
    assert_eq!(names(&out, "initContainers"), ["migrate", "revmesh-init"]);
    assert_eq!(names(&out, "volumes"), ["data", "revmesh-token", "revmesh-certs", "revmesh-ca-root"]);
    assert_eq!(out["metadata"]["annotations"]["team.io/owner"], "x");
    assert!(out["metadata"]["annotations"]["revmesh.io/status"].is_string());
}

#[test]
fn bare_pod_without_labels_or_annotations() {
    let pod = json!({"metadata": {"name": "debug"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let outcome = decide(&pod, ns("default"), None, &rollouts(), &InjectorConfig::default());
    let out = apply(&pod, &outcome);
    assert_eq!(out["metadata"]["labels"]["revmesh.io/rev"], "1-24-5");
}

#[test]
fn skips_host_network_opt_out_and_system_namespaces() {
    let cfg = InjectorConfig::default();
    let mut host = replicaset_pod();
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(decide(&host, ns("a"), None, &rollouts(), &cfg), Outcome::Skip(Skip::HostNetwork));
    let mut opted = replicaset_pod();
    opted["metadata"]["labels"]["sidecar.revmesh.io/inject"] = json!("false");
    assert!(matches!(decide(&opted, ns("a"), None, &rollouts(), &cfg), Outcome::Skip(Skip::Policy(_))));
    assert!(matches!(decide(&replicaset_pod(), ns("kube-system"), None, &rollouts(), &cfg), Outcome::Skip(Skip::Policy(_))));
}

#[test]
fn pins_choose_the_version() {
    let cfg = InjectorConfig::default();
    let mut pinned = replicaset_pod();
    pinned["metadata"]["labels"]["revmesh.io/rev"] = json!("1-25-2");
    let out = apply(&pinned, &decide(&pinned, ns("default"), None, &rollouts(), &cfg));
    assert_eq!(out["spec"]["containers"][1]["image"], "registry.example/revmesh/sidecar:1.25.2");
    let pinned_ns = NamespaceContext { namespace: "default", pin: Some("1-25-2"), disabled: false };
    let Outcome::Inject { status, .. } = decide(&replicaset_pod(), pinned_ns, None, &rollouts(), &cfg) else { panic!() };
    assert_eq!((status.version.as_str(), status.reason.as_str()), ("1-25-2", "namespace-pin"));
}

#[test]
fn invalid_annotation_or_unknown_pin_denies_with_a_message_naming_it() {
    let cfg = InjectorConfig::default();
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({"sidecar.revmesh.io/proxyCPU": "lots"});
    let Outcome::Deny { message } = decide(&pod, ns("a"), None, &rollouts(), &cfg) else { panic!() };
    assert!(message.contains("sidecar.revmesh.io/proxyCPU"), "{message}");
    let mut pod = replicaset_pod();
    pod["metadata"]["labels"]["revmesh.io/rev"] = json!("9-9-9");
    let Outcome::Deny { message } = decide(&pod, ns("a"), None, &rollouts(), &cfg) else { panic!() };
    assert!(message.contains("9-9-9") && message.contains("1-24-5"), "{message}");
}

#[test]
fn overrides_reach_the_containers() {
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({
        "sidecar.revmesh.io/proxyMemory": "128Mi",
        "sidecar.revmesh.io/logLevel": "debug",
        "sidecar.revmesh.io/excludeOutboundPorts": "5432",
        "sidecar.revmesh.io/excludeOutboundIPRanges": "169.254.169.254/32",
        "sidecar.revmesh.io/excludeInboundPorts": "9000",
    });
    let out = apply(&pod, &decide(&pod, ns("a"), None, &rollouts(), &InjectorConfig::default()));
    let proxy = &out["spec"]["containers"][1];
    assert_eq!(proxy["resources"]["requests"]["memory"], "128Mi");
    assert!(proxy["args"].as_array().expect("args").contains(&json!("debug")));
    let init_args: Vec<&str> = out["spec"]["initContainers"][0]["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    let joined = init_args.join(" ");
    assert!(joined.contains("--exclude-outbound-ports 5432"), "{joined}");
    assert!(joined.contains("--exclude-outbound-ip-ranges 169.254.169.254/32"), "{joined}");
    assert!(joined.contains("--exclude-inbound-ports 15020,15021,9000"), "{joined}");
}

#[test]
fn pods_of_another_mesh_are_skipped_naming_the_container_and_never_get_a_second_proxy() {
    let cfg = InjectorConfig::default();
    for (field, name) in [
        ("containers", "istio-proxy"),
        ("initContainers", "istio-init"),
        ("initContainers", "istio-proxy"), // Istio's native sidecar
        ("containers", "linkerd-proxy"),
        ("initContainers", "linkerd-init"),
        ("initContainers", "linkerd-network-validator"),
    ] {
        let mut pod = replicaset_pod();
        pod["spec"][field] = json!([{"name": name, "image": "other-mesh/proxy"}]);
        if field == "initContainers" {
            pod["spec"]["containers"] = json!([{"name": "app", "image": "nginx"}]);
        }
        let outcome = decide(&pod, ns("a"), None, &rollouts(), &cfg);
        assert_eq!(outcome, Outcome::Skip(Skip::OtherMesh { container: name.into() }), "{field} {name}");
        let Outcome::Skip(skip) = outcome else { unreachable!() };
        assert_eq!(skip.metric_label(), "other-mesh");
        assert!(skip.explain().contains(name), "{}", skip.explain());
    }
    // A container merely named like a mesh is not one.
    let mut pod = replicaset_pod();
    pod["spec"]["containers"] = json!([{"name": "istio-proxy-exporter", "image": "x"}]);
    assert!(matches!(decide(&pod, ns("a"), None, &rollouts(), &cfg), Outcome::Inject { .. }));
}

#[test]
fn istio_opt_out_label_or_annotation_skips_the_pod() {
    let cfg = InjectorConfig::default();
    for (field, value, skipped) in [("labels", "false", true), ("annotations", "false", true), ("labels", "False", true), ("annotations", "true", false)] {
        let mut pod = replicaset_pod();
        pod["metadata"][field]["sidecar.istio.io/inject"] = json!(value);
        let outcome = decide(&pod, ns("a"), None, &rollouts(), &cfg);
        assert_eq!(outcome == Outcome::Skip(Skip::IstioOptOut), skipped, "{field}={value}: {outcome:?}");
    }
    assert_eq!(Skip::IstioOptOut.metric_label(), "istio-opted-out");
}

#[test]
fn a_resource_override_across_the_default_limit_or_request_is_denied_naming_the_annotation() {
    let cfg = InjectorConfig::default();
    for (annotations, named, hint) in [
        (json!({"sidecar.revmesh.io/proxyCPU": "4"}), "sidecar.revmesh.io/proxyCPU=", "sidecar.revmesh.io/proxyCPULimit"),
        (json!({"sidecar.revmesh.io/proxyMemory": "512Mi"}), "sidecar.revmesh.io/proxyMemory=", "sidecar.revmesh.io/proxyMemoryLimit"),
        (json!({"sidecar.revmesh.io/proxyCPULimit": "50m"}), "sidecar.revmesh.io/proxyCPULimit=", "sidecar.revmesh.io/proxyCPU "),
    ] {
        let mut pod = replicaset_pod();
        pod["metadata"]["annotations"] = annotations.clone();
        let Outcome::Deny { message } = decide(&pod, ns("a"), None, &rollouts(), &cfg) else { panic!("{annotations} must be denied") };
        assert!(message.contains(named) && message.contains(hint), "{message}");
    }
    // With the other side set too, the proxy gets exactly what was asked.
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({"sidecar.revmesh.io/proxyCPU": "4", "sidecar.revmesh.io/proxyCPULimit": "6"});
    let out = apply(&pod, &decide(&pod, ns("a"), None, &rollouts(), &cfg));
    assert_eq!(out["spec"]["containers"][1]["resources"], json!({"requests": {"cpu": "4", "memory": "64Mi"}, "limits": {"cpu": "6", "memory": "256Mi"}}));
}

#[test]
fn an_unknown_pin_of_a_megabyte_is_quoted_cut() {
    let mut pod = replicaset_pod();
    pod["metadata"]["labels"]["revmesh.io/rev"] = json!("v".repeat(1024 * 1024));
    let Outcome::Deny { message } = decide(&pod, ns("a"), None, &rollouts(), &InjectorConfig::default()) else { panic!("denied") };
    assert!(message.len() < 1024 && message.contains("(1048576 bytes in all)"), "{}", &message[..message.len().min(300)]);
}

#[test]
fn http_probes_of_app_containers_go_through_the_proxy_which_knows_the_originals() {
    let mut pod = replicaset_pod();
    pod["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
    pod["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2});
    pod["spec"]["containers"][0]["livenessProbe"] = json!({"httpGet": {"path": "/live", "port": 9000, "httpHeaders": [{"name": "X-Probe", "value": "1"}]}});
    pod["spec"]["containers"][0]["startupProbe"] = json!({"httpGet": {"path": "/tls", "port": 8443, "scheme": "HTTPS"}});
    let out = apply(&pod, &decide(&pod, ns("default"), None, &rollouts(), &InjectorConfig::default()));
    let app = &out["spec"]["containers"][0];
    assert_eq!(app["readinessProbe"], json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 2}));
    assert_eq!(app["livenessProbe"]["httpGet"], json!({"path": "/app-health/app/livez", "port": 15020, "scheme": "HTTP"}));
    // HTTPS probes are not rewritten: the proxy would have to speak TLS to the app.
    assert_eq!(app["startupProbe"]["httpGet"]["port"], 8443);
    let env = out["spec"]["containers"][1]["env"].as_array().expect("env");
    let probes = env.iter().find(|e| e["name"] == "REVMESH_APP_PROBES").and_then(|e| e["value"].as_str()).expect("REVMESH_APP_PROBES");
    let probes: Value = serde_json::from_str(probes).expect("JSON");
    assert_eq!(
        probes,
        json!({
            "/app-health/app/readyz": {"port": 8080, "path": "/healthz", "headers": []},
            "/app-health/app/livez": {"port": 9000, "path": "/live", "headers": [{"name": "X-Probe", "value": "1"}]},
        })
    );
}

#[test]
fn holding_the_app_puts_the_proxy_first_with_a_wait_hook() {
    let mut pod = replicaset_pod();
    pod["metadata"]["annotations"] = json!({"sidecar.revmesh.io/holdApplicationUntilProxyStarts": "true"});
    let out = apply(&pod, &decide(&pod, ns("default"), None, &rollouts(), &InjectorConfig::default()));
    assert_eq!(names(&out, "containers"), ["revmesh-proxy", "app"]);
    assert_eq!(out["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"], json!(["sidecar", "wait", "--timeout", "120s"]));
    // Without the annotation the proxy comes last and has no hook.
    let plain = replicaset_pod();
    let out = apply(&plain, &decide(&plain, ns("default"), None, &rollouts(), &InjectorConfig::default()));
    assert_eq!(names(&out, "containers"), ["app", "revmesh-proxy"]);
    assert!(out["spec"]["containers"][1]["lifecycle"].is_null());
}
