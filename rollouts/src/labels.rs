//! Label and annotation names that users see (DESIGN.md, "Conventions").

/// Pod label written by the injector, and the pin label on pods and namespaces.
pub const REV_LABEL: &str = "revmesh.io/rev";
/// Namespace opt-in/out label: `enabled` or `disabled`.
pub const NAMESPACE_INJECT_LABEL: &str = "revmesh.io/inject";
/// Pod opt-out label: `"false"` skips injection.
pub const POD_INJECT_LABEL: &str = "sidecar.revmesh.io/inject";
/// Injection record on the pod (JSON).
pub const STATUS_ANNOTATION: &str = "revmesh.io/status";
/// Namespaces that are never injected, whatever the labels say.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];
/// The mesh's own namespace.
pub const MESH_NAMESPACE: &str = "revmesh-system";
