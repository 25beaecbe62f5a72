//! The injection decision and the JSONPatch that carries it out. Pure: a pod as
//! JSON and the rollouts in force go in, an [`Outcome`] comes out.

use crate::overrides::{self, Overrides};
use rollouts::labels::{POD_INJECT_LABEL, REV_LABEL, STATUS_ANNOTATION};
use rollouts::workload::{self, OwnerRef, PodMeta, Workload};
use rollouts::{Evaluation, PodFacts, Reason, Rollouts, SkipReason, VersionName};
use serde::Serialize;
use serde_json::{json, Map, Value};

pub const PROXY_CONTAINER: &str = "revmesh-proxy";
pub const INIT_CONTAINER: &str = "revmesh-init";
pub const TOKEN_VOLUME: &str = "revmesh-token";
pub const CERTS_VOLUME: &str = "revmesh-certs";
pub const CA_ROOT_VOLUME: &str = "revmesh-ca-root";

/// Cluster-wide injection settings (flags of the webhook, `meshctl inject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectorConfig {
    pub proxy_uid: u32,
    pub outbound_capture_port: u16,
    pub inbound_capture_port: u16,
    pub admin_port: u16,
    pub metrics_port: u16,
    pub readiness_port: u16,
    /// Audience of the projected token the proxy presents to the CA.
    pub token_audience: String,
    pub token_expiration_seconds: u32,
    /// ConfigMap holding the mesh root certificate, in every namespace.
    pub ca_root_configmap: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    pub log_level: String,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            proxy_uid: 1337,
            outbound_capture_port: 15001,
            inbound_capture_port: 15006,
            admin_port: 15000,
            metrics_port: 15020,
            readiness_port: 15021,
            token_audience: "revmesh-ca".into(),
            token_expiration_seconds: 43_200,
            ca_root_configmap: "revmesh-ca-root".into(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: "2".into(),
            memory_limit: "256Mi".into(),
            log_level: "info".into(),
        }
    }
}

/// Where the webhook learnt about the pod's namespace (from the URL path the
/// MutatingWebhookConfiguration's namespaceSelector sends it to).
#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceContext<'a> {
    pub namespace: &'a str,
    /// The namespace's `revmesh.io/rev` label value.
    pub pin: Option<&'a str>,
    /// The namespace has `revmesh.io/inject=disabled`.
    pub disabled: bool,
}

/// Why a pod was left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    HostNetwork,
    AlreadyInjected,
    /// The pod already carries another mesh's proxy or init container (named):
    /// a second proxy would fight the first over the pod's traffic.
    OtherMesh { container: String },
    /// Istio's opt-out, `sidecar.istio.io/inject: "false"` (label or
    /// annotation), honoured so that workloads kept out of Istio stay out of
    /// Revmesh while a namespace migrates.
    IstioOptOut,
    Policy(SkipReason),
}

/// Containers and init containers that other meshes inject: Istio's proxy (a
/// container, or a native sidecar among the init containers), its init and
/// CNI validation containers, and Linkerd's proxy, init and CNI validator.
pub const OTHER_MESH_CONTAINERS: &[&str] = &["istio-proxy", "istio-init", "istio-validation", "linkerd-proxy", "linkerd-init", "linkerd-network-validator"];

/// Istio's per-pod injection switch (a label since Istio 1.10, an annotation before).
pub const ISTIO_INJECT: &str = "sidecar.istio.io/inject";

impl Skip {
    pub fn explain(&self) -> String {
        match self {
            Skip::HostNetwork => "hostNetwork pods share the node's network and cannot be captured".into(),
            Skip::AlreadyInjected => format!("the pod already carries {STATUS_ANNOTATION} or a {PROXY_CONTAINER} container"),
            Skip::OtherMesh { container } => {
                format!("the pod already has another mesh's {container} container; remove that mesh's injection (or label the pod {POD_INJECT_LABEL}=\"false\") before moving it to Revmesh")
            }
            Skip::IstioOptOut => format!("{ISTIO_INJECT}=\"false\" opts the pod out of injection (honoured during a migration from Istio)"),
            Skip::Policy(r) => r.explain().into(),
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Skip::HostNetwork => "host-network",
            Skip::AlreadyInjected => "already-injected",
            Skip::OtherMesh { .. } => "other-mesh",
            Skip::IstioOptOut => "istio-opted-out",
            Skip::Policy(SkipReason::SystemNamespace) => "system-namespace",
            Skip::Policy(SkipReason::PodOptedOut) => "pod-opted-out",
            Skip::Policy(SkipReason::NamespaceDisabled) => "namespace-disabled",
        }
    }
}

