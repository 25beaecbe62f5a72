//! meshctl: every command is a function from parsed arguments to printed output
//! and an exit code; the decisions themselves live in the `rollouts` and
//! `webhook` crates, so meshctl and the cluster always agree.

pub mod cli;
pub mod demo;
mod inject;
mod rollouts_cmd;

use cli::{Cli, Command, RolloutsCommand};
use std::path::Path;
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Rollouts(RolloutsCommand::Validate { files }) => rollouts_cmd::validate(&files, cli.output),
        Command::Rollouts(RolloutsCommand::Explain(args)) => rollouts_cmd::explain(&args, cli.output),
        Command::Rollouts(RolloutsCommand::Diff { old, new, keys, list }) => rollouts_cmd::diff(&old, &new, &keys, list, cli.output),
        Command::Inject(args) => inject::inject(&args, cli.output),
        Command::Demo(args) => demo::demo(&args),
    }
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

/// Reads and validates a rollouts.yml, with every problem in the error.
pub(crate) fn load_rollouts(path: &Path) -> anyhow::Result<rollouts::Rollouts> {
    let text = read_input(path)?;
    rollouts::parse(&text).map_err(|e| anyhow::anyhow!("{} is not a valid rollouts.yml:\n{}", path.display(), e.render_with_file(&path.display().to_string())))
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
