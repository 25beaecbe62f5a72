//! Sources of the mesh model.

pub mod dir;
pub mod kubernetes;
pub mod manifests;
