//! The upgrade workflow's decisions, pure: which rollouts.yml each command
//! writes, and which workloads a step moves.

use crate::fleet::{self, Inventory};
use rollouts::edit::{self, Edit};
use rollouts::{Rollouts, UpgradeState, VersionName};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpgradeError {
    #[error("unknown version {version:?}: rollouts.yml defines {}; add it under `versions` (with its proxyImage) and commit that first", .known.join(", "))]
    UnknownVersion { version: String, known: Vec<String> },
    #[error("--steps {steps}: {reason}")]
    BadSteps { steps: String, reason: String },
    #[error("an upgrade from {from} to {to} is already in progress at {percent}%; use `meshctl upgrade advance`, `rollback` or `finish`")]
    InProgress { from: String, to: String, percent: u32 },
    #[error("no upgrade is in progress (rollouts.yml has no `upgrade` section); start one with `meshctl upgrade start --to VERSION`")]
    NotInProgress,
    #[error("cannot tell which version to upgrade from: {0}; name it with --from")]
    AmbiguousFrom(String),
    #[error("{0}")]
    Boundary(String),
    #[error("{0}")]
    Edit(String),
}

fn known(r: &Rollouts) -> Vec<String> {
    r.versions.keys().map(|v| v.to_string()).collect()
}

fn version(r: &Rollouts, name: &str) -> Result<VersionName, UpgradeError> {
    r.version(name).map(|(v, _)| v.clone()).ok_or_else(|| UpgradeError::UnknownVersion { version: name.into(), known: known(r) })
}

pub fn parse_steps(text: &str) -> Result<Vec<u32>, UpgradeError> {
    let bad = |reason: String| UpgradeError::BadSteps { steps: text.into(), reason };
    let steps: Vec<u32> = text.split(',').map(|s| s.trim().parse::<u32>().map_err(|_| bad(format!("{s:?} is not a whole percentage")))).collect::<Result<_, _>>()?;
    edit::check_steps(&steps).map_err(bad)?;
    Ok(steps)
}

