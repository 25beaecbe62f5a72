//! Revmesh's GraphQL gateway: one Federation v2 supergraph; each field is
//! fetched from the subgraph that owns it.
//!
//! * [`supergraph`]: ownership from the `join__` directives.
//! * [`precheck`]: the cheap token pass that refuses costly documents before parsing.
//! * [`operation`]: a validated operation, normalised (fragments, skip/include, variables).
//! * [`plan`]: the fetch graph (pure, cached per operation).
//! * [`execute`]: parallel fetches, batched and deduplicated `_entities` calls.
//! * [`value`]: the tree subgraph answers are parsed and merged into.
//! * [`shape`]: the client's response: order, aliases, null propagation.
//! * [`gateway`]: one request end to end, with limits and introspection.
//! * [`http`]: GraphQL over HTTP, persisted queries, CORS.
//! * [`run`]: flags, configuration, hot reload.

pub mod execute;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod operation;
pub mod plan;
pub mod precheck;
pub mod run;
pub mod shape;
pub mod supergraph;
pub mod value;

#[cfg(test)]
#[path = "../tests/common/supergraph_text.rs"]
mod test_data;
