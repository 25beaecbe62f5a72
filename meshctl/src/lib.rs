//! meshctl: every command is a function from parsed arguments to printed output
//! and an exit code; the decisions themselves live in the `rollouts` and
//! `webhook` crates, so meshctl and the cluster always agree.

pub mod cli;
mod cluster;
pub mod demo;
pub mod fleet;
mod gitops;
mod inject;
mod precheck;
mod rollouts_cmd;
mod upgrade;
pub mod upgrade_plan;

use cli::{Cli, Command, RolloutsCommand, UpgradeCommand};
use std::path::Path;
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Rollouts(RolloutsCommand::Validate { files }) => rollouts_cmd::validate(&files, cli.output),
        Command::Rollouts(RolloutsCommand::Explain(args)) => rollouts_cmd::explain(&args, cli.output),
        Command::Rollouts(RolloutsCommand::Diff { old, new, keys, list }) => rollouts_cmd::diff(&old, &new, &keys, list, cli.output),
        Command::Inject(args) => inject::inject(&args, cli.output),
        Command::Demo(args) => demo::demo(&args),
        Command::Upgrade(UpgradeCommand::Plan(args)) => upgrade::plan(&args, cli.output),
        Command::Upgrade(UpgradeCommand::Start(args)) => upgrade::start(&args, cli.output),
        Command::Upgrade(UpgradeCommand::Status(args)) => upgrade::status(&args, cli.output),
        Command::Upgrade(UpgradeCommand::Restart(args)) => upgrade::restart(&args, cli.output),
        Command::Upgrade(UpgradeCommand::Advance(args)) => upgrade::advance(&args, cli.output),
        Command::Upgrade(UpgradeCommand::Rollback(args)) => upgrade::rollback(&args, cli.output),
        Command::Upgrade(UpgradeCommand::Finish(args)) => upgrade::finish(&args, cli.output),
        Command::ProxyStatus(args) => precheck::proxy_status(&args, cli.output),
        Command::Precheck(args) => precheck::precheck(&args, cli.output),
    }
}

/// Runs one command's cluster work on a small runtime of its own.
pub(crate) fn block_on<F: std::future::Future>(work: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(work))
}

/// Reads a file, or standard input for `-`.
pub(crate) fn read_input(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Reads a file's bytes, or standard input's for `-` (for text that is checked
/// for UTF-8 with a position, such as rollouts.yml).
pub(crate) fn read_input_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("reading standard input")?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Reads a rollouts.yml (a file, or standard input for `-`) and checks it with
/// `rollouts::validate_bytes`, the very function the webhook runs on reload.
pub(crate) fn check_rollouts_file(path: &Path) -> Result<rollouts::Rollouts, rollouts::FileError> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        let stdin = std::io::stdin();
        std::io::Read::read_to_end(&mut std::io::Read::take(stdin.lock(), rollouts::parse::MAX_FILE_BYTES as u64 + 1), &mut bytes)
            .map_err(|source| rollouts::FileError::Read { path: "standard input".into(), source })?;
        rollouts::validate_bytes(&bytes)
    } else {
        rollouts::load_file(path).map(|(parsed, _)| parsed)
    }
}

/// Reads and validates a rollouts.yml, with its problems in the error.
pub(crate) fn load_rollouts(path: &Path) -> anyhow::Result<rollouts::Rollouts> {
    check_rollouts_file(path).map_err(|e| anyhow::anyhow!("{} is not a valid rollouts.yml:\n{}", path.display(), e.render_with_file(&path.display().to_string())))
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
