//! One GraphQL request, from text to response, without HTTP:
//! validate → choose the operation → coerce variables → plan (cached) →
//! fetch → shape.

use crate::execute::{self, Subgraphs};
use crate::operation::{self, Field, Normaliser};
use crate::plan::{self, Plan};
use crate::shape::Shaper;
use crate::supergraph::Supergraph;
use apollo_compiler::executable::OperationType;
use apollo_compiler::response::serde_json_bytes;
use apollo_compiler::ExecutableDocument;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as GraphQL-over-HTTP carries it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphQLRequest {
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub operation_name: Option<String>,
    #[serde(default)]
    pub variables: Option<Map<String, Json>>,
    #[serde(default)]
    pub extensions: Option<Map<String, Json>>,
}

/// How a request ended, for the HTTP layer to pick a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Executed (data present, perhaps partial).
    Executed,
    /// The request could not be executed: bad document, validation, variables.
    RequestError,
    /// A mutation over GET.
    MethodNotAllowed,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub kind: Kind,
    pub body: Vec<u8>,
}

fn error_body(errors: Vec<Json>) -> Vec<u8> {
    json!({"errors": errors}).to_string().into_bytes()
}

struct Prepared {
    fields: Vec<Field>,
    plan: Plan,
    is_mutation: bool,
    root: String,
    /// Introspection fields answered by the gateway itself.
    introspection: Option<Json>,
}

/// Limits on what a single operation may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_depth: usize,
    pub max_aliases: usize,
    pub max_root_fields: usize,
    /// Each field costs 1, times the list sizes above it (assumed `list_size`).
    pub max_cost: u64,
    pub list_size: u64,
    pub introspection: bool,
    /// Checked by the token pre-pass, before parsing ([`crate::precheck`]).
    pub max_tokens: usize,
    /// Fields counted once per way fragment spreads reach them.
    pub max_expanded_selections: u64,
    /// Normalisation and planning of one operation stop after this long.
    pub planning_budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 20,
            max_aliases: 100,
            max_root_fields: 50,
            max_cost: 1_000_000,
            list_size: 10,
            introspection: true,
            max_tokens: 15_000,
            max_expanded_selections: 50_000,
            planning_budget: Duration::from_secs(1),
        }
    }
}

/// The error of a request refused by a limit.
fn limit_error(message: String) -> Json {
    json!({"message": message, "extensions": {"code": "OPERATION_LIMIT_EXCEEDED"}})
}

fn depth(fields: &[Field]) -> usize {
    fields
        .iter()
        .map(|f| 1 + depth(&f.children))
        .max()
        .unwrap_or(0)
}

fn aliases(fields: &[Field]) -> usize {
    fields
        .iter()
        .map(|f| usize::from(f.key != f.name) + aliases(&f.children))
        .sum()
}

fn cost(fields: &[Field], list_size: u64) -> u64 {
    fields
        .iter()
        .map(|f| {
            let multiplier = if f.ty.is_list() { list_size } else { 1 };
            1u64.saturating_add(multiplier.saturating_mul(cost(&f.children, list_size)))
        })
        .fold(0u64, u64::saturating_add)
}

pub struct Gateway {
    pub supergraph: Arc<Supergraph>,
    pub subgraphs: Subgraphs,
    pub limits: Limits,
    cache: Mutex<HashMap<u64, Arc<Prepared>>>,
}

const CACHE_ENTRIES: usize = 1024;

