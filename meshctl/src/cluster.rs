//! Reads and writes against the cluster (KUBECONFIG or in-cluster), and the
//! control planes' debug endpoints. Everything here is I/O; the decisions
//! are in `fleet` and `upgrade_plan`.

use crate::fleet::{Inventory, Namespace, Pod, Workload};
use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace as KubeNamespace, Pod as KubePod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use rollouts::labels::{MESH_NAMESPACE, STATUS_ANNOTATION};
use rollouts::workload::{derive, OwnerRef, PodMeta};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// ConfigMap (in revmesh-system) that the webhook mounts rollouts.yml from.
pub const ROLLOUTS_CONFIGMAP: &str = "revmesh-rollouts";
pub const ROLLOUTS_KEY: &str = "rollouts.yml";
pub const WEBHOOK_CONFIGURATION: &str = "revmesh-sidecar-injector";
/// The annotation `kubectl rollout restart` writes; operators know it.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Where each control-plane revision's debug port (15014) is reached.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneAccess {
    /// `--control-plane REV=URL`: a direct base URL (port-forward, tests).
    pub overrides: BTreeMap<String, String>,
    /// `--webhook URL`: the webhook's metrics port, directly.
    pub webhook: Option<String>,
}

impl ControlPlaneAccess {
    pub fn from_args(args: &crate::cli::ClusterArgs) -> Result<Self> {
        let mut overrides = BTreeMap::new();
        for item in &args.control_plane {
            let (rev, url) = item.split_once('=').with_context(|| format!("--control-plane {item:?} is not REVISION=URL (for example 1-25-2=http://127.0.0.1:15014)"))?;
            if !url.starts_with("http://") {
                bail!("--control-plane {item:?}: the URL must start with http:// (the debug port is plaintext)");
            }
            overrides.insert(rev.to_string(), url.trim_end_matches('/').to_string());
        }
        Ok(Self { overrides, webhook: args.webhook.clone() })
    }
}

pub struct Cluster {
    pub client: kube::Client,
    pub access: ControlPlaneAccess,
}

