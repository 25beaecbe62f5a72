//! Flags, wiring and the debug endpoints of one control-plane revision.

use crate::model::MeshModel;
use crate::ca::{parse_bootstrap_tokens, Ca};
use crate::ca_server::{self, Authenticator, CaService};
use crate::ca_store;
use crate::serve::{self, Endpoints};
use crate::config_dump;
use crate::source::{dir, kubernetes};
use crate::status::ProxyRegistry;
use crate::xds::{AdsServer, AdsService, Published};
use crate::xds_auth::XdsAuth;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "control-plane", about = "One revision of Revmesh's control plane: an ADS (xDS) server for the proxies of that revision")]
pub struct Settings {
    /// The revision served (a mesh version such as 1-25-2); proxies of other revisions are refused.
    #[arg(long, env = "REVMESH_REVISION")]
    pub revision: String,
    /// Where the mesh comes from: `dir:PATH` (a watched folder of Service,
    /// Endpoints, EndpointSlice and HTTPRoute manifests) or `kubernetes` (the
    /// API server from KUBECONFIG or the in-cluster service account).
    #[arg(long, default_value = "dir:./examples/mesh")]
    pub source: String,
    /// Plaintext xDS (ADS) address. No caller is authenticated here, so it is
    /// for local development and listens on loopback by default; proxies use
    /// the TLS port.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_listen: SocketAddr,
    /// Debug and metrics address: /debug/syncz, /metrics.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub debug_listen: SocketAddr,
    /// How often the source folder is checked for changes.
    #[arg(long, default_value = "200ms", value_parser = revmesh_duration::parse)]
    pub poll_interval: Duration,
    /// Kubernetes source: quiet time after a change before pushing.
    #[arg(long, default_value = "100ms", value_parser = revmesh_duration::parse)]
    pub debounce: Duration,
    /// Kubernetes source: longest a busy cluster can delay a push.
    #[arg(long, default_value = "10s", value_parser = revmesh_duration::parse)]
    pub debounce_max: Duration,
    /// TLS address serving xDS (gRPC) and the CA (POST /v1/certificate, GET
    /// /v1/root), with a certificate from the mesh CA.
    #[arg(long, alias = "ca-listen", default_value = "0.0.0.0:15012")]
    pub tls_listen: SocketAddr,
    /// Kubernetes source: the Secret (NAMESPACE/NAME) holding the mesh root
    /// (`ca.crt`, `ca.key`); created with a fresh root if missing. Ignored when
    /// --ca-cert/--ca-key are given.
    #[arg(long, default_value = "revmesh-system/revmesh-ca")]
    pub ca_secret: String,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Root certificate (PEM) of the mesh CA; with --ca-key. A fresh root is
    /// generated when absent (development only: it changes at every start).
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of the mesh CA.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Audience the proxies' projected tokens must carry (Kubernetes source).
    #[arg(long, default_value = "revmesh-ca")]
    pub ca_audience: String,
    /// Dir source: bootstrap tokens, lines of `<token> <namespace>/<serviceaccount>`.
    #[arg(long)]
    pub ca_bootstrap_tokens: Option<PathBuf>,
    /// How long a reviewed xDS token is trusted before it is reviewed again
    /// (never past the token's own expiry).
    #[arg(long, default_value = "60s", value_parser = revmesh_duration::parse)]
    pub xds_token_cache_ttl: Duration,
    /// Proxies being pushed to at once; the others wait their turn (bounds memory
    /// and CPU when many proxies connect or a large change lands).
    #[arg(long, default_value_t = 100)]
    pub max_concurrent_pushes: usize,
    /// Lifetime of issued certificates unless the request asks for less.
    #[arg(long, default_value = "3600s", value_parser = revmesh_duration::parse)]
    pub cert_ttl: Duration,
}


pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if !rollouts_compatible_revision(&settings.revision) {
        bail!("--revision {:?} is not a DNS label (for example 1-25-2)", settings.revision);
    }
    let registry = ProxyRegistry::new(&settings.revision);
    let (tx, rx) = watch::channel(Arc::new(Published::default()));
    let publish_registry = Arc::clone(&registry);
    let publish = move |model: MeshModel| {
        let version = tx.borrow().version + 1;
        publish_registry.model_published(version);
        tx.send_replace(Arc::new(Published { version, model }));
    };
    let mut kube_client: Option<kube::Client> = None;
    if let Some(path) = settings.source.strip_prefix("dir:") {
        let root = PathBuf::from(path);
        let (model, files) = dir::load(&root)?;
        publish(model);
        let refuse_registry = Arc::clone(&registry);
        tokio::spawn(dir::watch(root, files, settings.poll_interval, publish, move |_errors| refuse_registry.config_refused()));
    } else if settings.source == "kubernetes" {
        // kube's TLS goes through rustls; pick its crypto provider once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
        kube_client = Some(client.clone());
        let debounce = kubernetes::Debounce { quiet: settings.debounce, max: settings.debounce_max };
        tokio::spawn(async move {
            // Without its source the control plane would serve a frozen
            // mesh (or none) for ever: it exits, and its pod is restarted.
            match kubernetes::run(client, debounce, publish).await {
                Err(e) => tracing::error!(error = %e, "the Kubernetes source stopped; exiting"),
                Ok(()) => tracing::error!("every Kubernetes watch ended; exiting"),
            }
            std::process::exit(1);
        });
    } else {
        bail!("--source {:?} is not a source: use dir:PATH or kubernetes", settings.source);
    }

    let ca = match (&settings.ca_cert, &settings.ca_key, &kube_client) {
        (Some(cert), Some(key), _) => {
            let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
            Ca::from_pem(&read(cert)?, &read(key)?, &settings.trust_domain)?
        }
        (_, _, Some(client)) => {
            let (ns, name) = settings
                .ca_secret
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .with_context(|| format!("--ca-secret {:?} is not NAMESPACE/NAME", settings.ca_secret))?;
            ca_store::load_or_create_root(client, ns, name, &settings.trust_domain).await?
        }
        _ => {
            tracing::warn!("no --ca-cert/--ca-key: generated a throwaway root CA (development only)");
            Ca::generate(&settings.trust_domain)?
        }
    };
    if let Some(client) = &kube_client {
        tokio::spawn(ca_store::publish_root(client.clone(), ca.root_pem().to_string()));
    }
    let auth = match (kube_client, &settings.ca_bootstrap_tokens) {
        (Some(client), _) => Authenticator::TokenReview { client, audience: settings.ca_audience.clone() },
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            Authenticator::Bootstrap(parse_bootstrap_tokens(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?)
        }
        (None, None) => {
            tracing::warn!("dir source without --ca-bootstrap-tokens: the CA refuses every certificate request");
            Authenticator::Bootstrap(Default::default())
        }
    };
    let tls_names = vec![
        format!("control-plane-{}.revmesh-system.svc", settings.revision),
        format!("control-plane-{}.revmesh-system.svc.cluster.local", settings.revision),
        "localhost".to_string(),
    ];
    let ca_service = Arc::new(CaService { ca, auth, default_ttl: settings.cert_ttl });
    let acceptor = ca_server::tls_acceptor(Arc::clone(&ca_service), tls_names)?;

    let server = Arc::new(AdsServer::new(settings.revision.clone(), rx, Arc::clone(&registry), settings.max_concurrent_pushes));
    let ads = AdsService(Arc::clone(&server));
    let bind = |addr: SocketAddr| async move { tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}")) };
    let plain = bind(settings.xds_listen).await?;
    let tls = bind(settings.tls_listen).await?;
    let debug = bind(settings.debug_listen).await?;
    let xds_auth = Arc::new(XdsAuth::new(Arc::clone(&ca_service), settings.xds_token_cache_ttl, &registry, &settings.revision));
    if !settings.xds_listen.ip().is_loopback() {
        tracing::warn!(xds = %settings.xds_listen, "plaintext xDS listens beyond loopback: anyone who reaches it reads the mesh's config unauthenticated (local development only)");
    }
    tokio::spawn(serve::serve(plain, None, Endpoints { ads: ads.clone(), ca: None, xds_auth: None }));
    tokio::spawn(serve::serve(tls, Some(acceptor), Endpoints { ads, ca: Some(ca_service), xds_auth: Some(xds_auth) }));
    tokio::spawn(serve_debug(debug, Arc::clone(&registry), Arc::clone(&server)));
    tracing::info!(revision = %settings.revision, xds = %settings.xds_listen, tls = %settings.tls_listen, debug = %settings.debug_listen, "control plane serving");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    tracing::info!("stopping");
    Ok(())
}

fn rollouts_compatible_revision(r: &str) -> bool {
    !r.is_empty() && r.len() <= 63 && r.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') && !r.starts_with('-') && !r.ends_with('-')
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

async fn debug_response(req: &Request<hyper::body::Incoming>, registry: &ProxyRegistry, server: &AdsServer) -> (StatusCode, &'static str, String) {
    match req.uri().path() {
        "/debug/syncz" => (StatusCode::OK, "application/json", serde_json::to_string_pretty(&registry.syncz()).unwrap_or_default()),
        "/debug/config_dump" => {
            let query = req.uri().query();
            let Some(id) = query_param(query, "proxy").filter(|p| !p.is_empty()) else {
                return (StatusCode::BAD_REQUEST, "text/plain", "name the proxy: /debug/config_dump?proxy=<node id> (ids are in /debug/syncz)\n".into());
            };
            let id = percent_decode(id);
            match server.proxy_resources(&id).await {
                None => (StatusCode::NOT_FOUND, "text/plain", format!("no proxy {id:?} is connected to this revision; see /debug/syncz\n")),
                Some(r) if query_param(query, "format") == Some("text") => (StatusCode::OK, "text/plain; charset=utf-8", config_dump::text_dump(&id, &r)),
                Some(r) => (StatusCode::OK, "application/json", serde_json::to_string_pretty(&config_dump::json_dump(&id, &r)).unwrap_or_default()),
            }
        }
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", registry.encode_metrics()),
        "/ready" | "/healthz/ready" if server.has_model() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        // Not ready until the source has listed everything once: a Service
        // must not send proxies here before there is a mesh to serve them.
        "/ready" | "/healthz/ready" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: the source has not listed the cluster yet\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /debug/syncz, /debug/config_dump?proxy=ID or /metrics\n".to_string()),
    }
}

/// Node ids may hold characters a URL escapes (`~`, `:`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve_debug(listener: tokio::net::TcpListener, registry: Arc<ProxyRegistry>, server: Arc<AdsServer>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let registry = Arc::clone(&registry);
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = Arc::clone(&registry);
                let server = Arc::clone(&server);
                async move {
                    let (status, ctype, body) = debug_response(&req, &registry, &server).await;
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
