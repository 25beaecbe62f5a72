//! Issue 17's hostile-bytes regression tests (loopback only, no root):
//! raw bytes in, and what the upstream, the app and the client get out.
//!
//! * [`framing`]: request and response framing tricks, on the sidecar and on
//!   real Envoy 1.40 with the same bytes; a client's malformed requests are
//!   its own 4xx and never eject a healthy endpoint.
//! * [`identity`]: the peer-identity header cannot be forged on any inbound
//!   plaintext path; a port declared HTTP is never downgraded to TCP.
//! * [`differential`]: heads parsed by `sidecar::http1` agree with
//!   `httparse` and hyper on every message both accept (or ours refuses).

mod common;
mod differential;
mod framing;
mod identity;
