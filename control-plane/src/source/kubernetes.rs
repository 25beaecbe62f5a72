//! `--source kubernetes`: Services, Endpoints or EndpointSlices (chosen by API
//! discovery), and Gateway API HTTPRoutes, through kube watchers with backoff
//! and reflector stores. While the API server is unreachable the stores keep
//! their last state, so the last known mesh keeps being served; when it returns
//! the watchers relist and the model resyncs.

use super::manifests;
use crate::model::{MeshModel, ServiceKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use std::time::Duration;
use tokio::sync::mpsc;

/// How change notifications are coalesced before the model is rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Quiet time after the last change.
    pub quiet: Duration,
    /// Upper bound from the first change, however busy the cluster.
    pub max: Duration,
}

enum EndpointStore {
    Endpoints(Store<Endpoints>),
    Slices(Store<EndpointSlice>),
}

struct Stores {
    services: Store<Service>,
    endpoints: EndpointStore,
    routes: Option<Store<DynamicObject>>,
    pods: Store<Pod>,
}

impl Stores {
    async fn wait_until_listed(&self) -> anyhow::Result<()> {
        listed("Services", &self.services).await?;
        match &self.endpoints {
            EndpointStore::Endpoints(s) => listed("Endpoints", s).await?,
            EndpointStore::Slices(s) => listed("EndpointSlices", s).await?,
        }
        if let Some(routes) = &self.routes {
            listed("HTTPRoutes", routes).await?;
        }
        listed("Pods", &self.pods).await
    }
}

/// Waits for a store's first complete list, saying every 10 s what is awaited:
/// a watch the control plane's RBAC forbids keeps it not Ready.
async fn listed<K>(kind: &str, store: &Store<K>) -> anyhow::Result<()>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => anyhow::bail!("the watch of {kind} stopped before its first list"),
            Err(_) => tracing::warn!(kind, "still waiting for the first list of {kind}: not Ready, no proxy is served until it completes (see the watch errors; is list/watch granted?)"),
        }
    }
}

fn meta_ns_name<K: Resource>(o: &K) -> (String, String) {
    (o.meta().namespace.clone().unwrap_or_else(|| "default".into()), o.meta().name.clone().unwrap_or_default())
}

/// Builds the model from the stores. Objects that do not convert are skipped
/// with a warning: one bad object must not take the rest of the mesh down.
fn build(stores: &Stores) -> MeshModel {
    let mut objects = manifests::Objects::default();
    for s in stores.services.state() {
        let (ns, name) = meta_ns_name(s.as_ref());
        match serde_json::to_value(s.as_ref()).map_err(|e| e.to_string()).and_then(|v| manifests::service(&v, &ns, &name)) {
            Ok(svc) => objects.services.push(svc),
            Err(e) => tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "Service skipped"),
        }
    }
    match &stores.endpoints {
        EndpointStore::Endpoints(store) => {
            for e in store.state() {
                let (ns, name) = meta_ns_name(e.as_ref());
                match serde_json::to_value(e.as_ref()).map_err(|e| e.to_string()).and_then(|v| manifests::endpoints(&v, &ns, &name)) {
                    Ok(eps) => objects.endpoints.entry(ServiceKey::new(&ns, &name)).or_default().extend(eps),
                    Err(err) => tracing::warn!(endpoints = %format!("{ns}/{name}"), error = %err, "Endpoints skipped"),
                }
            }
        }
        EndpointStore::Slices(store) => {
            for e in store.state() {
                let (ns, name) = meta_ns_name(e.as_ref());
                match serde_json::to_value(e.as_ref()).map_err(|e| e.to_string()).and_then(|v| manifests::endpoint_slice(&v, &ns)) {
                    Ok((svc, eps)) => objects.endpoints.entry(svc).or_default().extend(eps),
                    Err(err) => tracing::warn!(slice = %format!("{ns}/{name}"), error = %err, "EndpointSlice skipped"),
                }
            }
        }
    }
    if let Some(routes) = &stores.routes {
        for r in routes.state() {
            let ns = r.namespace().unwrap_or_else(|| "default".into());
            let name = r.name_any();
            match serde_json::to_value(r.as_ref()).map_err(|e| e.to_string()).and_then(|v| manifests::http_route(&v, &ns, &name)) {
                Ok(route) => objects.routes.push(route),
                Err(e) => tracing::debug!(route = %format!("{ns}/{name}"), error = %e, "HTTPRoute not for the mesh, skipped"),
            }
        }
    }
    for p in stores.pods.state() {
        let (ns, name) = meta_ns_name(p.as_ref());
        match serde_json::to_value(p.as_ref()).map_err(|e| e.to_string()).and_then(|v| manifests::meshed_pod(&v, &ns)) {
            Ok(found) => objects.meshed.extend(found),
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "Pod skipped"),
        }
    }
    objects.into_model()
}

