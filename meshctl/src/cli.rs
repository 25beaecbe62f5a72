//! Command-line shape of meshctl.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Revmesh's command line: check and explain rollouts.yml, inject manifests offline",
    long_about = "Revmesh's command line.\n\nrollouts.yml (kept in Git) maps namespace patterns to percentage distributions of mesh versions; \
the webhook and meshctl evaluate it with the same code, so what meshctl says is what the cluster does."
)]
pub struct Cli {
    /// Output format: text for people, json for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    /// For `inject`: the injected manifests as YAML (its default).
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, explain and compare rollouts.yml files.
    #[command(subcommand)]
    Rollouts(RolloutsCommand),
    /// Inject the sidecar into manifests offline, with exactly the webhook's code
    /// (like `istioctl kube-inject`). Pods, Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs and CronJobs are injected; other objects pass through.
    Inject(InjectArgs),
    /// Run the local mesh on loopback, with no cluster: a control plane, the
    /// demo app behind its sidecar, a client sidecar with mTLS between them,
    /// and the GraphQL gateway over two subgraphs. Prints what to curl.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Check files; print `file:line:column: message` for every problem and exit 1
    /// if any file is invalid (for CI).
    Validate {
        /// rollouts.yml files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Say which version a namespace (or one of its workloads) gets, and why.
    Explain(ExplainArgs),
    /// Show which keys move from which version to which between two files.
    Diff {
        /// The rollouts.yml in force.
        old: PathBuf,
        /// The proposed rollouts.yml.
        new: PathBuf,
        /// A file of keys, one per line: `namespace` or `namespace/workload`
        /// (`#` starts a comment).
        #[arg(long)]
        keys: PathBuf,
        /// Also list every key that moves (text output; JSON always lists them).
        #[arg(long)]
        list: bool,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The rollouts.yml to evaluate.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// The pod's namespace.
    #[arg(long)]
    pub namespace: String,
    /// The workload (Deployment, StatefulSet, ... name); used by hashBy: workload rules.
    #[arg(long, default_value = "")]
    pub workload: String,
    /// The pod's revmesh.io/rev label, if it is pinned.
    #[arg(long)]
    pub pod_pin: Option<String>,
    /// The namespace's revmesh.io/rev label, if it is pinned.
    #[arg(long)]
    pub namespace_pin: Option<String>,
    /// The pod has sidecar.revmesh.io/inject="false".
    #[arg(long)]
    pub pod_opted_out: bool,
    /// The namespace has revmesh.io/inject=disabled.
    #[arg(long)]
    pub namespace_disabled: bool,
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest file (multi-document YAML), or - for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The rollouts.yml the webhook would use.
    #[arg(long)]
    pub rollouts: PathBuf,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The target namespace's revmesh.io/rev label, if it is pinned.
    #[arg(long)]
    pub namespace_pin: Option<String>,
}
