//! The canary upgrade of running pods under live traffic, on a real node:
//! 20 server workloads in 5 namespaces, a load pod sending a steady stream
//! to every one of them through the mesh, and `meshctl upgrade start →
//! restart → advance (100%) → rollback --to-zero → advance → finish`, with
//! rollouts.yml in Git synced to the webhook's ConfigMap after each commit
//! (the test plays the GitOps tool). The target is zero failed requests; every
//! failure is reported with its cause. Needs root (run by `.ci/run`).
//!
//! `REVMESH_UPGRADE_REPORT=FILE` writes the figures as JSON
//! (`tests/bench/upgrade.sh` prints them).

use anyhow::{bail, Context, Result};
use kube_harness::node::Node;
use kube_harness::{wait_for, workspace_bin};
use revmesh_e2e::{git, workloads_on};
use revmesh_e2e::node::{exec, install_mesh, load_images, meshed_namespace, pod_names, rollouts_yaml, server_manifest, A, B, TAG};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NAMESPACES: usize = 5;
const APPS: [&str; 4] = ["web", "api", "cart", "search"];
/// Requests per second over all 20 workloads together.
const RATE: u32 = 40;
const WAIT: Duration = Duration::from_secs(240);
const STATS_PORT: u16 = 9090;

struct Meshctl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    rollouts: PathBuf,
}

impl Meshctl {
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin).args(args).env("KUBECONFIG", &self.kubeconfig).env("REVMESH_ROLLOUTS", &self.rollouts).output().context("running meshctl")?;
        if !out.status.success() {
            bail!("meshctl {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let text = self.ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("meshctl {args:?} printed no JSON: {text}"))
    }
}


/// The GitOps sync: the committed rollouts.yml becomes the webhook's ConfigMap.
fn sync_configmap(node: &Node, rollouts: &Path) -> Result<()> {
    let cluster = node.cluster()?;
    let cm = cluster.kubectl(&["-n", "revmesh-system", "create", "configmap", "revmesh-rollouts", &format!("--from-file=rollouts.yml={}", rollouts.display()), "--dry-run=client", "-o", "yaml"])?;
    cluster.kubectl_input(&["apply", "-f", "-"], Some(&cm))?;
    Ok(())
}

/// What runs one workload's pod: its proxy image's version, the version the
/// proxy itself reports, and the revision whose control plane it is connected to.
#[derive(Debug, PartialEq, Eq)]
struct PodMesh {
    image_version: String,
    reported_version: String,
    connected_to: String,
}

/// Per workload (`namespace/app`), what its pod runs.
fn fleet(node: &Node, meshctl: &Meshctl, keys: &[String]) -> Result<BTreeMap<String, PodMesh>> {
    let cluster = node.cluster()?;
    let pods = cluster.get_json(&["get", "pods", "--all-namespaces", "-l", "app"])?;
    let status = meshctl.json(&["proxy-status"])?;
    let mut out = BTreeMap::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let (Some(ns), Some(app), Some(name)) = (pod["metadata"]["namespace"].as_str(), pod["metadata"]["labels"]["app"].as_str(), pod["metadata"]["name"].as_str()) else {
            continue;
        };
        let key = format!("{ns}/{app}");
        if !keys.contains(&key) {
            continue;
        }
        let image = pod["spec"]["containers"].as_array().into_iter().flatten().find(|c| c["name"] == "revmesh-proxy").and_then(|c| c["image"].as_str()).unwrap_or("none");
        // Proxy node ids read `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
        let row = status["proxies"].as_array().into_iter().flatten().find(|p| p["name"].as_str().is_some_and(|n| n.contains(&format!("~{name}.{ns}~"))));
        let field = |f: &str| row.and_then(|r| r[f].as_str()).unwrap_or("none").to_string();
        out.insert(
            key,
            PodMesh {
                // The image's tag and the reported version are the version's dotted form (see `proxy_image`).
                image_version: image.rsplit(':').next().unwrap_or("none").replace('.', "-"),
                reported_version: field("proxyVersion").replace('.', "-"),
                connected_to: field("revision"),
            },
        );
    }
    Ok(out)
}

