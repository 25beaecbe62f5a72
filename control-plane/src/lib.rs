//! One revision of Revmesh's control plane.
//!
//! * [`model`]: the mesh as services, endpoints and HTTP routes.
//! * [`source`]: where the model comes from (a watched folder of manifests).
//! * [`translate`]: model → Envoy resources (pure).
//! * [`proxyless`]: the API listeners proxyless gRPC clients ask for by name (pure).
//! * [`xds`]: the ADS server, State-of-the-World and Delta.
//! * [`status`]: per-proxy sync state, metrics.
//! * [`config_dump`]: what one proxy is served, for operators.
//! * [`grpc`], [`serve`]: the plaintext xDS port and the TLS xDS + CA port.
//! * [`xds_auth`]: who may read xDS on the TLS port (token or mesh certificate).
//! * [`ca`], [`ca_server`], [`ca_store`]: the SPIFFE CA, its HTTPS API, its root in a Secret.
//! * [`run`]: wiring, flags and the debug endpoints.

pub mod ca;
pub mod ca_server;
pub mod ca_store;
pub mod config_dump;
pub mod grpc;
pub mod model;
pub mod proxyless;
pub mod run;
pub mod serve;
pub mod source;
pub mod status;
pub mod translate;
pub mod xds;
pub mod xds_auth;
