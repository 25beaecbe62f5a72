//! The stable name of the workload a pod belongs to, derived from its owner
//! references, so that all pods of one Deployment share one hash key across
//! ReplicaSets and restarts.

use serde::Serialize;

/// The owner reference fields this module reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub controller: bool,
}

/// What is known about a pod (or a pod template) at admission time.
#[derive(Debug, Clone, Default)]
pub struct PodMeta<'a> {
    pub name: Option<&'a str>,
    pub generate_name: Option<&'a str>,
    pub owners: Vec<OwnerRef>,
    /// The `pod-template-hash` label the Deployment controller puts on ReplicaSets' pods.
    pub pod_template_hash: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, Pod, ...
    pub kind: String,
    pub name: String,
}

/// Derives the workload: ReplicaSet + pod-template-hash → Deployment,
/// Job named `<cronjob>-<scheduled minute>` → CronJob, other controllers by their
/// own name, and a bare pod by its name or, before it has one, its generateName.
pub fn derive(meta: &PodMeta<'_>) -> Workload {
    let owner = meta.owners.iter().find(|o| o.controller).or_else(|| meta.owners.first());
    if let Some(owner) = owner {
        match owner.kind.as_str() {
            "ReplicaSet" => {
                if let Some(hash) = meta.pod_template_hash {
                    if let Some(deployment) = owner.name.strip_suffix(hash).and_then(|s| s.strip_suffix('-')) {
                        if !deployment.is_empty() {
                            return Workload { kind: "Deployment".into(), name: deployment.into() };
                        }
                    }
                }
                return Workload { kind: "ReplicaSet".into(), name: owner.name.clone() };
            }
            "Job" => {
                // The CronJob controller names Jobs `<cronjob>-<minutes since epoch>`.
                if let Some((cron, suffix)) = owner.name.rsplit_once('-') {
                    if suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !cron.is_empty() {
                        return Workload { kind: "CronJob".into(), name: cron.into() };
                    }
                }
                return Workload { kind: "Job".into(), name: owner.name.clone() };
            }
            kind => return Workload { kind: kind.into(), name: owner.name.clone() },
        }
    }
    let name = match (meta.name.filter(|n| !n.is_empty()), meta.generate_name) {
        (Some(n), _) => n.to_string(),
        (None, Some(g)) => g.trim_end_matches('-').to_string(),
        (None, None) => String::new(),
    };
    Workload { kind: "Pod".into(), name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str) -> OwnerRef {
        OwnerRef { kind: kind.into(), name: name.into(), controller: true }
    }

    #[test]
    fn replicaset_with_template_hash_is_its_deployment() {
        let m = PodMeta { owners: vec![owner("ReplicaSet", "web-api-5d8f7c9b6")], pod_template_hash: Some("5d8f7c9b6"), ..Default::default() };
        assert_eq!(derive(&m), Workload { kind: "Deployment".into(), name: "web-api".into() });
    }

    #[test]
    fn bare_replicaset_stays_a_replicaset() {
        let m = PodMeta { owners: vec![owner("ReplicaSet", "frontend")], ..Default::default() };
        assert_eq!(derive(&m).kind, "ReplicaSet");
        let m = PodMeta { owners: vec![owner("ReplicaSet", "frontend")], pod_template_hash: Some("abc"), ..Default::default() };
        assert_eq!(derive(&m), Workload { kind: "ReplicaSet".into(), name: "frontend".into() });
    }

    #[test]
    fn cronjob_job_and_plain_job() {
        let m = PodMeta { owners: vec![owner("Job", "nightly-report-28912345")], ..Default::default() };
        assert_eq!(derive(&m), Workload { kind: "CronJob".into(), name: "nightly-report".into() });
        let m = PodMeta { owners: vec![owner("Job", "migrate-7")], ..Default::default() };
        assert_eq!(derive(&m), Workload { kind: "Job".into(), name: "migrate-7".into() });
    }

    #[test]
    fn statefulset_daemonset_and_bare_pods() {
        for kind in ["StatefulSet", "DaemonSet"] {
            let m = PodMeta { owners: vec![owner(kind, "db")], name: Some("db-0"), ..Default::default() };
            assert_eq!(derive(&m), Workload { kind: kind.into(), name: "db".into() });
        }
        let m = PodMeta { name: Some("debug"), ..Default::default() };
        assert_eq!(derive(&m), Workload { kind: "Pod".into(), name: "debug".into() });
        let m = PodMeta { generate_name: Some("batch-"), ..Default::default() };
        assert_eq!(derive(&m), Workload { kind: "Pod".into(), name: "batch".into() });
    }

    #[test]
    fn controller_owner_is_preferred() {
        let m = PodMeta {
            owners: vec![OwnerRef { kind: "ConfigMap".into(), name: "x".into(), controller: false }, owner("StatefulSet", "db")],
            ..Default::default()
        };
        assert_eq!(derive(&m).name, "db");
    }
}
