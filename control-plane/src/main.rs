use clap::Parser;

fn main() -> anyhow::Result<()> {
    let settings = control_plane::run::Settings::parse();
    control_plane::run::init_tracing();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(control_plane::run::run(settings))
}
