//! Shared pieces of Revmesh's end-to-end tests: the webhook as a real process,
//! its registration with the API server, small HTTP helpers, and (in [`node`])
//! installing the mesh on the harness's real node.

pub mod node;

use anyhow::{bail, Context, Result};
use base64::Engine;
use kube_harness::{free_port, tls::loopback_pki, wait_for, workspace_bin, Process};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The real `webhook` binary, serving on loopback with a throwaway certificate.
pub struct WebhookProcess {
    pub process: Process,
    pub port: u16,
    pub metrics_port: u16,
    pub rollouts_path: PathBuf,
    pub ca_pem: String,
}

impl WebhookProcess {
    pub fn start(dir: &Path, rollouts_yaml: &str) -> Result<WebhookProcess> {
        let pki = loopback_pki("revmesh-webhook")?;
        let cert = dir.join("webhook.crt");
        let key = dir.join("webhook.key");
        std::fs::write(&cert, &pki.cert_pem)?;
        std::fs::write(&key, &pki.key_pem)?;
        let rollouts_path = dir.join("rollouts.yml");
        std::fs::write(&rollouts_path, rollouts_yaml)?;
        let port = free_port()?;
        let metrics_port = free_port()?;
        let mut cmd = Command::new(workspace_bin("webhook")?);
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--rollouts",
            &rollouts_path.display().to_string(),
            "--reload-interval",
            "200ms",
        ]);
        cmd.env("RUST_LOG", "info");
        let mut process = Process::spawn("webhook", cmd, dir)?;
        wait_for("webhook readiness", Duration::from_secs(30), || {
            process.check_alive()?;
            Ok(http_get(metrics_port, "/healthz/ready").ok().filter(|(s, _)| *s == 200).map(|_| ()))
        })?;
        Ok(WebhookProcess { process, port, metrics_port, rollouts_path, ca_pem: pki.ca_pem })
    }

    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(self.metrics_port, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// The value of one sample line (`name{labels}`), summed over matching lines.
    pub fn metric(&self, prefix: &str) -> Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The MutatingWebhookConfiguration that registers this process by URL: one
    /// entry per version for namespaces pinned with `revmesh.io/rev`, and one for
    /// namespaces that opted in with `revmesh.io/inject=enabled`.
    pub fn registration(&self, name: &str, versions: &[&str]) -> Value {
        webhook_configuration(name, &format!("https://127.0.0.1:{}", self.port), &self.ca_pem, versions)
    }
}

/// The registration, as DESIGN.md's conventions ask (the chart renders the same shape).
pub fn webhook_configuration(name: &str, base_url: &str, ca_pem: &str, versions: &[&str]) -> Value {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let entry = |webhook_name: String, path: String, selector: Value| {
        json!({
            "name": webhook_name,
            "clientConfig": {"url": format!("{base_url}{path}"), "caBundle": ca_bundle},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": selector,
            "objectSelector": {"matchExpressions": [{"key": "sidecar.revmesh.io/inject", "operator": "NotIn", "values": ["false"]}]},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
        })
    };
    let mut webhooks: Vec<Value> = versions
        .iter()
        .map(|v| {
            entry(
                format!("rev-{v}.sidecar-injector.revmesh.io"),
                format!("/inject/rev/{v}"),
                json!({"matchExpressions": [
                    {"key": "revmesh.io/rev", "operator": "In", "values": [v]},
                    {"key": "revmesh.io/inject", "operator": "NotIn", "values": ["disabled"]},
                ]}),
            )
        })
        .collect();
    webhooks.push(entry(
        "sidecar-injector.revmesh.io".into(),
        "/inject".into(),
        json!({"matchExpressions": [
            {"key": "revmesh.io/rev", "operator": "DoesNotExist"},
            {"key": "revmesh.io/inject", "operator": "In", "values": ["enabled"]},
        ]}),
    ));
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks,
    })
}

/// A plain-HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no HTTP status line")?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A Deployment manifest with one replica running `image`.
pub fn deployment(namespace: &str, name: &str, extra_labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("app".into(), json!(name));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    let annotations: serde_json::Map<String, Value> = annotations.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    })
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A `kind: List` of objects, for one `kubectl apply`.
pub fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Runs git in `repo`; fails with its stderr.
pub fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().context("git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workloads (`namespace/name` keys) that rollouts.yml, as written in
/// `rollouts_text`, puts on `version`.
pub fn workloads_on(rollouts_text: &str, keys: &[String], version: &str) -> Result<std::collections::BTreeSet<String>> {
    let r = rollouts::parse(rollouts_text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::collections::BTreeSet::new();
    for key in keys {
        let (ns, wl) = key.split_once('/').context("a key is namespace/workload")?;
        if let rollouts::Evaluation::Assigned { version: v, .. } = r.evaluate(&rollouts::PodFacts { namespace: ns, workload: wl, ..Default::default() }) {
            if v.as_str() == version {
                out.insert(key.clone());
            }
        }
    }
    Ok(out)
}
