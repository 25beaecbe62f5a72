//! Every validation rule, with the line and column it must point at.

use rollouts::parse;

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => vec![],
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn assert_problem(text: &str, expected: &str) {
    let got = problems(text);
    assert!(got.iter().any(|p| p.starts_with(expected)), "expected a problem starting with {expected:?}, got {got:#?}");
}

const HEAD: &str = "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  1-24-5: {proxyImage: img:1}\n  1-25-2: {proxyImage: img:2}\n";

#[test]
fn valid_example_from_design() {
    let text = format!("{HEAD}rules:\n  - namespaces: [\"payments-*\", checkout]\n    hashBy: workload\n    distribution: {{1-24-5: 90, 1-25-2: 10}}\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 100}}\n");
    let r = parse(&text).expect("valid");
    assert_eq!(r.rules.len(), 2);
    assert_eq!(r.rules[0].line, 7);
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let text = format!("{HEAD}colour: red\nrules:\n  - namespaces: [\"*\"]\n    weights: 1\n    distribution: {{1-24-5: 100}}\n");
    let got = problems(&text);
    assert!(got.iter().any(|p| p.starts_with("6:1: unknown key \"colour\"")), "{got:?}");
    assert!(got.iter().any(|p| p.starts_with("9:5: unknown key \"weights\" in rules[0]")), "{got:?}");
}

#[test]
fn distribution_naming_unknown_version() {
    let text = format!("{HEAD}rules:\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 50, 1-26-0: 50}}\n");
    assert_problem(&text, "8:32: rules[0].distribution names version \"1-26-0\"");
}

#[test]
fn shares_must_sum_to_100() {
    let text = format!("{HEAD}rules:\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 50, 1-25-2: 40}}\n");
    assert_problem(&text, "8:20: rules[0].distribution sums to 90, not 100");
    let text = format!("{HEAD}rules:\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 150}}\n");
    assert_problem(&text, "8:28: rules[0].distribution.1-24-5 must be a whole percentage");
    let text = format!("{HEAD}rules:\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: \"100\"}}\n");
    assert_problem(&text, "8:28: rules[0].distribution.1-24-5 must be a whole percentage");
}

#[test]
fn empty_and_duplicate_patterns() {
    let text = format!("{HEAD}rules:\n  - namespaces: []\n    distribution: {{1-24-5: 100}}\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 100}}\n");
    assert_problem(&text, "7:17: rules[0].namespaces is empty");
    let text = format!("{HEAD}rules:\n  - namespaces: [\"\"]\n    distribution: {{1-24-5: 100}}\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 100}}\n");
    assert_problem(&text, "7:18: rules[0].namespaces has an empty pattern");
    let text = format!("{HEAD}rules:\n  - namespaces: [a, a]\n    distribution: {{1-24-5: 100}}\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 100}}\n");
    assert_problem(&text, "7:21: rules[0].namespaces lists \"a\" twice");
    let text = format!("{HEAD}rules:\n  - namespaces: [a]\n    distribution: {{1-24-5: 100}}\n  - namespaces: [a, \"*\"]\n    distribution: {{1-24-5: 100}}\n");
    assert_problem(&text, "9:18: rules[1].namespaces: \"a\" is already listed by an earlier rule");
}

#[test]
fn final_catch_all_rule_is_required_and_last() {
    let text = format!("{HEAD}rules:\n  - namespaces: [payments]\n    distribution: {{1-24-5: 100}}\n");
    assert_problem(&text, "7:5: the last rule must match every namespace");
    let text = format!("{HEAD}rules:\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 100}}\n  - namespaces: [late]\n    distribution: {{1-24-5: 100}}\n");
    assert_problem(&text, "9:5: rules[1] can never match");
}

#[test]
fn version_names_must_be_dns_labels() {
    let text = "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  1.25.2: {proxyImage: img}\n  -bad: {proxyImage: img}\nrules:\n  - namespaces: [\"*\"]\n    distribution: {1.25.2: 100}\n";
    let got = problems(text);
    assert!(got.iter().any(|p| p.starts_with("4:3: version name \"1.25.2\" is not a DNS label")), "{got:?}");
    assert!(got.iter().any(|p| p.starts_with("5:3: version name \"-bad\" is not a DNS label")), "{got:?}");
}

#[test]
fn wrong_header_missing_keys_and_types() {
    assert_problem("apiVersion: v2\nkind: Rollouts\nversions: {a: {proxyImage: x}}\nrules: [{namespaces: ['*'], distribution: {a: 100}}]\n", "1:13: apiVersion must be \"revmesh.io/v1\"");
    assert_problem("apiVersion: revmesh.io/v1\nkind: Rollouts\nrules: []\n", "1:1: the document is missing the required key \"versions\"");
    assert_problem("apiVersion: revmesh.io/v1\nkind: Rollouts\nversions: [a]\nrules: []\n", "3:11: versions must be a mapping");
    assert_problem("apiVersion: revmesh.io/v1\nkind: Rollouts\nversions: {a: {}}\nrules: [{namespaces: ['*'], distribution: {a: 100}}]\n", "3:15: version \"a\" is missing the required key \"proxyImage\"");
    assert_problem("apiVersion: revmesh.io/v1\nkind: Rollouts\nversions: {a: {proxyImage: x}}\nrules: [{namespaces: ['*'], hashBy: pod, distribution: {a: 100}}]\n", "4:37: rules[0].hashBy must be \"namespace\" or \"workload\"");
}

