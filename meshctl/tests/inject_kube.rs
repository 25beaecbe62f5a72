//! `meshctl inject` keeps every value of every document. A corpus of manifests
//! (tests/fixtures/fidelity.yaml: YAML 1.1 integers, quoted look-alikes, merge
//! keys, a List, non-workloads, other meshes' pods) is applied with a
//! server-side dry run on a real kube-apiserver, once as written and once
//! through `meshctl inject`; apart from what injection adds, the API server
//! must see the very same objects.

use anyhow::{Context, Result};
use kube_harness::Cluster;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fidelity.yaml")
}

fn rollouts() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/rollouts.yml").display().to_string()
}

/// The objects the API server returns for `yaml` (dry run: nothing is stored).
fn applied(cluster: &Cluster, yaml: &str) -> Result<Vec<Value>> {
    let out = cluster.kubectl_input(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(yaml))?;
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let value = value.context("kubectl printed something that is not JSON")?;
        match value["kind"].as_str() {
            Some("List") => objects.extend(value["items"].as_array().cloned().unwrap_or_default()),
            _ => objects.push(value),
        }
    }
    Ok(objects)
}

fn key(object: &Value) -> String {
    format!("{}/{}", object["kind"].as_str().unwrap_or(""), object["metadata"]["name"].as_str().unwrap_or(""))
}

fn template_mut(object: &mut Value) -> Option<&mut Value> {
    match object["kind"].as_str() {
        Some("Pod") => Some(object),
        Some(_) => object.pointer_mut("/spec/template").filter(|t| t.is_object()),
        None => None,
    }
}

/// Drops what the server stamps on every object and what injection adds, so
/// that the rest can be compared field by field.
fn without_injection_and_server_stamps(mut object: Value) -> Value {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for field in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink"] {
            meta.remove(field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    if let Some(template) = template_mut(&mut object) {
        if let Some(labels) = template.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
            labels.remove("revmesh.io/rev");
        }
        if let Some(annotations) = template.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
            annotations.remove("revmesh.io/status");
        }
        for (field, injected) in [("containers", "revmesh-proxy"), ("initContainers", "revmesh-init")] {
            if let Some(list) = template.pointer_mut(&format!("/spec/{field}")).and_then(Value::as_array_mut) {
                list.retain(|c| c["name"] != injected);
            }
        }
        if let Some(volumes) = template.pointer_mut("/spec/volumes").and_then(Value::as_array_mut) {
            volumes.retain(|v| !v["name"].as_str().unwrap_or("").starts_with("revmesh-"));
        }
    }
    drop_empty(&mut object);
    object
}

/// Removes empty maps and lists (injection may leave `initContainers: []`).
fn drop_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(drop_empty);
            map.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()) && !matches!(v, Value::Array(a) if a.is_empty()));
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

fn container_names(object: &Value) -> Vec<String> {
    let pointer = if object["kind"] == "Pod" { "/spec/containers" } else { "/spec/template/spec/containers" };
    object.pointer(pointer).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_string)).collect()
}

