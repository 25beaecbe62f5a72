//! Revmesh's sidecar injector.
//!
//! * [`inject`] is the pure decision: pod JSON in, JSONPatch (or a skip or a
//!   denial) out. The webhook server and `meshctl inject` both call it.
//! * [`overrides`] validates the per-pod annotations.
//! * [`admission`] is the AdmissionReview v1 wire format.
//! * [`offline`] applies the same patch to any manifest with a pod template;
//!   [`manifest_yaml`] reads and writes manifests with kubectl's YAML rules.
//! * [`server`], [`conn`], [`tls`], [`reload`] and [`metrics`] are the HTTPS edge;
//!   [`echo`] cuts client-sent values quoted in answers and logs.

pub mod admission;
pub mod conn;
pub mod echo;
pub mod inject;
pub mod manifest_yaml;
pub mod metrics;
pub mod offline;
pub mod overrides;
pub mod reload;
pub mod server;
pub mod tls;

pub use inject::{InjectorConfig, Outcome};
