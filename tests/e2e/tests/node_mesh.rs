//! The mesh on a real node (kubelet, kube-proxy, kube-scheduler 1.20 and
//! containerd, from `kube_harness::node`), installed as the README says:
//! images built here and loaded into the runtime, `charts/base` and
//! `charts/control-plane` rendered by the real Helm library, and two meshed
//! workloads injected by the webhook pod. Needs root (run by `.ci/run`).

use anyhow::{bail, Context, Result};
use kube_harness::node::Node;
use kube_harness::{wait_for, workspace_bin};
use revmesh_e2e::node::{exec, install_mesh, load_images, meshed_namespace, netns_of, pod, pod_names, proxy_image, rollouts_yaml, server_manifest, sidecar_endpoints, A, B, SERVER_PROXY_CPU};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(180);

fn get(node: &Node, namespace: &str, from_pod: &str, url: &str) -> Result<Value> {
    let body = exec(node, namespace, from_pod, "app", &["mesh-app", "get", url])?;
    serde_json::from_str(&body).with_context(|| format!("{url} answered no JSON: {body}"))
}

fn proxy_status(node: &Node) -> Result<Value> {
    let cluster = node.cluster()?;
    let out = Command::new(workspace_bin("meshctl")?).args(["-o", "json", "proxy-status"]).env("KUBECONFIG", &cluster.kubeconfig).output()?;
    if !out.status.success() {
        bail!("meshctl proxy-status failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_mesh_carries_traffic_between_pods_on_a_real_node() -> Result<()> {
    Node::run(|node| {
        let dir = tempfile::tempdir()?;
        let started = Instant::now();
        let images = load_images(node, &dir.path().join("images"))?;
        for want in ["revmesh.local/pause:3.2", &proxy_image(A), &proxy_image(B), "revmesh.local/control-plane:dev", "revmesh.local/webhook:dev", "revmesh.local/mesh-app:dev"] {
            if !images.iter().any(|i| i == want) {
                bail!("the runtime lacks {want}; it has {images:?}");
            }
        }
        eprintln!("images loaded after {:?}", started.elapsed());

        // 3. Installed as the README says; the pods of both charts run.
        let rollouts = rollouts_yaml("  - namespaces: [\"*\"]\n    distribution: {1-24-5: 100}\n");
        install_mesh(node, dir.path(), &rollouts, &[A])?;
        eprintln!("mesh installed after {:?}", started.elapsed());
        let cluster = node.cluster()?;
        cluster.kubectl(&["-n", "revmesh-system", "get", "secret", "revmesh-ca"]).context("the control plane made no mesh root Secret")?;

        // 4. Two meshed workloads and one outside the mesh.
        meshed_namespace(node, "shop")?;
        node.cluster_mut()?.kubectl(&["create", "namespace", "plain"])?;
        node.cluster_mut()?.wait_for_service_account("plain")?;
        let cluster = node.cluster()?;
        wait_for("ConfigMap revmesh-ca-root in shop", WAIT, || Ok(cluster.kubectl(&["-n", "shop", "get", "configmap", "revmesh-ca-root"]).ok().map(|_| ())))?;
        let mut manifests = server_manifest("shop", "server", 1, "server");
        manifests.push_str("---\n");
        manifests.push_str(&server_manifest("shop", "client", 1, "client"));
        manifests.push_str("---\n");
        manifests.push_str(&server_manifest("plain", "outsider", 1, "outsider"));
        manifests.push_str("---\n");
        // A STRICT server: plaintext callers are refused.
        let vault = server_manifest("shop", "vault", 1, "vault");
        let strict_vault = vault.replace(SERVER_PROXY_CPU, &format!("{SERVER_PROXY_CPU}, sidecar.revmesh.io/inboundMode: STRICT"));
        if strict_vault == vault {
            bail!("server_manifest no longer carries {SERVER_PROXY_CPU:?}: the vault would not be STRICT");
        }
        manifests.push_str(&strict_vault);
        cluster.kubectl_input(&["apply", "-f", "-"], Some(&manifests))?;
        for (ns, app) in [("shop", "server"), ("shop", "client"), ("plain", "outsider"), ("shop", "vault")] {
            node.wait_ready(ns, &format!("app={app}"), 1, WAIT)?;
        }
        eprintln!("workloads ready after {:?}", started.elapsed());

        let server = pod_names(node, "shop", "app=server")?.remove(0);
        let client = pod_names(node, "shop", "app=client")?.remove(0);
        let outsider = pod_names(node, "plain", "app=outsider")?.remove(0);
        let server_pod = pod(node, "shop", &server)?;
        let containers: Vec<&str> = server_pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
        if containers != ["app", "revmesh-proxy"] || server_pod["metadata"]["labels"]["revmesh.io/rev"] != A {
            bail!("the webhook pod did not inject the server as expected: containers {containers:?}, labels {}", server_pod["metadata"]["labels"]);
        }
        let init = &server_pod["status"]["initContainerStatuses"][0];
        if init["name"] != "revmesh-init" || init["state"]["terminated"]["exitCode"] != 0 {
            bail!("the init container did not finish cleanly: {init}");
        }
        let outsider_pod = pod(node, "plain", &outsider)?;
        if outsider_pod["spec"]["containers"].as_array().map(Vec::len) != Some(1) {
            bail!("a pod outside the opted-in namespaces was injected");
        }

        // The init container installed the capture rules in the pod's network namespace.
        let ip = server_pod["status"]["podIP"].as_str().context("server has no IP")?;
        let netns = netns_of(ip)?;
        let rules = String::from_utf8_lossy(&Command::new("ip").args(["netns", "exec", &netns, "iptables-save", "-t", "nat"]).output()?.stdout).into_owned();
        for want in ["--to-ports 15006", "--to-ports 15001", "--uid-owner 1337"] {
            if !rules.contains(want) {
                bail!("the server pod's nat table lacks {want:?}:\n{rules}");
            }
        }

        // Client → server through both sidecars over mTLS: the server sees the
        // client's verified SPIFFE identity (set by its sidecar, never by the caller).
        let answer = get(node, "shop", &client, "http://server.shop.svc.cluster.local/hello")?;
        if answer["peer_identity"] != "spiffe://cluster.local/ns/shop/sa/client" || answer["pod"] != server.as_str() {
            bail!("client → server answered {answer}");
        }
        // A pod without a sidecar reaches the PERMISSIVE server as plaintext,
        // with no identity; the STRICT one refuses it.
        let plain = get(node, "plain", &outsider, "http://server.shop.svc.cluster.local/hello")?;
        if !plain["peer_identity"].is_null() {
            bail!("a plaintext caller was given an identity: {plain}");
        }
        let strict = exec(node, "plain", &outsider, "app", &["mesh-app", "get", "http://vault.shop.svc.cluster.local/secret"]);
        if strict.is_ok() {
            bail!("the STRICT server answered a caller without a sidecar: {strict:?}");
        }
        let meshed = get(node, "shop", &client, "http://vault.shop.svc.cluster.local/secret")?;
        if meshed["peer_identity"] != "spiffe://cluster.local/ns/shop/sa/client" {
            bail!("client → STRICT server answered {meshed}");
        }

        // Each proxy is connected to its revision's control-plane pod and ACKed.
        let status = proxy_status(node)?;
        for p in [&server, &client] {
            let row = status["proxies"].as_array().into_iter().flatten().find(|r| r["name"].as_str().is_some_and(|n| n.contains(p.as_str())));
            let Some(row) = row else { bail!("proxy-status does not list {p}: {status}") };
            if row["revision"] != A {
                bail!("{p} is connected to {} instead of {A}: {row}", row["revision"]);
            }
        }

        // Readiness on 15021 gates the pod: with no control plane to give it a
        // certificate and config, a new server pod runs but is not Ready (and
        // gets no traffic); once the control plane is back, it is.
        node.cluster()?.kubectl(&["-n", "revmesh-system", "scale", "deployment", &format!("control-plane-{A}"), "--replicas=0"])?;
        wait_for("the control-plane pod to go", WAIT, || Ok(pod_names(node, "revmesh-system", &format!("revmesh.io/control-plane={A}"))?.is_empty().then_some(())))?;
        node.cluster()?.kubectl(&["-n", "shop", "scale", "deployment", "server", "--replicas=2"])?;
        let gated = wait_for("a second server pod whose app is ready and proxy is not", WAIT, || {
            for name in pod_names(node, "shop", "app=server")? {
                let p = pod(node, "shop", &name)?;
                let statuses = p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
                let ready_of = |c: &str| statuses.iter().find(|s| s["name"] == c).map(|s| s["ready"] == true);
                if name != server && ready_of("app") == Some(true) && ready_of("revmesh-proxy") == Some(false) {
                    return Ok(Some(name));
                }
            }
            Ok(None)
        })?;
        std::thread::sleep(Duration::from_secs(5));
        let p = pod(node, "shop", &gated)?;
        if p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True") {
            bail!("a pod whose proxy has no config is Ready: {}", p["status"]);
        }
        let gated_ip = p["status"]["podIP"].as_str().context("the gated pod has no IP")?.to_string();
        let endpoints = node.cluster()?.get_json(&["-n", "shop", "get", "endpoints", "server"])?;
        let ready_ips: Vec<&str> = endpoints["subsets"].as_array().into_iter().flatten().flat_map(|s| s["addresses"].as_array().into_iter().flatten()).filter_map(|a| a["ip"].as_str()).collect();
        if ready_ips.contains(&gated_ip.as_str()) {
            bail!("the unready pod {gated_ip} is a ready endpoint: {endpoints}");
        }
        // Traffic to the ready pod keeps flowing meanwhile, on the last config.
        get(node, "shop", &client, "http://server.shop.svc.cluster.local/no-control-plane")?;
        node.cluster()?.kubectl(&["-n", "revmesh-system", "scale", "deployment", &format!("control-plane-{A}"), "--replicas=1"])?;
        node.wait_ready("shop", "app=server", 2, WAIT)?;
        node.cluster()?.kubectl(&["-n", "shop", "scale", "deployment", "server", "--replicas=1"])?;
        let server = wait_for("one server pod left", WAIT, || {
            let mut names = pod_names(node, "shop", "app=server")?;
            Ok((names.len() == 1).then(|| names.remove(0)))
        })?;
        node.wait_ready("shop", "app=server", 1, WAIT)?;
        // The client's sidecar has been told the other pod is gone before its
        // control plane goes away (else it would keep that endpoint through the outage).
        let server_ip = pod(node, "shop", &server)?["status"]["podIP"].as_str().context("server has no IP")?.to_string();
        let client_ip = pod(node, "shop", &client)?["status"]["podIP"].as_str().context("client has no IP")?.to_string();
        wait_for("the client's sidecar to hold only the remaining server endpoint", WAIT, || {
            let endpoints = sidecar_endpoints(&client_ip, "server.shop")?;
            Ok((!endpoints.is_empty() && endpoints.iter().all(|e| e.starts_with(&format!("{server_ip}:")))).then_some(()))
        })?;

        // Deleting the control-plane pod: traffic keeps flowing on the last
        // config, and the sidecars reconnect to the new pod.
        let cp_before = pod_names(node, "revmesh-system", &format!("revmesh.io/control-plane={A}"))?;
        node.cluster()?.kubectl(&["-n", "revmesh-system", "delete", "pod", &cp_before[0], "--wait=false"])?;
        let outage = Instant::now();
        let mut served = 0;
        while outage.elapsed() < Duration::from_secs(10) {
            let answer = get(node, "shop", &client, "http://server.shop.svc.cluster.local/during-outage")
                .with_context(|| format!("request {} while the control-plane pod was replaced ({:?} after its deletion)", served + 1, outage.elapsed()))?;
            if answer["peer_identity"] != "spiffe://cluster.local/ns/shop/sa/client" {
                bail!("during the control-plane restart the server answered {answer}");
            }
            served += 1;
        }
        node.wait_ready("revmesh-system", &format!("app=control-plane,revmesh.io/control-plane={A}"), 1, WAIT)?;
        let cp_after = pod_names(node, "revmesh-system", &format!("revmesh.io/control-plane={A}"))?;
        if cp_after == cp_before {
            bail!("the control-plane pod was not replaced");
        }
        wait_for("both sidecars to reconnect to the new control-plane pod", WAIT, || {
            let status = proxy_status(node)?;
            let connected = [&server, &client]
                .iter()
                .filter(|p| status["proxies"].as_array().into_iter().flatten().any(|r| r["name"].as_str().is_some_and(|n| n.contains(p.as_str()))))
                .count();
            Ok((connected == 2).then_some(()))
        })?;
        let answer = get(node, "shop", &client, "http://server.shop.svc.cluster.local/after")?;
        if answer["peer_identity"] != "spiffe://cluster.local/ns/shop/sa/client" {
            bail!("after the control-plane restart the server answered {answer}");
        }
        eprintln!("{served} requests served while the control-plane pod was replaced; done after {:?}", started.elapsed());

        // Nothing left loopback and the rig's subnet.
        let violations = node.egress_violations()?;
        if !violations.is_empty() {
            bail!("traffic left the rig's networks:\n{}", violations.join("\n"));
        }
        Ok(())
    })
}
