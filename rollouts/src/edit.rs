//! Upgrade steps as changes to rollouts.yml: the pure arithmetic of a step, and
//! a text edit that rewrites only the values it changes, so comments, order and
//! layout of the rest of the file survive (the file is reviewed in Git).

use crate::model::{Rollouts, UpgradeState, VersionName};
use crate::yaml_tree::{self, Node, Pos};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the file no longer parses as YAML at line {}: {}", .0.line, .1)]
    Syntax(Pos, String),
    #[error("cannot edit {what} at line {line}: {reason}; make this change by hand")]
    Unsupported { what: String, line: usize, reason: String },
    #[error("the edited file does not say what was intended ({0}); the file was left unchanged")]
    Verify(String),
}

/// Steps must climb strictly, stay within 1..=100, and end at 100 (an upgrade
/// that never reaches 100% cannot finish).
pub fn check_steps(steps: &[u32]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("no steps given; for example 1,10,50,100".into());
    }
    if let Some(bad) = steps.iter().find(|p| **p == 0 || **p > 100) {
        return Err(format!("{bad} is not a percentage from 1 to 100"));
    }
    if let Some(w) = steps.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!("steps must increase: {} is followed by {}", w[0], w[1]));
    }
    if steps.last() != Some(&100) {
        return Err(format!("the last step is {}, not 100: an upgrade must end with every workload on the new version", steps[steps.len() - 1]));
    }
    Ok(())
}

/// Each rule's distribution when `to` holds `percent` of the share that `from`
/// and `to` hold together in that rule. Only rules that name `from` take part;
/// other versions keep their shares. Rounding is monotone in `percent`, so with
/// the monotone assignment keys only move onto `to` as the percentage rises,
/// and exactly those keys come back as it falls.
pub fn shifted(rollouts: &Rollouts, from: &VersionName, to: &VersionName, percent: u32) -> Vec<BTreeMap<VersionName, u32>> {
    rollouts
        .rules
        .iter()
        .map(|rule| {
            let mut d = rule.distribution.clone();
            if let Some(&old_share) = d.get(from) {
                let together = old_share + d.get(to).copied().unwrap_or(0);
                let moved = (together * percent + 50) / 100;
                d.insert(to.clone(), moved);
                d.insert(from.clone(), together - moved);
            }
            d
        })
        .collect()
}

/// Every rule without `retired` (whose share must already be 0).
pub fn without(rollouts: &Rollouts, retired: &VersionName) -> Result<Vec<BTreeMap<VersionName, u32>>, String> {
    rollouts
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let mut d = rule.distribution.clone();
            match d.remove(retired) {
                Some(share) if share > 0 => Err(format!("rules[{i}] (line {}) still gives {retired} {share}%", rule.line)),
                _ => Ok(d),
            }
        })
        .collect()
}

/// The whole intended state after an edit.
#[derive(Debug, Clone)]
pub struct Edit {
    /// One distribution per rule, in rule order.
    pub distributions: Vec<BTreeMap<VersionName, u32>>,
    /// Versions to delete from `versions`.
    pub remove_versions: Vec<VersionName>,
    /// The `upgrade` section afterwards (None removes it).
    pub upgrade: Option<UpgradeState>,
}

fn flow_distribution(d: &BTreeMap<VersionName, u32>) -> String {
    let parts: Vec<String> = d.iter().map(|(v, p)| format!("{v}: {p}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn flow_upgrade(u: &UpgradeState) -> String {
    let steps: Vec<String> = u.steps.iter().map(u32::to_string).collect();
    format!("{{from: {}, to: {}, steps: [{}], percent: {}}}", u.from, u.to, steps.join(", "), u.percent)
}

/// A replacement of whole lines `first..=last` (0-based).
struct Splice {
    first: usize,
    last: usize,
    lines: Vec<String>,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Where the value of the entry whose key starts at `key_pos` ends: its last
/// line (0-based) and the text after it on that line (flow values only).
fn value_extent(lines: &[&str], key_pos: Pos, what: &str) -> Result<(usize, usize, String), EditError> {
    let unsupported = |reason: &str| EditError::Unsupported { what: what.into(), line: key_pos.line, reason: reason.into() };
    let l = key_pos.line - 1;
    let line = lines.get(l).ok_or_else(|| unsupported("the key is past the end of the file"))?;
    let key_start = key_pos.column - 1;
    let colon = line.get(key_start..).and_then(|rest| rest.find(':')).map(|i| key_start + i).ok_or_else(|| unsupported("no ':' after the key"))?;
    let rest = line[colon + 1..].trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        // Block value: the following lines indented deeper than the key.
        let mut last = l;
        for (i, candidate) in lines.iter().enumerate().skip(l + 1) {
            if is_blank_or_comment(candidate) {
                continue;
            }
            if indent_of(candidate) <= key_start {
                break;
            }
            last = i;
        }
        return Ok((colon, last, String::new()));
    }
    if !rest.starts_with('{') {
        return Err(unsupported("the value is neither a block nor a {...} flow mapping"));
    }
    let mut depth = 0usize;
    let mut i = l;
    let mut from = colon + 1;
    loop {
        let text = lines.get(i).ok_or_else(|| unsupported("the '{' is never closed"))?;
        for (at, c) in text.char_indices().skip_while(|(at, _)| *at < from) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Ok((colon, i, text[at + 1..].to_string()));
                    }
                }
                '"' | '\'' => return Err(unsupported("quoted text inside the mapping")),
                _ => {}
            }
        }
        i += 1;
        from = 0;
    }
}

