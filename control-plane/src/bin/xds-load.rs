//! xds-load: simulates N Delta-xDS proxies against one control plane and
//! measures convergence after endpoint changes. Used by tests/bench/xds.sh.
//!
//! Each simulated proxy subscribes to clusters and listeners (wildcard), then to
//! the endpoints of every cluster and the outbound routes, and ACKs every
//! response, as Envoy does. The driver rewrites one service's Endpoints file in
//! the watched folder and times, per proxy, how long until the new endpoints
//! arrive.
//!
//! With `--tls-root` the proxies use the TLS port (15012) as sidecars do:
//! they verify the control plane against the mesh root, send `--token` as
//! `authorization: Bearer` metadata and claim `--identity` in their node
//! metadata, so the run includes authentication.

use anyhow::{bail, Context};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

#[derive(Parser)]
struct Args {
    /// ADS address of the control plane.
    #[arg(long)]
    xds: String,
    /// Revision the simulated proxies claim.
    #[arg(long, default_value = "bench")]
    revision: String,
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Clusters each proxy must have before the measurement starts.
    #[arg(long)]
    expect_clusters: usize,
    /// The Endpoints file to rewrite (in the control plane's folder).
    #[arg(long)]
    change_file: PathBuf,
    /// The cluster whose endpoints change.
    #[arg(long)]
    change_cluster: String,
    /// Namespace/name of the changed Endpoints object.
    #[arg(long)]
    change_object: String,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The mesh root (PEM): connect over TLS to the TLS port, verifying the
    /// control plane's certificate. Without it, `--xds` is the plaintext port.
    #[arg(long, requires_all = ["token", "identity"])]
    tls_root: Option<PathBuf>,
    /// The name the control plane's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The token every simulated proxy authenticates with (a bootstrap token of
    /// the control plane's `--ca-bootstrap-tokens`, or a service-account token).
    #[arg(long, env = "XDS_LOAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The NAMESPACE/SERVICE_ACCOUNT the token proves, claimed in node metadata.
    #[arg(long)]
    identity: Option<String>,
}

/// What every simulated proxy presents on the TLS port.
#[derive(Clone)]
struct Credentials {
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    namespace: String,
    service_account: String,
}

fn node(id: &str, revision: &str, credentials: Option<&Credentials>) -> Node {
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
    let mut fields = HashMap::new();
    fields.insert("REVMESH_REVISION".to_string(), s(revision));
    if let Some(c) = credentials {
        fields.insert("NAMESPACE".to_string(), s(&c.namespace));
        fields.insert("SERVICE_ACCOUNT".to_string(), s(&c.service_account));
    }
    Node { id: id.into(), metadata: Some(Struct { fields }), ..Default::default() }
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Connects tonic to the TLS port, verifying the server against the mesh root.
#[derive(Clone)]
struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    addr: String,
}

impl TlsConnector {
    fn new(root_pem: &str, server_name: &str, addr: &str) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(cert.context("the mesh root is not PEM")?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "the mesh root file holds no certificate");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).with_context(|| format!("--server-name {server_name:?}"))?;
        Ok(TlsConnector { tls: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)), name, addr: addr.to_string() })
    }
}

impl tonic::codegen::Service<hyper::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: hyper::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&this.addr).await?;
            tcp.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(this.tls.connect(this.name, tcp).await?))
        })
    }
}

/// One simulated proxy; reports (proxy index, resource version) of the watched cluster's endpoints.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    index: usize,
    channel: tonic::transport::Channel,
    revision: String,
    credentials: Option<Credentials>,
    watched: String,
    ready: mpsc::Sender<usize>,
    seen: mpsc::UnboundedSender<(usize, String, Instant)>,
    expect_clusters: usize,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let id = format!("bench-proxy-{index}");
    tx.send(DeltaDiscoveryRequest { node: Some(node(&id, &revision, credentials.as_ref())), type_url: CDS.into(), ..Default::default() }).await?;
    tx.send(DeltaDiscoveryRequest { type_url: LDS.into(), ..Default::default() }).await?;
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(c) = &credentials {
        call.metadata_mut().insert("authorization", c.bearer.clone());
    }
    let mut inbound = client.delta_aggregated_resources(call).await?.into_inner();
    let mut clusters = 0usize;
    let mut subscribed_routes = false;
    let mut announced = false;
    while let Some(resp) = inbound.next().await {
        let resp = resp?;
        let now = Instant::now();
        // ACK first, as a proxy does once it applied the config.
        tx.send(DeltaDiscoveryRequest { type_url: resp.type_url.clone(), response_nonce: resp.nonce.clone(), ..Default::default() }).await?;
        match resp.type_url.as_str() {
            CDS => {
                clusters += resp.resources.len();
                let names: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
                if !names.is_empty() {
                    tx.send(DeltaDiscoveryRequest { type_url: EDS.into(), resource_names_subscribe: names, ..Default::default() }).await?;
                }
            }
            LDS if !subscribed_routes => {
                subscribed_routes = true;
                tx.send(DeltaDiscoveryRequest { type_url: RDS.into(), resource_names_subscribe: vec!["outbound_http".into()], ..Default::default() }).await?;
            }
            EDS => {
                for r in resp.resources.iter().filter(|r| r.name == watched) {
                    let _ = seen.send((index, r.version.clone(), now));
                }
            }
            _ => {}
        }
        if !announced && clusters >= expect_clusters {
            announced = true;
            let _ = ready.send(index).await;
        }
    }
    Ok(())
}

