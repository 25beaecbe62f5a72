//! The validated rollouts.yml model. Constructed only by [`crate::parse`], so a
//! `Rollouts` value always satisfies every rule the validator checks.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// A mesh version: a DNS label such as `1-24-5`. The same string names the proxy
/// build and the control-plane revision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct VersionName(String);

impl VersionName {
    /// Checks the DNS-label form (RFC 1123): 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
    pub fn new(name: &str) -> Result<Self, String> {
        if is_dns_label(name) {
            Ok(VersionName(name.to_string()))
        } else {
            Err(format!(
                "version name {name:?} is not a DNS label: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit (for example 1-25-2)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Ordering and equality are the inner string's, so maps keyed by version can
// be searched with a plain `&str`.
impl std::borrow::Borrow<str> for VersionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VersionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSpec {
    /// The sidecar image of this version.
    pub proxy_image: String,
    /// Address of this revision's control plane; defaults to
    /// `control-plane-<version>.revmesh-system.svc:15012`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum HashBy {
    /// Every pod of a namespace gets the same version.
    #[default]
    Namespace,
    /// Each workload (Deployment, StatefulSet, ...) is hashed on its own.
    Workload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub namespaces: Vec<String>,
    pub hash_by: HashBy,
    /// Percent per version; sums to 100. Zero shares are kept so a rule can
    /// name a version it is draining.
    pub distribution: BTreeMap<VersionName, u32>,
    /// 1-based line of the rule in the file, for messages.
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollouts {
    pub api_version: String,
    pub kind: String,
    /// In file order (the order is informational; assignment does not depend on it).
    pub versions: BTreeMap<VersionName, VersionSpec>,
    pub rules: Vec<Rule>,
    /// The upgrade in progress, written by `meshctl upgrade`; the webhook
    /// ignores it (the rules alone decide versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeState>,
}

/// Where an upgrade from one version to another stands. Kept in rollouts.yml,
/// so the state is reviewed, versioned and rolled back with the rules it explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeState {
    pub from: VersionName,
    pub to: VersionName,
    /// Percentages of the moving share on `to`, strictly increasing, ending at 100.
    pub steps: Vec<u32>,
    /// The step in force: 0 (nothing moved) or one of `steps`.
    pub percent: u32,
}

pub const API_VERSION: &str = "revmesh.io/v1";
pub const KIND: &str = "Rollouts";

impl Rollouts {
    pub fn version(&self, name: &str) -> Option<(&VersionName, &VersionSpec)> {
        self.versions.iter().find(|(v, _)| v.as_str() == name)
    }

    /// The control-plane address proxies of `version` connect to.
    pub fn control_plane_address(&self, version: &VersionName) -> String {
        self.versions
            .get(version)
            .and_then(|spec| spec.control_plane.clone())
            .unwrap_or_else(|| default_control_plane_address(version.as_str()))
    }

    /// The first rule whose patterns match `namespace` (the last rule is `*`, so
    /// there always is one), with its index and the matching pattern.
    pub fn rule_for(&self, namespace: &str) -> (usize, &Rule, &str) {
        for (index, rule) in self.rules.iter().enumerate() {
            if let Some(p) = rule.namespaces.iter().find(|p| crate::pattern::matches(p, namespace)) {
                return (index, rule, p.as_str());
            }
        }
        // parse() guarantees a final "*" rule; this is unreachable for a parsed value,
        // but stay total: fall back to the last rule.
        let last = self.rules.len() - 1;
        (last, &self.rules[last], "*")
    }
}

pub fn default_control_plane_address(version: &str) -> String {
    format!("control-plane-{version}.{}.svc:15012", crate::labels::MESH_NAMESPACE)
}
