//! Runs a plan: fetches whose dependencies are done run in parallel, one HTTP
//! request per fetch. Entity representations are collected from the data
//! gathered so far, deduplicated, and sent in one `_entities` call per fetch.
//! The answers are merged back into the objects they came from.
//!
//! Identical subgraph requests of queries that are in flight at the same time
//! (same subgraph, same body, same forwarded headers) are sent once and their
//! answer shared, as Apollo Router's `deduplicate_query` and Hive Router's
//! `dedupe_enabled` do; mutations are never shared.

use crate::plan::{entity_fragment, root_text, Fetch, FetchKind, Plan, SubField};
use crate::supergraph::FieldSet;
use crate::value::{write_json, write_str, Object, Value};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Largest subgraph response read.
const MAX_SUBGRAPH_RESPONSE: usize = 64 * 1024 * 1024;

/// Called with (subgraph name, seconds, succeeded) after each fetch.
pub type FetchObserver = Arc<dyn Fn(&str, f64, bool) + Send + Sync>;

/// Called with the subgraph name when a request shared an identical one in flight.
pub type SharedObserver = Arc<dyn Fn(&str) + Send + Sync>;

/// What makes two subgraph requests the same: everything that is sent.
#[derive(PartialEq, Eq, Hash)]
struct InflightKey {
    graph: String,
    body: Bytes,
    headers: Vec<(String, String)>,
}

type SharedAnswer = Shared<BoxFuture<'static, Result<Arc<Value>, Arc<str>>>>;
type Inflight = Arc<Mutex<HashMap<Arc<InflightKey>, SharedAnswer>>>;

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
    /// Whether identical in-flight query requests are shared (default on).
    pub dedupe: bool,
    /// Per subgraph name, overrides `dedupe`.
    pub dedupe_by_subgraph: HashMap<String, bool>,
    /// Called when a request was answered by an identical one in flight.
    pub observe_shared: Option<SharedObserver>,
    inflight: Inflight,
}

impl Subgraphs {
    pub fn new(
        endpoints: BTreeMap<String, (String, hyper::Uri)>,
        default_timeout: Duration,
        timeouts: HashMap<String, Duration>,
    ) -> Subgraphs {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Subgraphs {
            client,
            endpoints,
            timeouts,
            default_timeout,
            observe: None,
            dedupe: true,
            dedupe_by_subgraph: HashMap::new(),
            observe_shared: None,
            inflight: Inflight::default(),
        }
    }

    /// Sends one request of a query, sharing an identical request already in
    /// flight (when sharing is on for that subgraph). The request runs as its
    /// own task, so a caller that goes away neither cancels it for the others
    /// nor leaves a stalled entry behind; the entry is removed when it ends.
    async fn post_query(
        &self,
        graph: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<Value, String> {
        let outgoing = self.outgoing(graph)?;
        let shareable = self
            .dedupe_by_subgraph
            .get(&outgoing.name)
            .copied()
            .unwrap_or(self.dedupe);
        if !shareable {
            return outgoing.send(body, headers).await;
        }
        let name = outgoing.name.clone();
        let key = Arc::new(InflightKey {
            graph: graph.to_string(),
            body,
            headers: headers.to_vec(),
        });
        let (answer, leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some(answer) => (answer.clone(), false),
                None => {
                    let task_key = Arc::clone(&key);
                    let registry = Arc::clone(&self.inflight);
                    let task = tokio::spawn(
                        async move {
                            let result = outgoing
                                .send(task_key.body.clone(), &task_key.headers)
                                .await;
                            // Later identical requests start their own fetch.
                            registry
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&task_key);
                            result.map(Arc::new).map_err(Arc::from)
                        }
                        .in_current_span(),
                    );
                    let answer = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::from(format!("subgraph fetch task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, answer.clone());
                    (answer, true)
                }
            }
        };
        if !leader {
            if let Some(observe) = &self.observe_shared {
                observe(&name);
            }
        }
        match answer.await {
            Ok(value) => Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| (*shared).clone())),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn post(
        &self,
        graph: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<Value, String> {
        self.outgoing(graph)?.send(body, headers).await
    }

    /// What sending a request to `graph` needs, owned (a shared request
    /// runs as its own task).
    fn outgoing(&self, graph: &str) -> Result<Outgoing, String> {
        let (name, uri) = self
            .endpoints
            .get(graph)
            .ok_or_else(|| format!("no URL for subgraph {graph}"))?;
        Ok(Outgoing {
            client: self.client.clone(),
            name: name.clone(),
            uri: uri.clone(),
            timeout: self
                .timeouts
                .get(name)
                .copied()
                .unwrap_or(self.default_timeout),
            observe: self.observe.clone(),
        })
    }

    fn name(&self, graph: &str) -> String {
        self.endpoints
            .get(graph)
            .map_or_else(|| graph.to_string(), |(n, _)| n.clone())
    }
}

/// One subgraph request's destination and how it is sent.
struct Outgoing {
    client: Client<HttpConnector, Full<Bytes>>,
    name: String,
    uri: hyper::Uri,
    timeout: Duration,
    observe: Option<FetchObserver>,
}

impl Outgoing {
    async fn send(self, body: Bytes, headers: &[(String, String)]) -> Result<Value, String> {
        let mut req = hyper::Request::post(self.uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::ACCEPT,
                "application/graphql-response+json, application/json",
            );
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let timeout = self.timeout;
        let result = async {
            let resp = tokio::time::timeout(timeout, self.client.request(req))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_SUBGRAPH_RESPONSE)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let parsed: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("HTTP {status}, body is not JSON: {e}"))?;
            if !status.is_success() && parsed.get("data").is_none() {
                return Err(format!("HTTP {status}"));
            }
            Ok(parsed)
        }
        .await;
        if let Some(observe) = &self.observe {
            observe(&self.name, started.elapsed().as_secs_f64(), result.is_ok());
        }
        result
    }
}