/// The injection record written to `revmesh.io/status`: what was decided and
/// exactly what was added, so injection is idempotent and can be undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    /// `rule`, `pod-pin` or `namespace-pin`.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash_key: Option<String>,
    pub workload: String,
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

// One Outcome per admission, moved once: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Skip(Skip),
    Inject { version: VersionName, status: Status, patch: Vec<Value> },
    Deny { message: String },
}

/// Decides what to do with `pod` (the AdmissionRequest object, a v1 Pod).
/// `workload` is given when the caller knows it better than the pod's owner
/// references can tell (offline injection of a Deployment's template).
pub fn decide(pod: &Value, ns: NamespaceContext<'_>, workload: Option<Workload>, rollouts: &Rollouts, cfg: &InjectorConfig) -> Outcome {
    let metadata = pod.get("metadata").and_then(Value::as_object);
    let spec = pod.get("spec").and_then(Value::as_object);
    let labels = metadata.and_then(|m| m.get("labels")).and_then(Value::as_object);
    let annotations = metadata.and_then(|m| m.get("annotations")).and_then(Value::as_object);
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);

    let Some(spec) = spec else {
        return Outcome::Deny { message: "the pod has no spec".into() };
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Outcome::Skip(Skip::HostNetwork);
    }
    let already = annotations.is_some_and(|a| a.contains_key(STATUS_ANNOTATION))
        || containers(spec, "containers").any(|c| c == PROXY_CONTAINER)
        || containers(spec, "initContainers").any(|c| c == INIT_CONTAINER);
    if already {
        return Outcome::Skip(Skip::AlreadyInjected);
    }
    let other_mesh = containers(spec, "containers")
        .chain(containers(spec, "initContainers"))
        .find_map(|c| OTHER_MESH_CONTAINERS.iter().find(|known| **known == c));
    if let Some(container) = other_mesh {
        return Outcome::Skip(Skip::OtherMesh { container: (*container).to_string() });
    }
    let istio_says_no = |m: Option<&Map<String, Value>>| m.and_then(|m| m.get(ISTIO_INJECT)).and_then(Value::as_str).is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    if istio_says_no(labels) || istio_says_no(annotations) {
        return Outcome::Skip(Skip::IstioOptOut);
    }

    let workload = workload.unwrap_or_else(|| workload::derive(&pod_meta(metadata, labels)));
    let facts = PodFacts {
        namespace: ns.namespace,
        workload: &workload.name,
        pod_pin: label(REV_LABEL).filter(|v| !v.is_empty()),
        namespace_pin: ns.pin,
        pod_opted_out: label(POD_INJECT_LABEL) == Some("false"),
        namespace_disabled: ns.disabled,
    };
    let (version, reason, hash_key) = match rollouts.evaluate(&facts) {
        Evaluation::Skip { reason } => return Outcome::Skip(Skip::Policy(reason)),
        Evaluation::UnknownPinnedVersion { version, pinned_by, known } => {
            let by = match pinned_by {
                Reason::NamespacePin => format!("namespace {} label {REV_LABEL}", crate::echo::cut(ns.namespace, 253)),
                _ => format!("pod label {REV_LABEL}"),
            };
            return Outcome::Deny {
                message: format!(
                    "{by}={} names a mesh version that rollouts.yml does not define (known: {}); fix the label or add the version to rollouts.yml",
                    crate::echo::quoted(&version),
                    crate::echo::cut(&known.join(", "), 400)
                ),
            };
        }
        Evaluation::Assigned { version, reason, hash_key } => (version, reason, hash_key),
    };
    let defaults = overrides::ResourceDefaults {
        cpu_request: &cfg.cpu_request,
        cpu_limit: &cfg.cpu_limit,
        memory_request: &cfg.memory_request,
        memory_limit: &cfg.memory_limit,
    };
    let overrides = match overrides::parse(annotations).and_then(|o| overrides::check_against_defaults(&o, &defaults).map(|()| o)) {
        Ok(o) => o,
        Err(e) => return Outcome::Deny { message: format!("revmesh sidecar injection: {e}") },
    };
    let image = rollouts.versions.get(&version).map(|s| s.proxy_image.clone()).unwrap_or_default();
    let control_plane = rollouts.control_plane_address(&version);

    let (rule, pattern, reason_name) = match &reason {
        Reason::Rule { index, pattern, .. } => (Some(*index), Some(pattern.clone()), "rule"),
        Reason::PodPin => (None, None, "pod-pin"),
        Reason::NamespacePin => (None, None, "namespace-pin"),
    };
    let status = Status {
        version: version.to_string(),
        reason: reason_name.into(),
        rule,
        pattern,
        hash_key,
        workload: format!("{}/{}", workload.kind, workload.name),
        init_containers: vec![INIT_CONTAINER.into()],
        containers: vec![PROXY_CONTAINER.into()],
        volumes: vec![TOKEN_VOLUME.into(), CERTS_VOLUME.into(), CA_ROOT_VOLUME.into()],
    };
    let status_json = serde_json::to_string(&status).unwrap_or_default();

    let mut patch = Vec::new();
    add_to_map(&mut patch, labels, "/metadata/labels", REV_LABEL, json!(version.as_str()));
    add_to_map(&mut patch, annotations, "/metadata/annotations", STATUS_ANNOTATION, json!(status_json));
    let app_probes = rewrite_app_probes(&mut patch, spec, cfg.metrics_port);
    append(&mut patch, spec, "initContainers", vec![init_container(cfg, &image, &overrides)]);
    let proxy = proxy_container(cfg, &version, &image, &control_plane, &overrides, &app_probes);
    if overrides.hold_application {
        // The kubelet starts containers in order and waits for a postStart
        // hook before the next: first in the list, the proxy holds the app
        // back until it is ready.
        let mut proxy = proxy;
        proxy["lifecycle"] = json!({"postStart": {"exec": {"command": ["sidecar", "wait", "--timeout", "120s"]}}});
        patch.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
    } else {
        append(&mut patch, spec, "containers", vec![proxy]);
    }
    append(&mut patch, spec, "volumes", volumes(cfg));
    Outcome::Inject { version, status, patch }
}

