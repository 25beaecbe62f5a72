//! xds-load: simulates N Delta-xDS proxies against one control plane and
//! measures convergence after endpoint changes. Used by tests/bench/xds.sh.
//!
//! Each simulated proxy subscribes to clusters and listeners (wildcard), then to
//! the endpoints of every cluster and the outbound routes, and ACKs every
//! response, as Envoy does. The driver rewrites one service's Endpoints file in
//! the watched folder and times, per proxy, how long until the new endpoints
//! arrive.

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
}

fn node(id: &str, revision: &str) -> Node {
    let mut fields = HashMap::new();
    fields.insert("REVMESH_REVISION".to_string(), Value { kind: Some(Kind::StringValue(revision.into())) });
    Node { id: id.into(), metadata: Some(Struct { fields }), ..Default::default() }
}

/// One simulated proxy; reports (proxy index, resource version) of the watched cluster's endpoints.
async fn proxy(index: usize, channel: tonic::transport::Channel, revision: String, watched: String, ready: mpsc::Sender<usize>, seen: mpsc::UnboundedSender<(usize, String, Instant)>, expect_clusters: usize) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let id = format!("bench-proxy-{index}");
    tx.send(DeltaDiscoveryRequest { node: Some(node(&id, &revision)), type_url: CDS.into(), ..Default::default() }).await?;
    tx.send(DeltaDiscoveryRequest { type_url: LDS.into(), ..Default::default() }).await?;
    let mut inbound = client.delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
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
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(tonic::transport::Endpoint::from_shared(format!("http://{}", args.xds))?.connect().await.context("connecting to the control plane")?);
    }
    let (ready_tx, mut ready_rx) = mpsc::channel(args.proxies);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    for i in 0..args.proxies {
        let ch = channels[i % channels.len()].clone();
        let (ready, seen, rev, watched) = (ready_tx.clone(), seen_tx.clone(), args.revision.clone(), args.change_cluster.clone());
        let expect = args.expect_clusters;
        tokio::spawn(async move {
            if let Err(e) = proxy(i, ch, rev, watched, ready, seen, expect).await {
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