/// Objects at `path` (arrays walked, nulls skipped), in a fixed order.
fn collect<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Object>) {
    match value {
        Value::Array(items) => items.iter().for_each(|i| collect(i, path, out)),
        Value::Object(map) => match path.split_first() {
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
fn visit_mut(value: &mut Value, path: &[String], f: &mut impl FnMut(&mut Object)) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|i| visit_mut(i, path, f)),
        Value::Object(map) => match path.split_first() {
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

/// Writes the fields of `set` from `object` as JSON object members (each
/// preceded by a comma); false if one is missing. `skip`: top-level names
/// already written. An inline fragment's fields are written when the
/// object's `__typename` is its type; nested objects whose set has inline
/// fragments carry their `__typename`, so the subgraph can tell them apart.
fn write_fields(
    object: &Object,
    set: &FieldSet,
    skip: &[(String, FieldSet)],
    out: &mut Vec<u8>,
) -> bool {
    for (name, sub) in &set.0 {
        if skip.iter().any(|(n, _)| n == name) {
            continue;
        }
        if let Some(type_name) = FieldSet::condition(name) {
            let applies = object.get("__typename").and_then(Value::as_str) == Some(type_name);
            if applies && !write_fields(object, sub, &[], out) {
                return false;
            }
            continue;
        }
        // A field with arguments was asked under an alias of its own; the
        // subgraph reads it under the field's name.
        let Some(value) = object.get(FieldSet::response_key(name).as_ref()) else {
            return false;
        };
        out.push(b',');
        write_str(out, FieldSet::field_name(name));
        out.push(b':');
        if sub.0.is_empty() {
            write_json(out, value);
        } else {
            match value {
                Value::Object(nested) => {
                    if !write_object(nested, sub, out) {
                        return false;
                    }
                }
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        match item {
                            Value::Object(nested) => {
                                if !write_object(nested, sub, out) {
                                    return false;
                                }
                            }
                            other => write_json(out, other),
                        }
                    }
                    out.push(b']');
                }
                // A null object is sent as null: the subgraph decides.
                other => write_json(out, other),
            }
        }
    }
    true
}

/// Writes `{…}` with the fields of `set` from `object`; false if one is missing.
fn write_object(object: &Object, set: &FieldSet, out: &mut Vec<u8>) -> bool {
    let at = out.len();
    if set.has_conditions() {
        if let Some(t) = object.get("__typename") {
            out.extend_from_slice(b",\"__typename\":");
            write_json(out, t);
        }
    }
    if !write_fields(object, set, &[], out) {
        return false;
    }
    // The members were written with a leading comma each; the first one
    // opens the object instead.
    if out.len() == at {
        out.extend_from_slice(b"{}");
    } else {
        out[at] = b'{';
        out.push(b'}');
    }
    true
}

/// The representation of `object` for an entity fetch of `type_name`:
/// `__typename`, the key fields, then the required ones. None if the object is
/// of another type (abstract fields hold several) or lacks a field.
fn representation(
    object: &Object,
    type_name: &str,
    accepts: &[String],
    key: &FieldSet,
    requires: &FieldSet,
    out: &mut Vec<u8>,
) -> Option<()> {
    if object
        .get("__typename")
        .and_then(Value::as_str)
        .is_some_and(|t| t != type_name && !accepts.iter().any(|a| a == t))
    {
        return None;
    }
    // A field both sets select with other sub-selections (`author { id }`
    // in the key, `author { name }` required) is written once, with both.
    static NOTHING: FieldSet = FieldSet(Vec::new());
    let merged;
    let (key, requires) = if requires
        .0
        .iter()
        .any(|(n, s)| key.0.iter().any(|(k, ks)| k == n && ks != s))
    {
        merged = {
            let mut both = key.clone();
            both.merge(requires);
            both
        };
        (&merged, &NOTHING)
    } else {
        (key, requires)
    };
    out.clear();
    out.extend_from_slice(b"{\"__typename\":");
    write_str(out, type_name);
    (write_fields(object, key, &[], out) && write_fields(object, requires, &key.0, out))
        .then_some(())?;
    out.push(b'}');
    Some(())
}

/// Moves the values of fields the planner aliased for a subgraph back under
/// the keys the client's response uses.
fn restore_aliases(value: &mut Value, selection: &[SubField]) {
    match value {
        Value::Array(items) => {
            for item in items {
                restore_aliases(item, selection);
            }
        }
        Value::Object(object) => {
            for f in selection {
                if !f.children.is_empty() {
                    if let Some(v) = object.get_mut(&f.key) {
                        restore_aliases(v, &f.children);
                    }
                }
                let Some(response_key) = &f.response_key else {
                    continue;
                };
                if let Some(v) = object.remove(&f.key) {
                    match object.get_mut(response_key) {
                        Some(existing) => merge(existing, v),
                        None => object.insert(response_key.into(), v),
                    }
                }
            }
        }
        _ => {}
    }
}

/// Deep-merges `from` into `into`.
pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
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

/// One `_entities` field of a batched request. Entity fetches of one wave to
/// one subgraph that select the same fragment share it, so a representation
/// wanted at several paths is sent once.
struct EntityPart<'p> {
    fragment: String,
    /// What the fragment selects (the same for every fetch sharing it),
    /// and whether the planner aliased a field in it.
    selection: &'p [SubField],
    aliased: bool,
    /// Representations, deduplicated, as JSON texts.
    representations: Vec<Vec<u8>>,
    seen: HashMap<Vec<u8>, usize>,
    /// (path, for each object met at the path: its representation).
    users: Vec<(Vec<String>, Vec<Option<usize>>)>,
}