fn endpoints_yaml(object: &str, ip_last: u32) -> anyhow::Result<String> {
    let (ns, name) = object.split_once('/').context("--change-object is namespace/name")?;
    Ok(format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: {ns}}}\nsubsets:\n- addresses: [{{ip: 10.1.{}.{}}}]\n  ports: [{{name: http, port: 8080}}]\n", ip_last / 250, ip_last % 250 + 1))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let credentials = match (&args.token, &args.identity) {
        (Some(token), Some(identity)) => {
            let (namespace, service_account) = identity.split_once('/').filter(|(n, s)| !n.is_empty() && !s.is_empty()).context("--identity is NAMESPACE/SERVICE_ACCOUNT")?;
            let bearer = format!("Bearer {token}").parse().map_err(|_| anyhow::anyhow!("--token holds characters a gRPC header cannot carry"))?;
            Some(Credentials { bearer, namespace: namespace.into(), service_account: service_account.into() })
        }
        _ => None,
    };
    let tls = match &args.tls_root {
        Some(path) => Some(TlsConnector::new(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?, &args.server_name, &args.xds)?),
        None => None,
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.xds))?;
        let channel = match &tls {
            Some(connector) => endpoint.connect_with_connector(connector.clone()).await,
            None => endpoint.connect().await,
        };
        channels.push(channel.context("connecting to the control plane")?);
    }
    let (ready_tx, mut ready_rx) = mpsc::channel(args.proxies);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    for i in 0..args.proxies {
        let ch = channels[i % channels.len()].clone();
        let (ready, seen, rev, watched, creds) = (ready_tx.clone(), seen_tx.clone(), args.revision.clone(), args.change_cluster.clone(), credentials.clone());
        let expect = args.expect_clusters;
        tokio::spawn(async move {
            if let Err(e) = proxy(i, ch, rev, creds, watched, ready, seen, expect).await {
                eprintln!("proxy {i}: {e:#}");
            }
        });
    }
    let mut ready = 0;
    while ready < args.proxies {
        match tokio::time::timeout(Duration::from_secs(300), ready_rx.recv()).await {
            Ok(Some(_)) => ready += 1,
            _ => bail!("only {ready} of {} proxies received all clusters", args.proxies),
        }
    }
    println!("connected {} proxies with {} clusters each in {:.1?}", args.proxies, args.expect_clusters, started.elapsed());
    // Drain the initial endpoint reports.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut versions: HashMap<usize, String> = HashMap::new();
    while let Ok((i, v, _)) = seen_rx.try_recv() {
        versions.insert(i, v);
    }
    let mut all = Vec::new();
    for round in 0..args.rounds {
        let text = endpoints_yaml(&args.change_object, round as u32 + 7)?;
        let tmp = args.change_file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, &args.change_file)?;
        let mut got: HashMap<usize, Duration> = HashMap::new();
        let deadline = t0 + Duration::from_secs(30);
        while got.len() < args.proxies {
            let Ok(Some((i, v, at))) = tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await else { break };
            if versions.get(&i) != Some(&v) {
                versions.insert(i, v);
                got.insert(i, at.saturating_duration_since(t0));
            }
        }
        let mut lat: Vec<Duration> = got.values().copied().collect();
        lat.sort();
        println!(
            "round {}: {}/{} proxies converged; p50 {:.1?} p99 {:.1?} max {:.1?}",
            round + 1,
            lat.len(),
            args.proxies,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or_default()
        );
        all.extend(lat);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    all.sort();
    println!("all rounds: n={} p50 {:.1?} p99 {:.1?}", all.len(), percentile(&all, 0.5), percentile(&all, 0.99));
    Ok(())
}