/// Waits until exactly `on_b` runs B's proxy, reporting B and connected to
/// B's control plane, and every other workload A's; one pod each.
fn check_fleet(node: &Node, meshctl: &Meshctl, keys: &[String], on_b: &BTreeSet<String>) -> Result<()> {
    wait_for("the fleet to match rollouts.yml", Duration::from_secs(60), || {
        let fleet = fleet(node, meshctl, keys)?;
        let mut wrong = Vec::new();
        for key in keys {
            let want = if on_b.contains(key) { B } else { A };
            let expected = PodMesh { image_version: want.into(), reported_version: want.into(), connected_to: want.into() };
            match fleet.get(key) {
                Some(have) if *have == expected => {}
                other => wrong.push(format!("{key}: want {want}, have {other:?}")),
            }
        }
        if wrong.is_empty() {
            Ok(Some(()))
        } else {
            Err(anyhow::anyhow!("{} workloads differ, e.g. {}", wrong.len(), wrong[0]))
        }
    })
}

fn load_stats(node: &Node, load_pod: &str) -> Result<Value> {
    let text = exec(node, "loadgen", load_pod, "app", &["mesh-app", "get", &format!("http://127.0.0.1:{STATS_PORT}/stats")])?;
    serde_json::from_str(&text).with_context(|| format!("/stats printed no JSON: {text}"))
}

fn load_manifest(targets: &[String]) -> String {
    let args: Vec<String> = targets.iter().map(|t| format!("--target={t}")).collect();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: load, namespace: loadgen}}
spec:
  replicas: 1
  selector: {{matchLabels: {{run: load}}}}
  template:
    # The load generator is the measuring instrument: with a CPU weight near
    # the minimum its timers fired seconds late whenever the node was busy
    # replacing pods, and on-time answers were counted as timeouts.
    metadata: {{labels: {{run: load}}, annotations: {{sidecar.revmesh.io/proxyCPU: 200m, sidecar.revmesh.io/holdApplicationUntilProxyStarts: "true"}}}}
    spec:
      containers:
        - name: app
          image: revmesh.local/mesh-app:{TAG}
          imagePullPolicy: IfNotPresent
          resources: {{requests: {{cpu: 300m}}}}
          args: [load, --rate, "{RATE}", --stats-port, "{STATS_PORT}", --timeout, 5s, --window, 5s, {args}]
"#,
        args = args.join(", ")
    )
}

