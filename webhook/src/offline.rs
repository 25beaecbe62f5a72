//! Offline injection (`meshctl inject`): the webhook's own decision and patch,
//! applied to the pod template of any workload manifest.

use crate::inject::{self, InjectorConfig, NamespaceContext, Outcome};
use rollouts::workload::Workload;
use rollouts::Rollouts;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("document {index} is not valid YAML: {source}")]
    Yaml { index: usize, source: serde_yaml::Error },
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

/// Injects every document of a multi-document YAML stream; returns the new
/// documents (as JSON values, in order) and a report per document.
pub fn inject_yaml(text: &str, rollouts: &Rollouts, cfg: &InjectorConfig, opts: &OfflineOptions) -> Result<(Vec<Value>, Vec<DocumentReport>), OfflineError> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(de).map_err(|source| OfflineError::Yaml { index, source })?;
        if value.is_null() {
            continue; // empty document between separators
        }
        docs.push(value);
    }
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            let mut list = doc;
            if let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    reports.push(inject_object(index, item, rollouts, cfg, opts)?);
                }
            }
            out.push(list);
        } else {
            let mut doc = doc;
            reports.push(inject_object(index, &mut doc, rollouts, cfg, opts)?);
            out.push(doc);
        }
    }
    Ok((out, reports))
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

/// Renders documents as a YAML stream (`---` between documents).
pub fn to_yaml_stream(docs: &[Value]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}