impl Gateway {
    pub fn new(supergraph: Arc<Supergraph>, subgraphs: Subgraphs, limits: Limits) -> Gateway {
        Gateway {
            supergraph,
            subgraphs,
            limits,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn prepare(
        &self,
        query: &str,
        operation_name: Option<&str>,
        variables: &Map<String, Json>,
    ) -> Result<Prepared, Vec<Json>> {
        let sg = &self.supergraph;
        let l = &self.limits;
        let refuse = |message: String| vec![limit_error(message)];
        let deadline = Instant::now() + l.planning_budget;
        let document = ExecutableDocument::parse_and_validate(&sg.schema, query, "request.graphql")
            .map_err(|e| {
                let all: Vec<Json> = e
                    .errors
                    .iter()
                    .map(|d| serde_json::to_value(d.to_json()).unwrap_or(Json::Null))
                    .collect();
                // apollo-compiler drops an unknown field and then also reports its
                // parent's selection as empty; graphql-js reports the unknown field only.
                let (empty_selection, rest): (Vec<Json>, Vec<Json>) =
                    all.into_iter().partition(|e| {
                        e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("must have a subselection set"))
                    });
                if rest.is_empty() {
                    empty_selection
                } else {
                    rest
                }
            })?;
        let op = operation::operation(&document, operation_name)
            .map_err(|e| vec![json!({"message": e.to_string()})])?;
        let raw_variables = serde_json_bytes::Value::from(Json::Object(variables.clone()));
        let empty = serde_json_bytes::Map::new();
        let coerced = apollo_compiler::request::coerce_variable_values(
            &sg.schema,
            op,
            raw_variables.as_object().unwrap_or(&empty),
        )
        .map_err(|e| {
            vec![serde_json::to_value(e.to_graphql_error(&document.sources)).unwrap_or(Json::Null)]
        })?;
        let coerced_json: Map<String, Json> = serde_json::to_value(&*coerced)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let root = op.object_type().to_string();
        let mut fields = Vec::new();
        Normaliser {
            schema: &sg.schema,
            document: &document,
            variables: &coerced_json,
        }
        .fields(&op.selection_set, &root, None, &mut fields);
        // Limits, refused before anything is fetched.
        if depth(&fields) > l.max_depth {
            return Err(refuse(format!(
                "the operation is {} levels deep; the limit is {}",
                depth(&fields),
                l.max_depth
            )));
        }
        if aliases(&fields) > l.max_aliases {
            return Err(refuse(format!(
                "the operation uses {} aliases; the limit is {}",
                aliases(&fields),
                l.max_aliases
            )));
        }
        if fields.len() > l.max_root_fields {
            return Err(refuse(format!(
                "the operation selects {} root fields; the limit is {}",
                fields.len(),
                l.max_root_fields
            )));
        }
        let c = cost(&fields, l.list_size);
        if c > l.max_cost {
            return Err(refuse(format!(
                "the operation's estimated cost is {c}; the limit is {}",
                l.max_cost
            )));
        }
        let wants_introspection = fields
            .iter()
            .any(|f| f.name == "__schema" || f.name == "__type");
        let introspection = if wants_introspection {
            if !l.introspection {
                return Err(vec![
                    json!({"message": "introspection is disabled on this gateway", "extensions": {"code": "INTROSPECTION_DISABLED"}}),
                ]);
            }
            let response = apollo_compiler::introspection::partial_execute(
                &sg.schema,
                &sg.schema.implementers_map(),
                &document,
                op,
                &coerced,
            )
            .map_err(|e| {
                vec![serde_json::to_value(e.to_graphql_error(&document.sources))
                    .unwrap_or(Json::Null)]
            })?;
            Some(serde_json::to_value(response.data).unwrap_or(Json::Null))
        } else {
            None
        };
        let is_mutation = op.operation_type == OperationType::Mutation;
        let kind = if is_mutation {
            "mutation"
        } else if op.operation_type == OperationType::Subscription {
            return Err(vec![
                json!({"message": "subscriptions are not supported by this gateway"}),
            ]);
        } else {
            "query"
        };
        let plan = plan::plan(sg, &root, kind, &fields, deadline).map_err(|e| match e {
            plan::PlanError::Budget => refuse(e.to_string()),
            _ => vec![
                json!({"message": e.to_string(), "extensions": {"code": "QUERY_PLANNING_FAILED"}}),
            ],
        })?;
        Ok(Prepared {
            fields,
            plan,
            is_mutation,
            root,
            introspection,
        })
    }

    fn cached(&self, request: &GraphQLRequest, query: &str) -> Result<Arc<Prepared>, Vec<Json>> {
        let variables = request.variables.clone().unwrap_or_default();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(query.as_bytes());
        h.update(&[0]);
        h.update(request.operation_name.as_deref().unwrap_or("").as_bytes());
        h.update(&[0]);
        h.update(Json::Object(variables.clone()).to_string().as_bytes());
        let key = h.digest();
        if let Some(p) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(p);
        }
        // The cheap pass first: an abusive document is refused after one
        // scan of its text, before the parser or validation sees it.
        let l = &self.limits;
        crate::precheck::check(
            query,
            &crate::precheck::TokenLimits {
                max_tokens: l.max_tokens,
                max_aliases: l.max_aliases,
                max_depth: l.max_depth,
                max_expanded_selections: l.max_expanded_selections,
            },
        )
        .map_err(|e| vec![limit_error(e.0)])?;
        let prepare = || self.prepare(query, request.operation_name.as_deref(), &variables);
        // Validation and planning of a new operation may take a while; on
        // the multi-threaded runtime the other requests queued on this
        // worker move to another thread meanwhile, so cached (normal)
        // queries are not held up behind it.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let prepared = Arc::new(if multi_thread {
            tokio::task::block_in_place(prepare)?
        } else {
            prepare()?
        });
        tracing::debug!(plan = %prepared.plan.describe(), "planned");
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert(key, Arc::clone(&prepared));
        }
        Ok(prepared)
    }

    /// Executes one request. `via_get`: mutations are refused.
    pub async fn execute(
        &self,
        request: &GraphQLRequest,
        query: &str,
        via_get: bool,
        headers: &[(String, String)],
    ) -> Response {
        let prepared = match self.cached(request, query) {
            Ok(p) => p,
            Err(errors) => {
                return Response {
                    kind: Kind::RequestError,
                    body: error_body(errors),
                }
            }
        };
        if via_get && prepared.is_mutation {
            return Response {
                kind: Kind::MethodNotAllowed,
                body: error_body(vec![
                    json!({"message": "mutations are not allowed over GET; use POST"}),
                ]),
            };
        }
        let variables = request.variables.clone().unwrap_or_default();
        let (mut data, mut errors) = execute::run(
            &prepared.plan,
            &self.subgraphs,
            &variables,
            headers,
            prepared.is_mutation,
        )
        .await;
        if let Some(Json::Object(intro)) = &prepared.introspection {
            for (k, v) in intro {
                if let Some(obj) = data.as_object_mut() {
                    obj.insert(k.as_str().into(), v.clone().into());
                }
            }
        }
        let mut shaper = Shaper::new(&self.supergraph.schema);
        let mut shaped = Vec::with_capacity(64 * 1024);
        shaper.root(&mut shaped, &prepared.fields, &data, &prepared.root);
        errors.extend(shaper.errors);
        // Dropping the merged tree is not free; it happens while the answer is
        // assembled rather than after, which changes nothing but is explicit.
        drop(data);
        let mut body = Vec::with_capacity(shaped.len() + 64);
        body.push(b'{');
        if !errors.is_empty() {
            body.extend_from_slice(b"\"errors\":");
            body.extend_from_slice(Json::Array(errors).to_string().as_bytes());
            body.push(b',');
        }
        body.extend_from_slice(b"\"data\":");
        body.extend_from_slice(&shaped);
        body.push(b'}');
        Response {
            kind: Kind::Executed,
            body,
        }
    }
}
