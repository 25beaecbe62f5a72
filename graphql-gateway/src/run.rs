//! Flags, the configuration file, supergraph hot reload, and serving.

use crate::execute::Subgraphs;
use crate::gateway::{Gateway, Limits};
use crate::http::{HttpSettings, Server};
use crate::metrics::Metrics;
use crate::supergraph::Supergraph;
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Parser)]
#[command(
    name = "graphql-gateway",
    about = "A GraphQL gateway over a Federation v2 supergraph: each field is fetched from the subgraph that owns it"
)]
pub struct Args {
    /// The composed supergraph (SDL). Watched: a valid change is applied
    /// without dropping requests, an invalid one is refused and logged.
    #[arg(long)]
    pub supergraph: PathBuf,
    /// Optional YAML configuration (see docs/graphql-gateway.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides the configuration's listen address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// How often the supergraph file is checked for changes.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubgraphConfig {
    /// Replaces the URL the supergraph names.
    pub url: Option<String>,
    pub timeout: Option<String>,
    /// Overrides `dedupeSubgraphRequests` for this subgraph.
    pub dedupe: Option<bool>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    pub max_depth: Option<usize>,
    pub max_aliases: Option<usize>,
    pub max_root_fields: Option<usize>,
    pub max_cost: Option<u64>,
    pub list_size: Option<u64>,
    pub max_tokens: Option<usize>,
    pub max_expanded_selections: Option<u64>,
    /// A duration (`500ms`, `1s`).
    pub planning_budget: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub subgraphs: BTreeMap<String, SubgraphConfig>,
    /// Default per-subgraph timeout.
    pub timeout: Option<String>,
    pub limits: Option<LimitsConfig>,
    pub introspection: Option<bool>,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    #[serde(default)]
    pub propagate_headers: Vec<String>,
    pub max_request_bytes: Option<usize>,
    /// Progressive `@override` labels that are on (see docs/graphql-gateway.md).
    #[serde(default)]
    pub override_labels: Vec<String>,
    /// Identical query requests to a subgraph that are in flight together are
    /// sent once and the answer shared (default true; mutations never).
    pub dedupe_subgraph_requests: Option<bool>,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(t) = &config.timeout {
            revmesh_duration::parse(t)
                .map_err(|e| anyhow::anyhow!("{}: timeout: {e}", path.display()))?;
        }
        if let Some(t) = config
            .limits
            .as_ref()
            .and_then(|l| l.planning_budget.as_ref())
        {
            revmesh_duration::parse(t)
                .map_err(|e| anyhow::anyhow!("{}: limits.planningBudget: {e}", path.display()))?;
        }
        for (name, s) in &config.subgraphs {
            if let Some(t) = &s.timeout {
                revmesh_duration::parse(t).map_err(|e| {
                    anyhow::anyhow!("{}: subgraphs.{name}.timeout: {e}", path.display())
                })?;
            }
        }
        Ok(config)
    }

    fn limits(&self) -> Limits {
        let mut l = Limits::default();
        if let Some(c) = &self.limits {
            l.max_depth = c.max_depth.unwrap_or(l.max_depth);
            l.max_aliases = c.max_aliases.unwrap_or(l.max_aliases);
            l.max_root_fields = c.max_root_fields.unwrap_or(l.max_root_fields);
            l.max_cost = c.max_cost.unwrap_or(l.max_cost);
            l.list_size = c.list_size.unwrap_or(l.list_size);
            l.max_tokens = c.max_tokens.unwrap_or(l.max_tokens);
            l.max_expanded_selections = c
                .max_expanded_selections
                .unwrap_or(l.max_expanded_selections);
            // Checked when the file was loaded.
            if let Some(Ok(budget)) = c.planning_budget.as_deref().map(revmesh_duration::parse) {
                l.planning_budget = budget;
            }
        }
        l.introspection = self.introspection.unwrap_or(true);
        l
    }
}

