//! Installing Revmesh on the harness's real node the way the README tells a
//! user to: images built from this workspace's binaries and loaded into the
//! node's runtime (there is no registry), the charts rendered by the real
//! Helm library and applied, workloads injected by the webhook pod.

use anyhow::{bail, Context, Result};
use kube_harness::node::Node;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The tag every image of this build gets on the node.
pub const TAG: &str = "dev";
/// The two mesh versions the node tests install side by side.
pub const A: &str = "1-24-5";
pub const B: &str = "1-25-2";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Cargo profile directory the running test was built into.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().and_then(Path::parent).context("test executable has no target directory")?.to_path_buf())
}

/// Builds the images (`tests/harness/images.py`) into `out` and imports them
/// into the node's runtime. Returns the image references the runtime holds.
pub fn load_images(node: &Node, out: &Path) -> Result<Vec<String>> {
    let status = Command::new("python3")
        .arg(repo_root().join("tests/harness/images.py"))
        .arg("--out")
        .arg(out)
        .arg("--target-dir")
        .arg(profile_dir()?)
        .args(["--tag", TAG, "--sidecar-versions", &format!("{A},{B}")])
        .output()
        .context("running tests/harness/images.py")?;
    if !status.status.success() {
        bail!("building images failed:\n{}\n{}", String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr));
    }
    let mut archives: Vec<PathBuf> = std::fs::read_dir(out)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "tar")).collect();
    archives.sort();
    if archives.is_empty() {
        bail!("tests/harness/images.py wrote no .tar into {}", out.display());
    }
    for a in &archives {
        node.import_image(a)?;
    }
    node.images()
}

/// Renders a chart with the real Helm library (`tests/helm/render.py`).
pub fn render(chart: &str, release: &str, namespace: &str, args: &[&str]) -> Result<String> {
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("tests/helm/render.py"))
        .arg(root.join("charts").join(chart))
        .args(["--name", release, "--namespace", namespace])
        .args(args)
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("rendering charts/{chart} failed (pip install helm-python-sdk):\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// rollouts.yml naming the locally built proxy images of both versions.
pub fn rollouts_yaml(rules: &str) -> String {
    format!(
        "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  {A}: {{proxyImage: {}}}\n  {B}: {{proxyImage: {}}}\nrules:\n{rules}",
        proxy_image(A),
        proxy_image(B)
    )
}

/// The proxy image of a mesh version: tagged with the version's dotted form
/// (`1-24-5` → `1.24.5`), as `tests/harness/images.py` tags it.
pub fn proxy_image(version: &str) -> String {
    format!("revmesh.local/sidecar:{}", version.replace('-', "."))
}

/// Installs `charts/base` (webhook pod with its generated certificate) and
/// one `charts/control-plane` release per revision, then waits for their pods.
pub fn install_mesh(node: &mut Node, dir: &Path, rollouts: &str, revisions: &[&str]) -> Result<()> {
    let cluster = node.cluster()?;
    let kubeconfig = cluster.kubeconfig.display().to_string();
    cluster.kubectl(&["create", "namespace", "revmesh-system"])?;
    let rollouts_file = dir.join("rollouts.yml");
    std::fs::write(&rollouts_file, rollouts)?;
    let base = render(
        "base",
        "revmesh-base",
        "revmesh-system",
        &[
            "--kubeconfig",
            &kubeconfig,
            "--set",
            "webhook.image.repository=revmesh.local/webhook",
            "--set",
            &format!("webhook.image.tag={TAG}"),
            "--set",
            "webhook.replicas=1",
            // The harness runs Kubernetes 1.20, which predates policy/v1 PodDisruptionBudgets.
            "--set",
            "webhook.podDisruptionBudget=false",
            "--set",
            "webhook.reloadInterval=500ms",
            "--set-file",
            &format!("rollouts={}", rollouts_file.display()),
        ],
    )?;
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&base))?;
    for rev in revisions {
        let cp = render(
            "control-plane",
            &format!("control-plane-{rev}"),
            "revmesh-system",
            &[
                "--kubeconfig",
                &kubeconfig,
                "--set",
                &format!("revision={rev}"),
                "--set",
                "image.repository=revmesh.local/control-plane",
                "--set",
                &format!("image.tag={TAG}"),
                "--set",
                "replicas=1",
                "--set",
                "podDisruptionBudget=false",
            ],
        )?;
        cluster.kubectl_input(&["apply", "-f", "-"], Some(&cp))?;
    }
    node.wait_ready("revmesh-system", "app=revmesh-webhook", 1, Duration::from_secs(180))?;
    for rev in revisions {
        node.wait_ready("revmesh-system", &format!("app=control-plane,revmesh.io/control-plane={rev}"), 1, Duration::from_secs(180))?;
    }
    Ok(())
}

