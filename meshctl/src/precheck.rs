//! `meshctl precheck` and `meshctl proxy-status`, and the checks that
//! `upgrade start` and `advance` run before they write anything.

use crate::cli::{Output, PrecheckArgs, ProxyStatusArgs};
use crate::cluster::{Cluster, ControlPlaneAccess, ProxySync, ROLLOUTS_CONFIGMAP, WEBHOOK_CONFIGURATION};
use crate::{block_on, load_rollouts, print_json};
use anyhow::{bail, Result};
use rollouts::labels::MESH_NAMESPACE;
use rollouts::Rollouts;
use serde::Serialize;
use serde_json::json;
use std::process::ExitCode;

/// The revision's Service exists and its control plane answers readiness.
pub async fn control_plane_ready(cluster: &Cluster, revision: &str) -> Result<()> {
    let service = format!("control-plane-{revision}");
    if !cluster.service_exists(&service).await? {
        bail!("Service {MESH_NAMESPACE}/{service} does not exist: install the revision with `helm install {service} charts/control-plane -n {MESH_NAMESPACE} --set revision={revision}`");
    }
    cluster.control_plane_get(revision, "/ready").await.map_err(|e| anyhow::anyhow!("control plane {revision} is installed but not ready: {e:#}"))?;
    Ok(())
}

/// The webhook's rollouts.yml (its ConfigMap) defines `version`, so it can inject it.
pub async fn webhook_knows(cluster: &Cluster, version: &str) -> Result<()> {
    let Some(text) = cluster.webhook_rollouts().await? else {
        bail!("ConfigMap {MESH_NAMESPACE}/{ROLLOUTS_CONFIGMAP} (the webhook's rollouts.yml) does not exist: install charts/base");
    };
    let theirs = rollouts::validate_bytes(text.as_bytes()).map_err(|e| anyhow::anyhow!("the webhook's rollouts.yml is invalid:\n{}", e.render_with_file(ROLLOUTS_CONFIGMAP)))?;
    if theirs.version(version).is_none() {
        let known: Vec<String> = theirs.versions.keys().map(|v| v.to_string()).collect();
        bail!("the webhook does not know version {version} yet (its rollouts.yml defines {}): sync the commit that adds it to ConfigMap {MESH_NAMESPACE}/{ROLLOUTS_CONFIGMAP} first", known.join(", "));
    }
    Ok(())
}

/// Rules that can match the same namespace make the order of rules decide,
/// which an upgrade step would silently depend on.
pub fn overlap_problems(r: &Rollouts) -> Vec<String> {
    rollouts::pattern::overlaps(&r.rules)
        .into_iter()
        .map(|(i, p, j, q)| format!("rules[{i}] (line {}) pattern {p:?} and rules[{j}] (line {}) pattern {q:?} can match the same namespace; rules[{i}] wins. Make the patterns disjoint", r.rules[i].line, r.rules[j].line))
        .collect()
}

