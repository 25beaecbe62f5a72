//! Runs a plan: fetches whose dependencies are done run in parallel, one HTTP
//! request per fetch. Entity representations are collected from the data
//! gathered so far, deduplicated, and sent in one `_entities` call per fetch.
//! The answers are merged back into the objects they came from.

use tracing::Instrument;
use crate::plan::{fetch_text, Fetch, FetchKind, Plan};
use crate::supergraph::FieldSet;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Largest subgraph response read.
const MAX_SUBGRAPH_RESPONSE: usize = 64 * 1024 * 1024;

/// Called with (subgraph name, seconds, succeeded) after each fetch.
pub type FetchObserver = std::sync::Arc<dyn Fn(&str, f64, bool) + Send + Sync>;

/// HTTP to the subgraphs, pooled.
#[derive(Clone)]
pub struct Subgraphs {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Graph id → (name, URL)
    pub endpoints: BTreeMap<String, (String, hyper::Uri)>,
    /// Per subgraph name; `default` otherwise.
    pub timeouts: HashMap<String, Duration>,
    pub default_timeout: Duration,
    /// Called with (subgraph name, seconds, ok) after each fetch.
    pub observe: Option<FetchObserver>,
}

impl Subgraphs {
    pub fn new(endpoints: BTreeMap<String, (String, hyper::Uri)>, default_timeout: Duration, timeouts: HashMap<String, Duration>) -> Subgraphs {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        Subgraphs { client, endpoints, timeouts, default_timeout, observe: None }
    }

    async fn post(&self, graph: &str, body: Bytes, headers: &[(String, String)]) -> Result<Json, String> {
        let (name, uri) = self.endpoints.get(graph).ok_or_else(|| format!("no URL for subgraph {graph}"))?;
        let timeout = self.timeouts.get(name).copied().unwrap_or(self.default_timeout);
        let mut req = hyper::Request::post(uri.clone()).header(hyper::header::CONTENT_TYPE, "application/json").header(hyper::header::ACCEPT, "application/graphql-response+json, application/json");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let result = async {
            let resp = tokio::time::timeout(timeout, self.client.request(req)).await.map_err(|_| format!("no answer within {timeout:?}"))?.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_SUBGRAPH_RESPONSE).collect().await.map_err(|e| e.to_string())?.to_bytes();
            let parsed: Json = serde_json::from_slice(&bytes).map_err(|e| format!("HTTP {status}, body is not JSON: {e}"))?;
            if !status.is_success() && parsed.get("data").is_none() {
                return Err(format!("HTTP {status}"));
            }
            Ok(parsed)
        }
        .await;
        if let Some(observe) = &self.observe {
            observe(name, started.elapsed().as_secs_f64(), result.is_ok());
        }
        result
    }

    fn name(&self, graph: &str) -> String {
        self.endpoints.get(graph).map_or_else(|| graph.to_string(), |(n, _)| n.clone())
    }
}

/// Objects at `path` (arrays walked, nulls skipped), in a fixed order.
fn collect<'a>(value: &'a Json, path: &[String], out: &mut Vec<&'a Map<String, Json>>) {
    match value {
        Json::Array(items) => items.iter().for_each(|i| collect(i, path, out)),
        Json::Object(map) => match path.split_first() {
            None => out.push(map),
            Some((head, rest)) => {
                if let Some(next) = map.get(head) {
                    collect(next, rest, out);
                }
            }
        },
        _ => {}
    }
}

/// The same walk as [`collect`], mutably.
fn visit_mut(value: &mut Json, path: &[String], f: &mut impl FnMut(&mut Map<String, Json>)) {
    match value {
        Json::Array(items) => items.iter_mut().for_each(|i| visit_mut(i, path, f)),
        Json::Object(map) => match path.split_first() {
            None => f(map),
            Some((head, rest)) => {
                if let Some(next) = map.get_mut(head) {
                    visit_mut(next, rest, f);
                }
            }
        },
        _ => {}
    }
}

/// Copies the fields of `set` from `object`; None if one is missing.
fn pick(object: &Map<String, Json>, set: &FieldSet, into: &mut Map<String, Json>) -> Option<()> {
    for (name, sub) in &set.0 {
        let value = object.get(name)?;
        if sub.0.is_empty() {
            into.insert(name.clone(), value.clone());
        } else {
            let mut nested = Map::new();
            pick(value.as_object()?, sub, &mut nested)?;
            into.insert(name.clone(), Json::Object(nested));
        }
    }
    Some(())
}

