//! Kubernetes mode: the mesh root lives in a Secret shared by every revision,
//! and is published to every namespace for the proxies.
//!
//! * Secret (default `revmesh-system/revmesh-ca`): keys `ca.crt` and `ca.key`.
//!   Istio's plug-in names `ca-cert.pem`/`ca-key.pem` and cert-manager's
//!   `tls.crt`/`tls.key` are read as well. When the Secret does not exist, the
//!   first control plane generates a root and creates it. A revision that loses
//!   that race reads the winner's root. So every revision signs under one root,
//!   and proxies of the old and the new version trust each other during an
//!   upgrade.
//! * ConfigMap `revmesh-ca-root` (key `root-cert.pem`) in every namespace,
//!   applied server-side: the webhook mounts it into each injected pod.

use crate::ca::Ca;
use anyhow::{bail, Context};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;

pub const ROOT_CONFIGMAP: &str = "revmesh-ca-root";
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
const FIELD_MANAGER: &str = "revmesh-control-plane";

/// Key pairs a root Secret may use, in order of preference.
const KEY_NAMES: [(&str, &str); 3] = [("ca.crt", "ca.key"), ("ca-cert.pem", "ca-key.pem"), ("tls.crt", "tls.key")];

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn root_from_secret(secret: &Secret, trust_domain: &str) -> anyhow::Result<Ca> {
    let name = format!("{}/{}", secret.namespace().unwrap_or_default(), secret.name_any());
    let data = secret.data.clone().unwrap_or_default();
    for (cert_key, key_key) in KEY_NAMES {
        if let (Some(cert), Some(key)) = (text(&data, cert_key), text(&data, key_key)) {
            return Ca::from_pem(&cert, &key, trust_domain).with_context(|| format!("Secret {name}: keys {cert_key} and {key_key} do not hold a usable CA certificate and key"));
        }
    }
    bail!("Secret {name} has no CA certificate and key: expected the keys ca.crt and ca.key (or ca-cert.pem/ca-key.pem, or tls.crt/tls.key)")
}

/// Reads the root from the Secret, or creates the Secret with a fresh root.
pub async fn load_or_create_root(client: &Client, namespace: &str, name: &str, trust_domain: &str) -> anyhow::Result<Ca> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading the CA Secret {namespace}/{name} (the control plane needs get and create on secrets in {namespace})"))?;
    if let Some(secret) = secret {
        tracing::info!(secret = %format!("{namespace}/{name}"), "mesh root loaded from the Secret");
        return root_from_secret(&secret, trust_domain);
    }
    let ca = Ca::generate(trust_domain)?;
    let data = BTreeMap::from([
        ("ca.crt".to_string(), ByteString(ca.root_pem().as_bytes().to_vec())),
        ("ca.key".to_string(), ByteString(ca.key_pem().into_bytes())),
    ]);
    let mut secret = Secret { data: Some(data), type_: Some("Opaque".into()), ..Default::default() };
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated the mesh root and stored it in the Secret");
            Ok(ca)
        }
        // Another revision created it first: use its root.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(name).await.with_context(|| format!("reading the CA Secret {namespace}/{name} after losing the race to create it"))?;
            root_from_secret(&secret, trust_domain)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            bail!("cannot create the CA Secret {namespace}/{name}: namespace {namespace} does not exist (install charts/base, or create it, or pass --ca-secret NAMESPACE/NAME)")
        }
        Err(e) => Err(e).with_context(|| format!("creating the CA Secret {namespace}/{name}")),
    }
}

/// Keeps `revmesh-ca-root` in every namespace, applying it when a namespace
/// appears and again on every relist. Runs until the process ends.
pub async fn publish_root(client: Client, root_pem: String) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut events = watcher(namespaces, watcher::Config::default()).default_backoff().applied_objects().boxed();
    while let Some(event) = events.next().await {
        let ns = match event {
            Ok(ns) => ns,
            Err(e) => {
                tracing::warn!(error = %e, "watching namespaces to publish the mesh root");
                continue;
            }
        };
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = ns.name_any();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let mut cm = ConfigMap { data: Some(BTreeMap::from([(ROOT_CONFIGMAP_KEY.to_string(), root_pem.clone())])), ..Default::default() };
        cm.metadata.name = Some(ROOT_CONFIGMAP.into());
        cm.metadata.labels = Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "revmesh".to_string())]));
        let value = match serde_json::to_value(&cm) {
            Ok(mut v) => {
                v["apiVersion"] = "v1".into();
                v["kind"] = "ConfigMap".into();
                v
            }
            Err(e) => {
                tracing::error!(error = %e, "encoding the root ConfigMap");
                continue;
            }
        };
        if let Err(e) = api.patch(ROOT_CONFIGMAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await {
            tracing::warn!(namespace = %name, error = %e, "could not publish the mesh root ConfigMap");
        }
    }
}