fn replace_value(lines: &[&str], key_pos: Pos, what: &str, new_value: &str) -> Result<Splice, EditError> {
    let (colon, last, suffix) = value_extent(lines, key_pos, what)?;
    let l = key_pos.line - 1;
    Ok(Splice { first: l, last, lines: vec![format!("{}: {new_value}{suffix}", &lines[l][..colon])] })
}

fn remove_entry(lines: &[&str], key_pos: Pos, what: &str) -> Result<Splice, EditError> {
    let l = key_pos.line - 1;
    if !lines[l][..key_pos.column - 1].trim().is_empty() {
        return Err(EditError::Unsupported { what: what.into(), line: key_pos.line, reason: "it shares its line with other YAML (flow style)".into() });
    }
    let (_, last, suffix) = value_extent(lines, key_pos, what)?;
    if !suffix.trim().is_empty() && !suffix.trim().starts_with('#') {
        return Err(EditError::Unsupported { what: what.into(), line: key_pos.line, reason: "other YAML follows it on its last line".into() });
    }
    Ok(Splice { first: l, last, lines: vec![] })
}

fn entry<'a>(node: &'a Node, key: &str) -> Option<(Pos, &'a Node)> {
    match node {
        Node::Map(_, entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, p, n)| (*p, n)),
        _ => None,
    }
}

