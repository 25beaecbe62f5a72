//! The fleet as meshctl sees it: namespaces, workloads and their pods, and
//! what rollouts.yml wants for each. Pure: the cluster reads live in
//! `cluster.rs`, so every decision here is unit-tested without an API server.

use rollouts::labels::{NAMESPACE_INJECT_LABEL, POD_INJECT_LABEL, REV_LABEL};
use rollouts::{Evaluation, PodFacts, Rollouts};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// The webhook is only called for namespaces that opt in or pin a version
    /// (the MutatingWebhookConfiguration's namespace selectors).
    pub fn in_mesh(&self) -> bool {
        let enabled = self.labels.get(NAMESPACE_INJECT_LABEL).map(String::as_str);
        enabled != Some("disabled") && (enabled == Some("enabled") || self.labels.contains_key(REV_LABEL))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    pub name: String,
    /// The version the webhook injected (its `revmesh.io/status` record); None without a sidecar.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub namespace: String,
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod, ...
    pub kind: String,
    pub name: String,
    /// Labels of the pod template (pins and opt-outs live here).
    #[serde(skip)]
    pub template_labels: BTreeMap<String, String>,
    pub pods: Vec<Pod>,
}

impl Workload {
    /// meshctl can restart it by rolling out its pod template.
    pub fn restartable(&self) -> bool {
        matches!(self.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub namespaces: Vec<Namespace>,
    pub workloads: Vec<Workload>,
}

/// The version rollouts.yml wants for a workload's next pod, or None when it
/// is not injected at all.
pub fn desired(rollouts: &Rollouts, namespace: &Namespace, workload: &Workload) -> Option<String> {
    if !namespace.in_mesh() {
        return None;
    }
    let facts = PodFacts {
        namespace: &namespace.name,
        workload: &workload.name,
        pod_pin: workload.template_labels.get(REV_LABEL).map(String::as_str),
        namespace_pin: namespace.labels.get(REV_LABEL).map(String::as_str),
        pod_opted_out: workload.template_labels.get(POD_INJECT_LABEL).map(String::as_str) == Some("false"),
        namespace_disabled: false,
    };
    match rollouts.evaluate(&facts) {
        Evaluation::Assigned { version, .. } => Some(version.to_string()),
        Evaluation::Skip { .. } | Evaluation::UnknownPinnedVersion { .. } => None,
    }
}

/// One workload against rollouts.yml.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub desired: Option<String>,
    /// Pods per version they carry ("none" for pods without a sidecar).
    pub running: BTreeMap<String, usize>,
    /// Pods whose version differs from the desired one.
    pub pods_to_restart: usize,
    pub restartable: bool,
}

impl WorkloadStatus {
    pub fn converged(&self) -> bool {
        self.pods_to_restart == 0
    }
}

pub fn version_label(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "none".into())
}

