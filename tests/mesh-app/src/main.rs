use clap::Parser;

fn main() -> anyhow::Result<std::process::ExitCode> {
    mesh_app::main(mesh_app::Cli::parse())
}
