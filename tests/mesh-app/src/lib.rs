//! `mesh-app`: the demo workload of Revmesh's node tests.
//!
//! * `serve`: an HTTP/1.1 server echoing which pod answered and the caller
//!   identity the sidecar passed in `x-revmesh-peer-identity`;
//! * `load`: a steady request stream over several targets, recording every
//!   failure with its cause and latency per time window, served on `/stats`;
//! * `get`: one request, for exec-based checks inside pods.

pub mod client;
pub mod load;
pub mod serve;
pub mod stats;

use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Parser)]
#[command(name = "mesh-app", about = "Revmesh's demo workload: an echo server, a load generator, a one-shot client")]
pub struct Cli {
    /// Log filter (tracing syntax), e.g. info or mesh_app=debug.
    #[arg(long, global = true, env = "MESH_APP_LOG", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Answer every path with JSON {name, pod, namespace, peer_identity, path};
    /// /healthz is 200 until SIGTERM. `?status=N&delay_ms=N` ask for other answers.
    Serve(ServeArgs),
    /// Send a steady request stream and serve what happened on GET /stats.
    Load(LoadArgs),
    /// One GET: prints the body; exit 0 on 2xx, 1 otherwise.
    Get(GetArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    revmesh_duration::parse(s)
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub address: IpAddr,
    /// The `name` field of answers (say, the workload's name).
    #[arg(long, default_value = "mesh-app")]
    pub name: String,
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// After SIGTERM, keep serving this long with /healthz failing, then stop accepting.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub shutdown_delay: Duration,
    /// How long requests in flight may take to finish once the listener is closed.
    #[arg(long, default_value = "20s", value_parser = duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// A URL to send to (http://host:port/path); repeat or list several.
    #[arg(long = "target", required = true, num_args = 1..)]
    pub targets: Vec<String>,
    /// Requests per second, over all targets together.
    #[arg(long)]
    pub rate: f64,
    /// How long to send (default: until SIGTERM).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Port of the stats server (GET /stats, POST /reset).
    #[arg(long, default_value_t = 9090)]
    pub stats_port: u16,
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub stats_address: IpAddr,
    /// Bound on one request: connect, send and the whole answer.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
    /// Length of the windows counts and latency are also reported per.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub window: Duration,
    /// Count any 2xx as a success (by default a 2xx must be mesh-app's JSON echoing the path).
    #[arg(long)]
    pub no_body_check: bool,
    /// When the duration is over, keep serving /stats until SIGTERM.
    #[arg(long)]
    pub linger: bool,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub url: String,
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
}

fn logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).with_context(|| format!("--log-level {level:?} is not a log filter"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
    Ok(())
}

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(cli.command, Command::Get(_)) {
        logging(&cli.log_level)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Load(args) => load(args).await,
            Command::Get(args) => get(args).await,
        }
    })
}

/// Completes on SIGTERM or Ctrl-C; every clone sees it.
fn termination() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("termination signal");
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn signalled(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let addr = SocketAddr::new(args.address, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr} (choose another --port?)"))?;
    let options = serve::ServeOptions { name: args.name, pod: args.pod, namespace: args.namespace, shutdown_delay: args.shutdown_delay, drain_timeout: args.drain_timeout };
    let summary = serve::serve(listener, options, signalled(termination()?)).await;
    Ok(if summary.connections_cut == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let targets = args.targets.iter().map(|u| client::Target::parse(u)).collect::<Result<Vec<_>, _>>()?;
    let options = load::LoadOptions { targets, rate: args.rate, duration: args.duration, timeout: args.timeout, window: args.window, check_body: !args.no_body_check };
    options.interval_per_target()?;
    let shared = Arc::new(load::Shared::new(&options.targets, options.rate, options.window));
    let addr = SocketAddr::new(args.stats_address, args.stats_port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the stats port {addr} (choose another --stats-port?)"))?;
    let stats_server = tokio::spawn(load::serve_stats(listener, Arc::clone(&shared)));
    let terminated = termination()?;
    let ended = load::run(options, Arc::clone(&shared), signalled(terminated.clone())).await?;
    println!("{}", serde_json::to_string_pretty(&shared.document())?);
    if args.linger && ended == load::Ended::DurationReached {
        tracing::info!(%addr, "duration reached; /stats stays up until SIGTERM");
        signalled(terminated).await;
    }
    stats_server.abort();
    Ok(ExitCode::SUCCESS)
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let target = client::Target::parse(&args.url)?;
    match client::get_once(&target, args.timeout).await {
        Ok(answer) => {
            use std::io::Write;
            std::io::stdout().write_all(&answer.body)?;
            if answer.status.is_success() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} answered {}", args.url, answer.status);
                Ok(ExitCode::from(1))
            }
        }
        Err(e) => {
            eprintln!("GET {}: {e}", args.url);
            Ok(ExitCode::from(1))
        }
    }
}
