//! One revision of Revmesh's control plane.
//!
//! * [`model`]: the mesh as services, endpoints and HTTP routes.
//! * [`source`]: where the model comes from (a watched folder of manifests).
//! * [`translate`]: model → Envoy resources (pure).
//! * [`xds`]: the ADS server, State-of-the-World and Delta.
//! * [`status`]: per-proxy sync state, metrics.
//! * [`run`]: wiring, flags and the debug endpoints.

pub mod ca;
pub mod ca_server;
pub mod model;
pub mod run;
pub mod source;
pub mod status;
pub mod translate;
pub mod xds;
