use clap::Parser;

fn main() -> anyhow::Result<()> {
    sidecar::run::main(sidecar::run::Cli::parse())
}