/// Rewrites `text` (a valid rollouts.yml whose parse is `current`) so that it
/// says `edit`, touching only the lines of changed values, then parses the
/// result and checks that it says exactly what was intended.
pub fn apply(text: &str, current: &Rollouts, edit: &Edit) -> Result<String, EditError> {
    let docs = yaml_tree::load(text).map_err(|e| EditError::Syntax(e.pos, e.message))?;
    let root = docs.first().ok_or_else(|| EditError::Verify("the file is empty".into()))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut splices: Vec<Splice> = Vec::new();

    let rules = match entry(root, "rules") {
        Some((_, Node::Seq(_, items))) => items,
        _ => return Err(EditError::Verify("no rules list".into())),
    };
    if rules.len() != edit.distributions.len() || rules.len() != current.rules.len() {
        return Err(EditError::Verify(format!("{} rules in the file, {} in the edit", rules.len(), edit.distributions.len())));
    }
    for (i, (item, wanted)) in rules.iter().zip(&edit.distributions).enumerate() {
        if current.rules[i].distribution == *wanted {
            continue;
        }
        let (key_pos, _) = entry(item, "distribution").ok_or_else(|| EditError::Verify(format!("rules[{i}] has no distribution")))?;
        splices.push(replace_value(&lines, key_pos, &format!("rules[{i}].distribution"), &flow_distribution(wanted))?);
    }
    if let Some((_, versions)) = entry(root, "versions") {
        for retired in &edit.remove_versions {
            if let Some((key_pos, _)) = entry(versions, retired.as_str()) {
                splices.push(remove_entry(&lines, key_pos, &format!("versions.{retired}"))?);
            }
        }
    }
    let mut append = None;
    match (entry(root, "upgrade"), &edit.upgrade) {
        (Some((key_pos, _)), Some(u)) if current.upgrade.as_ref() != Some(u) => splices.push(replace_value(&lines, key_pos, "upgrade", &flow_upgrade(u))?),
        (Some((key_pos, _)), None) => splices.push(remove_entry(&lines, key_pos, "upgrade")?),
        (None, Some(u)) => append = Some(format!("upgrade: {}", flow_upgrade(u))),
        _ => {}
    }

    splices.sort_by_key(|s| s.first);
    if splices.windows(2).any(|w| w[0].last >= w[1].first) {
        return Err(EditError::Verify("two edits overlap".into()));
    }
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 1);
    let mut next = 0;
    for s in splices {
        out.extend(lines[next..s.first].iter().map(|l| l.to_string()));
        out.extend(s.lines);
        next = s.last + 1;
    }
    out.extend(lines[next..].iter().map(|l| l.to_string()));
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    if let Some(line) = append {
        out.push(line);
    }
    let mut result = out.join("\n");
    result.push('\n');

    let parsed = crate::parse(&result).map_err(|e| EditError::Verify(e.render_with_file("the edited file")))?;
    let got: Vec<&BTreeMap<VersionName, u32>> = parsed.rules.iter().map(|r| &r.distribution).collect();
    let want: Vec<&BTreeMap<VersionName, u32>> = edit.distributions.iter().collect();
    if got != want {
        return Err(EditError::Verify(format!("distributions came out as {got:?}")));
    }
    if edit.remove_versions.iter().any(|v| parsed.versions.contains_key(v)) {
        return Err(EditError::Verify("a retired version is still listed".into()));
    }
    if parsed.upgrade != edit.upgrade {
        return Err(EditError::Verify(format!("the upgrade section came out as {:?}", parsed.upgrade)));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Mesh versions, reviewed by the platform team.
apiVersion: revmesh.io/v1
kind: Rollouts
versions:
  1-24-5: {proxyImage: registry.example/revmesh/sidecar:1.24.5}
  1-25-2:
    proxyImage: registry.example/revmesh/sidecar:1.25.2
rules:
  # payments moves last
  - namespaces: [\"payments-*\"]
    distribution: {1-24-5: 100}   # keep
  - namespaces: [\"team-*\"]
    hashBy: workload
    distribution:
      1-24-5: 90
      # a comment inside
      1-25-2: 10

  - namespaces: [\"*\"]
    distribution: {1-25-2: 100}
";

    fn v(s: &str) -> VersionName {
        VersionName::new(s).unwrap()
    }

    #[test]
    fn steps_are_checked() {
        assert!(check_steps(&[1, 10, 50, 100]).is_ok());
        assert!(check_steps(&[10, 50]).unwrap_err().contains("not 100"));
        assert!(check_steps(&[10, 10, 100]).unwrap_err().contains("increase"));
        assert!(check_steps(&[0, 100]).unwrap_err().contains("1 to 100"));
        assert!(check_steps(&[]).is_err());
    }

    #[test]
    fn a_step_shifts_only_rules_naming_the_old_version() {
        let r = crate::parse(FILE).unwrap();
        let d = shifted(&r, &v("1-24-5"), &v("1-25-2"), 10);
        assert_eq!(d[0], BTreeMap::from([(v("1-24-5"), 90), (v("1-25-2"), 10)]));
        // Together 100 here too: the share is recomputed from the pair, not added to.
        assert_eq!(d[1], BTreeMap::from([(v("1-24-5"), 90), (v("1-25-2"), 10)]));
        assert_eq!(d[2], BTreeMap::from([(v("1-25-2"), 100)]));
        let back = shifted(&r, &v("1-24-5"), &v("1-25-2"), 0);
        assert_eq!(back[1], BTreeMap::from([(v("1-24-5"), 100), (v("1-25-2"), 0)]));
    }

    #[test]
    fn the_edit_keeps_comments_and_layout() {
        let r = crate::parse(FILE).unwrap();
        let upgrade = UpgradeState { from: v("1-24-5"), to: v("1-25-2"), steps: vec![10, 50, 100], percent: 50 };
        let edit = Edit { distributions: shifted(&r, &v("1-24-5"), &v("1-25-2"), 50), remove_versions: vec![], upgrade: Some(upgrade.clone()) };
        let out = apply(FILE, &r, &edit).unwrap();
        assert!(out.starts_with("# Mesh versions, reviewed by the platform team.\n"));
        assert!(out.contains("  # payments moves last\n"));
        assert!(out.contains("    distribution: {1-24-5: 50, 1-25-2: 50}   # keep\n"), "{out}");
        assert!(out.contains("    hashBy: workload\n    distribution: {1-24-5: 50, 1-25-2: 50}\n\n  - namespaces"), "{out}");
        assert!(out.ends_with("upgrade: {from: 1-24-5, to: 1-25-2, steps: [10, 50, 100], percent: 50}\n"), "{out}");
        let parsed = crate::parse(&out).unwrap();
        assert_eq!(parsed.upgrade, Some(upgrade));

        // Finishing: the old version leaves the rules, versions, and the upgrade section goes.
        let at_100 = apply(&out, &parsed, &Edit { distributions: shifted(&parsed, &v("1-24-5"), &v("1-25-2"), 100), remove_versions: vec![], upgrade: parsed.upgrade.clone() }).unwrap();
        let p100 = crate::parse(&at_100).unwrap();
        let finished = apply(&at_100, &p100, &Edit { distributions: without(&p100, &v("1-24-5")).unwrap(), remove_versions: vec![v("1-24-5")], upgrade: None }).unwrap();
        let done = crate::parse(&finished).unwrap();
        assert_eq!(done.versions.keys().map(VersionName::as_str).collect::<Vec<_>>(), ["1-25-2"]);
        assert!(done.upgrade.is_none());
        assert!(!finished.contains("1-24-5"), "{finished}");
        assert!(finished.contains("  1-25-2:\n    proxyImage: registry.example/revmesh/sidecar:1.25.2\n"));
    }

    #[test]
    fn retiring_a_version_with_a_share_is_refused() {
        let r = crate::parse(FILE).unwrap();
        assert!(without(&r, &v("1-24-5")).unwrap_err().contains("rules[0] (line 10) still gives 1-24-5 100%"));
    }
}
