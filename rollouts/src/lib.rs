//! The one evaluator of `rollouts.yml`, shared by the webhook and `meshctl` so
//! that they can never disagree about which pod gets which mesh version.
//!
//! * [`parse`] reads the file and reports every problem with line and column.
//! * [`Rollouts::evaluate`] decides a pod's version from pins, opt-outs and rules.
//! * [`assign`] is the hashed, weighted, monotone choice inside one rule.
//! * [`workload`] derives the stable workload name a pod belongs to.

pub mod assign;
pub mod edit;
pub mod evaluate;
pub mod labels;
pub mod model;
pub mod parse;
pub mod pattern;
mod yaml_tree;
pub mod workload;

pub use evaluate::{Evaluation, PodFacts, Reason, SkipReason};
pub use model::{HashBy, Rollouts, Rule, UpgradeState, VersionName, VersionSpec};
pub use parse::{load_file, parse, read_file, validate_bytes, FileError, ParseError, Problem};