/// Everything `upgrade start`/`advance` need before moving workloads onto `to`.
pub async fn upgrade_prechecks(cluster: &Cluster, r: &Rollouts, to: &str) -> Result<()> {
    let mut problems = overlap_problems(r);
    if let Err(e) = control_plane_ready(cluster, to).await {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = webhook_knows(cluster, to).await {
        problems.push(format!("{e:#}"));
    }
    if !problems.is_empty() {
        bail!("prechecks failed; rollouts.yml was not changed:\n  - {}", problems.join("\n  - "));
    }
    Ok(())
}

#[derive(Serialize)]
struct Check {
    check: String,
    ok: bool,
    detail: String,
}

pub fn precheck(args: &PrecheckArgs, output: Output) -> Result<ExitCode> {
    let file = match &args.rollouts {
        Some(path) => Some(load_rollouts(path)?),
        None => None,
    };
    let checks = block_on(async {
        let mut checks = Vec::new();
        let mut add = |check: &str, result: Result<String>| {
            let (ok, detail) = match result {
                Ok(d) => (true, d),
                Err(e) => (false, format!("{e:#}")),
            };
            checks.push(Check { check: check.into(), ok, detail });
        };
        let cluster = match Cluster::connect(ControlPlaneAccess::from_args(&args.cluster)?).await {
            Ok(c) => c,
            Err(e) => {
                add("cluster reachable", Err(e));
                return Ok::<_, anyhow::Error>(checks);
            }
        };
        add("cluster reachable", Ok(String::new()));
        let ns = cluster.namespace_exists(MESH_NAMESPACE).await.and_then(|found| if found { Ok(String::new()) } else { bail!("create it: kubectl create namespace {MESH_NAMESPACE}") });
        add(&format!("namespace {MESH_NAMESPACE}"), ns);
        let mwc = cluster.webhook_configuration_exists().await.and_then(|found| if found { Ok(String::new()) } else { bail!("install charts/base") });
        add(&format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}"), mwc);
        let webhook = match cluster.webhook_rollouts().await {
            Ok(Some(text)) => rollouts::validate_bytes(text.as_bytes()).map_err(|e| anyhow::anyhow!("invalid:\n{}", e.render_with_file(ROLLOUTS_CONFIGMAP))),
            Ok(None) => Err(anyhow::anyhow!("missing: install charts/base")),
            Err(e) => Err(e),
        };
        let webhook_versions: Vec<String> = webhook.as_ref().map(|r| r.versions.keys().map(|v| v.to_string()).collect()).unwrap_or_default();
        add(&format!("webhook rollouts.yml ({ROLLOUTS_CONFIGMAP})"), webhook.as_ref().map(|_| format!("versions {}", webhook_versions.join(", "))).map_err(|e| anyhow::anyhow!("{e:#}")));
        let versions: Vec<String> = match &file {
            Some(r) => {
                let overlaps = overlap_problems(r);
                add("rules do not overlap", if overlaps.is_empty() { Ok(String::new()) } else { Err(anyhow::anyhow!("{}", overlaps.join("; "))) });
                for v in r.versions.keys() {
                    let known = webhook_versions.iter().any(|w| w == v.as_str());
                    add(&format!("webhook knows {v}"), if known { Ok(String::new()) } else { Err(anyhow::anyhow!("sync rollouts.yml to ConfigMap {ROLLOUTS_CONFIGMAP}")) });
                }
                r.versions.keys().map(|v| v.to_string()).collect()
            }
            None => webhook_versions.clone(),
        };
        for v in &versions {
            add(&format!("control plane {v} installed and ready"), control_plane_ready(&cluster, v).await.map(|_| String::new()));
        }
        Ok(checks)
    })??;
    let ok = checks.iter().all(|c| c.ok);
    if output == Output::Json {
        print_json(&json!({"ok": ok, "checks": checks}))?;
    } else {
        for c in &checks {
            let mark = if c.ok { "✔" } else { "✘" };
            if c.detail.is_empty() {
                println!("{mark} {}", c.check);
            } else {
                println!("{mark} {}: {}", c.check, c.detail);
            }
        }
        println!("{}", if ok { "all checks passed" } else { "some checks failed" });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// istioctl's words: SYNCED (ACKed what was sent), NOT SENT, STALE (sent,
/// not yet answered), NACKED.
fn sync_state(p: &ProxySync, short_type: &str) -> &'static str {
    match p.types.get(short_type) {
        None => "NOT SENT",
        Some(t) if t.last_nack.is_some() && t.acked_nonce != t.sent_nonce => "NACKED",
        Some(t) if t.sent_nonce.is_empty() => "NOT SENT",
        Some(t) if t.acked_nonce == t.sent_nonce => "SYNCED",
        Some(_) => "STALE",
    }
}

pub async fn revisions(cluster: &Cluster, named: &[String]) -> Result<Vec<String>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let mut revs: Vec<String> = cluster.access.overrides.keys().cloned().collect();
    let services = kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(cluster.client.clone(), MESH_NAMESPACE).list(&Default::default()).await?;
    revs.extend(services.items.into_iter().filter_map(|s| s.metadata.name?.strip_prefix("control-plane-").map(str::to_string)));
    revs.sort();
    revs.dedup();
    Ok(revs)
}

pub fn proxy_status(args: &ProxyStatusArgs, output: Output) -> Result<ExitCode> {
    let (rows, errors) = block_on(async {
        let cluster = Cluster::connect(ControlPlaneAccess::from_args(&args.cluster)?).await?;
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for rev in revisions(&cluster, &args.revision).await? {
            match cluster.syncz(&rev).await {
                Ok(proxies) => rows.extend(proxies),
                Err(e) => errors.push(format!("{rev}: {e:#}")),
            }
        }
        Ok::<_, anyhow::Error>((rows, errors))
    })??;
    const TYPES: [(&str, &str); 4] = [("CDS", "Cluster"), ("LDS", "Listener"), ("EDS", "ClusterLoadAssignment"), ("RDS", "RouteConfiguration")];
    if output == Output::Json {
        let proxies: Vec<_> = rows
            .iter()
            .map(|p| {
                let types: serde_json::Map<String, serde_json::Value> = TYPES.iter().map(|(name, t)| (name.to_string(), json!(sync_state(p, t)))).collect();
                json!({"name": p.id, "revision": p.revision, "proxyVersion": p.proxy_version, "mode": p.mode, "connectedUnixSeconds": p.connected_unix_seconds, "sync": types})
            })
            .collect();
        print_json(&json!({"proxies": proxies, "errors": errors}))?;
    } else {
        println!("{:<60} {:<10} {:<10} {:<9} {:<9} {:<9} {:<9} MODE", "NAME", "REVISION", "VERSION", "CDS", "LDS", "EDS", "RDS");
        for p in &rows {
            let s: Vec<&str> = TYPES.iter().map(|(_, t)| sync_state(p, t)).collect();
            println!("{:<60} {:<10} {:<10} {:<9} {:<9} {:<9} {:<9} {}", p.id, p.revision, p.proxy_version.as_deref().unwrap_or("-"), s[0], s[1], s[2], s[3], p.mode);
        }
        for e in &errors {
            eprintln!("unreachable control plane {e}");
        }
    }
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