/// One HTTP request to one subgraph: a root fetch, or the entity fetches of
/// one wave that go to the same subgraph.
struct SubgraphRequest<'p> {
    graph: &'p str,
    body: Bytes,
    fetches: Vec<usize>,
    /// Empty for a root fetch.
    parts: Vec<EntityPart<'p>>,
    kind: &'static str,
}

/// Builds the requests of one wave of ready fetches: roots one each, entity
/// fetches batched per subgraph. Fetches with no representation to send are
/// left out (there is nothing to fetch for them).
fn wave_requests<'p>(
    ready: &[&'p Fetch],
    data: &Value,
    variables: &Map<String, Json>,
) -> Vec<SubgraphRequest<'p>> {
    let mut requests: Vec<SubgraphRequest<'p>> = Vec::new();
    let mut scratch = Vec::with_capacity(128);
    for fetch in ready {
        match &fetch.kind {
            FetchKind::Root { operation } => {
                let body = json!({"query": root_text(operation, &fetch.selection), "variables": variables}).to_string();
                requests.push(SubgraphRequest {
                    graph: &fetch.graph,
                    body: Bytes::from(body),
                    fetches: vec![fetch.id],
                    parts: Vec::new(),
                    kind: "root",
                });
            }
            FetchKind::Entity {
                type_name,
                path,
                key,
                requires,
                accepts,
            } => {
                let mut objects = Vec::new();
                collect(data, path, &mut objects);
                let fragment = entity_fragment(type_name, &fetch.selection);
                let at = match requests
                    .iter()
                    .position(|r| r.kind == "entities" && r.graph == fetch.graph)
                {
                    Some(at) => at,
                    None => {
                        requests.push(SubgraphRequest {
                            graph: &fetch.graph,
                            body: Bytes::new(),
                            fetches: Vec::new(),
                            parts: Vec::new(),
                            kind: "entities",
                        });
                        requests.len() - 1
                    }
                };
                let request = &mut requests[at];
                let part = match request.parts.iter().position(|p| p.fragment == fragment) {
                    Some(p) => p,
                    None => {
                        request.parts.push(EntityPart {
                            fragment,
                            selection: &fetch.selection,
                            aliased: fetch.aliased,
                            representations: Vec::new(),
                            seen: HashMap::new(),
                            users: Vec::new(),
                        });
                        request.parts.len() - 1
                    }
                };
                let part = &mut request.parts[part];
                let mut slots = Vec::with_capacity(objects.len());
                for object in objects {
                    if representation(object, type_name, accepts, key, requires, &mut scratch)
                        .is_none()
                    {
                        slots.push(None);
                        continue;
                    }
                    let index = match part.seen.get(scratch.as_slice()) {
                        Some(i) => *i,
                        None => {
                            part.representations.push(scratch.clone());
                            part.seen
                                .insert(scratch.clone(), part.representations.len() - 1);
                            part.representations.len() - 1
                        }
                    };
                    slots.push(Some(index));
                }
                if slots.iter().any(Option::is_some) {
                    part.users.push((path.clone(), slots));
                    request.fetches.push(fetch.id);
                }
            }
        }
    }
    requests.retain_mut(|r| {
        if r.kind == "root" {
            return true;
        }
        r.parts.retain(|p| !p.users.is_empty());
        if r.parts.is_empty() {
            return false;
        }
        r.body = Bytes::from(entities_body(&r.parts));
        true
    });
    requests
}

