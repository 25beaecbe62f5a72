//! Command-line shape of meshctl.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Revmesh's command line: rollouts.yml, offline injection, canary mesh upgrades, the local demo",
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
    /// Move the fleet from one mesh version to the next, step by step, and back:
    /// each step is one change to rollouts.yml in Git.
    #[command(subcommand)]
    Upgrade(UpgradeCommand),
    /// Every proxy connected to each control-plane revision and whether it has
    /// ACKed the latest config (like istioctl proxy-status).
    ProxyStatus(ProxyStatusArgs),
    /// Check that the cluster can run the mesh and an upgrade: the system
    /// namespace, the webhook and its rollouts.yml, each revision's control
    /// plane, and rules that overlap.
    Precheck(PrecheckArgs),
}

/// How meshctl reaches the control planes' debug port (15014).
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    /// Reach a revision's control plane at this URL instead of through the API
    /// server's service proxy, e.g. after `kubectl port-forward` (repeatable).
    #[arg(long = "control-plane", value_name = "REVISION=URL")]
    pub control_plane: Vec<String>,
    /// Reach the webhook's metrics port (15014) at this URL instead of through
    /// the API server's service proxy.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// rollouts.yml in the Git working tree.
#[derive(Debug, Args, Clone)]
pub struct RolloutsFile {
    #[arg(short = 'f', long = "rollouts", env = "REVMESH_ROLLOUTS", default_value = "rollouts.yml")]
    pub rollouts: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Print each step, the rollouts.yml change it makes, and how many workloads
    /// it moves (counted in the cluster, or from --workloads offline).
    Plan(PlanArgs),
    /// Run the prechecks and write the first step into rollouts.yml.
    Start(StartArgs),
    /// Per namespace: desired versions, versions running, pods to restart,
    /// and proxies connected to each revision.
    Status(StatusArgs),
    /// Restart exactly the workloads whose pods carry another version than
    /// rollouts.yml wants, by rolling out their pod templates.
    Restart(RestartArgs),
    /// Move to the next step.
    Advance(StepArgs),
    /// Go back one step, or to 0% with --to-zero.
    Rollback(RollbackArgs),
    /// Retire the old version once no pod and no proxy uses it.
    Finish(StepArgs),
}

/// Which upgrade: shared by `plan` and `start`.
#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The version to move to.
    #[arg(long)]
    pub to: String,
    /// The version to move from (default: the one other version holding a share).
    #[arg(long)]
    pub from: Option<String>,
    /// Percentages on the new version, ending at 100.
    #[arg(long, default_value = "1,10,50,100")]
    pub steps: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub file: RolloutsFile,
    #[command(flatten)]
    pub change: MoveArgs,
    /// Count moves over this list of `namespace/workload` keys instead of the cluster.
    #[arg(long)]
    pub workloads: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub file: RolloutsFile,
    #[command(flatten)]
    pub change: MoveArgs,
    /// Commit the change (otherwise it is left in the working tree to review).
    #[arg(long)]
    pub commit: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub file: RolloutsFile,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub file: RolloutsFile,
    /// Only these namespaces (repeatable).
    #[arg(short = 'n', long)]
    pub namespace: Vec<String>,
    /// Workloads rolling out at once.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// How long one workload may take to converge before the restart pauses.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
    /// List what would restart, and restart nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the webhook to load this rollouts.yml (synced from
    /// Git) before restarting anything: pods created earlier would get the old
    /// version.
    #[arg(long, default_value_t = 180)]
    pub sync_timeout_seconds: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct StepArgs {
    #[command(flatten)]
    pub file: RolloutsFile,
    #[arg(long)]
    pub commit: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub file: RolloutsFile,
    /// Go straight back to 0% (every workload on the old version).
    #[arg(long)]
    pub to_zero: bool,
    #[arg(long)]
    pub commit: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// Only these revisions (default: every control-plane-* Service in revmesh-system).
    #[arg(long)]
    pub revision: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct PrecheckArgs {
    /// Also check this rollouts.yml: overlaps, and that the webhook and a
    /// control plane know each of its versions.
    #[arg(short = 'f', long = "rollouts")]
    pub rollouts: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
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
