//! Reading rollouts.yml: structure, types and meaning are all checked, and every
//! problem is reported with its line and column, not just the first.

use crate::model::{HashBy, Rollouts, Rule, UpgradeState, VersionName, VersionSpec, API_VERSION, KIND};
use crate::pattern;
use crate::yaml_tree::{self, Node, Pos};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// One thing wrong with the file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// The file is not a valid rollouts.yml; `problems` lists all that was found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.problems, None))]
pub struct ParseError {
    pub problems: Vec<Problem>,
}

/// How many problems a rendered error shows; the rest are counted. A huge
/// invalid file must not turn into megabytes of log or terminal output.
pub const SHOWN_PROBLEMS: usize = 20;

impl ParseError {
    /// `file:line:column: message`, one line per problem, as compilers print
    /// them: the first [`SHOWN_PROBLEMS`], then how many more there are.
    pub fn render_with_file(&self, file: &str) -> String {
        render(&self.problems, Some(file))
    }
}

fn render(problems: &[Problem], file: Option<&str>) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(SHOWN_PROBLEMS)
        .map(|p| match file {
            Some(f) => format!("{f}:{p}"),
            None => p.to_string(),
        })
        .collect();
    if problems.len() > SHOWN_PROBLEMS {
        lines.push(format!("... and {} more problems ({} in all)", problems.len() - SHOWN_PROBLEMS, problems.len()));
    }
    lines.join("\n")
}

/// The largest rollouts.yml read: a ConfigMap holds at most 1 MiB, so a larger
/// file cannot be what the webhook is meant to load.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Why a rollouts.yml file was not loaded. Only [`FileError::Invalid`] has
/// positions; reading and size problems concern the whole file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the file is {size} bytes or more; rollouts.yml may be at most {MAX_FILE_BYTES} bytes (the size limit of a ConfigMap)")]
    TooLarge { size: u64 },
    #[error("{0}")]
    Invalid(ParseError),
}

impl FileError {
    /// One message per line: `file: what` for the whole file, or
    /// `file:line:column: what` per problem (see [`ParseError::render_with_file`]).
    pub fn render_with_file(&self, file: &str) -> String {
        match self {
            FileError::Read { source, .. } => format!("{file}: cannot read the file: {source}"),
            FileError::TooLarge { .. } => format!("{file}: {self}"),
            FileError::Invalid(e) => e.render_with_file(file),
        }
    }
}

/// Reads at most [`MAX_FILE_BYTES`] (+1, to tell a larger file apart) from `path`.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    let read_error = |source| FileError::Read { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge { size: bytes.len() as u64 });
    }
    Ok(bytes)
}

/// THE check of a rollouts.yml's bytes: size, encoding, syntax, structure and
/// meaning. The webhook (at start and on every reload) and `meshctl` call this
/// one function, so they accept and refuse exactly the same files.
pub fn validate_bytes(bytes: &[u8]) -> Result<Rollouts, FileError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge { size: bytes.len() as u64 });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| FileError::Invalid(ParseError { problems: vec![not_utf8(bytes, e)] }))?;
    parse(text).map_err(FileError::Invalid)
}

/// Reads and validates a rollouts.yml file; returns the bytes too, so a
/// watcher can tell later whether the file changed.
pub fn load_file(path: &std::path::Path) -> Result<(Rollouts, Vec<u8>), FileError> {
    let bytes = read_file(path)?;
    let parsed = validate_bytes(&bytes)?;
    Ok((parsed, bytes))
}

/// Points at the first byte that is not UTF-8 (columns count characters, as
/// the YAML positions do).
fn not_utf8(bytes: &[u8], e: std::str::Utf8Error) -> Problem {
    let valid = &bytes[..e.valid_up_to()];
    let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
    // The prefix is valid UTF-8 by construction of `valid_up_to`.
    let column = std::str::from_utf8(&valid[line_start..]).map_or(1, |s| s.chars().count() + 1);
    Problem {
        line,
        column,
        message: format!(
            "byte 0x{:02x} is not UTF-8 (even in a comment); rollouts.yml must be UTF-8 text: re-save the file as UTF-8",
            bytes[e.valid_up_to()]
        ),
    }
}