/// `{"query": "query($r0:[_Any!]!,…){r0:_entities(representations:$r0){… on T{…}} …}", "variables": {"r0": […], …}}`
fn entities_body(parts: &[EntityPart]) -> Vec<u8> {
    let mut query = String::from("query(");
    for i in 0..parts.len() {
        if i > 0 {
            query.push(',');
        }
        query.push_str(&format!("$r{i}:[_Any!]!"));
    }
    query.push_str("){");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            query.push(' ');
        }
        query.push_str(&format!("r{i}:_entities(representations:$r{i}){{"));
        query.push_str(&part.fragment);
        query.push('}');
    }
    query.push('}');
    let size: usize = parts
        .iter()
        .flat_map(|p| p.representations.iter())
        .map(|r| r.len() + 1)
        .sum();
    let mut body = Vec::with_capacity(query.len() + size + 64);
    body.extend_from_slice(b"{\"query\":");
    // A String always serializes.
    let _ = serde_json::to_writer(&mut body, &query);
    body.extend_from_slice(b",\"variables\":{");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("\"r{i}\":[").as_bytes());
        for (j, rep) in part.representations.iter().enumerate() {
            if j > 0 {
                body.push(b',');
            }
            body.extend_from_slice(rep);
        }
        body.push(b']');
    }
    body.extend_from_slice(b"}}");
    body
}

