//! GraphQL over HTTP (the GraphQL-over-HTTP spec):
//! * `POST /graphql` with `application/json`, or `GET /graphql?query=…`;
//! * the response type is negotiated between `application/graphql-response+json`
//!   and `application/json`, which decides the status code of a request
//!   error (400 for the former, 200 for the latter);
//! * mutations over GET get 405;
//! * automatic persisted queries (`extensions.persistedQuery.sha256Hash`);
//! * CORS for configured origins;
//! * headers named in the configuration are passed on to subgraphs.

use crate::gateway::{GraphQLRequest, Kind};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub max_request_bytes: usize,
    pub cors_origins: Vec<String>,
    pub propagate_headers: Vec<String>,
}

/// The gateway behind a swappable pointer: a reload replaces it whole, and
/// requests in flight finish on the one they started with.
pub struct Server {
    pub gateway: RwLock<Arc<crate::gateway::Gateway>>,
    pub settings: HttpSettings,
    pub metrics: Arc<Metrics>,
    /// Automatic persisted queries: sha256 hex → query text.
    apq: Mutex<HashMap<String, String>>,
}

const APQ_ENTRIES: usize = 10_000;

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn errors(message: &str) -> String {
    json!({"errors": [{"message": message}]}).to_string()
}

/// Which media type the client accepts, preferring the GraphQL one.
fn negotiate(accept: Option<&str>) -> Option<&'static str> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some("application/json");
    };
    let types: Vec<String> = accept
        .split(',')
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    if types.iter().any(|t| t == GRAPHQL_RESPONSE) {
        Some(GRAPHQL_RESPONSE)
    } else if types
        .iter()
        .any(|t| t == "application/json" || t == "application/*" || t == "*/*")
    {
        Some("application/json")
    } else {
        None
    }
}

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Server {
    pub fn new(
        gateway: crate::gateway::Gateway,
        settings: HttpSettings,
        metrics: Arc<Metrics>,
    ) -> Server {
        Server {
            gateway: RwLock::new(Arc::new(gateway)),
            settings,
            metrics,
            apq: Mutex::new(HashMap::new()),
        }
    }

    pub fn replace(&self, gateway: crate::gateway::Gateway) {
        if let Ok(mut g) = self.gateway.write() {
            *g = Arc::new(gateway);
        }
    }

    fn current(&self) -> Option<Arc<crate::gateway::Gateway>> {
        self.gateway.read().ok().map(|g| Arc::clone(&g))
    }

    fn cors(&self, origin: Option<&str>, response: &mut Response<Full<Bytes>>) {
        let Some(origin) = origin else { return };
        if self
            .settings
            .cors_origins
            .iter()
            .any(|o| o == "*" || o == origin)
        {
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(origin) {
                h.insert("access-control-allow-origin", v);
            }
            h.insert("vary", HeaderValue::from_static("origin"));
            h.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                "access-control-allow-headers",
                HeaderValue::from_static("content-type, authorization, apollographql-client-name"),
            );
        }
    }

    /// Resolves the query text, with automatic persisted queries.
    fn query_text(&self, request: &GraphQLRequest) -> Result<String, String> {
        let hash = request
            .extensions
            .as_ref()
            .and_then(|e| e.get("persistedQuery"))
            .and_then(|p| p.get("sha256Hash"))
            .and_then(Json::as_str)
            .map(str::to_ascii_lowercase);
        match (&request.query, hash) {
            (Some(q), None) => Ok(q.clone()),
            (Some(q), Some(h)) => {
                if sha256_hex(q) != h {
                    return Err(json!({"errors": [{"message": "provided sha does not match query", "extensions": {"code": "PERSISTED_QUERY_HASH_MISMATCH"}}]}).to_string());
                }
                if let Ok(mut apq) = self.apq.lock() {
                    if apq.len() >= APQ_ENTRIES {
                        apq.clear();
                    }
                    apq.insert(h, q.clone());
                }
                Ok(q.clone())
            }
            (None, Some(h)) => self.apq.lock().ok().and_then(|a| a.get(&h).cloned()).ok_or_else(|| {
                json!({"errors": [{"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]}).to_string()
            }),
            (None, None) => Err(errors("the request has no query (send {\"query\": \"...\"})")),
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let origin = req
            .headers()
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut response = self.route(req).await;
        self.cors(origin.as_deref(), &mut response);
        self.metrics
            .observe_request(response.status().as_u16(), started.elapsed().as_secs_f64());
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => return reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/metrics") => {
                return reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.encode(),
                )
            }
            (&Method::OPTIONS, "/graphql") => {
                return reply(StatusCode::NO_CONTENT, "text/plain", String::new())
            }
            (&Method::GET | &Method::POST, "/graphql") => {}
            (_, "/graphql") => {
                let mut r = reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "application/json",
                    errors("use GET or POST"),
                );
                r.headers_mut()
                    .insert("allow", HeaderValue::from_static("GET, POST, OPTIONS"));
                return r;
            }
            _ => {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "GraphQL is served at /graphql\n",
                )
            }
        }
        let Some(media) = negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok())) else {
            return reply(
                StatusCode::NOT_ACCEPTABLE,
                "application/json",
                errors("accept application/graphql-response+json or application/json"),
            );
        };
        let via_get = req.method() == Method::GET;
        let headers: Vec<(String, String)> = self
            .settings
            .propagate_headers
            .iter()
            .filter_map(|name| {
                req.headers()
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (name.clone(), v.to_string()))
            })
            .collect();
        let request = if via_get {
            let mut r = GraphQLRequest::default();
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                match &*k {
                    "query" => r.query = Some(v.into_owned()),
                    "operationName" => r.operation_name = Some(v.into_owned()),
                    "variables" => match serde_json::from_str(&v) {
                        Ok(Json::Object(m)) => r.variables = Some(m),
                        _ => {
                            return reply(
                                StatusCode::BAD_REQUEST,
                                media,
                                errors("the variables parameter is not a JSON object"),
                            )
                        }
                    },
                    "extensions" => match serde_json::from_str(&v) {
                        Ok(Json::Object(m)) => r.extensions = Some(m),
                        _ => {
                            return reply(
                                StatusCode::BAD_REQUEST,
                                media,
                                errors("the extensions parameter is not a JSON object"),
                            )
                        }
                    },
                    _ => {}
                }
            }
            r
        } else {
            let json_body = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
            if !json_body {
                return reply(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    media,
                    errors("POST bodies must be application/json"),
                );
            }
            let bytes = match Limited::new(req.into_body(), self.settings.max_request_bytes)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        media,
                        errors(&format!(
                            "the request body is over {} bytes",
                            self.settings.max_request_bytes
                        )),
                    )
                }
            };
            match serde_json::from_slice::<GraphQLRequest>(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        media,
                        errors(&format!("the body is not a GraphQL request: {e}")),
                    )
                }
            }
        };
        let query = match self.query_text(&request) {
            Ok(q) => q,
            Err(body) => {
                return reply(
                    if media == GRAPHQL_RESPONSE {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::OK
                    },
                    media,
                    body,
                )
            }
        };
        let Some(gateway) = self.current() else {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                media,
                errors("no schema loaded"),
            );
        };
        let result = gateway.execute(&request, &query, via_get, &headers).await;
        let status = match result.kind {
            Kind::Executed => StatusCode::OK,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::RequestError if media == GRAPHQL_RESPONSE => StatusCode::BAD_REQUEST,
            Kind::RequestError => StatusCode::OK,
        };
        let mut r = reply(status, media, result.body);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert("allow", HeaderValue::from_static("POST"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_graphql_media_type() {
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json, application/json;q=0.9"
            )),
            Some(GRAPHQL_RESPONSE)
        );
        assert_eq!(
            negotiate(Some("application/json")),
            Some("application/json")
        );
        assert_eq!(negotiate(None), Some("application/json"));
        assert_eq!(negotiate(Some("*/*")), Some("application/json"));
        assert_eq!(negotiate(Some("text/html")), None);
    }

    #[test]
    fn apq_hash_is_sha256_hex() {
        assert_eq!(
            sha256_hex("{__typename}"),
            "ecf4edb46db40b5132295c0291d62fb65d6759a9eedfa4d5d612dd5ec54a6b38"
        );
    }
}