fn containers<'a>(spec: &'a Map<String, Value>, field: &str) -> impl Iterator<Item = &'a str> {
    spec.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
}

fn pod_meta<'a>(metadata: Option<&'a Map<String, Value>>, labels: Option<&'a Map<String, Value>>) -> PodMeta<'a> {
    let field = |k: &str| metadata.and_then(|m| m.get(k)).and_then(Value::as_str);
    let owners = metadata
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| {
            Some(OwnerRef {
                kind: o.get("kind")?.as_str()?.to_string(),
                name: o.get("name")?.as_str()?.to_string(),
                controller: o.get("controller").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect();
    PodMeta {
        name: field("name"),
        generate_name: field("generateName"),
        owners,
        pod_template_hash: labels.and_then(|l| l.get("pod-template-hash")).and_then(Value::as_str),
    }
}

/// RFC 6901 escaping of one path segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn add_to_map(patch: &mut Vec<Value>, existing: Option<&Map<String, Value>>, path: &str, key: &str, value: Value) {
    if existing.is_some() {
        patch.push(json!({"op": "add", "path": format!("{path}/{}", escape(key)), "value": value}));
    } else {
        patch.push(json!({"op": "add", "path": path, "value": {key: value}}));
    }
}

fn append(patch: &mut Vec<Value>, spec: &Map<String, Value>, field: &str, items: Vec<Value>) {
    if spec.get(field).and_then(Value::as_array).is_some() {
        for item in items {
            patch.push(json!({"op": "add", "path": format!("/spec/{field}/-"), "value": item}));
        }
    } else {
        patch.push(json!({"op": "add", "path": format!("/spec/{field}"), "value": items}));
    }
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

fn init_container(cfg: &InjectorConfig, image: &str, o: &Overrides) -> Value {
    // The proxy's own ports are never captured inbound, so probes and scrapes reach it.
    let mut inbound_excluded = vec![cfg.metrics_port, cfg.readiness_port];
    inbound_excluded.extend(&o.exclude_inbound_ports);
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".into(),
        cfg.proxy_uid.to_string(),
        "--outbound-port".into(),
        cfg.outbound_capture_port.to_string(),
        "--inbound-port".into(),
        cfg.inbound_capture_port.to_string(),
        "--exclude-inbound-ports".into(),
        join(inbound_excluded),
    ];
    if !o.exclude_outbound_ports.is_empty() {
        args.extend(["--exclude-outbound-ports".into(), join(&o.exclude_outbound_ports)]);
    }
    if !o.exclude_outbound_ip_ranges.is_empty() {
        args.extend(["--exclude-outbound-ip-ranges".into(), join(&o.exclude_outbound_ip_ranges)]);
    }
    json!({
        "name": INIT_CONTAINER,
        "image": image,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            // iptables needs root in the pod's network namespace, and only these two capabilities.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The kubelet probes the pod's IP, and the proxy captures that traffic: a
/// STRICT proxy would refuse the plaintext probe, and a PERMISSIVE one would
/// answer for the app. As Istio does, each app container's HTTP probe is sent
/// to the proxy's metrics port at `/app-health/<container>/<kind>`, and the
/// proxy asks the app on localhost (which is not captured). Returns what the
/// proxy needs to know (`REVMESH_APP_PROBES`): path → the original port,
/// path and headers. HTTPS probes and probes of ports that cannot be resolved
/// are left as they are.
fn rewrite_app_probes(patch: &mut Vec<Value>, spec: &Map<String, Value>, metrics_port: u16) -> Map<String, Value> {
    let mut probes = Map::new();
    let containers = spec.get("containers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (index, container) in containers.iter().enumerate() {
        let Some(name) = container.get("name").and_then(Value::as_str) else { continue };
        for (field, kind) in [("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz")] {
            let Some(get) = container.get(field).and_then(|p| p.get("httpGet")) else { continue };
            if get.get("scheme").and_then(Value::as_str).is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                continue;
            }
            let port = match get.get("port") {
                Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                Some(Value::String(named)) => named.parse::<u16>().ok().or_else(|| {
                    container.get("ports").and_then(Value::as_array).into_iter().flatten().find(|p| p.get("name").and_then(Value::as_str) == Some(named.as_str())).and_then(|p| p.get("containerPort")?.as_u64()).and_then(|p| u16::try_from(p).ok())
                }),
                _ => None,
            };
            let Some(port) = port else { continue };
            let health_path = format!("/app-health/{name}/{kind}");
            probes.insert(
                health_path.clone(),
                json!({"port": port, "path": get.get("path").and_then(Value::as_str).unwrap_or("/"), "headers": get.get("httpHeaders").cloned().unwrap_or(json!([]))}),
            );
            patch.push(json!({"op": "replace", "path": format!("/spec/containers/{index}/{field}/httpGet"), "value": {"path": health_path, "port": metrics_port, "scheme": "HTTP"}}));
        }
    }
    probes
}

fn proxy_container(cfg: &InjectorConfig, version: &VersionName, image: &str, control_plane: &str, o: &Overrides, app_probes: &Map<String, Value>) -> Value {
    let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let log_level = o.log_level.clone().unwrap_or_else(|| cfg.log_level.clone());
    json!({
        "name": PROXY_CONTAINER,
        "image": image,
        "args": ["run", "--revision", version.as_str(), "--control-plane", control_plane, "--log-level", log_level],
        "env": [
            // Pods made from generateName have no name yet: the kubelet fills these in.
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("INSTANCE_IP", "status.podIP"),
            {"name": "REVMESH_REVISION", "value": version.as_str()},
            {"name": "REVMESH_CONTROL_PLANE", "value": control_plane},
            {"name": "REVMESH_TOKEN_PATH", "value": "/var/run/secrets/revmesh/tokens/revmesh-token"},
            {"name": "REVMESH_INBOUND_MODE", "value": o.inbound_mode.as_deref().unwrap_or("PERMISSIVE")},
            {"name": "REVMESH_APP_PROBES", "value": Value::Object(app_probes.clone()).to_string()},
        ],
        "ports": [
            {"name": "revmesh-metrics", "containerPort": cfg.metrics_port, "protocol": "TCP"},
            {"name": "revmesh-ready", "containerPort": cfg.readiness_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": cfg.readiness_port},
            "periodSeconds": 2,
            "timeoutSeconds": 1,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {
                "cpu": o.cpu_request.clone().unwrap_or_else(|| cfg.cpu_request.clone()),
                "memory": o.memory_request.clone().unwrap_or_else(|| cfg.memory_request.clone()),
            },
            "limits": {
                "cpu": o.cpu_limit.clone().unwrap_or_else(|| cfg.cpu_limit.clone()),
                "memory": o.memory_limit.clone().unwrap_or_else(|| cfg.memory_limit.clone()),
            },
        },
        "securityContext": {
            "runAsUser": cfg.proxy_uid,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": "/var/run/secrets/revmesh/tokens", "readOnly": true},
            {"name": CERTS_VOLUME, "mountPath": "/var/run/revmesh/certs"},
            {"name": CA_ROOT_VOLUME, "mountPath": "/var/run/revmesh/ca-root", "readOnly": true},
        ],
    })
}

fn volumes(cfg: &InjectorConfig) -> Vec<Value> {
    vec![
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.token_audience, "expirationSeconds": cfg.token_expiration_seconds, "path": "revmesh-token"}}]}}),
        json!({"name": CERTS_VOLUME, "emptyDir": {"medium": "Memory"}}),
        json!({"name": CA_ROOT_VOLUME, "configMap": {"name": cfg.ca_root_configmap, "optional": true}}),
    ]
}
