//! Offline injection (`meshctl inject`): the webhook's own decision and patch,
//! applied to the pod template of any workload manifest.
//!
//! Only documents that get a proxy are rewritten; every other document
//! (Services, ConfigMaps, skipped workloads, comments between documents) is
//! written back byte for byte. Rewritten documents are read and written with
//! kubectl's YAML rules ([`crate::manifest_yaml`]), so their other fields keep
//! their exact values; their comments and key order are not kept.

use crate::inject::{self, InjectorConfig, NamespaceContext, Outcome};
use crate::manifest_yaml::{self, YamlError};
use rollouts::workload::Workload;
use rollouts::Rollouts;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {index} is not valid YAML: {source}")]
    Yaml { index: usize, source: YamlError },
    #[error("document {index} ({what}) cannot be injected: {message}")]
    Denied { index: usize, what: String, message: String },
    #[error("document {index} ({what}): applying the injection patch failed: {message}")]
    Patch { index: usize, what: String, message: String },
}

/// What happened to one document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReport {
    pub index: usize,
    /// `Kind/name`.
    pub object: String,
    /// injected, skipped, or unchanged (no pod template).
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Options that stand in for what the webhook learns from the cluster.
#[derive(Debug, Clone, Default)]
pub struct OfflineOptions {
    /// Namespace for objects that name none (`kubectl apply -n`'s role).
    pub default_namespace: String,
    /// The namespace's `revmesh.io/rev` label, if any.
    pub namespace_pin: Option<String>,
}

/// Where the pod template of a workload kind lives.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The result of injecting a YAML stream.
#[derive(Debug, Clone)]
pub struct InjectedStream {
    /// The stream to apply: rewritten documents where a proxy was added,
    /// every other document exactly as it was.
    pub text: String,
    /// Every document as JSON (as kubectl reads it), after injection.
    pub objects: Vec<Value>,
    /// What happened to each object (List items each have one).
    pub reports: Vec<DocumentReport>,
}

/// Injects every document of a multi-document YAML stream, in order.
pub fn inject_yaml(text: &str, rollouts: &Rollouts, cfg: &InjectorConfig, opts: &OfflineOptions) -> Result<InjectedStream, OfflineError> {
    let mut out = String::with_capacity(text.len() + 4096);
    let mut objects = Vec::new();
    let mut reports = Vec::new();
    let mut index = 0;
    for segment in manifest_yaml::split_documents(text) {
        let Some(mut doc) = manifest_yaml::load_document(segment.text, segment.first_line).map_err(|source| OfflineError::Yaml { index, source })? else {
            out.push_str(segment.text);
            continue; // comments only, or an empty document between separators
        };
        let before = reports.len();
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    reports.push(inject_object(index, item, rollouts, cfg, opts)?);
                }
            }
        } else {
            reports.push(inject_object(index, &mut doc, rollouts, cfg, opts)?);
        }
        if reports[before..].iter().any(|r| r.result == "injected") {
            let (prelude, ends_with_dots) = manifest_yaml::prelude_and_end(segment.text);
            let has_marker = prelude.lines().any(|l| l.starts_with("---"));
            let has_directive = prelude.lines().any(|l| l.starts_with('%'));
            // A rewritten document after the first needs its own `---`, and
            // directives (`%YAML 1.1`) must be followed by one.
            if !has_marker && !has_directive && !out.is_empty() {
                out.push_str("---\n");
            }
            out.push_str(prelude);
            if !has_marker && has_directive {
                out.push_str("---\n");
            }
            out.push_str(&manifest_yaml::to_yaml(&doc));
            if ends_with_dots {
                out.push_str("...\n");
            }
        } else {
            out.push_str(segment.text);
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        objects.push(doc);
        index += 1;
    }
    Ok(InjectedStream { text: out, objects, reports })
}

/// Injects one object in place.
pub fn inject_object(index: usize, object: &mut Value, rollouts: &Rollouts, cfg: &InjectorConfig, opts: &OfflineOptions) -> Result<DocumentReport, OfflineError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| if opts.default_namespace.is_empty() { "default".into() } else { opts.default_namespace.clone() });
    let what = format!("{kind}/{name}");
    let report = |result: &str, version: Option<String>, detail: Option<String>| DocumentReport {
        index,
        object: what.clone(),
        result: result.into(),
        version,
        detail,
    };
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(report("unchanged", None, Some("no pod template".into())));
    };
    let Some(template) = (if pointer.is_empty() { Some(&mut *object) } else { object.pointer_mut(pointer) }) else {
        return Ok(report("unchanged", None, Some(format!("{kind} has no {pointer}"))));
    };
    if !template.is_object() {
        return Ok(report("unchanged", None, Some(format!("{pointer} is not an object"))));
    }
    if template.get("metadata").is_none_or(|m| !m.is_object()) {
        template["metadata"] = json!({});
    }
    // The workload the webhook will derive for this template's pods.
    let workload = match kind.as_str() {
        "Pod" => None,
        "Job" => Some(rollouts::workload::derive(&rollouts::workload::PodMeta {
            owners: vec![rollouts::workload::OwnerRef { kind: "Job".into(), name: name.clone(), controller: true }],
            ..Default::default()
        })),
        _ => Some(Workload { kind: kind.clone(), name: name.clone() }),
    };
    let ns = NamespaceContext { namespace: &namespace, pin: opts.namespace_pin.as_deref(), disabled: false };
    match inject::decide(template, ns, workload, rollouts, cfg) {
        Outcome::Skip(skip) => Ok(report("skipped", None, Some(skip.explain()))),
        Outcome::Deny { message } => Err(OfflineError::Denied { index, what: what.clone(), message }),
        Outcome::Inject { version, patch, status } => {
            let ops: json_patch::Patch = serde_json::from_value(Value::Array(patch))
                .map_err(|e| OfflineError::Patch { index, what: what.clone(), message: e.to_string() })?;
            json_patch::patch(template, &ops).map_err(|e| OfflineError::Patch { index, what: what.clone(), message: e.to_string() })?;
            Ok(report("injected", Some(version.to_string()), status.hash_key.map(|k| format!("hash key {k}"))))
        }
    }
}