async fn serves(client: &Client, group_version: &str, kind: &str) -> bool {
    let listed = if group_version == "v1" { client.list_core_api_resources("v1").await } else { client.list_api_group_resources(group_version).await };
    listed.is_ok_and(|l| l.resources.iter().any(|r| r.kind == kind))
}

/// Runs one watcher into a store, poking `changed` on every event.
fn spawn_reflector<K>(api: Api<K>, dyntype: K::DynamicType, changed: mpsc::Sender<()>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    spawn_reflector_with(api, dyntype, watcher::Config::default(), changed)
}

fn spawn_reflector_with<K>(api: Api<K>, dyntype: K::DynamicType, config: watcher::Config, changed: mpsc::Sender<()>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    let _ = changed.try_send(());
                }
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff (the last model published, if any, stays served)"),
            }
        }
    });
    reader
}

/// Watches the cluster and calls `publish` with each new model, debounced.
pub async fn run(client: Client, debounce: Debounce, publish: impl Fn(MeshModel) + Send + 'static) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let services = spawn_reflector(Api::<Service>::all(client.clone()), (), tx.clone());
    let endpoints = if serves(&client, "discovery.k8s.io/v1", "EndpointSlice").await {
        tracing::info!("reading EndpointSlices (discovery.k8s.io/v1)");
        EndpointStore::Slices(spawn_reflector(Api::<EndpointSlice>::all(client.clone()), (), tx.clone()))
    } else {
        tracing::info!("discovery.k8s.io/v1 EndpointSlice not served; reading v1 Endpoints");
        EndpointStore::Endpoints(spawn_reflector(Api::<Endpoints>::all(client.clone()), (), tx.clone()))
    };
    let routes = if serves(&client, "gateway.networking.k8s.io/v1", "HTTPRoute").await {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
        Some(spawn_reflector(Api::<DynamicObject>::all_with(client.clone(), &resource), resource.clone(), tx.clone()))
    } else {
        tracing::info!("gateway.networking.k8s.io/v1 HTTPRoute not served; services route to themselves");
        None
    };
    // Injected pods only: their addresses are reached with mTLS.
    let pods = spawn_reflector_with(Api::<Pod>::all(client.clone()), (), watcher::Config::default().labels("revmesh.io/rev"), tx.clone());
    drop(tx);
    let stores = Stores { services, endpoints, routes, pods };
    // The first model waits for every watch's first list: a model built when
    // Services are listed but EndpointSlices are not yet would tell every
    // proxy that no endpoint exists.
    stores.wait_until_listed().await?;
    tracing::info!("every watch has listed the cluster once");
    let listed = build(&stores);
    tracing::info!(services = listed.services.len(), routes = listed.routes.len(), "first model");
    let mut last = Some(listed.clone());
    publish(listed);
    while rx.recv().await.is_some() {
        // Coalesce a burst of changes: wait for quiet, but never longer than max.
        let first = tokio::time::Instant::now();
        loop {
            let remaining = debounce.max.saturating_sub(first.elapsed());
            match tokio::time::timeout(debounce.quiet.min(remaining), rx.recv()).await {
                Ok(Some(())) if !remaining.is_zero() => continue,
                Ok(None) => return Ok(()),
                _ => break,
            }
        }
        let model = build(&stores);
        if last.as_ref() != Some(&model) {
            tracing::info!(services = model.services.len(), routes = model.routes.len(), "cluster state changed");
            last = Some(model.clone());
            publish(model);
        }
    }
    Ok(())
}