/// A namespace that opted in to injection, with its service accounts' tokens.
pub fn meshed_namespace(node: &mut Node, name: &str) -> Result<()> {
    let cluster = node.cluster_mut()?;
    cluster.kubectl(&["create", "namespace", name])?;
    cluster.kubectl(&["label", "namespace", name, "revmesh.io/inject=enabled"])?;
    cluster.wait_for_service_account(name)
}

/// The proxy CPU annotation of [`server_manifest`]'s pods, for tests that add
/// annotations beside it.
pub const SERVER_PROXY_CPU: &str = "sidecar.revmesh.io/proxyCPU: 20m";

/// A Deployment + Service running `mesh-app serve` (HTTP on 8080, Service port 80).
pub fn server_manifest(namespace: &str, name: &str, replicas: u32, service_account: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {service_account}, namespace: {namespace}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
      # The test node has 2 cores: at the default 100m per proxy it fits
      # fewer than 20 meshed pods. Small requests, but not none: the node's
      # containers get CPU weight from their requests (cgroup v1 shares), and
      # the API server, etcd, kubelet and containerd beside them run at full
      # weight, so a container with no request (weight 2) can wait seconds
      # for a core while pods are being replaced.
      annotations: {{{SERVER_PROXY_CPU}}}
    spec:
      serviceAccountName: {service_account}
      terminationGracePeriodSeconds: 20
      containers:
        - name: app
          image: revmesh.local/mesh-app:{TAG}
          imagePullPolicy: IfNotPresent
          args: [serve, --port, "8080", --name, {name}]
          resources: {{requests: {{cpu: 20m}}}}
          env:
            - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
            - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
          ports: [{{name: http, containerPort: 8080}}]
          # A pod's only replica that misses three probes in a row leaves
          # its Service with no endpoint. The node is 2 cores shared with its
          # own control plane: the probe may wait 3 s, not the default 1 s.
          readinessProbe:
            httpGet: {{path: /healthz, port: 8080}}
            periodSeconds: 2
            timeoutSeconds: 3
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    )
}

/// Runs a command in a pod's container (`kubectl exec`), returning stdout.
pub fn exec(node: &Node, namespace: &str, pod: &str, container: &str, command: &[&str]) -> Result<String> {
    let mut args = vec!["-n", namespace, "exec", pod, "-c", container, "--"];
    args.extend_from_slice(command);
    node.cluster()?.kubectl(&args)
}

/// Names of the pods matching `selector` that are not being deleted (a
/// terminating pod stays listed until its containers stop).
pub fn pod_names(node: &Node, namespace: &str, selector: &str) -> Result<Vec<String>> {
    let list = node.cluster()?.get_json(&["-n", namespace, "get", "pods", "-l", selector])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

/// The endpoints the sidecar of `pod_ip` holds for each cluster whose name
/// contains `service` (read from its admin port inside the pod's network namespace).
pub fn sidecar_endpoints(pod_ip: &str, service: &str) -> Result<Vec<String>> {
    let netns = netns_of(pod_ip)?;
    let out = Command::new("ip").args(["netns", "exec", &netns, "curl", "-s", "--max-time", "5", "http://127.0.0.1:15000/config_dump"]).output()?;
    let dump: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("the sidecar of {pod_ip} gave no config dump: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(dump["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.contains(service)))
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect())
}

/// The network namespace (under `ip netns`) holding `pod_ip`.
pub fn netns_of(pod_ip: &str) -> Result<String> {
    let list = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout).into_owned();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let addrs = Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show"]).output()?;
        if String::from_utf8_lossy(&addrs.stdout).contains(&format!("inet {pod_ip}/")) {
            return Ok(ns.to_string());
        }
    }
    bail!("no network namespace holds {pod_ip}")
}

/// One pod's JSON.
pub fn pod(node: &Node, namespace: &str, name: &str) -> Result<Value> {
    node.cluster()?.get_json(&["-n", namespace, "get", "pod", name])
}