pub fn workload_statuses(rollouts: &Rollouts, inventory: &Inventory) -> Vec<WorkloadStatus> {
    let namespaces: BTreeMap<&str, &Namespace> = inventory.namespaces.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out: Vec<WorkloadStatus> = inventory
        .workloads
        .iter()
        .filter_map(|w| {
            let ns = namespaces.get(w.namespace.as_str())?;
            let desired = desired(rollouts, ns, w);
            let mut running: BTreeMap<String, usize> = BTreeMap::new();
            for p in &w.pods {
                *running.entry(version_label(&p.version)).or_default() += 1;
            }
            let pods_to_restart = w.pods.iter().filter(|p| p.version != desired).count();
            if desired.is_none() && w.pods.iter().all(|p| p.version.is_none()) {
                return None; // outside the mesh and staying there
            }
            Some(WorkloadStatus { namespace: w.namespace.clone(), kind: w.kind.clone(), name: w.name.clone(), desired, running, pods_to_restart, restartable: w.restartable() })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// One namespace: what is wanted, what runs, what must restart, and which
/// control-plane revisions its proxies are connected to.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    pub namespace: String,
    /// Workloads per desired version.
    pub desired: BTreeMap<String, usize>,
    /// Pods per version they carry.
    pub running: BTreeMap<String, usize>,
    pub pods_to_restart: usize,
    pub workloads_to_restart: usize,
    /// Connected proxies per control-plane revision (from each revision's syncz).
    pub proxies: BTreeMap<String, usize>,
}

/// Proxies connected to each revision, as (revision, proxy namespace) pairs.
pub fn namespace_statuses(workloads: &[WorkloadStatus], proxies: &[(String, String)]) -> Vec<NamespaceStatus> {
    let mut by_ns: BTreeMap<String, NamespaceStatus> = BTreeMap::new();
    for w in workloads {
        let s = by_ns.entry(w.namespace.clone()).or_insert_with(|| NamespaceStatus { namespace: w.namespace.clone(), ..Default::default() });
        *s.desired.entry(version_label(&w.desired)).or_default() += 1;
        for (v, n) in &w.running {
            *s.running.entry(v.clone()).or_default() += n;
        }
        s.pods_to_restart += w.pods_to_restart;
        s.workloads_to_restart += usize::from(!w.converged());
    }
    for (revision, namespace) in proxies {
        let s = by_ns.entry(namespace.clone()).or_insert_with(|| NamespaceStatus { namespace: namespace.clone(), ..Default::default() });
        *s.proxies.entry(revision.clone()).or_default() += 1;
    }
    by_ns.into_values().collect()
}

/// The namespace a sidecar's node id names (`sidecar~IP~POD.NS~NS.svc.cluster.local`).
pub fn proxy_namespace(node_id: &str) -> Option<&str> {
    let domain = node_id.split('~').nth(3)?;
    domain.split('.').next().filter(|ns| !ns.is_empty())
}

/// `a×2 b×1`, or `-` when empty.
pub fn counts(map: &BTreeMap<String, usize>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLOUTS: &str = "apiVersion: revmesh.io/v1
kind: Rollouts
versions:
  a: {proxyImage: x/a}
  b: {proxyImage: x/b}
rules:
  - namespaces: [\"*\"]
    hashBy: workload
    distribution: {a: 0, b: 100}
";

    fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace { name: name.into(), labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    fn workload(ns: &str, name: &str, pin: Option<&str>, versions: &[Option<&str>]) -> Workload {
        Workload {
            namespace: ns.into(),
            kind: "Deployment".into(),
            name: name.into(),
            template_labels: pin.map(|p| BTreeMap::from([(REV_LABEL.to_string(), p.to_string())])).unwrap_or_default(),
            pods: versions.iter().enumerate().map(|(i, v)| Pod { name: format!("{name}-{i}"), version: v.map(str::to_string) }).collect(),
        }
    }

    #[test]
    fn status_counts_what_must_restart() {
        let r = rollouts::parse(ROLLOUTS).unwrap();
        let inventory = Inventory {
            namespaces: vec![ns("team", &[(NAMESPACE_INJECT_LABEL, "enabled")]), ns("outside", &[])],
            workloads: vec![
                workload("team", "web", None, &[Some("a"), Some("b")]),
                workload("team", "pinned", Some("a"), &[Some("a")]),
                workload("team", "new", None, &[None]),
                workload("outside", "plain", None, &[None]),
            ],
        };
        let w = workload_statuses(&r, &inventory);
        assert_eq!(w.len(), 3, "the workload outside the mesh is not listed: {w:?}");
        let by_name: BTreeMap<&str, &WorkloadStatus> = w.iter().map(|s| (s.name.as_str(), s)).collect();
        assert_eq!(by_name["web"].pods_to_restart, 1);
        assert_eq!(by_name["pinned"].desired.as_deref(), Some("a"));
        assert!(by_name["pinned"].converged());
        assert_eq!(by_name["new"].pods_to_restart, 1);
        let proxies = vec![("a".to_string(), "team".to_string()), ("b".to_string(), "team".to_string()), ("a".to_string(), "team".to_string())];
        let n = namespace_statuses(&w, &proxies);
        assert_eq!(n.len(), 1);
        assert_eq!(counts(&n[0].desired), "a×1 b×2");
        assert_eq!(counts(&n[0].running), "a×2 b×1 none×1");
        assert_eq!((n[0].pods_to_restart, n[0].workloads_to_restart), (2, 2));
        assert_eq!(counts(&n[0].proxies), "a×2 b×1");
    }

    #[test]
    fn node_ids_name_their_namespace() {
        assert_eq!(proxy_namespace("sidecar~10.0.0.1~web-1.a.b~team-3.svc.cluster.local"), Some("team-3"));
        assert_eq!(proxy_namespace("envoy-1"), None);
    }
}
