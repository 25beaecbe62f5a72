//! AdmissionReview v1 on the wire: just the fields the injector reads and writes.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub resource: Option<GroupVersionResource>,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("expected apiVersion {API_VERSION} and kind AdmissionReview, got {}/{}", shown(.0), shown(.1))]
    WrongKind(Option<String>, Option<String>),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

fn shown(field: &Option<String>) -> String {
    field.as_deref().map_or_else(|| "none".to_string(), crate::echo::quoted)
}

/// Parses a request body into an AdmissionRequest.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    if review.api_version.as_deref() != Some(API_VERSION) || review.kind.as_deref() != Some("AdmissionReview") {
        return Err(ReviewError::WrongKind(review.api_version, review.kind));
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// A response that lets the object through, optionally with a JSONPatch.
pub fn allow(uid: &str, patch: Option<&[Value]>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(ops) = patch {
        let bytes = serde_json::to_vec(ops).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    review(response)
}

/// A response that lets the object through untouched, with a warning the API
/// server passes on to the user (kubectl prints it).
pub fn allow_with_warning(uid: &str, warning: &str) -> Value {
    review(json!({"uid": uid, "allowed": true, "warnings": [warning]}))
}

/// A response that refuses the object; the API server shows `message` to the user.
pub fn deny(uid: &str, message: &str) -> Value {
    review(json!({
        "uid": uid,
        "allowed": false,
        // Messages quote parts of the pod, each cut already; this bounds the whole.
        "status": {"code": 400, "reason": "BadRequest", "message": crate::echo::cut(message, 4096)},
    }))
}

fn review(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}