impl Cluster {
    /// Connects and proves the API server answers, so an unreachable cluster is
    /// reported before anything is written.
    pub async fn connect(access: ControlPlaneAccess) -> Result<Cluster> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = kube::Config::infer().await.context("no cluster configured: set KUBECONFIG or run inside a cluster")?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        client.apiserver_version().await.with_context(|| format!("cannot reach the cluster at {url}; check KUBECONFIG and that the API server is up"))?;
        Ok(Cluster { client, access })
    }

    async fn list<K>(&self, api: Api<K>, what: &str) -> Result<Vec<K>>
    where
        K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        Ok(api.list(&ListParams::default()).await.with_context(|| format!("listing {what}"))?.items)
    }

    pub async fn inventory(&self) -> Result<Inventory> {
        let c = &self.client;
        let namespaces = self.list(Api::<KubeNamespace>::all(c.clone()), "namespaces").await?;
        let pods = self.list(Api::<KubePod>::all(c.clone()), "pods").await?;
        let deployments = self.list(Api::<Deployment>::all(c.clone()), "deployments").await?;
        let statefulsets = self.list(Api::<StatefulSet>::all(c.clone()), "statefulsets").await?;
        let daemonsets = self.list(Api::<DaemonSet>::all(c.clone()), "daemonsets").await?;

        let mut workloads: BTreeMap<(String, String, String), Workload> = BTreeMap::new();
        let mut add = |meta: &kube::api::ObjectMeta, kind: &str, labels: Option<&BTreeMap<String, String>>| {
            let ns = meta.namespace.clone().unwrap_or_default();
            let name = meta.name.clone().unwrap_or_default();
            workloads.insert(
                (ns.clone(), kind.to_string(), name.clone()),
                Workload { namespace: ns, kind: kind.into(), name, template_labels: labels.cloned().unwrap_or_default(), pods: vec![] },
            );
        };
        for d in &deployments {
            add(&d.metadata, "Deployment", d.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()));
        }
        for s in &statefulsets {
            add(&s.metadata, "StatefulSet", s.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()));
        }
        for d in &daemonsets {
            add(&d.metadata, "DaemonSet", d.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()));
        }
        for p in &pods {
            if !pod_is_live(p) {
                continue;
            }
            let meta = &p.metadata;
            let ns = meta.namespace.clone().unwrap_or_default();
            let w = workload_of(p);
            let labels = meta.labels.clone().unwrap_or_default();
            let entry = workloads.entry((ns.clone(), w.kind.clone(), w.name.clone())).or_insert_with(|| Workload {
                namespace: ns,
                kind: w.kind.clone(),
                name: w.name.clone(),
                template_labels: labels.clone(),
                pods: vec![],
            });
            entry.pods.push(Pod { name: meta.name.clone().unwrap_or_default(), version: injected_version(p) });
        }
        Ok(Inventory {
            namespaces: namespaces
                .into_iter()
                .map(|n| Namespace { name: n.metadata.name.unwrap_or_default(), labels: n.metadata.labels.unwrap_or_default() })
                .collect(),
            workloads: workloads.into_values().collect(),
        })
    }

    /// The pods of one workload, live only.
    pub async fn workload_pods(&self, namespace: &str, kind: &str, name: &str) -> Result<Vec<Pod>> {
        let pods = self.list(Api::<KubePod>::namespaced(self.client.clone(), namespace), "pods").await?;
        Ok(pods
            .iter()
            .filter(|p| pod_is_live(p))
            .filter(|p| {
                let w = workload_of(p);
                w.kind == kind && w.name == name
            })
            .map(|p| Pod { name: p.metadata.name.clone().unwrap_or_default(), version: injected_version(p) })
            .collect())
    }

    /// Rolls out a new pod template, like `kubectl rollout restart`.
    pub async fn restart(&self, namespace: &str, kind: &str, name: &str, at: &str) -> Result<()> {
        let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}});
        let params = PatchParams::default();
        let c = self.client.clone();
        let result = match kind {
            "Deployment" => Api::<Deployment>::namespaced(c, namespace).patch(name, &params, &Patch::Merge(&patch)).await.map(|_| ()),
            "StatefulSet" => Api::<StatefulSet>::namespaced(c, namespace).patch(name, &params, &Patch::Merge(&patch)).await.map(|_| ()),
            "DaemonSet" => Api::<DaemonSet>::namespaced(c, namespace).patch(name, &params, &Patch::Merge(&patch)).await.map(|_| ()),
            other => bail!("{other} {namespace}/{name} cannot be rolled out; delete its pods to restart them"),
        };
        result.with_context(|| format!("restarting {kind} {namespace}/{name}"))
    }

    /// The controller has rolled the new template out to every replica.
    /// `Err` when the rollout reports that it is stuck.
    pub async fn rollout_done(&self, namespace: &str, kind: &str, name: &str) -> Result<bool> {
        let c = self.client.clone();
        match kind {
            "Deployment" => {
                let d = Api::<Deployment>::namespaced(c, namespace).get(name).await?;
                let want = d.spec.replicas.unwrap_or(1);
                let status = d.status.unwrap_or_default();
                if let Some(stuck) = status.conditions.iter().flatten().find(|c| c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
                    bail!("the rollout of Deployment {namespace}/{name} is stuck: {}", stuck.message.as_deref().unwrap_or("progress deadline exceeded"));
                }
                Ok(status.observed_generation >= d.metadata.generation && status.updated_replicas.unwrap_or(0) >= want)
            }
            "StatefulSet" => {
                let s = Api::<StatefulSet>::namespaced(c, namespace).get(name).await?;
                let want = s.spec.replicas.unwrap_or(1);
                let status = s.status.unwrap_or_default();
                Ok(status.observed_generation >= s.metadata.generation && status.updated_replicas.unwrap_or(0) >= want)
            }
            "DaemonSet" => {
                let d = Api::<DaemonSet>::namespaced(c, namespace).get(name).await?;
                let status = d.status.unwrap_or_default();
                Ok(status.observed_generation >= d.metadata.generation && status.updated_number_scheduled.unwrap_or(0) >= status.desired_number_scheduled)
            }
            _ => Ok(true),
        }
    }

    /// rollouts.yml as the webhook has it (the ConfigMap it mounts).
    pub async fn webhook_rollouts(&self) -> Result<Option<String>> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), MESH_NAMESPACE);
        let cm = api.get_opt(ROLLOUTS_CONFIGMAP).await.with_context(|| format!("reading ConfigMap {MESH_NAMESPACE}/{ROLLOUTS_CONFIGMAP}"))?;
        Ok(cm.and_then(|c| c.data).and_then(|d| d.get(ROLLOUTS_KEY).cloned()))
    }

    pub async fn service_exists(&self, name: &str) -> Result<bool> {
        Ok(Api::<Service>::namespaced(self.client.clone(), MESH_NAMESPACE).get_opt(name).await.with_context(|| format!("reading Service {MESH_NAMESPACE}/{name}"))?.is_some())
    }

    pub async fn namespace_exists(&self, name: &str) -> Result<bool> {
        Ok(Api::<KubeNamespace>::all(self.client.clone()).get_opt(name).await.with_context(|| format!("reading Namespace {name}"))?.is_some())
    }

    pub async fn webhook_configuration_exists(&self) -> Result<bool> {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        Ok(Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .get_opt(WEBHOOK_CONFIGURATION)
            .await
            .with_context(|| format!("reading MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}"))?
            .is_some())
    }

    /// GET a path of a revision's debug port: directly when overridden, else
    /// through the API server's service proxy.
    pub async fn control_plane_get(&self, revision: &str, path: &str) -> Result<String> {
        if let Some(base) = self.access.overrides.get(revision) {
            return http_get(&format!("{base}{path}")).await;
        }
        let uri = format!("/api/v1/namespaces/{MESH_NAMESPACE}/services/http:control-plane-{revision}:15014/proxy{path}");
        let request = http::Request::get(&uri).body(Vec::new()).context("building the proxy request")?;
        tokio::time::timeout(Duration::from_secs(10), self.client.request_text(request))
            .await
            .with_context(|| format!("control plane {revision} did not answer {path} within 10 s"))?
            .with_context(|| format!("control plane {revision}: GET {path} through the API server's service proxy"))
    }

    /// The rollouts the webhook has in force (its /debug/rollouts), as JSON.
    pub async fn webhook_rollouts_in_force(&self) -> Result<serde_json::Value> {
        let body = match &self.access.webhook {
            Some(base) => http_get(&format!("{}/debug/rollouts", base.trim_end_matches('/'))).await?,
            None => {
                let uri = format!("/api/v1/namespaces/{MESH_NAMESPACE}/services/http:revmesh-webhook:15014/proxy/debug/rollouts");
                let request = http::Request::get(&uri).body(Vec::new()).context("building the proxy request")?;
                tokio::time::timeout(Duration::from_secs(10), self.client.request_text(request))
                    .await
                    .context("the webhook did not answer /debug/rollouts within 10 s")?
                    .context("the webhook: GET /debug/rollouts through the API server's service proxy")?
            }
        };
        serde_json::from_str(&body).context("the webhook's /debug/rollouts is not JSON")
    }

    pub async fn syncz(&self, revision: &str) -> Result<Vec<ProxySync>> {
        let body = self.control_plane_get(revision, "/debug/syncz").await?;
        serde_json::from_str(&body).with_context(|| format!("control plane {revision}: /debug/syncz is not the expected JSON"))
    }
}