/// The version that workloads move away from: named, or the one other
/// version that holds a share in some rule.
pub fn source_version(r: &Rollouts, to: &VersionName, from: Option<&str>) -> Result<VersionName, UpgradeError> {
    if let Some(from) = from {
        let v = version(r, from)?;
        if &v == to {
            return Err(UpgradeError::AmbiguousFrom(format!("--from and --to are both {to}")));
        }
        return Ok(v);
    }
    let mut others: Vec<&VersionName> = r.rules.iter().flat_map(|rule| rule.distribution.iter()).filter(|(v, share)| *v != to && **share > 0).map(|(v, _)| v).collect();
    others.sort();
    others.dedup();
    match others.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(UpgradeError::AmbiguousFrom(format!("every rule already gives all of its share to {to}"))),
        many => Err(UpgradeError::AmbiguousFrom(format!("rules give shares to {}", many.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")))),
    }
}

pub fn at_percent(r: &Rollouts, state: &UpgradeState, percent: u32) -> Edit {
    let upgrade = UpgradeState { percent, ..state.clone() };
    Edit { distributions: edit::shifted(r, &state.from, &state.to, percent), remove_versions: vec![], upgrade: Some(upgrade) }
}

pub fn start(r: &Rollouts, to: &str, from: Option<&str>, steps: Vec<u32>) -> Result<Edit, UpgradeError> {
    if let Some(u) = &r.upgrade {
        return Err(UpgradeError::InProgress { from: u.from.to_string(), to: u.to.to_string(), percent: u.percent });
    }
    let to = version(r, to)?;
    let from = source_version(r, &to, from)?;
    let first = steps[0];
    Ok(at_percent(r, &UpgradeState { from, to, steps, percent: 0 }, first))
}

pub fn advance(r: &Rollouts) -> Result<Edit, UpgradeError> {
    let u = r.upgrade.as_ref().ok_or(UpgradeError::NotInProgress)?;
    let next = u.steps.iter().copied().find(|s| *s > u.percent).ok_or_else(|| UpgradeError::Boundary(format!("already at {}%: when no pods and proxies of {} remain, run `meshctl upgrade finish`", u.percent, u.from)))?;
    Ok(at_percent(r, u, next))
}

pub fn rollback(r: &Rollouts, to_zero: bool) -> Result<Edit, UpgradeError> {
    let u = r.upgrade.as_ref().ok_or(UpgradeError::NotInProgress)?;
    if u.percent == 0 {
        return Err(UpgradeError::Boundary("already at 0%: nothing has moved, so there is nothing to roll back".into()));
    }
    let previous = if to_zero { 0 } else { u.steps.iter().copied().filter(|s| *s < u.percent).last().unwrap_or(0) };
    Ok(at_percent(r, u, previous))
}

pub fn finish(r: &Rollouts) -> Result<Edit, UpgradeError> {
    let u = r.upgrade.as_ref().ok_or(UpgradeError::NotInProgress)?;
    if u.percent != 100 {
        return Err(UpgradeError::Boundary(format!("the upgrade is at {}%, not 100%: advance to 100% (and restart) before finishing", u.percent)));
    }
    let distributions = edit::without(r, &u.from).map_err(UpgradeError::Edit)?;
    Ok(Edit { distributions, remove_versions: vec![u.from.clone()], upgrade: None })
}

/// `r` with the rules' distributions replaced (what the webhook will do after the edit).
pub fn with_edit(r: &Rollouts, e: &Edit) -> Rollouts {
    let mut next = r.clone();
    for (rule, d) in next.rules.iter_mut().zip(&e.distributions) {
        rule.distribution = d.clone();
    }
    next.upgrade = e.upgrade.clone();
    next
}

/// Workloads whose desired version changes between two rollouts.yml states.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Moves {
    /// `from -> to` → workload keys (`namespace/name`).
    pub moves: BTreeMap<String, Vec<String>>,
    pub total: usize,
}

impl Moves {
    pub fn moved(&self) -> usize {
        self.moves.values().map(Vec::len).sum()
    }
}

pub fn moves(before: &Rollouts, after: &Rollouts, inventory: &Inventory) -> Moves {
    let namespaces: BTreeMap<&str, &fleet::Namespace> = inventory.namespaces.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out = Moves::default();
    for w in &inventory.workloads {
        let Some(ns) = namespaces.get(w.namespace.as_str()) else { continue };
        let (a, b) = (fleet::desired(before, ns, w), fleet::desired(after, ns, w));
        if a.is_none() && b.is_none() {
            continue;
        }
        out.total += 1;
        if a != b {
            out.moves.entry(format!("{} -> {}", fleet::version_label(&a), fleet::version_label(&b))).or_default().push(w.key());
        }
    }
    out
}

/// An offline inventory from a keys file: `namespace` or `namespace/workload`
/// per line, every namespace taken as opted in with no pins.
pub fn inventory_from_keys(text: &str) -> Inventory {
    use rollouts::labels::NAMESPACE_INJECT_LABEL;
    let mut inv = Inventory::default();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()) {
        let (ns, wl) = line.split_once('/').unwrap_or((line, ""));
        if seen.insert(ns.to_string()) {
            inv.namespaces.push(fleet::Namespace { name: ns.into(), labels: BTreeMap::from([(NAMESPACE_INJECT_LABEL.to_string(), "enabled".to_string())]) });
        }
        inv.workloads.push(fleet::Workload { namespace: ns.into(), kind: "Deployment".into(), name: wl.into(), template_labels: BTreeMap::new(), pods: vec![] });
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "apiVersion: revmesh.io/v1
kind: Rollouts
versions:
  a: {proxyImage: x/a}
  b: {proxyImage: x/b}
rules:
  - namespaces: [\"*\"]
    hashBy: workload
    distribution: {a: 100}
";

    fn keys(n: usize) -> Inventory {
        let text: String = (0..n).map(|i| format!("ns-{}/w-{i}\n", i % 20)).collect();
        inventory_from_keys(&text)
    }

    #[test]
    fn a_whole_upgrade_and_its_exact_rollback() {
        let r0 = rollouts::parse(FILE).unwrap();
        let inv = keys(2000);
        let e1 = start(&r0, "b", None, parse_steps("10,50,100").unwrap()).unwrap();
        let r1 = with_edit(&r0, &e1);
        let m1 = moves(&r0, &r1, &inv);
        assert_eq!(m1.moves.keys().collect::<Vec<_>>(), ["a -> b"]);
        let share = m1.moved() as f64 / 2000.0;
        assert!((0.085..0.115).contains(&share), "10% step moved {share}");
        let r2 = with_edit(&r1, &advance(&r1).unwrap());
        let m2 = moves(&r1, &r2, &inv);
        assert!(m2.moves.keys().all(|k| k == "a -> b"), "a step up only moves onto b");
        // Back one step: exactly the workloads of the 50% step return.
        let back = with_edit(&r2, &rollback(&r2, false).unwrap());
        let m_back = moves(&r2, &back, &inv);
        assert_eq!(m_back.moves["b -> a"], m2.moves["a -> b"]);
        // To zero: the 10% set returns too.
        let zero = with_edit(&back, &rollback(&back, true).unwrap());
        assert_eq!(moves(&back, &zero, &inv).moves["b -> a"], m1.moves["a -> b"]);
        assert_eq!(moves(&r0, &zero, &inv).moved(), 0, "0% is exactly the start");
        assert!(matches!(rollback(&zero, false), Err(UpgradeError::Boundary(_))));
    }

    #[test]
    fn refusals_say_what_to_do() {
        let r = rollouts::parse(FILE).unwrap();
        let unknown = start(&r, "c", None, vec![100]).unwrap_err();
        assert!(unknown.to_string().contains("unknown version \"c\": rollouts.yml defines a, b"), "{unknown}");
        assert!(parse_steps("10,50").unwrap_err().to_string().contains("not 100"));
        assert!(parse_steps("10,x,100").unwrap_err().to_string().contains("\"x\" is not a whole percentage"));
        assert_eq!(advance(&r).unwrap_err(), UpgradeError::NotInProgress);
        let started = with_edit(&r, &start(&r, "b", None, vec![50, 100]).unwrap());
        assert!(matches!(start(&started, "b", None, vec![100]), Err(UpgradeError::InProgress { .. })));
        assert!(finish(&started).unwrap_err().to_string().contains("not 100"));
    }
}