/// Puts the entities of one part back into the objects they were asked for.
/// An entity wanted by several objects is copied; its last use takes it.
fn place_entities(data: &mut Value, part: &EntityPart, entities: Vec<Value>) {
    let mut uses = vec![0usize; entities.len()];
    for (_, slots) in &part.users {
        for index in slots.iter().flatten() {
            if let Some(u) = uses.get_mut(*index) {
                *u += 1;
            }
        }
    }
    let mut entities: Vec<Option<Value>> = entities.into_iter().map(Some).collect();
    for (path, slots) in &part.users {
        let mut at = 0;
        visit_mut(data, path, &mut |object| {
            if let Some(Some(index)) = slots.get(at) {
                let entity = match (uses.get_mut(*index), entities.get_mut(*index)) {
                    (Some(u), Some(slot)) if *u <= 1 => slot.take(),
                    (Some(u), Some(slot)) => {
                        *u -= 1;
                        slot.clone()
                    }
                    _ => None,
                };
                if let Some(Value::Object(entity)) = entity {
                    object.reserve(entity.len());
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
}

/// Runs the plan; returns the merged data and the errors met on the way.
///
/// The plan runs in waves: every fetch whose dependencies are done runs in the
/// next one. Within a wave, the entity fetches to one subgraph go out as one
/// request, so each subgraph is called at most once per wave for entities.
pub async fn run(
    plan: &Plan,
    subgraphs: &Subgraphs,
    variables: &Map<String, Json>,
    headers: &[(String, String)],
    is_mutation: bool,
) -> (Value, Vec<Json>) {
    let mut data = Value::Object(Object::new());
    let mut errors = Vec::new();
    let mut done = vec![false; plan.fetches.len()];
    loop {
        let ready: Vec<&Fetch> = plan
            .fetches
            .iter()
            .filter(|f| !done[f.id] && f.deps.iter().all(|d| done[*d]))
            .collect();
        if ready.is_empty() {
            break;
        }
        for f in &ready {
            done[f.id] = true;
        }
        let requests = wave_requests(&ready, &data, variables);
        let results = futures::future::join_all(requests.iter().map(|r| {
            // One span per subgraph request (debug level: free unless enabled),
            // so a slow query shows which fetches and which subgraph it waited on.
            let span = tracing::debug_span!("fetch", subgraph = %subgraphs.name(r.graph), fetch = ?r.fetches, kind = r.kind);
            let body = r.body.clone();
            async move {
                if is_mutation {
                    subgraphs.post(r.graph, body, headers).await
                } else {
                    subgraphs.post_query(r.graph, body, headers).await
                }
            }
            .instrument(span)
        }))
        .await;
        for (request, result) in requests.into_iter().zip(results) {
            let service = subgraphs.name(request.graph);
            let mut response = match result {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(subgraph = %service, error = %e, "subgraph fetch failed");
                    errors.push(json!({"message": format!("subgraph {service} failed: {e}"), "extensions": {"code": "SUBREQUEST_HTTP_ERROR", "service": service}}));
                    continue;
                }
            };
            let Some(response) = response.as_object_mut() else {
                continue;
            };
            if let Some(Value::Array(list)) = response.remove("errors") {
                for e in list {
                    let mut e = Json::from(e);
                    if let Some(obj) = e.as_object_mut() {
                        obj.remove("locations");
                        // Paths inside `_entities` are not the client's paths.
                        if request.kind == "entities" {
                            obj.remove("path");
                        }
                        obj.entry("extensions")
                            .or_insert_with(|| json!({}))
                            .as_object_mut()
                            .map(|x| x.insert("service".into(), Json::String(service.clone())));
                    }
                    errors.push(e);
                }
            }
            let Some(mut result_data) = response.remove("data").filter(|d| !d.is_null()) else {
                continue;
            };
            if request.kind == "root" {
                if let Some(fetch) = request.fetches.first().and_then(|id| plan.fetches.get(*id)) {
                    if fetch.aliased {
                        restore_aliases(&mut result_data, &fetch.selection);
                    }
                }
                merge(&mut data, result_data);
                continue;
            }
            for (i, part) in request.parts.iter().enumerate() {
                if let Some(Value::Array(mut entities)) = result_data
                    .as_object_mut()
                    .and_then(|o| o.remove(&format!("r{i}")))
                {
                    if part.aliased {
                        for entity in &mut entities {
                            restore_aliases(entity, part.selection);
                        }
                    }
                    place_entities(&mut data, part, entities);
                }
            }
        }
    }
    (data, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SubField;

    fn field(name: &str) -> SubField {
        SubField {
            key: name.into(),
            name: name.into(),
            args: Vec::new(),
            condition: None,
            children: Vec::new(),
            response_key: None,
        }
    }

    fn entity_fetch(id: usize, graph: &str, path: &[&str], selection: &[&str]) -> Fetch {
        Fetch {
            id,
            graph: graph.into(),
            kind: FetchKind::Entity {
                type_name: "Product".into(),
                path: path.iter().map(|p| p.to_string()).collect(),
                key: FieldSet::parse("upc").expect("key"),
                requires: FieldSet::default(),
                accepts: Vec::new(),
            },
            selection: selection.iter().map(|s| field(s)).collect(),
            deps: Vec::new(),
            aliased: false,
        }
    }

    #[test]
    fn a_wave_sends_one_request_per_subgraph_and_one_representation_per_entity() {
        let data = Value::from(
            json!({"top": [{"upc": "1"}, {"upc": "2"}, {"upc": "1"}], "other": {"upc": "2"}, "more": [{"upc": "3"}, {"name": "no key"}]}),
        );
        let fetches = [
            entity_fetch(0, "INVENTORY", &["top"], &["inStock"]),
            entity_fetch(1, "INVENTORY", &["other"], &["inStock"]),
            entity_fetch(2, "INVENTORY", &["more"], &["weight"]),
            entity_fetch(3, "REVIEWS", &["top"], &["id"]),
        ];
        let ready: Vec<&Fetch> = fetches.iter().collect();
        let requests = wave_requests(&ready, &data, &Map::new());
        assert_eq!(requests.len(), 2, "one request per subgraph");
        let inventory = &requests[0];
        assert_eq!(
            (inventory.graph, inventory.fetches.clone()),
            ("INVENTORY", vec![0, 1, 2])
        );
        let body: Json = serde_json::from_slice(&inventory.body).expect("the body is JSON");
        assert_eq!(body["query"], "query($r0:[_Any!]!,$r1:[_Any!]!){r0:_entities(representations:$r0){... on Product{inStock}} r1:_entities(representations:$r1){... on Product{weight}}}");
        // The same fragment at two paths shares one deduplicated list.
        assert_eq!(
            body["variables"]["r0"],
            json!([{"__typename": "Product", "upc": "1"}, {"__typename": "Product", "upc": "2"}])
        );
        assert_eq!(
            inventory.parts[0].users[0].1,
            vec![Some(0), Some(1), Some(0)]
        );
        assert_eq!(inventory.parts[0].users[1].1, vec![Some(1)]);
        // An object without its key gets no representation.
        assert_eq!(
            body["variables"]["r1"],
            json!([{"__typename": "Product", "upc": "3"}])
        );
        assert_eq!(inventory.parts[1].users[0].1, vec![Some(0), None]);

        // Answers go back where they were asked for, shared ones copied.
        let mut merged = data.clone();
        place_entities(
            &mut merged,
            &inventory.parts[0],
            vec![
                json!({"inStock": true}).into(),
                json!({"inStock": false}).into(),
            ],
        );
        place_entities(
            &mut merged,
            &inventory.parts[1],
            vec![json!({"weight": 9}).into()],
        );
        let merged = Json::from(merged);
        assert_eq!(
            merged["top"],
            json!([{"upc": "1", "inStock": true}, {"upc": "2", "inStock": false}, {"upc": "1", "inStock": true}])
        );
        assert_eq!(merged["other"], json!({"upc": "2", "inStock": false}));
        assert_eq!(
            merged["more"],
            json!([{"upc": "3", "weight": 9}, {"name": "no key"}])
        );
    }

    #[test]
    fn representations_carry_nested_keys_and_required_fields() {
        let object = Value::from(
            json!({"__typename": "Product", "id": {"sku": "a", "region": "eu"}, "price": 3, "name": "x"}),
        );
        let set = |text: &str| FieldSet::parse(text).expect("field set");
        // The representation written, None if there is none.
        let written = |object: &Value, type_name: &str, key: &FieldSet, requires: &FieldSet| {
            let mut out = Vec::new();
            representation(
                object.as_object().expect("object"),
                type_name,
                &[],
                key,
                requires,
                &mut out,
            )
            .map(|()| serde_json::from_slice::<Json>(&out).expect("JSON"))
        };
        let (key, requires) = (set("id { sku region }"), set("price"));
        assert_eq!(
            written(&object, "Product", &key, &requires),
            Some(json!({"__typename": "Product", "id": {"sku": "a", "region": "eu"}, "price": 3}))
        );
        assert_eq!(
            written(&object, "Book", &key, &requires),
            None,
            "another type"
        );
        assert_eq!(
            written(&object, "Product", &key, &set("weight")),
            None,
            "a missing field"
        );
        // One field in both sets, with other sub-selections: written once, whole.
        let post = Value::from(
            json!({"__typename": "Post", "id": "p", "author": {"id": "a", "name": "Ann", "age": 3}}),
        );
        assert_eq!(
            written(
                &post,
                "Post",
                &set("id author { id }"),
                &set("author { name }")
            ),
            Some(json!({"__typename": "Post", "id": "p", "author": {"id": "a", "name": "Ann"}}))
        );
    }
}
