//! meshctl as a user runs it: the real binary, real files, exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl")).args(args).output().expect("meshctl runs")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).display().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

#[test]
fn validate_exits_zero_on_valid_and_one_with_positions_on_invalid() {
    let ok = meshctl(&["rollouts", "validate", &example("rollouts.yml")]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(dir.path(), "bad.yml", "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  1-24-5: {proxyImage: x}\nrules:\n  - namespaces: [\"*\"]\n    distribution: {1-24-5: 90, 1-26-0: 10}\n");
    let out = meshctl(&["rollouts", "validate", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:7:32: rules[0].distribution names version \"1-26-0\"", bad.display())), "{stderr}");

    let json = meshctl(&["rollouts", "validate", &bad.display().to_string(), "-o", "json"]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v["valid"], false);
    assert_eq!(v["files"][0]["problems"][0]["line"], 7);
}

#[test]
fn explain_names_rule_key_version_and_reason() {
    let out = meshctl(&["rollouts", "explain", "-f", &example("rollouts.yml"), "--namespace", "payments-eu", "--workload", "checkout-api", "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["evaluation"]["outcome"], "assigned");
    assert_eq!(v["evaluation"]["hashKey"], "payments-eu/checkout-api");
    assert_eq!(v["evaluation"]["reason"]["pattern"], "payments-*");
    let pinned = meshctl(&["rollouts", "explain", "-f", &example("rollouts.yml"), "--namespace", "x", "--namespace-pin", "1-25-2"]);
    let text = String::from_utf8_lossy(&pinned.stdout);
    assert!(text.contains("version 1-25-2") && text.contains("namespace's revmesh.io/rev label"), "{text}");
    let opted = meshctl(&["rollouts", "explain", "-f", &example("rollouts.yml"), "--namespace", "x", "--pod-opted-out"]);
    assert!(String::from_utf8_lossy(&opted.stdout).contains("not injected"));
}

#[test]
fn diff_counts_moves_only_onto_the_raised_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = std::fs::read_to_string(example("rollouts.yml")).expect("example");
    let new = write(dir.path(), "new.yml", &old.replace("{1-24-5: 90, 1-25-2: 10}", "{1-24-5: 50, 1-25-2: 50}"));
    let keys: String = (0..500).map(|i| format!("payments-{i}/api\n")).collect();
    let keys = write(dir.path(), "keys.txt", &format!("# workloads\n{keys}"));
    let out = meshctl(&["rollouts", "diff", &example("rollouts.yml"), &new.display().to_string(), "--keys", &keys.display().to_string(), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["keys"], 500);
    let moves = v["moves"].as_array().expect("moves");
    assert_eq!(moves.len(), 1, "{v}");
    assert_eq!((moves[0]["from"].as_str(), moves[0]["to"].as_str()), (Some("1-24-5"), Some("1-25-2")));
    let moved = moves[0]["count"].as_u64().expect("count");
    // About 40% of 500 keys move; the exact number is pinned by the hash.
    assert!((150..=250).contains(&moved), "{moved}");
}

#[test]
fn inject_outputs_injected_yaml_and_passes_other_objects_through() {
    let out = meshctl(&["inject", "-f", &example("deployment.yaml"), "--rollouts", &example("rollouts.yml"), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let containers = v["objects"][0]["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.last().and_then(|c| c["name"].as_str()), Some("revmesh-proxy"));
    assert_eq!(v["objects"][1]["kind"], "Service");
    assert_eq!(v["reports"][1]["result"], "unchanged");
    let yaml = meshctl(&["inject", "-f", &example("deployment.yaml"), "--rollouts", &example("rollouts.yml")]);
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("revmesh-proxy"));
}

#[test]
fn inject_refuses_invalid_annotation_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write(dir.path(), "pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {sidecar.revmesh.io/logLevel: loud}\nspec:\n  containers: [{name: c, image: busybox}]\n");
    let out = meshctl(&["inject", "-f", &pod.display().to_string(), "--rollouts", &example("rollouts.yml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sidecar.revmesh.io/logLevel"));
}

#[test]
fn inject_handles_cronjob_and_statefulset_templates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = write(dir.path(), "m.yaml", "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '0 0 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: c, image: busybox}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers: [{name: c, image: postgres}]\n");
    let out = meshctl(&["inject", "-f", &m.display().to_string(), "--rollouts", &example("rollouts.yml"), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["objects"][0]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["revmesh.io/rev"], "1-24-5");
    assert_eq!(v["objects"][1]["spec"]["template"]["spec"]["initContainers"][0]["name"], "revmesh-init");
}

/// The same hostile files the webhook's reload test refuses (webhook/tests/server.rs):
/// both run `rollouts::validate_bytes`.
#[test]
fn validate_refuses_deep_nesting_and_non_utf8_with_positions_and_io_errors_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut deep = String::from("apiVersion: revmesh.io/v1\nkind: Rollouts\nrules:\n");
    for depth in 0..150 {
        deep.push_str(&" ".repeat(depth));
        deep.push_str("-\n");
    }
    let deep_path = write(dir.path(), "deep.yml", &deep);
    let out = meshctl(&["rollouts", "validate", &deep_path.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "no crash: exit 1 with a message");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:35:", deep_path.display())) && stderr.contains("nest deeper than 32 levels"), "{stderr}");

    let latin1 = dir.path().join("latin1.yml");
    let mut bytes = std::fs::read(example("rollouts.yml")).expect("example");
    bytes.splice(0..0, b"# r\xe9sum\xe9 of the plan\n".iter().copied());
    std::fs::write(&latin1, &bytes).expect("write");
    let out = meshctl(&["rollouts", "validate", &latin1.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:1:4: byte 0xe9 is not UTF-8", latin1.display())), "{stderr}");

    let missing = dir.path().join("missing.yml");
    let out = meshctl(&["rollouts", "validate", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read") && !stderr.contains(":0:0"), "{stderr}");
    let json = meshctl(&["rollouts", "validate", &missing.display().to_string(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert!(v["files"][0]["error"].as_str().is_some_and(|e| e.contains("cannot read")), "{v}");
    assert_eq!(v["files"][0]["problems"], serde_json::json!([]));
}

#[test]
fn validate_of_a_huge_invalid_file_prints_the_first_problems_and_a_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::from("apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  1-24-5: {proxyImage: x}\nrules:\n");
    for i in 0..5000 {
        text.push_str(&format!("  - namespaces: [ns-{i}]\n    distribution: {{1-24-5: 100, nope: 1}}\n"));
    }
    text.push_str("  - namespaces: [\"*\"]\n    distribution: {1-24-5: 100}\n");
    let big = write(dir.path(), "big.yml", &text);
    let out = meshctl(&["rollouts", "validate", &big.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 21, "{stderr}");
    assert!(lines[0].starts_with(&format!("{}:7:", big.display())), "{}", lines[0]);
    assert!(lines[20].contains("... and 4980 more problems (5000 in all)"), "{}", lines[20]);

    let json = meshctl(&["rollouts", "validate", &big.display().to_string(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v["files"][0]["problems"].as_array().map(Vec::len), Some(20));
    assert_eq!(v["files"][0]["problemCount"], 5000);
}

#[test]
fn inject_writes_documents_it_does_not_change_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = "# the front door\napiVersion: v1\nkind: Service\nmetadata: {name: web}   # keep this comment\nspec:\n  ports: [{port: 0x50}]\n";
    let config = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: flags\ndata:\n  enabled: \"yes\"\n  mode: '0644'\n";
    let deployment = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: app, image: nginx, env: [{name: A, value: \"on\"}]}]\n      volumes: [{name: v, configMap: {name: flags, defaultMode: 0644}}]\n";
    let file = write(dir.path(), "m.yaml", &format!("{service}{config}{deployment}...\n"));
    let out = meshctl(&["inject", "-f", &file.display().to_string(), "--rollouts", &example("rollouts.yml")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(stdout.starts_with(&format!("{service}{config}---\n")), "{stdout}");
    let injected = &stdout[service.len() + config.len()..];
    assert!(injected.contains("defaultMode: 420\n") && injected.contains("value: \"on\"\n") && injected.contains("revmesh-proxy"), "{injected}");
    assert!(injected.ends_with("...\n"), "{injected}");
}
