//! `meshctl upgrade plan | start | status | restart | advance | rollback | finish`.
//!
//! The state of an upgrade is rollouts.yml itself (its rules and `upgrade`
//! section), kept in Git: every command that changes it writes one step,
//! shows the diff, and can commit it. Nothing is written when a check fails.

use crate::cli::{ClusterArgs, Output, PlanArgs, RestartArgs, RollbackArgs, StartArgs, StatusArgs, StepArgs};
use crate::cluster::{Cluster, ControlPlaneAccess};
use crate::fleet::{self, Inventory, WorkloadStatus};
use crate::gitops::Repo;
use crate::precheck::{control_plane_ready, upgrade_prechecks};
use crate::upgrade_plan::{self as plan, Moves};
use crate::{block_on, print_json, read_input, read_input_bytes};
use anyhow::{anyhow, bail, Context, Result};
use rollouts::edit::Edit;
use rollouts::labels::MESH_NAMESPACE;
use rollouts::{Rollouts, UpgradeState};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The file's text and its parse; an invalid file is an error naming every problem.
fn load(path: &Path) -> Result<(String, Rollouts)> {
    let bytes = read_input_bytes(path)?;
    // The webhook's own check, so an upgrade never commits a file it would refuse.
    let r = rollouts::validate_bytes(&bytes).map_err(|e| anyhow!("{} is not a valid rollouts.yml:\n{}", path.display(), e.render_with_file(&path.display().to_string())))?;
    Ok((String::from_utf8(bytes)?, r))
}

