use clap::Parser;

fn main() -> anyhow::Result<()> {
    let settings = webhook::server::Settings::parse();
    init_tracing(&settings.log_format);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(webhook::server::run(settings))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
