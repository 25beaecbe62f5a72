//! Revmesh's data plane.
//!
//! * [`capture`]: `sidecar init`, the iptables rules (pure rule building, then iptables).
//! * [`xds`]: the Delta ADS client; [`config`]: xDS resources → routing tables (pure).
//! * [`proxy`]: the outbound listener (original destination, protocol
//!   detection, HTTP routing with retries and timeouts, TCP proxying, drain);
//!   [`lb`]: endpoint choice, outlier ejection and the retry budget.
//! * [`inbound`]: the inbound listener (mTLS termination, peer identity, PERMISSIVE/STRICT).
//! * [`limits`]: bounded resources (timeouts, head limits, connection caps).
//! * [`admin`], [`metrics`]: operator ports and Istio-named metrics.
//! * [`tls`]: TLS to the control plane, and mTLS between proxies with SPIFFE identities.
//! * [`run`]: flags and wiring.

pub mod admin;
pub mod app_probe;
pub mod capture;
pub mod config;
pub mod fast_hash;
pub mod h1_forward;
pub mod http1;
pub mod inbound;
pub mod lb;
pub mod limits;
pub mod mesh_h2;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod tls;
pub mod xds;