/// Builds a gateway for a supergraph text; the error says what is wrong.
pub fn build(
    text: &str,
    path: &Path,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Gateway> {
    let sg =
        Supergraph::parse_with_labels(text, &path.display().to_string(), &config.override_labels)?;
    let mut endpoints = BTreeMap::new();
    for (id, g) in &sg.graphs {
        let url = config
            .subgraphs
            .get(&g.name)
            .and_then(|s| s.url.clone())
            .unwrap_or_else(|| g.url.clone());
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("subgraph {}: URL {url:?}", g.name))?;
        endpoints.insert(id.clone(), (g.name.clone(), uri));
    }
    let default_timeout = config
        .timeout
        .as_deref()
        .map(revmesh_duration::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .unwrap_or(Duration::from_secs(30));
    let mut timeouts = HashMap::new();
    for (name, s) in &config.subgraphs {
        if let Some(t) = &s.timeout {
            timeouts.insert(
                name.clone(),
                revmesh_duration::parse(t).map_err(anyhow::Error::msg)?,
            );
        }
    }
    let mut subgraphs = Subgraphs::new(endpoints, default_timeout, timeouts);
    let m = Arc::clone(metrics);
    subgraphs.observe = Some(Arc::new(move |name: &str, secs: f64, ok: bool| {
        m.observe_fetch(name, secs, ok)
    }));
    subgraphs.dedupe = config.dedupe_subgraph_requests.unwrap_or(true);
    subgraphs.dedupe_by_subgraph = config
        .subgraphs
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.dedupe?)))
        .collect();
    let m = Arc::clone(metrics);
    subgraphs.observe_shared = Some(Arc::new(move |name: &str| m.observe_shared_fetch(name)));
    Ok(Gateway::new(Arc::new(sg), subgraphs, config.limits()))
}

async fn watch_supergraph(
    server: Arc<Server>,
    path: PathBuf,
    config: Config,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(interval).await;
        let Ok(now) = std::fs::read(&path) else {
            continue;
        };
        if last.as_deref() == Some(now.as_slice()) {
            continue;
        }
        last = Some(now.clone());
        let text = String::from_utf8_lossy(&now);
        match build(&text, &path, &config, &metrics) {
            Ok(g) => {
                server.replace(g);
                metrics.reloads.inc();
                tracing::info!(supergraph = %path.display(), "supergraph reloaded");
            }
            Err(e) => {
                metrics.reloads_refused.inc();
                tracing::error!(supergraph = %path.display(), error = %format!("{e:#}"), "supergraph change refused; the previous schema keeps serving");
            }
        }
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Span closes are logged, so enabling `graphql_gateway::execute=debug`
    // prints each fetch with its subgraph and duration.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    serve(args).await
}

/// Serves until SIGTERM or Ctrl-C; the caller owns logging.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let text = std::fs::read_to_string(&args.supergraph)
        .with_context(|| format!("reading the supergraph {}", args.supergraph.display()))?;
    let gateway = build(&text, &args.supergraph, &config, &metrics)?;
    let settings = HttpSettings {
        max_request_bytes: config.max_request_bytes.unwrap_or(2 * 1024 * 1024),
        cors_origins: config.cors_origins.clone(),
        propagate_headers: config
            .propagate_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    };
    let server = Arc::new(Server::new(gateway, settings, Arc::clone(&metrics)));
    tokio::spawn(watch_supergraph(
        Arc::clone(&server),
        args.supergraph.clone(),
        config.clone(),
        Arc::clone(&metrics),
        Duration::from_millis(args.poll_ms),
    ));
    let listen = args
        .listen
        .or(config.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 4000)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, supergraph = %args.supergraph.display(), "GraphQL gateway serving /graphql");
    let connections = Arc::new(tokio::sync::Semaphore::new(0));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a { Ok(c) => c, Err(_) => continue },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = tcp.set_nodelay(true);
        let server = Arc::clone(&server);
        let mut stop = stop_rx.clone();
        let guard = Arc::clone(&connections);
        tokio::spawn(async move {
            guard.add_permits(1);
            let service = hyper::service::service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, std::convert::Infallible>(server.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            if let Ok(p) = guard.try_acquire() {
                p.forget();
            }
        });
    }
    // Graceful shutdown: stop accepting, let requests in flight finish (10 s at most).
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while connections.available_permits() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