#[test]
fn syntax_errors_and_empty_files_have_positions() {
    let got = problems("apiVersion: revmesh.io/v1\nkind: [unclosed\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("YAML syntax"), "{got:?}");
    assert_problem("", "1:1: the file is empty");
    assert_problem("a: 1\n---\nb: 2\n", "3:1: rollouts.yml must hold exactly one YAML document");
    assert_problem("apiVersion: revmesh.io/v1\napiVersion: revmesh.io/v1\n", "2:1: duplicate key \"apiVersion\"");
}

#[test]
fn render_with_file_is_compiler_style() {
    let err = parse("kind: Rollouts\n").expect_err("invalid");
    let text = err.render_with_file("rollouts.yml");
    assert!(text.lines().all(|l| l.starts_with("rollouts.yml:1:1: ")), "{text}");
}

#[test]
fn deeply_nested_file_is_refused_with_its_position_not_a_crash() {
    // A few KB of nested block lists: the parser used to recurse once per level.
    let mut text = String::from("apiVersion: revmesh.io/v1\nkind: Rollouts\nrules:\n");
    for depth in 0..2000 {
        text.push_str(&" ".repeat(depth));
        text.push_str("-\n");
    }
    assert!(text.len() < 4 * 1024 * 1024);
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    // rules (level 1), its list (2), ... the 33rd opening is refused: line 3 + 32.
    assert!(got[0].starts_with("35:") && got[0].contains("nest deeper than 32 levels"), "{got:?}");
    // Flow style nests too.
    let flow = format!("{HEAD}rules: {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let got = problems(&flow);
    assert!(got.iter().any(|p| p.contains("nest deeper than 32 levels")), "{got:?}");
}

#[test]
fn non_utf8_bytes_are_refused_with_their_position_even_in_a_comment() {
    let valid = format!("{HEAD}rules:\n  - namespaces: [\"*\"]\n    distribution: {{1-24-5: 100}}\n");
    let mut bytes = valid.clone().into_bytes();
    // "# caf\xe9" (Latin-1) as a comment on line 2.
    let at = valid.find("kind").expect("kind");
    let comment = b"# caf\xe9\n";
    bytes.splice(at..at, comment.iter().copied());
    let err = rollouts::validate_bytes(&bytes).expect_err("not UTF-8");
    let rendered = err.render_with_file("r.yml");
    assert!(rendered.starts_with("r.yml:2:6: byte 0xe9 is not UTF-8"), "{rendered}");
    assert!(rollouts::validate_bytes(valid.as_bytes()).is_ok());
}

#[test]
fn huge_invalid_file_renders_the_first_problems_and_a_count() {
    let mut text = format!("{HEAD}rules:\n");
    for i in 0..5000 {
        text.push_str(&format!("  - namespaces: [ns-{i}]\n    distribution: {{1-24-5: 100, nope: 1}}\n"));
    }
    text.push_str("  - namespaces: [\"*\"]\n    distribution: {1-24-5: 100}\n");
    let err = rollouts::validate_bytes(text.as_bytes()).expect_err("invalid");
    let rendered = err.render_with_file("big.yml");
    assert_eq!(rendered.lines().count(), rollouts::parse::SHOWN_PROBLEMS + 1, "{rendered}");
    let last = rendered.lines().last().unwrap_or_default();
    assert!(last.starts_with("... and ") && last.ends_with("in all)"), "{last}");
    assert!(rendered.len() < 10_000, "{} bytes", rendered.len());
}

#[test]
fn long_values_are_cut_in_messages_and_large_files_refused_without_a_position() {
    let kind = "k".repeat(1024 * 1024 - 200);
    let text = format!("{}rules: []\n", HEAD.replace("kind: Rollouts", &format!("kind: {kind}")));
    let err = rollouts::validate_bytes(text.as_bytes()).expect_err("wrong kind");
    let rendered = err.render_with_file("r.yml");
    assert!(rendered.len() < 2000 && rendered.contains("bytes)"), "{} bytes", rendered.len());

    let too_big = vec![b'#'; rollouts::parse::MAX_FILE_BYTES + 1];
    let err = rollouts::validate_bytes(&too_big).expect_err("too large");
    let rendered = err.render_with_file("r.yml");
    assert!(rendered.starts_with("r.yml: the file is") && !rendered.contains(":0"), "{rendered}");
}