/// Deep-merges `from` into `into`.
pub fn merge(into: &mut Json, from: Json) {
    match (into, from) {
        (Json::Object(a), Json::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => {
            for (x, y) in a.iter_mut().zip(b) {
                merge(x, y);
            }
        }
        (slot, v) => {
            if !v.is_null() || slot.is_null() {
                *slot = v;
            }
        }
    }
}

/// A prepared request for one fetch: the body, and for entity fetches which
/// representation each visited object maps to.
struct Prepared {
    /// Serialized once; cloning it for the request is a reference count.
    body: Bytes,
    slots: Option<Vec<Option<usize>>>,
}

fn prepare(fetch: &Fetch, data: &Json, variables: &Map<String, Json>) -> Option<Prepared> {
    let query = fetch_text(fetch);
    match &fetch.kind {
        FetchKind::Root { .. } => Some(Prepared { body: Bytes::from(json!({"query": query, "variables": variables}).to_string()), slots: None }),
        FetchKind::Entity { type_name, path, key, requires } => {
            let mut objects = Vec::new();
            collect(data, path, &mut objects);
            let mut reps: Vec<Json> = Vec::new();
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut slots = Vec::with_capacity(objects.len());
            for object in objects {
                // Only objects of the fetch's type (abstract fields hold several).
                if object.get("__typename").and_then(Json::as_str).is_some_and(|t| t != type_name) {
                    slots.push(None);
                    continue;
                }
                let mut rep = Map::new();
                rep.insert("__typename".into(), Json::String(type_name.clone()));
                if pick(object, key, &mut rep).is_none() || pick(object, requires, &mut rep).is_none() {
                    slots.push(None);
                    continue;
                }
                let rep = Json::Object(rep);
                let text = rep.to_string();
                let index = *seen.entry(text).or_insert_with(|| {
                    reps.push(rep);
                    reps.len() - 1
                });
                slots.push(Some(index));
            }
            if reps.is_empty() {
                return None;
            }
            Some(Prepared { body: Bytes::from(json!({"query": query, "variables": {"representations": reps}}).to_string()), slots: Some(slots) })
        }
    }
}

/// Runs the plan; returns the merged data and the errors met on the way.
pub async fn run(plan: &Plan, subgraphs: &Subgraphs, variables: &Map<String, Json>, headers: &[(String, String)]) -> (Json, Vec<Json>) {
    let mut data = Json::Object(Map::new());
    let mut errors = Vec::new();
    let mut done = vec![false; plan.fetches.len()];
    loop {
        let ready: Vec<&Fetch> = plan.fetches.iter().filter(|f| !done[f.id] && f.deps.iter().all(|d| done[*d])).collect();
        if ready.is_empty() {
            break;
        }
        let prepared: Vec<(&Fetch, Option<Prepared>)> = ready.iter().map(|f| (*f, prepare(f, &data, variables))).collect();
        let results = futures::future::join_all(prepared.iter().map(|(f, p)| async move {
            match p {
                Some(p) => {
                    // One span per subgraph fetch (debug level: free unless enabled),
                    // so a slow query shows which fetch and which subgraph it waited on.
                    let span = match &f.kind {
                        FetchKind::Root { operation } => tracing::debug_span!("fetch", subgraph = %subgraphs.name(&f.graph), fetch = f.id, kind = "root", operation = *operation),
                        FetchKind::Entity { type_name, .. } => tracing::debug_span!("fetch", subgraph = %subgraphs.name(&f.graph), fetch = f.id, kind = "entities", entity = %type_name),
                    };
                    Some(subgraphs.post(&f.graph, p.body.clone(), headers).instrument(span).await)
                }
                None => None,
            }
        }))
        .await;
        for ((fetch, prepared), result) in prepared.into_iter().zip(results) {
            done[fetch.id] = true;
            let (Some(prepared), Some(result)) = (prepared, result) else { continue };
            let service = subgraphs.name(&fetch.graph);
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(subgraph = %service, error = %e, "subgraph fetch failed");
                    errors.push(json!({"message": format!("subgraph {service} failed: {e}"), "extensions": {"code": "SUBREQUEST_HTTP_ERROR", "service": service}}));
                    continue;
                }
            };
            if let Some(Json::Array(list)) = response.get("errors") {
                for e in list {
                    let mut e = e.clone();
                    if let Some(obj) = e.as_object_mut() {
                        obj.remove("locations");
                        if matches!(fetch.kind, FetchKind::Entity { .. }) {
                            obj.remove("path");
                        }
                        obj.entry("extensions").or_insert_with(|| json!({})).as_object_mut().map(|x| x.insert("service".into(), Json::String(service.clone())));
                    }
                    errors.push(e);
                }
            }
            let Some(mut result_data) = response.get("data").cloned().filter(|d| !d.is_null()) else { continue };
            match (&fetch.kind, prepared.slots) {
                (FetchKind::Root { .. }, _) => merge(&mut data, result_data),
                (FetchKind::Entity { path, .. }, Some(slots)) => {
                    let Some(Json::Array(entities)) = result_data.get_mut("_entities").map(Json::take) else { continue };
                    // An entity shared by several objects is copied; the last use takes it.
                    let mut uses = vec![0usize; entities.len()];
                    for index in slots.iter().flatten() {
                        if let Some(u) = uses.get_mut(*index) {
                            *u += 1;
                        }
                    }
                    let mut entities: Vec<Option<Json>> = entities.into_iter().map(Some).collect();
                    let mut at = 0;
                    visit_mut(&mut data, path, &mut |object| {
                        if let Some(Some(index)) = slots.get(at) {
                            let entity = match (uses.get_mut(*index), entities.get_mut(*index)) {
                                (Some(u), Some(slot)) if *u <= 1 => slot.take(),
                                (Some(u), Some(slot)) => {
                                    *u -= 1;
                                    slot.clone()
                                }
                                _ => None,
                            };
                            if let Some(Json::Object(entity)) = entity {
                                for (k, v) in entity {
                                    match object.get_mut(&k) {
                                        Some(existing) => merge(existing, v),
                                        None => {
                                            object.insert(k, v);
                                        }
                                    }
                                }
                            }
                        }
                        at += 1;
                    });
                }
                _ => {}
            }
        }
    }
    (data, errors)
}