/// At most ten names, then how many more: messages stay short whatever the file.
fn some_of(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut out = names.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

/// Parses and validates rollouts.yml text.
pub fn parse(text: &str) -> Result<Rollouts, ParseError> {
    let documents = yaml_tree::load(text).map_err(|e| ParseError {
        problems: vec![Problem { line: e.pos.line, column: e.pos.column, message: format!("YAML syntax: {}", e.message) }],
    })?;
    let mut v = Validator::default();
    let root = match documents.as_slice() {
        [] => {
            v.report(Pos { line: 1, column: 1 }, "the file is empty: expected a Rollouts document (apiVersion, kind, versions, rules)");
            None
        }
        [one] => Some(one),
        [_, second, ..] => {
            v.report(second.pos(), "rollouts.yml must hold exactly one YAML document; remove the extra '---' section");
            None
        }
    };
    let parsed = root.and_then(|r| v.rollouts(r));
    match (parsed, v.problems.is_empty()) {
        (Some(r), true) => Ok(r),
        _ => {
            let mut problems = v.problems;
            problems.sort_by_key(|p| (p.line, p.column));
            Err(ParseError { problems })
        }
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn report(&mut self, pos: Pos, message: impl Into<String>) {
        let mut message = message.into();
        // Messages quote the file's own keys and values, which a hostile file
        // can make a megabyte long.
        const MAX_MESSAGE: usize = 400;
        if message.len() > MAX_MESSAGE {
            let total = message.len();
            let cut = (0..=MAX_MESSAGE).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
            message.truncate(cut);
            message.push_str(&format!("... (message cut at {cut} of {total} bytes)"));
        }
        self.problems.push(Problem { line: pos.line, column: pos.column, message });
    }

    /// Checks that `node` is a mapping with only `allowed` keys and no duplicates.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<BTreeMap<&'n str, (Pos, &'n Node)>> {
        let Node::Map(_, entries) = node else {
            self.report(node.pos(), format!("{what} must be a mapping, found {}", node.kind()));
            return None;
        };
        let mut out = BTreeMap::new();
        for (key, key_pos, value) in entries {
            if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
                self.report(*key_pos, format!("unknown key {key:?} in {what}; allowed keys: {}", allowed.join(", ")));
                continue;
            }
            if out.insert(key.as_str(), (*key_pos, value)).is_some() {
                self.report(*key_pos, format!("duplicate key {key:?} in {what}"));
            }
        }
        Some(out)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node {
            Node::Scalar(_, s, _) => Some(s.clone()),
            other => {
                self.report(other.pos(), format!("{what} must be a string, found {}", other.kind()));
                None
            }
        }
    }

    fn required<'n>(&mut self, map: &BTreeMap<&str, (Pos, &'n Node)>, key: &str, at: Pos, what: &str) -> Option<&'n Node> {
        match map.get(key) {
            Some((_, n)) => Some(*n),
            None => {
                self.report(at, format!("{what} is missing the required key {key:?}"));
                None
            }
        }
    }

    fn rollouts(&mut self, root: &Node) -> Option<Rollouts> {
        let top = self.mapping(root, "the document", &["apiVersion", "kind", "versions", "rules", "upgrade"])?;
        let at = root.pos();
        let api_version = self.required(&top, "apiVersion", at, "the document").and_then(|n| {
            let s = self.string(n, "apiVersion")?;
            if s != API_VERSION {
                self.report(n.pos(), format!("apiVersion must be {API_VERSION:?}, found {s:?}"));
            }
            Some(s)
        });
        let kind = self.required(&top, "kind", at, "the document").and_then(|n| {
            let s = self.string(n, "kind")?;
            if s != KIND {
                self.report(n.pos(), format!("kind must be {KIND:?}, found {s:?}"));
            }
            Some(s)
        });
        let versions = self.required(&top, "versions", at, "the document").and_then(|n| self.versions(n));
        let rules = match (self.required(&top, "rules", at, "the document"), &versions) {
            (Some(n), Some(vs)) => self.rules(n, vs),
            (Some(n), None) => {
                // Still check the rules' own shape so the user sees everything at once.
                self.rules(n, &BTreeMap::new());
                None
            }
            _ => None,
        };
        let upgrade = match (top.get("upgrade"), &versions) {
            (None, _) => Some(None),
            (Some((_, n)), Some(vs)) => self.upgrade(n, vs).map(Some),
            (Some(_), None) => None,
        };
        Some(Rollouts { api_version: api_version?, kind: kind?, versions: versions?, rules: rules?, upgrade: upgrade? })
    }

    fn upgrade(&mut self, node: &Node, versions: &BTreeMap<VersionName, VersionSpec>) -> Option<UpgradeState> {
        let what = "upgrade";
        let fields = self.mapping(node, what, &["from", "to", "steps", "percent"])?;
        let version = |v: &mut Self, key: &str| -> Option<VersionName> {
            let n = v.required(&fields, key, node.pos(), what)?;
            let name = v.string(n, &format!("upgrade.{key}"))?;
            match versions.get_key_value(name.as_str()) {
                Some((k, _)) => Some(k.clone()),
                None => {
                    let known: Vec<&str> = versions.keys().map(VersionName::as_str).collect();
                    v.report(n.pos(), format!("upgrade.{key} names version {name:?}, which is not under `versions` (known: {})", some_of(&known)));
                    None
                }
            }
        };
        let from = version(self, "from");
        let to = version(self, "to");
        let percent_of = |n: &Node| match n {
            Node::Scalar(_, s, false) => s.parse::<u32>().ok().filter(|p| *p <= 100),
            _ => None,
        };
        let steps = self.required(&fields, "steps", node.pos(), what).and_then(|n| {
            let Node::Seq(_, items) = n else {
                self.report(n.pos(), format!("upgrade.steps must be a list of percentages, found {}", n.kind()));
                return None;
            };
            let mut steps = Vec::new();
            for item in items {
                match percent_of(item) {
                    Some(p) => steps.push(p),
                    None => {
                        self.report(item.pos(), "upgrade.steps entries must be whole percentages from 1 to 100");
                        return None;
                    }
                }
            }
            match crate::edit::check_steps(&steps) {
                Ok(()) => Some(steps),
                Err(message) => {
                    self.report(n.pos(), format!("upgrade.steps: {message}"));
                    None
                }
            }
        });
        let percent = self.required(&fields, "percent", node.pos(), what).and_then(|n| {
            let p = percent_of(n);
            if p.is_none() {
                self.report(n.pos(), "upgrade.percent must be a whole percentage from 0 to 100");
            }
            p.map(|p| (p, n.pos()))
        });
        let (from, to, steps, (percent, percent_pos)) = (from?, to?, steps?, percent?);
        if from == to {
            self.report(node.pos(), format!("upgrade.from and upgrade.to are both {from}"));
            return None;
        }
        if percent != 0 && !steps.contains(&percent) {
            self.report(percent_pos, format!("upgrade.percent is {percent}, which is neither 0 nor one of the steps {steps:?}"));
            return None;
        }
        Some(UpgradeState { from, to, steps, percent })
    }

    fn versions(&mut self, node: &Node) -> Option<BTreeMap<VersionName, VersionSpec>> {
        let map = self.mapping(node, "versions", &[])?;
        if map.is_empty() {
            self.report(node.pos(), "versions is empty: name at least one version, e.g. `1-25-2: {proxyImage: ...}`");
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, (key_pos, value)) in map {
            let version = match VersionName::new(name) {
                Ok(v) => Some(v),
                Err(msg) => {
                    self.report(key_pos, msg);
                    ok = false;
                    None
                }
            };
            let what = format!("version {name:?}");
            let Some(fields) = self.mapping(value, &what, &["proxyImage", "controlPlane"]) else {
                ok = false;
                continue;
            };
            let image = self.required(&fields, "proxyImage", value.pos(), &what).and_then(|n| self.string(n, "proxyImage"));
            let image = match image {
                Some(s) if s.trim().is_empty() => {
                    self.report(fields["proxyImage"].1.pos(), format!("{what}: proxyImage is empty"));
                    None
                }
                other => other,
            };
            let control_plane = match fields.get("controlPlane") {
                Some((_, n)) => {
                    let s = self.string(n, "controlPlane");
                    if s.is_none() {
                        ok = false;
                    }
                    s
                }
                None => None,
            };
            match (version, image) {
                (Some(v), Some(proxy_image)) => {
                    out.insert(v, VersionSpec { proxy_image, control_plane });
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rules(&mut self, node: &Node, versions: &BTreeMap<VersionName, VersionSpec>) -> Option<Vec<Rule>> {
        let Node::Seq(_, items) = node else {
            self.report(node.pos(), format!("rules must be a list, found {}", node.kind()));
            return None;
        };
        if items.is_empty() {
            self.report(node.pos(), "rules is empty: add at least the final catch-all rule `- namespaces: [\"*\"]`");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        let mut seen_patterns: HashSet<String> = HashSet::new();
        let mut catch_all_at: Option<usize> = None;
        for (index, item) in items.iter().enumerate() {
            let what = format!("rules[{index}]");
            if let Some(earlier) = catch_all_at {
                self.report(item.pos(), format!("{what} can never match: rules[{earlier}] already matches every namespace with \"*\"; move it above that rule or remove it"));
                ok = false;
            }
            match self.rule(item, &what, versions, &mut seen_patterns) {
                Some(rule) => {
                    if rule.namespaces.iter().any(|p| p == "*") && catch_all_at.is_none() {
                        catch_all_at = Some(index);
                    }
                    out.push(rule);
                }
                None => ok = false,
            }
        }
        if catch_all_at.is_none() && ok {
            let last = items.last().map(Node::pos).unwrap_or(node.pos());
            self.report(last, "the last rule must match every namespace: add `- namespaces: [\"*\"]` with a distribution at the end");
            ok = false;
        }
        ok.then_some(out)
    }

    fn rule(&mut self, node: &Node, what: &str, versions: &BTreeMap<VersionName, VersionSpec>, seen: &mut HashSet<String>) -> Option<Rule> {
        let fields = self.mapping(node, what, &["namespaces", "hashBy", "distribution"])?;
        let mut ok = true;
        let namespaces = self.required(&fields, "namespaces", node.pos(), what).and_then(|n| {
            let Node::Seq(_, items) = n else {
                self.report(n.pos(), format!("{what}.namespaces must be a list of patterns, found {}", n.kind()));
                return None;
            };
            if items.is_empty() {
                self.report(n.pos(), format!("{what}.namespaces is empty: list at least one namespace pattern"));
                return None;
            }
            let mut patterns = Vec::new();
            let mut here = HashSet::new();
            for item in items {
                let p = self.string(item, &format!("{what}.namespaces entry"))?;
                if p.is_empty() {
                    self.report(item.pos(), format!("{what}.namespaces has an empty pattern"));
                    return None;
                }
                if !pattern::is_valid(&p) {
                    self.report(item.pos(), format!("{what}.namespaces: {p:?} is not a namespace pattern (lowercase letters, digits, '-', '*' and '?')"));
                    return None;
                }
                if !here.insert(p.clone()) {
                    self.report(item.pos(), format!("{what}.namespaces lists {p:?} twice"));
                    return None;
                }
                if !seen.insert(p.clone()) {
                    self.report(item.pos(), format!("{what}.namespaces: {p:?} is already listed by an earlier rule, so it never reaches this one"));
                    return None;
                }
                patterns.push(p);
            }
            Some(patterns)
        });
        ok &= namespaces.is_some();
        let hash_by = match fields.get("hashBy") {
            None => Some(HashBy::Namespace),
            Some((_, n)) => match self.string(n, &format!("{what}.hashBy")).as_deref() {
                Some("namespace") => Some(HashBy::Namespace),
                Some("workload") => Some(HashBy::Workload),
                Some(other) => {
                    self.report(n.pos(), format!("{what}.hashBy must be \"namespace\" or \"workload\", found {other:?}"));
                    None
                }
                None => None,
            },
        };
        ok &= hash_by.is_some();
        let distribution = self.required(&fields, "distribution", node.pos(), what).and_then(|n| self.distribution(n, what, versions));
        ok &= distribution.is_some();
        if !ok {
            return None;
        }
        Some(Rule { namespaces: namespaces?, hash_by: hash_by?, distribution: distribution?, line: node.pos().line })
    }

    fn distribution(&mut self, node: &Node, what: &str, versions: &BTreeMap<VersionName, VersionSpec>) -> Option<BTreeMap<VersionName, u32>> {
        let what = format!("{what}.distribution");
        let map = self.mapping(node, &what, &[])?;
        if map.is_empty() {
            self.report(node.pos(), format!("{what} is empty: give each version a percentage, summing to 100"));
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        let mut total: u64 = 0;
        for (name, (key_pos, value)) in map {
            let version = versions.get_key_value(name).map(|(v, _)| v.clone());
            if version.is_none() {
                if !versions.is_empty() {
                    let known: Vec<&str> = versions.keys().map(VersionName::as_str).collect();
                    self.report(key_pos, format!("{what} names version {name:?}, which is not under `versions` (known: {})", some_of(&known)));
                }
                ok = false;
            }
            let share = match value {
                Node::Scalar(_, s, false) => match s.parse::<u32>() {
                    Ok(n) if n <= 100 => Some(n),
                    _ => None,
                },
                _ => None,
            };
            match share {
                Some(n) => {
                    total += u64::from(n);
                    if let Some(v) = version {
                        out.insert(v, n);
                    }
                }
                None => {
                    self.report(value.pos(), format!("{what}.{name} must be a whole percentage from 0 to 100"));
                    ok = false;
                }
            }
        }
        if ok && total != 100 {
            self.report(node.pos(), format!("{what} sums to {total}, not 100"));
            ok = false;
        }
        ok.then_some(out)
    }
}