fn describe(u: &Option<UpgradeState>) -> String {
    match u {
        Some(u) => format!("upgrade {} -> {} at {}% (steps {})", u.from, u.to, u.percent, u.steps.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")),
        None => "no upgrade in progress".into(),
    }
}

fn print_moves(m: &Moves) {
    println!("{} of {} meshed workloads change version", m.moved(), m.total);
    for (change, keys) in &m.moves {
        println!("  {change}: {}", keys.len());
    }
}

/// Writes the step (atomically), shows the diff, commits when asked.
fn write_step(path: &Path, text: &str, current: &Rollouts, edit: &Edit, repo: &Repo, commit: bool, message: &str, output: Output) -> Result<Option<String>> {
    let new_text = rollouts::edit::apply(text, current, edit).map_err(|e| anyhow!("{e}"))?;
    let tmp = path.with_extension("yml.meshctl-tmp");
    std::fs::write(&tmp, &new_text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if output == Output::Text {
        print!("{}", repo.diff(path)?);
    }
    if commit {
        let rev = repo.commit(path, message)?;
        if output == Output::Text {
            println!("committed {rev}: {message}");
        }
        return Ok(Some(rev));
    }
    if output == Output::Text {
        println!("review the change, then: git commit -m {message:?} -- {}", path.display());
    }
    Ok(None)
}

fn message_for(e: &Edit, before: &Option<UpgradeState>) -> String {
    match (&e.upgrade, before) {
        (Some(u), _) => format!("revmesh: upgrade {} -> {} to {}%", u.from, u.to, u.percent),
        (None, Some(b)) => format!("revmesh: finish the upgrade {} -> {} (retire {})", b.from, b.to, b.from),
        (None, None) => "revmesh: rollouts change".into(),
    }
}

async fn connect(args: &ClusterArgs) -> Result<Cluster> {
    Cluster::connect(ControlPlaneAccess::from_args(args)?).await
}

/// Waits until the webhook has loaded exactly this rollouts.yml.
async fn wait_for_webhook_sync(cluster: &Cluster, r: &Rollouts, path: &Path, timeout: Duration) -> Result<()> {
    let wanted = serde_json::to_value(r)?;
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let last = match cluster.webhook_rollouts_in_force().await {
            Ok(v) if v == wanted => return Ok(()),
            Ok(_) => "it has a different rollouts.yml in force".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("the webhook has not loaded {} within {:?} ({last}); sync the commit to ConfigMap {MESH_NAMESPACE}/{} and retry. Nothing was restarted", path.display(), timeout, crate::cluster::ROLLOUTS_CONFIGMAP);
        }
        if !said {
            eprintln!("waiting for the webhook to load {} ({last})", path.display());
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn plan(args: &PlanArgs, output: Output) -> Result<ExitCode> {
    let (_, r) = load(&args.file.rollouts)?;
    let steps = plan::parse_steps(&args.change.steps)?;
    let to = r.version(&args.change.to).map(|(v, _)| v.clone()).ok_or_else(|| plan::UpgradeError::UnknownVersion { version: args.change.to.clone(), known: r.versions.keys().map(|v| v.to_string()).collect() })?;
    let from = plan::source_version(&r, &to, args.change.from.as_deref())?;
    let inventory: Inventory = match &args.workloads {
        Some(file) => plan::inventory_from_keys(&read_input(file)?),
        None => block_on(async { connect(&args.cluster).await?.inventory().await })??,
    };
    let state = UpgradeState { from: from.clone(), to: to.clone(), steps: steps.clone(), percent: 0 };
    let mut previous = r.clone();
    let mut out = Vec::new();
    for &p in &steps {
        let e = plan::at_percent(&r, &state, p);
        let next = plan::with_edit(&r, &e);
        let m = plan::moves(&previous, &next, &inventory);
        let on_new = plan::moves(&r, &next, &inventory).moved();
        let rules: Vec<_> = r
            .rules
            .iter()
            .zip(&e.distributions)
            .enumerate()
            .filter(|(_, (rule, d))| rule.distribution != **d)
            .map(|(i, (rule, d))| json!({"rule": i, "line": rule.line, "namespaces": rule.namespaces, "before": rule.distribution, "after": d}))
            .collect();
        out.push(json!({"percent": p, "rules": rules, "moves": m.moves.iter().map(|(k, v)| (k.clone(), v.len())).collect::<BTreeMap<_, _>>(), "moved": m.moved(), "onTarget": on_new, "workloads": m.total}));
        previous = next;
    }
    if output == Output::Json {
        print_json(&json!({"from": from.to_string(), "to": to.to_string(), "steps": out}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("upgrade {from} -> {to} in {} steps", steps.len());
    for s in &out {
        println!("step {}%: {} workloads move, {} of {} on {to} after it", s["percent"], s["moved"], s["onTarget"], s["workloads"]);
        for rule in s["rules"].as_array().into_iter().flatten() {
            println!("  rules[{}] (line {}) {}: {} -> {}", rule["rule"], rule["line"], rule["namespaces"], rule["before"], rule["after"]);
        }
    }
    println!("start with: meshctl upgrade start --to {to} --steps {}", args.change.steps);
    Ok(ExitCode::SUCCESS)
}

pub fn start(args: &StartArgs, output: Output) -> Result<ExitCode> {
    let (text, r) = load(&args.file.rollouts)?;
    let steps = plan::parse_steps(&args.change.steps)?;
    let edit = plan::start(&r, &args.change.to, args.change.from.as_deref(), steps)?;
    let repo = Repo::of(&args.file.rollouts)?;
    repo.ensure_clean()?;
    let next = plan::with_edit(&r, &edit);
    let moves = block_on(async {
        let cluster = connect(&args.cluster).await?;
        upgrade_prechecks(&cluster, &r, &args.change.to).await?;
        Ok::<_, anyhow::Error>(plan::moves(&r, &next, &cluster.inventory().await?))
    })??;
    if output == Output::Text {
        println!("prechecks passed; {}", describe(&next.upgrade));
        print_moves(&moves);
    }
    let commit = write_step(&args.file.rollouts, &text, &r, &edit, &repo, args.commit, &message_for(&edit, &r.upgrade), output)?;
    if output == Output::Json {
        print_json(&json!({"upgrade": next.upgrade, "moves": moves, "commit": commit}))?;
    } else {
        println!("next: sync the commit to the cluster, then `meshctl upgrade restart`");
    }
    Ok(ExitCode::SUCCESS)
}

/// Advance, rollback and finish: one more step of the same workflow.
fn step(path: &Path, commit: bool, cluster_args: &ClusterArgs, output: Output, decide: impl Fn(&Rollouts) -> Result<Edit, plan::UpgradeError>, check: StepCheck) -> Result<ExitCode> {
    let (text, r) = load(path)?;
    let edit = decide(&r)?;
    let repo = Repo::of(path)?;
    repo.ensure_clean()?;
    let next = plan::with_edit(&r, &edit);
    let u = r.upgrade.clone().ok_or(plan::UpgradeError::NotInProgress)?;
    let moves = block_on(async {
        let cluster = connect(cluster_args).await?;
        let inventory = cluster.inventory().await?;
        match check {
            StepCheck::TargetReady => upgrade_prechecks(&cluster, &r, u.to.as_str()).await?,
            StepCheck::SourceReady => control_plane_ready(&cluster, u.from.as_str()).await.context("rolling back needs the old revision's control plane")?,
            StepCheck::SourceGone => source_gone(&cluster, &u, &inventory).await?,
        }
        Ok::<_, anyhow::Error>(plan::moves(&r, &next, &inventory))
    })??;
    if output == Output::Text {
        println!("{} -> {}", describe(&r.upgrade), describe(&next.upgrade));
        print_moves(&moves);
    }
    let rev = write_step(path, &text, &r, &edit, &repo, commit, &message_for(&edit, &r.upgrade), output)?;
    if output == Output::Json {
        print_json(&json!({"upgrade": next.upgrade, "moves": moves, "commit": rev}))?;
    } else if next.upgrade.is_none() {
        println!("{} is retired. Uninstall its control plane: helm uninstall control-plane-{} -n {MESH_NAMESPACE}", u.from, u.from);
    } else {
        println!("next: sync the commit to the cluster, then `meshctl upgrade restart`");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
enum StepCheck {
    TargetReady,
    SourceReady,
    SourceGone,
}

/// Finishing retires the old version: no pod may carry it and no proxy may be
/// connected to its control plane.
async fn source_gone(cluster: &Cluster, u: &UpgradeState, inventory: &Inventory) -> Result<()> {
    let left: Vec<String> = inventory
        .workloads
        .iter()
        .flat_map(|w| w.pods.iter().filter(|p| p.version.as_deref() == Some(u.from.as_str())).map(move |p| format!("{}/{}", w.namespace, p.name)))
        .collect();
    if !left.is_empty() {
        bail!("{} pods still carry {}, e.g. {}; run `meshctl upgrade restart` first", left.len(), u.from, left.iter().take(5).cloned().collect::<Vec<_>>().join(", "));
    }
    let proxies = cluster.syncz(u.from.as_str()).await.with_context(|| format!("cannot tell whether proxies still use {}", u.from))?;
    if !proxies.is_empty() {
        bail!("{} proxies are still connected to control plane {}, e.g. {}; they belong to pods outside the cluster's workloads or still terminating", proxies.len(), u.from, proxies[0].id);
    }
    Ok(())
}

pub fn advance(args: &StepArgs, output: Output) -> Result<ExitCode> {
    step(&args.file.rollouts, args.commit, &args.cluster, output, plan::advance, StepCheck::TargetReady)
}

pub fn rollback(args: &RollbackArgs, output: Output) -> Result<ExitCode> {
    let to_zero = args.to_zero;
    step(&args.file.rollouts, args.commit, &args.cluster, output, move |r| plan::rollback(r, to_zero), StepCheck::SourceReady)
}

pub fn finish(args: &StepArgs, output: Output) -> Result<ExitCode> {
    step(&args.file.rollouts, args.commit, &args.cluster, output, plan::finish, StepCheck::SourceGone)
}

pub fn status(args: &StatusArgs, output: Output) -> Result<ExitCode> {
    let (_, r) = load(&args.file.rollouts)?;
    let (workloads, proxies, control_planes) = block_on(async {
        let cluster = connect(&args.cluster).await?;
        let inventory = cluster.inventory().await?;
        let workloads = fleet::workload_statuses(&r, &inventory);
        let mut proxies = Vec::new();
        let mut control_planes = BTreeMap::new();
        for v in r.versions.keys() {
            match cluster.syncz(v.as_str()).await {
                Ok(list) => {
                    control_planes.insert(v.to_string(), json!({"proxies": list.len()}));
                    proxies.extend(list.iter().filter_map(|p| fleet::proxy_namespace(&p.id).map(|ns| (v.to_string(), ns.to_string()))));
                }
                Err(e) => {
                    control_planes.insert(v.to_string(), json!({"error": format!("{e:#}")}));
                }
            }
        }
        Ok::<_, anyhow::Error>((workloads, proxies, control_planes))
    })??;
    let namespaces = fleet::namespace_statuses(&workloads, &proxies);
    let to_restart: usize = workloads.iter().filter(|w| !w.converged()).count();
    if output == Output::Json {
        print_json(&json!({"upgrade": r.upgrade, "namespaces": namespaces, "workloads": workloads, "workloadsToRestart": to_restart, "controlPlanes": control_planes}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", describe(&r.upgrade));
    println!("{:<24} {:<28} {:<28} {:<14} PROXIES", "NAMESPACE", "DESIRED (workloads)", "RUNNING (pods)", "TO RESTART");
    for n in &namespaces {
        let restart = format!("{} pods/{} wl", n.pods_to_restart, n.workloads_to_restart);
        println!("{:<24} {:<28} {:<28} {:<14} {}", n.namespace, fleet::counts(&n.desired), fleet::counts(&n.running), restart, fleet::counts(&n.proxies));
    }
    for (rev, state) in &control_planes {
        match state.get("error") {
            Some(e) => println!("control plane {rev}: unreachable ({})", e.as_str().unwrap_or("")),
            None => println!("control plane {rev}: {} proxies connected", state["proxies"]),
        }
    }
    println!("{to_restart} workloads must restart to converge{}", if to_restart > 0 { ": meshctl upgrade restart" } else { "" });
    Ok(ExitCode::SUCCESS)
}

/// The wall-clock time as RFC 3339 UTC, for the restartedAt annotation.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn restart_one(cluster: &Cluster, w: &WorkloadStatus, at: &str, timeout: Duration) -> Result<()> {
    cluster.restart(&w.namespace, &w.kind, &w.name, at).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let done = cluster.rollout_done(&w.namespace, &w.kind, &w.name).await?;
        let pods = cluster.workload_pods(&w.namespace, &w.kind, &w.name).await?;
        if done && (w.kind == "DaemonSet" || !pods.is_empty()) && pods.iter().all(|p| p.version == w.desired) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = pods.iter().map(|p| format!("{} on {}", p.name, fleet::version_label(&p.version))).collect();
            bail!(
                "{} {}/{} did not converge on {} within {:?} (rollout {}; pods: {})",
                w.kind,
                w.namespace,
                w.name,
                fleet::version_label(&w.desired),
                timeout,
                if done { "complete" } else { "not complete" },
                if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn show(&self, in_flight: usize, last: &str) {
        let width = 30;
        let filled = if self.total == 0 { width } else { self.done * width / self.total };
        let bar = format!("[{}{}] {}/{} restarted, {in_flight} in flight", "#".repeat(filled), ".".repeat(width - filled), self.done, self.total);
        if self.tty {
            eprint!("\r{bar}  {last:<50}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{bar}  {last}");
        }
    }
}

pub fn restart(args: &RestartArgs, output: Output) -> Result<ExitCode> {
    let (_, r) = load(&args.file.rollouts)?;
    if args.max_in_flight == 0 {
        bail!("--max-in-flight must be at least 1");
    }
    let timeout = Duration::from_secs(args.timeout_seconds);
    block_on(async move {
        let cluster = connect(&args.cluster).await?;
        if !args.dry_run {
            wait_for_webhook_sync(&cluster, &r, &args.file.rollouts, Duration::from_secs(args.sync_timeout_seconds)).await?;
        }
        let inventory = cluster.inventory().await?;
        let wanted = |w: &&WorkloadStatus| !w.converged() && (args.namespace.is_empty() || args.namespace.contains(&w.namespace));
        let statuses = fleet::workload_statuses(&r, &inventory);
        let (queue, manual): (Vec<&WorkloadStatus>, Vec<&WorkloadStatus>) = statuses.iter().filter(wanted).partition(|w| w.restartable);
        if args.dry_run {
            if output == Output::Json {
                print_json(&json!({"restart": queue, "manual": manual}))?;
            } else {
                for w in &queue {
                    println!("would restart {} {}/{} -> {}", w.kind, w.namespace, w.name, fleet::version_label(&w.desired));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let at = now_rfc3339();
        let mut progress = Progress { total: queue.len(), done: 0, tty: std::io::stderr().is_terminal() };
        let mut pending = queue.iter();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut failed: Vec<String> = Vec::new();
        let mut restarted: Vec<String> = Vec::new();
        loop {
            // Launch while there is room, and only while nothing has failed: pause on failure.
            while failed.is_empty() && running.len() < args.max_in_flight {
                let Some(w) = pending.next() else { break };
                let cluster = &cluster;
                let at = at.as_str();
                running.push(async move { (w, restart_one(cluster, w, at, timeout).await) });
            }
            use futures::StreamExt;
            let Some((w, result)) = running.next().await else { break };
            match result {
                Ok(()) => {
                    progress.done += 1;
                    restarted.push(format!("{}/{}", w.namespace, w.name));
                    progress.show(running.len(), &format!("{}/{} on {}", w.namespace, w.name, fleet::version_label(&w.desired)));
                }
                Err(e) => {
                    failed.push(format!("{e:#}"));
                    progress.show(running.len(), &format!("FAILED {}/{}", w.namespace, w.name));
                }
            }
        }
        if progress.tty {
            eprintln!();
        }
        let not_started = queue.len() - progress.done - failed.len();
        if output == Output::Json {
            print_json(&json!({"restarted": restarted, "failed": failed, "notStarted": not_started, "manual": manual}))?;
        } else {
            println!("{} workloads restarted and converged", restarted.len());
            for w in &manual {
                println!("not restartable by meshctl: {} {}/{} (delete its pods, or re-run the Job)", w.kind, w.namespace, w.name);
            }
        }
        if !failed.is_empty() {
            eprintln!("paused after a failure ({not_started} workloads not started):");
            for f in &failed {
                eprintln!("  {f}");
            }
            eprintln!("fix the cause and run `meshctl upgrade restart` again: it restarts only what is still on the wrong version");
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    })?
}
