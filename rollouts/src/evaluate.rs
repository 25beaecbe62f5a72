//! The whole decision for one pod: opt-outs, pins, then the matching rule.

use crate::labels::SYSTEM_NAMESPACES;
use crate::model::{HashBy, Rollouts, VersionName};
use serde::Serialize;

/// The facts about a pod and its namespace that decide its version.
#[derive(Debug, Clone, Default)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    /// Workload name from [`crate::workload::derive`].
    pub workload: &'a str,
    /// Value of the pod's `revmesh.io/rev` label, set before injection.
    pub pod_pin: Option<&'a str>,
    /// Value of the namespace's `revmesh.io/rev` label.
    pub namespace_pin: Option<&'a str>,
    /// Pod label `sidecar.revmesh.io/inject="false"`.
    pub pod_opted_out: bool,
    /// Namespace label `revmesh.io/inject=disabled`.
    pub namespace_disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    SystemNamespace,
    PodOptedOut,
    NamespaceDisabled,
}

impl SkipReason {
    pub fn explain(&self) -> &'static str {
        match self {
            SkipReason::SystemNamespace => "system namespaces (kube-system, kube-public, kube-node-lease) are never injected",
            SkipReason::PodOptedOut => "the pod has label sidecar.revmesh.io/inject=\"false\"",
            SkipReason::NamespaceDisabled => "the namespace has label revmesh.io/inject=disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// The pod carried `revmesh.io/rev` before injection.
    PodPin,
    /// The namespace carries `revmesh.io/rev`.
    NamespacePin,
    /// A rollouts.yml rule hashed the key.
    #[serde(rename_all = "camelCase")]
    Rule { index: usize, line: usize, pattern: String, hash_by: HashBy },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Evaluation {
    Skip { reason: SkipReason },
    #[serde(rename_all = "camelCase")]
    Assigned {
        version: VersionName,
        reason: Reason,
        /// The consistent-hash key, when a rule decided.
        #[serde(skip_serializing_if = "Option::is_none")]
        hash_key: Option<String>,
    },
    /// A pin names a version rollouts.yml does not define.
    #[serde(rename_all = "camelCase")]
    UnknownPinnedVersion { version: String, pinned_by: Reason, known: Vec<String> },
}

impl Rollouts {
    /// Decides whether and with which version a pod is injected.
    pub fn evaluate(&self, facts: &PodFacts<'_>) -> Evaluation {
        if SYSTEM_NAMESPACES.contains(&facts.namespace) {
            return Evaluation::Skip { reason: SkipReason::SystemNamespace };
        }
        if facts.pod_opted_out {
            return Evaluation::Skip { reason: SkipReason::PodOptedOut };
        }
        if facts.namespace_disabled {
            return Evaluation::Skip { reason: SkipReason::NamespaceDisabled };
        }
        for (pin, reason) in [(facts.pod_pin, Reason::PodPin), (facts.namespace_pin, Reason::NamespacePin)] {
            if let Some(pin) = pin {
                return match self.version(pin) {
                    Some((v, _)) => Evaluation::Assigned { version: v.clone(), reason, hash_key: None },
                    None => Evaluation::UnknownPinnedVersion {
                        version: pin.to_string(),
                        pinned_by: reason,
                        known: self.versions.keys().map(|v| v.to_string()).collect(),
                    },
                };
            }
        }
        let (index, rule, pattern) = self.rule_for(facts.namespace);
        let key = hash_key(rule.hash_by, facts.namespace, facts.workload);
        let version = crate::assign::choose(&key, &rule.distribution)
            .or_else(|| rule.distribution.keys().next())
            .cloned()
            .unwrap_or_else(|| self.versions.keys().next().cloned().expect("parse() requires at least one version"));
        Evaluation::Assigned {
            version,
            reason: Reason::Rule { index, line: rule.line, pattern: pattern.to_string(), hash_by: rule.hash_by },
            hash_key: Some(key),
        }
    }
}

/// The key a rule hashes: the namespace, or `namespace/workload`.
pub fn hash_key(by: HashBy, namespace: &str, workload: &str) -> String {
    match by {
        HashBy::Namespace => namespace.to_string(),
        HashBy::Workload => format!("{namespace}/{workload}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: revmesh.io/v1
kind: Rollouts
versions:
  1-24-5: {proxyImage: registry.example/revmesh/sidecar:1.24.5}
  1-25-2: {proxyImage: registry.example/revmesh/sidecar:1.25.2}
rules:
  - namespaces: ["payments-*", "checkout"]
    hashBy: workload
    distribution: {1-24-5: 90, 1-25-2: 10}
  - namespaces: ["*"]
    distribution: {1-24-5: 100}
"#;

    fn rollouts() -> Rollouts {
        crate::parse(FILE).expect("example parses")
    }

    #[test]
    fn rule_order_and_hash_key() {
        let r = rollouts();
        let e = r.evaluate(&PodFacts { namespace: "payments-eu", workload: "api", ..Default::default() });
        let Evaluation::Assigned { reason: Reason::Rule { index, pattern, .. }, hash_key, .. } = e else { panic!("{e:?}") };
        assert_eq!((index, pattern.as_str(), hash_key.as_deref()), (0, "payments-*", Some("payments-eu/api")));
        let e = r.evaluate(&PodFacts { namespace: "default", workload: "api", ..Default::default() });
        assert!(matches!(e, Evaluation::Assigned { ref version, hash_key: Some(ref k), .. } if version.as_str() == "1-24-5" && k == "default"));
    }

    #[test]
    fn pins_win_pod_over_namespace() {
        let r = rollouts();
        let e = r.evaluate(&PodFacts { namespace: "default", pod_pin: Some("1-25-2"), namespace_pin: Some("1-24-5"), ..Default::default() });
        assert!(matches!(e, Evaluation::Assigned { ref version, reason: Reason::PodPin, .. } if version.as_str() == "1-25-2"));
        let e = r.evaluate(&PodFacts { namespace: "default", namespace_pin: Some("1-25-2"), ..Default::default() });
        assert!(matches!(e, Evaluation::Assigned { reason: Reason::NamespacePin, .. }));
        let e = r.evaluate(&PodFacts { namespace: "default", pod_pin: Some("9-9-9"), ..Default::default() });
        assert!(matches!(e, Evaluation::UnknownPinnedVersion { ref version, .. } if version == "9-9-9"));
    }

    #[test]
    fn skips() {
        let r = rollouts();
        assert_eq!(r.evaluate(&PodFacts { namespace: "kube-system", ..Default::default() }), Evaluation::Skip { reason: SkipReason::SystemNamespace });
        assert_eq!(r.evaluate(&PodFacts { namespace: "a", pod_opted_out: true, pod_pin: Some("1-25-2"), ..Default::default() }), Evaluation::Skip { reason: SkipReason::PodOptedOut });
        assert_eq!(r.evaluate(&PodFacts { namespace: "a", namespace_disabled: true, ..Default::default() }), Evaluation::Skip { reason: SkipReason::NamespaceDisabled });
    }
}
