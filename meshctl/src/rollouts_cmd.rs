//! `meshctl rollouts validate | explain | diff`.

use crate::cli::{ExplainArgs, Output};
use crate::{load_rollouts, print_json, read_input};
use rollouts::{Evaluation, PodFacts, Reason, Rollouts};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileResult {
    file: String,
    valid: bool,
    /// Why the file as a whole could not be checked (unreadable, too large).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The first problems, in file order (at most `rollouts::parse::SHOWN_PROBLEMS`).
    problems: Vec<ProblemJson>,
    /// How many problems the file has in all.
    problem_count: usize,
}

#[derive(Serialize)]
struct ProblemJson {
    line: usize,
    column: usize,
    message: String,
}

pub fn validate(files: &[PathBuf], output: Output) -> anyhow::Result<ExitCode> {
    let mut results = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let result = match crate::check_rollouts_file(file) {
            Ok(_) => FileResult { file: name.clone(), valid: true, error: None, problems: vec![], problem_count: 0 },
            Err(rollouts::FileError::Invalid(e)) => FileResult {
                file: name.clone(),
                valid: false,
                error: None,
                problem_count: e.problems.len(),
                problems: e
                    .problems
                    .iter()
                    .take(rollouts::parse::SHOWN_PROBLEMS)
                    .map(|p| ProblemJson { line: p.line, column: p.column, message: p.message.clone() })
                    .collect(),
            },
            Err(e) => FileResult { file: name.clone(), valid: false, error: Some(e.to_string()), problems: vec![], problem_count: 1 },
        };
        results.push(result);
    }
    let all_valid = results.iter().all(|r| r.valid);
    if output == Output::Json {
        print_json(&json!({"valid": all_valid, "files": results}))?;
    } else {
        for r in &results {
            if r.valid {
                println!("{}: valid", r.file);
                continue;
            }
            if let Some(error) = &r.error {
                eprintln!("{}: {error}", r.file);
            }
            for p in &r.problems {
                // Compiler style, so editors and CI annotate the line.
                eprintln!("{}:{}:{}: {}", r.file, p.line, p.column, p.message);
            }
            if r.problem_count > r.problems.len() && r.error.is_none() {
                eprintln!("{}: ... and {} more problems ({} in all)", r.file, r.problem_count - r.problems.len(), r.problem_count);
            }
        }
    }
    Ok(if all_valid { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn explain(args: &ExplainArgs, output: Output) -> anyhow::Result<ExitCode> {
    let r = load_rollouts(&args.file)?;
    let facts = PodFacts {
        namespace: &args.namespace,
        workload: &args.workload,
        pod_pin: args.pod_pin.as_deref(),
        namespace_pin: args.namespace_pin.as_deref(),
        pod_opted_out: args.pod_opted_out,
        namespace_disabled: args.namespace_disabled,
    };
    let evaluation = r.evaluate(&facts);
    if output == Output::Json {
        print_json(&json!({"namespace": args.namespace, "workload": args.workload, "evaluation": evaluation}))?;
        return Ok(ExitCode::SUCCESS);
    }
    let subject = if args.workload.is_empty() { format!("namespace {}", args.namespace) } else { format!("{}/{}", args.namespace, args.workload) };
    match &evaluation {
        Evaluation::Skip { reason } => println!("{subject}: not injected: {}", reason.explain()),
        Evaluation::UnknownPinnedVersion { version, known, .. } => {
            println!("{subject}: refused: pinned to {version}, which rollouts.yml does not define (known: {})", known.join(", "));
        }
        Evaluation::Assigned { version, reason, hash_key } => {
            println!("{subject}: version {version}");
            match reason {
                Reason::PodPin => println!("  why: the pod's revmesh.io/rev label pins it"),
                Reason::NamespacePin => println!("  why: the namespace's revmesh.io/rev label pins it"),
                Reason::Rule { index, line, pattern, hash_by } => {
                    let rule = &r.rules[*index];
                    let shares: Vec<String> = rule.distribution.iter().map(|(v, p)| format!("{v}: {p}%")).collect();
                    println!("  rule: rules[{index}] (line {line}), matched by pattern {pattern:?}");
                    println!("  distribution: {}", shares.join(", "));
                    let by = match hash_by {
                        rollouts::HashBy::Namespace => "namespace",
                        rollouts::HashBy::Workload => "workload",
                    };
                    println!("  hashBy: {by}, hash key: {}", hash_key.as_deref().unwrap_or(""));
                    if *hash_by == rollouts::HashBy::Workload && args.workload.is_empty() {
                        println!("  note: this rule hashes by workload; pass --workload to explain one workload");
                    }
                }
            }
            if let Some((_, spec)) = r.version(version.as_str()) {
                println!("  proxy image: {}", spec.proxy_image);
                println!("  control plane: {}", r.control_plane_address(version));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A key of the keys file: `namespace` or `namespace/workload`.
fn split_key(line: &str) -> (&str, &str) {
    line.split_once('/').unwrap_or((line, ""))
}

fn version_of(r: &Rollouts, namespace: &str, workload: &str) -> String {
    match r.evaluate(&PodFacts { namespace, workload, ..Default::default() }) {
        Evaluation::Assigned { version, .. } => version.to_string(),
        Evaluation::Skip { .. } => "(not injected)".into(),
        Evaluation::UnknownPinnedVersion { version, .. } => format!("(unknown {version})"),
    }
}

#[derive(Serialize)]
struct Move {
    from: String,
    to: String,
    count: usize,
    keys: Vec<String>,
}

pub fn diff(old: &std::path::Path, new: &std::path::Path, keys_file: &std::path::Path, list: bool, output: Output) -> anyhow::Result<ExitCode> {
    let before = load_rollouts(old)?;
    let after = load_rollouts(new)?;
    let keys_text = read_input(keys_file)?;
    let keys: Vec<&str> = keys_text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect();
    let mut moves: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut totals_before: BTreeMap<String, usize> = BTreeMap::new();
    let mut totals_after: BTreeMap<String, usize> = BTreeMap::new();
    for key in &keys {
        let (ns, wl) = split_key(key);
        let from = version_of(&before, ns, wl);
        let to = version_of(&after, ns, wl);
        *totals_before.entry(from.clone()).or_default() += 1;
        *totals_after.entry(to.clone()).or_default() += 1;
        if from != to {
            moves.entry((from, to)).or_default().push(key.to_string());
        }
    }
    let moved: usize = moves.values().map(Vec::len).sum();
    let moves: Vec<Move> = moves.into_iter().map(|((from, to), keys)| Move { from, to, count: keys.len(), keys }).collect();
    if output == Output::Json {
        print_json(&json!({"keys": keys.len(), "moved": moved, "moves": moves, "before": totals_before, "after": totals_after}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{moved} of {} keys move", keys.len());
    for m in &moves {
        println!("  {} -> {}: {}", m.from, m.to, m.count);
        if list {
            for k in &m.keys {
                println!("    {k}");
            }
        }
    }
    let versions: std::collections::BTreeSet<&String> = totals_before.keys().chain(totals_after.keys()).collect();
    println!("per version (before -> after):");
    for v in versions {
        println!("  {v}: {} -> {}", totals_before.get(v).unwrap_or(&0), totals_after.get(v).unwrap_or(&0));
    }
    Ok(ExitCode::SUCCESS)
}