/// One line per target that failed: how many, between which times, in
/// which upgrade step (by wall clock), and the first failure's detail.
fn failures_by_target(failures: &Value, steps: &[Value]) -> Vec<String> {
    let mut by_target: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for f in failures.as_array().into_iter().flatten() {
        by_target.entry(f["target"].as_str().unwrap_or("?")).or_default().push(f);
    }
    let step_at = |unix_ms: u64| {
        steps.iter().rev().find(|s| s["started_unix_ms"].as_u64().is_some_and(|start| start <= unix_ms)).and_then(|s| s["step"].as_str()).unwrap_or("before the upgrade")
    };
    by_target
        .into_iter()
        .map(|(target, fs)| {
            let first = fs[0];
            let last = fs[fs.len() - 1];
            format!(
                "  {target}: {} failed from {:.1} s to {:.1} s (step {:?}), first: {} after {:.0} ms",
                fs.len(),
                first["at_s"].as_f64().unwrap_or(f64::NAN),
                last["at_s"].as_f64().unwrap_or(f64::NAN),
                step_at(first["unix_ms"].as_u64().unwrap_or(0)),
                first["detail"].as_str().unwrap_or("?"),
                first["latency_ms"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect()
}

#[test]
fn a_canary_upgrade_under_live_traffic_loses_no_request() -> Result<()> {
    Node::run(|node| {
        let dir = tempfile::tempdir()?;
        let t0 = Instant::now();
        load_images(node, &dir.path().join("images"))?;

        let repo = dir.path().join("gitops");
        std::fs::create_dir_all(&repo)?;
        let rollouts_path = repo.join("rollouts.yml");
        let rollouts = rollouts_yaml(&format!(
            "  # Teams move workload by workload.\n  - namespaces: [\"team-*\"]\n    hashBy: workload\n    distribution: {{{A}: 100}}\n  - namespaces: [\"*\"]\n    distribution: {{{A}: 100}}\n"
        ));
        std::fs::write(&rollouts_path, &rollouts)?;
        git(&repo, &["init", "-q"])?;
        for (k, v) in [("user.email", "platform@example.com"), ("user.name", "Platform team")] {
            git(&repo, &["config", k, v])?;
        }
        git(&repo, &["add", "rollouts.yml"])?;
        git(&repo, &["commit", "-q", "-m", "rollouts: everything on 1-24-5"])?;
        install_mesh(node, dir.path(), &rollouts, &[A, B])?;

        // 20 server workloads; the load generator's namespace is pinned to B
        // so the upgrade does not restart it (and `finish` can retire A).
        let mut keys = Vec::new();
        let mut manifests = String::new();
        for i in 0..NAMESPACES {
            let ns = format!("team-{i}");
            meshed_namespace(node, &ns)?;
            for app in APPS {
                keys.push(format!("{ns}/{app}"));
                // The app keeps serving for 3 s after SIGTERM (its endpoint is
                // being withdrawn from every proxy meanwhile), like a preStop sleep.
                manifests.push_str(&server_manifest(&ns, app, 1, app).replace("--name, ", "--shutdown-delay, 3s, --name, "));
                manifests.push_str("---\n");
            }
        }
        meshed_namespace(node, "loadgen")?;
        node.logged_namespaces.push("loadgen".into());
        node.cluster()?.kubectl(&["label", "namespace", "loadgen", &format!("revmesh.io/rev={B}")])?;
        node.cluster()?.kubectl_input(&["apply", "-f", "-"], Some(&manifests))?;
        for i in 0..NAMESPACES {
            for app in APPS {
                node.wait_ready(&format!("team-{i}"), &format!("app={app}"), 1, WAIT)?;
            }
        }
        let targets: Vec<String> = keys.iter().map(|k| k.split_once('/').map(|(ns, app)| format!("http://{app}.{ns}.svc.cluster.local/upgrade")).unwrap_or_default()).collect();
        node.cluster()?.kubectl_input(&["apply", "-f", "-"], Some(&load_manifest(&targets)))?;
        node.wait_ready("loadgen", "run=load", 1, WAIT)?;
        let load_pod = pod_names(node, "loadgen", "run=load")?.remove(0);
        let fleet_ready = t0.elapsed();

        let meshctl = Meshctl { bin: workspace_bin("meshctl")?, kubeconfig: node.cluster()?.kubeconfig.clone(), rollouts: rollouts_path.clone() };
        check_fleet(node, &meshctl, &keys, &BTreeSet::new())?;

        // Steady state first: the latency the upgrade is compared with.
        std::thread::sleep(Duration::from_secs(20));
        let steady = load_stats(node, &load_pod)?;
        let steady_windows = steady["windows"].as_array().map(Vec::len).unwrap_or(0);
        if steady["ok"].as_u64().unwrap_or(0) < u64::from(RATE) * 10 {
            bail!("the load generator is not sending: {steady}");
        }

        // The upgrade, step by step; after each commit the ConfigMap is synced
        // and `restart` rolls exactly the workloads whose version changed.
        let mut steps = Vec::new();
        let plan: [(&str, &[&str]); 6] = [
            ("start 10%", &["upgrade", "start", "--to", B, "--steps", "10,100", "--commit"]),
            ("advance 100%", &["upgrade", "advance", "--commit"]),
            ("rollback to 0%", &["upgrade", "rollback", "--to-zero", "--commit"]),
            ("advance 10%", &["upgrade", "advance", "--commit"]),
            ("advance 100%", &["upgrade", "advance", "--commit"]),
            ("finish", &["upgrade", "finish", "--commit"]),
        ];
        let mut previous: BTreeSet<String> = BTreeSet::new();
        for (name, args) in plan {
            let step_start = Instant::now();
            // Wall-clock start, to line failures (`unix_ms`) up with steps.
            let step_unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            if name == "finish" {
                // `finish` refuses while a pod of A is still terminating (its
                // proxy stays connected to A until the app has exited): a user
                // runs it again, and so does the test.
                wait_for("meshctl upgrade finish to be accepted", Duration::from_secs(90), || Ok(meshctl.ok(args).ok()))?;
            } else {
                meshctl.ok(args)?;
            }
            let text = std::fs::read_to_string(&rollouts_path)?;
            // After `finish`, B is the only version: every workload is "on B".
            let on_b = if name == "finish" { keys.iter().cloned().collect() } else { workloads_on(&text, &keys, B)? };
            sync_configmap(node, &rollouts_path)?;
            let moved = on_b.symmetric_difference(&previous).count();
            if name != "finish" {
                meshctl.ok(&["upgrade", "restart", "--max-in-flight", "4", "--timeout-seconds", "300"])?;
            }
            check_fleet(node, &meshctl, &keys, &on_b)?;
            let took = step_start.elapsed();
            eprintln!("step {name}: {} on B, {moved} workloads moved, {:.1} s from unix_ms {step_unix_ms}", on_b.len(), took.as_secs_f64());
            steps.push(json!({"step": name, "on_b": on_b.len(), "moved": moved, "seconds": took.as_secs_f64(), "started_unix_ms": step_unix_ms}));
            previous = on_b;
        }
        if previous.len() != keys.len() {
            bail!("after finish {} of {} workloads are on B", previous.len(), keys.len());
        }

        // Let the last restarts' traffic settle into the stats, then judge.
        std::thread::sleep(Duration::from_secs(6));
        let stats = load_stats(node, &load_pod)?;
        let windows = stats["windows"].as_array().cloned().unwrap_or_default();
        let (steady_part, upgrade_part) = windows.split_at(steady_windows.min(windows.len()));
        let p = |ws: &[Value], field: &str| -> f64 {
            let mut v: Vec<f64> = ws.iter().filter_map(|w| w["latency"][field].as_f64()).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let restarted_pods: usize = steps.iter().filter_map(|s| s["moved"].as_u64()).sum::<u64>() as usize;
        let upgrade_seconds: f64 = steps.iter().filter_map(|s| s["seconds"].as_f64()).sum();
        let report = json!({
            "workloads": keys.len(),
            "rate_per_second": RATE,
            "requests_ok": stats["ok"],
            "requests_failed": stats["failed"],
            "failures_by_cause": stats["failures_by_cause"],
            "failures": stats["failures"],
            "latency_overall": stats["latency"],
            "steady_median_window_p50_ms": p(steady_part, "p50_ms"),
            "steady_median_window_p99_ms": p(steady_part, "p99_ms"),
            "upgrade_median_window_p50_ms": p(upgrade_part, "p50_ms"),
            "upgrade_median_window_p99_ms": p(upgrade_part, "p99_ms"),
            "upgrade_worst_window_p99_ms": upgrade_part.iter().filter_map(|w| w["latency"]["p99_ms"].as_f64()).fold(0.0, f64::max),
            "steps": steps,
            "pods_restarted": restarted_pods,
            "pods_per_minute": restarted_pods as f64 / (upgrade_seconds / 60.0),
            "fleet_ready_seconds": fleet_ready.as_secs_f64(),
        });
        eprintln!("{}", serde_json::to_string_pretty(&report)?);
        if let Some(path) = std::env::var_os("REVMESH_UPGRADE_REPORT") {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
        let violations = node.egress_violations()?;
        if !violations.is_empty() {
            bail!("traffic left the rig's networks:\n{}", violations.join("\n"));
        }
        if stats["failed"].as_u64() != Some(0) {
            // Every failure is in the report above; the error (which CI shows
            // whole) says which services failed, when, and in which step.
            bail!("{} requests failed during the upgrade (causes {}):\n{}", stats["failed"], stats["failures_by_cause"], failures_by_target(&stats["failures"], &steps).join("\n"));
        }
        if stats["ok"].as_u64().unwrap_or(0) < steady["ok"].as_u64().unwrap_or(0) + u64::from(RATE) * upgrade_seconds as u64 / 2 {
            bail!("the load generator sent too little during the upgrade to judge it: {}", stats["ok"]);
        }
        Ok(())
    })
}