#[test]
fn injected_manifests_keep_every_value_kubectl_reads() -> Result<()> {
    let original = std::fs::read_to_string(fixture())?;
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl")).args(["inject", "-f", &fixture().display().to_string(), "--rollouts", &rollouts()]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(out.status.success(), "meshctl inject failed: {stderr}");
    let injected = String::from_utf8(out.stdout)?;

    // Documents that get no proxy are written back byte for byte.
    for segment in webhook::manifest_yaml::split_documents(&original) {
        let untouched = ["kind: ConfigMap", "kind: Secret", "name: legacy", "name: istio-meshed"].iter().any(|m| segment.text.contains(m));
        if untouched {
            assert!(injected.contains(segment.text), "not passed through byte for byte:\n{}", segment.text);
        }
    }
    // The skipped workloads say why, on stderr (stdout stays a clean stream).
    assert!(stderr.contains("Deployment/istio-meshed: skipped (the pod already has another mesh's istio-proxy container"), "{stderr}");
    assert!(stderr.contains("Deployment/legacy: skipped (sidecar.istio.io/inject=\"false\""), "{stderr}");

    Cluster::run(|cluster| {
        let plain = applied(cluster, &original)?;
        let meshed = applied(cluster, &injected)?;
        let order = |objects: &[Value]| objects.iter().map(key).collect::<Vec<_>>();
        assert_eq!(order(&plain), order(&meshed), "same objects, same order");
        assert_eq!(
            order(&plain),
            ["ConfigMap/flags", "Secret/creds", "Deployment/web", "Service/web", "StatefulSet/db", "Pod/solo", "Deployment/legacy", "Deployment/istio-meshed"]
        );

        for (before, after) in plain.iter().zip(&meshed) {
            let name = key(before);
            let proxies = container_names(after).iter().filter(|c| c.as_str() == "revmesh-proxy").count();
            let expect_proxy = ["Deployment/web", "StatefulSet/db", "Pod/solo"].contains(&name.as_str());
            assert_eq!(proxies, usize::from(expect_proxy), "{name}: {:?}", container_names(after));
            assert_eq!(without_injection_and_server_stamps(before.clone()), without_injection_and_server_stamps(after.clone()), "{name} differs beyond the injection");
        }

        // The corpus does exercise what it claims: the values as kubectl reads them.
        let by_key = |k: &str| plain.iter().find(|o| key(o) == k).cloned().unwrap_or_default();
        let flags = by_key("ConfigMap/flags");
        assert_eq!(flags["data"]["enabled"], "yes");
        assert_eq!(flags["data"]["switch_on"], "on");
        assert_eq!(flags["data"]["mode"], "0644");
        assert_eq!(flags["data"]["nothing"], "~");
        assert_eq!(flags["data"]["date"], "2024-01-02");
        let web = by_key("Deployment/web");
        assert_eq!(web["spec"]["replicas"], 3);
        assert_eq!(web["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(web["spec"]["progressDeadlineSeconds"], 1200);
        assert_eq!(web["spec"]["minReadySeconds"], 30);
        assert_eq!(web["spec"]["template"]["metadata"]["labels"], json!({"app": "web", "release": "true", "track": "yes"}));
        let volumes = &web["spec"]["template"]["spec"]["volumes"];
        assert_eq!(volumes[0]["configMap"]["defaultMode"], 420);
        assert_eq!(volumes[0]["configMap"]["items"][0]["mode"], 493);
        assert_eq!(volumes[1]["secret"]["defaultMode"], 420);
        let containers = &web["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["ports"][0]["containerPort"], 8080);
        assert_eq!(containers[0]["args"], json!(["--verbose", "on", "0644", "~"]));
        assert_eq!((containers[1]["name"].as_str(), containers[1]["image"].as_str()), (Some("helper"), Some("nginx:1.25")), "merge key resolved");
        let solo = by_key("Pod/solo");
        assert_eq!(solo["spec"]["containers"][0]["securityContext"], json!({"runAsUser": 1000, "readOnlyRootFilesystem": true}));
        assert_eq!(by_key("StatefulSet/db")["spec"]["template"]["metadata"]["labels"]["on"], "off");
        Ok(())
    })
}

const SCALARS_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scalars.test.revmesh.io}
spec:
  group: test.revmesh.io
  names: {kind: Scalars, plural: scalars, singular: scalars, listKind: ScalarsList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// The YAML reader and writer against kubectl itself: a custom resource whose
/// spec keeps any JSON holds a corpus of scalars; what the API server stores
/// from the text equals what `manifest_yaml::load_document` reads from it, and
/// `to_yaml` of that, applied again, is stored the same.
#[test]
fn scalars_read_and_written_as_kubectl_reads_them() -> Result<()> {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scalars.yaml"))?;
    let ours = webhook::manifest_yaml::load_document(&text, 0)?.context("the corpus is a document")?;
    let rewritten = webhook::manifest_yaml::to_yaml(&ours);
    Cluster::run(|cluster| {
        cluster.kubectl_input(&["apply", "-f", "-"], Some(SCALARS_CRD))?;
        cluster.kubectl(&["wait", "--for", "condition=established", "--timeout=60s", "crd/scalars.test.revmesh.io"])?;
        // A new CRD's REST mapping reaches kubectl's discovery cache a moment later.
        let stored = kube_harness::wait_for("the Scalars resource to be served", std::time::Duration::from_secs(60), || {
            let (ok, out, _) = cluster.kubectl_outcome(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&text))?;
            Ok(if ok { Some(serde_json::from_str::<Value>(&out)?) } else { None })
        })?;
        let again: Value = serde_json::from_str(&cluster.kubectl_input(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], Some(&rewritten))?)?;
        let spec = |v: &Value| v["spec"].as_object().cloned().unwrap_or_default();
        let (theirs, mine) = (spec(&stored), spec(&ours));
        for key in theirs.keys().chain(mine.keys()).collect::<std::collections::BTreeSet<_>>() {
            assert_eq!(mine.get(key), theirs.get(key), "spec.{key}: manifest_yaml (left) and kubectl + the API server (right) disagree");
        }
        assert_eq!(spec(&again), theirs, "to_yaml's text is read back by kubectl as the same values:\n{rewritten}");
        // Spot checks, so that agreement is not agreement on nothing.
        assert_eq!(theirs["ints"][0], 420);
        assert_eq!(theirs["bools"][16], true);
        assert_eq!(theirs["strings"][0], "yes");
        assert_eq!(theirs["key_y"], json!({"true": 1}));
        assert_eq!(theirs["merged"], json!({"cpu": 5, "mem": 2}));
        Ok(())
    })
}