/// A proxy as a control plane's `/debug/syncz` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySync {
    pub id: String,
    pub revision: String,
    /// The build the proxy reports (its image's REVMESH_PROXY_VERSION).
    #[serde(default)]
    pub proxy_version: Option<String>,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub connected_unix_seconds: u64,
    #[serde(default)]
    pub types: BTreeMap<String, TypeSync>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeSync {
    #[serde(default)]
    pub sent_nonce: String,
    #[serde(default)]
    pub acked_nonce: String,
    #[serde(default)]
    pub last_nack: Option<serde_json::Value>,
}

/// The version the webhook injected, from its record on the pod. The
/// `revmesh.io/rev` label alone is not proof: it may be a pin in a namespace
/// the webhook never saw.
fn injected_version(p: &KubePod) -> Option<String> {
    let status = p.metadata.annotations.as_ref()?.get(STATUS_ANNOTATION)?;
    let record: serde_json::Value = serde_json::from_str(status).ok()?;
    record["version"].as_str().map(str::to_string)
}

fn pod_is_live(p: &KubePod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn workload_of(p: &KubePod) -> rollouts::workload::Workload {
    let meta = &p.metadata;
    let owners: Vec<OwnerRef> = meta
        .owner_references
        .iter()
        .flatten()
        .map(|o| OwnerRef { kind: o.kind.clone(), name: o.name.clone(), controller: o.controller.unwrap_or(false) })
        .collect();
    let labels = meta.labels.as_ref();
    derive(&PodMeta {
        name: meta.name.as_deref(),
        generate_name: meta.generate_name.as_deref(),
        owners,
        pod_template_hash: labels.and_then(|l| l.get("pod-template-hash")).map(String::as_str),
    })
}

/// A plaintext HTTP/1.1 GET with a deadline.
pub async fn http_get(url: &str) -> Result<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    let host = uri.host().context("the URL names no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {host}:{port}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = hyper::Request::get(path).header("host", format!("{host}:{port}")).body(Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            bail!("GET {url} answered {status}: {}", text.trim());
        }
        Ok(text)
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.with_context(|| format!("GET {url} took longer than 10 s"))?
}
