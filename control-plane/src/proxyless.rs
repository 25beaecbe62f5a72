//! What proxyless gRPC clients (gRPC's built-in xDS client) are served.
//!
//! A gRPC channel to `xds:///<host>:<port>` asks, by name, for the Listener
//! `<host>:<port>` and expects an *API listener*: no address, only an HTTP
//! connection manager whose routes name clusters. It then asks for those
//! clusters (CDS) and their endpoints (EDS) by name, and those are the very
//! `outbound|<port>||<fqdn>` clusters Envoy and the sidecar get.
//!
//! Such listeners exist only when asked for by name: a wildcard subscriber
//! (Envoy, the sidecar) never sees them, so its configuration is unchanged.
//! The routes are inline in the listener (no RDS round trip), and use only
//! matchers gRPC implements (`prefix`, `path`, `safe_regex`, header
//! `string_match`).
//!
//! Host forms: `svc` (in the client's namespace, node metadata `NAMESPACE`;
//! without it, the one Service of that name in the mesh), `svc.ns`,
//! `svc.ns.svc`, `svc.ns.svc.cluster.local`, or the Service's cluster IP. The
//! port may be left out when the Service has exactly one.

use crate::model::*;
use crate::translate::{self, pack};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    retry_policy, route, route_action, route_match, NonForwardingAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyRouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_connection_manager, HttpConnectionManager};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use std::collections::BTreeMap;

/// Why a listener name a client asked for names no Service port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownTarget {
    #[error("{name:?} is not <host>[:<port>] (a gRPC target is xds:///<service>[.<namespace>]:<port>)")]
    Malformed { name: String },
    #[error("no Service is named {host:?} (host forms: <svc>, <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.cluster.local, or a cluster IP)")]
    NoService { host: String },
    #[error("{host:?} is a short name and Services of that name exist in namespaces {namespaces}: use <svc>.<namespace>, or put NAMESPACE in the client's node metadata")]
    Ambiguous { host: String, namespaces: String },
    #[error("Service {service} has no port {port} (its ports: {ports})")]
    NoPort { service: ServiceKey, port: u16, ports: String },
    #[error("Service {service} has several ports ({ports}): the target must name one, as xds:///<host>:<port>")]
    PortNeeded { service: ServiceKey, ports: String },
}

fn port_list(svc: &Service) -> String {
    svc.ports.iter().map(|p| p.port.to_string()).collect::<Vec<_>>().join(", ")
}

/// Splits `host[:port]`; a port, when present, must be a number.
fn split_target(name: &str) -> Result<(&str, Option<u16>), UnknownTarget> {
    let malformed = || UnknownTarget::Malformed { name: name.to_string() };
    let (host, port) = match name.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| malformed())?)),
        None => (name, None),
    };
    if host.is_empty() || host.contains(['/', ':']) {
        return Err(malformed());
    }
    Ok((host, port))
}

fn find_service<'m>(model: &'m MeshModel, host: &str, client_namespace: Option<&str>) -> Result<&'m Service, UnknownTarget> {
    let none = || UnknownTarget::NoService { host: host.to_string() };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return model.services.values().find(|s| s.cluster_ip == Some(ip)).ok_or_else(none);
    }
    let relative = host.strip_suffix(".svc.cluster.local").or_else(|| host.strip_suffix(".svc")).unwrap_or(host);
    let labels: Vec<&str> = relative.split('.').collect();
    match labels.as_slice() {
        [name, namespace] => model.services.get(&ServiceKey::new(namespace, name)).ok_or_else(none),
        // `svc.svc` or `svc.svc.cluster.local` is not a Service name.
        [name] if relative == host => match client_namespace {
            Some(ns) => model.services.get(&ServiceKey::new(ns, name)).ok_or_else(none),
            None => {
                let found: Vec<&Service> = model.services.values().filter(|s| s.key.name == *name).collect();
                match found.as_slice() {
                    [one] => Ok(one),
                    [] => Err(none()),
                    many => Err(UnknownTarget::Ambiguous {
                        host: host.to_string(),
                        namespaces: many.iter().map(|s| s.key.namespace.as_str()).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        },
        _ => Err(none()),
    }
}

/// The Service port a gRPC target names.
pub fn resolve<'m>(model: &'m MeshModel, name: &str, client_namespace: Option<&str>) -> Result<(&'m Service, &'m ServicePort), UnknownTarget> {
    let (host, port) = split_target(name)?;
    let svc = find_service(model, host, client_namespace)?;
    let sp = match port {
        Some(port) => svc.ports.iter().find(|p| p.port == port).ok_or_else(|| UnknownTarget::NoPort { service: svc.key.clone(), port, ports: port_list(svc) })?,
        None => match svc.ports.as_slice() {
            [only] => only,
            _ => return Err(UnknownTarget::PortNeeded { service: svc.key.clone(), ports: port_list(svc) }),
        },
    };
    Ok((svc, sp))
}

/// The API listener named `name` (exactly as asked: gRPC checks the name).
pub fn api_listener(model: &MeshModel, name: &str, client_namespace: Option<&str>) -> Result<Listener, UnknownTarget> {
    let (svc, sp) = resolve(model, name, client_namespace)?;
    let routes = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{}:{}", svc.key.fqdn(), sp.port),
            // The listener already names the service: whatever authority the
            // channel uses (target, or an override) must reach these routes.
            domains: vec!["*".into()],
            routes: grpc_routes(model, svc, sp.port),
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        // gRPC requires the router filter, last.
        http_filters: vec![translate::router_filter()],
        ..Default::default()
    };
    Ok(Listener { name: name.to_string(), api_listener: Some(ApiListener { api_listener: Some(pack(&hcm)) }), ..Default::default() })
}

/// The API listeners among `names` (a client's LDS subscription), keyed by
/// name. Names that resolve to no Service port are left out, as State of the
/// World requires of resources that do not exist.
pub fn api_listeners<'a>(model: &MeshModel, names: impl IntoIterator<Item = &'a str>, client_namespace: Option<&str>) -> BTreeMap<String, Any> {
    names.into_iter().filter_map(|n| api_listener(model, n, client_namespace).ok().map(|l| (n.to_string(), pack(&l)))).collect()
}

fn grpc_routes(model: &MeshModel, svc: &Service, port: u16) -> Vec<Route> {
    let rules = translate::attached_rules(model, &svc.key, port);
    if rules.is_empty() {
        let all = EnvoyRouteMatch { path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())), ..Default::default() };
        let action = RouteAction { cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(translate::cluster_name(&svc.key, port))), ..Default::default() };
        return vec![Route { r#match: Some(all), action: Some(route::Action::Route(action)), ..Default::default() }];
    }
    rules
        .iter()
        .flat_map(|rule| {
            let matches = if rule.matches.is_empty() { vec![RouteMatch::default()] } else { rule.matches.clone() };
            let action = grpc_action(rule);
            matches.into_iter().flat_map(grpc_matches).map(move |m| Route { r#match: Some(m), action: Some(action.clone()), ..Default::default() })
        })
        .collect()
}

/// gRPC has no `path_separated_prefix`: a Gateway API PathPrefix `/pkg.Svc`
/// (which matches `/pkg.Svc` and `/pkg.Svc/...`, never `/pkg.SvcX`) becomes an
/// exact path plus the prefix `/pkg.Svc/`.
fn grpc_matches(m: RouteMatch) -> Vec<EnvoyRouteMatch> {
    let headers = translate::header_matchers(&m);
    let with = |p: route_match::PathSpecifier| EnvoyRouteMatch { path_specifier: Some(p), headers: headers.clone(), ..Default::default() };
    match &m.path {
        None => vec![with(route_match::PathSpecifier::Prefix(String::new()))],
        Some(PathMatch::Exact(p)) => vec![with(route_match::PathSpecifier::Path(p.clone()))],
        Some(PathMatch::Regex(r)) => vec![with(route_match::PathSpecifier::SafeRegex(translate::regex(r)))],
        Some(PathMatch::Prefix(p)) => {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                vec![with(route_match::PathSpecifier::Prefix(String::new()))]
            } else {
                vec![with(route_match::PathSpecifier::Path(p.to_string())), with(route_match::PathSpecifier::Prefix(format!("{p}/")))]
            }
        }
    }
}

/// gRPC conditions a Gateway API retry stands for: a connect failure, a reset
/// and an HTTP 502/503/504 all reach a gRPC client as UNAVAILABLE.
const GRPC_RETRY_ON: &str = "unavailable";

fn grpc_action(rule: &RouteRule) -> route::Action {
    let Some(cluster_specifier) = translate::cluster_specifier(rule) else {
        // Every backend weighs 0: Gateway API fails such requests; gRPC fails
        // RPCs on a route without a forwarding action (UNAVAILABLE).
        return route::Action::NonForwardingAction(NonForwardingAction::default());
    };
    route::Action::Route(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // gRPC reads a route's deadline from max_stream_duration (it ignores `timeout`).
        max_stream_duration: rule.timeout.filter(|t| !t.is_zero()).map(|t| route_action::MaxStreamDuration {
            max_stream_duration: Some(translate::duration(t)),
            ..Default::default()
        }),
        retry_policy: rule.retry.as_ref().filter(|r| r.attempts > 0).map(|r| RetryPolicy {
            retry_on: GRPC_RETRY_ON.into(),
            num_retries: Some(UInt32Value { value: r.attempts }),
            retry_back_off: r.backoff.filter(|b| !b.is_zero()).map(|b| retry_policy::RetryBackOff { base_interval: Some(translate::duration(b)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster;
    use prost::Message;

    fn svc(ns: &str, name: &str, ports: &[u16]) -> Service {
        Service {
            key: ServiceKey::new(ns, name),
            cluster_ip: Some(format!("10.96.0.{}", 10 + name.len()).parse().expect("ip")),
            ports: ports.iter().map(|p| ServicePort { name: format!("grpc-{p}"), port: *p, target_port: TargetPort::Number(*p), protocol: Protocol::Http2 }).collect(),
        }
    }

    fn mesh() -> MeshModel {
        let mut m = MeshModel::default();
        for s in [svc("demo", "echo", &[50051]), svc("demo", "multi", &[80, 9090]), svc("demo", "twice", &[80]), svc("other", "twice", &[80])] {
            m.services.insert(s.key.clone(), s);
        }
        m
    }

    fn target(name: &str, ns: Option<&str>) -> Result<(String, u16), UnknownTarget> {
        resolve(&mesh(), name, ns).map(|(s, p)| (s.key.to_string(), p.port))
    }

    #[test]
    fn every_dns_form_of_a_service_resolves() {
        let echo = Ok(("demo/echo".to_string(), 50051));
        for name in ["echo.demo:50051", "echo.demo.svc:50051", "echo.demo.svc.cluster.local:50051", "10.96.0.14:50051", "echo:50051", "echo.demo"] {
            assert_eq!(target(name, None), echo, "{name}");
        }
        assert_eq!(target("twice:80", Some("other")), Ok(("other/twice".to_string(), 80)), "the client's namespace decides");
        assert_eq!(target("echo:50051", Some("other")), Err(UnknownTarget::NoService { host: "echo".into() }), "short names stay in the client's namespace");
    }

    #[test]
    fn unknown_targets_say_why() {
        assert!(matches!(target("twice:80", None), Err(UnknownTarget::Ambiguous { .. })));
        assert!(matches!(target("multi.demo", None), Err(UnknownTarget::PortNeeded { .. })));
        assert!(matches!(target("echo.demo:1", None), Err(UnknownTarget::NoPort { port: 1, .. })));
        assert!(matches!(target("nope.demo:80", None), Err(UnknownTarget::NoService { .. })));
        assert!(matches!(target("echo.svc:50051", None), Err(UnknownTarget::NoService { .. })));
        assert!(matches!(target("echo.demo:http", None), Err(UnknownTarget::Malformed { .. })));
        assert!(matches!(target("outbound", None), Err(UnknownTarget::NoService { .. })));
        let text = target("multi.demo", None).expect_err("no port").to_string();
        assert!(text.contains("80, 9090") && text.contains("xds:///<host>:<port>"), "{text}");
    }

    fn listener_routes(m: &MeshModel, name: &str) -> Vec<Route> {
        let l = api_listener(m, name, None).expect("listener");
        assert_eq!(l.name, name);
        assert!(l.address.is_none(), "an API listener has no address");
        let hcm = HttpConnectionManager::decode(l.api_listener.and_then(|a| a.api_listener).expect("hcm").value.as_slice()).expect("decode");
        assert_eq!(hcm.http_filters.last().map(|f| f.name.as_str()), Some("envoy.filters.http.router"));
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else { panic!("inline routes") };
        rc.virtual_hosts.into_iter().flat_map(|v| v.routes).collect()
    }

    #[test]
    fn listener_routes_to_the_service_cluster_or_the_route_split() {
        let mut m = mesh();
        let routes = listener_routes(&m, "echo.demo:50051");
        let Some(route::Action::Route(a)) = &routes[0].action else { panic!("route") };
        assert_eq!(a.cluster_specifier, Some(route_action::ClusterSpecifier::Cluster("outbound|50051||echo.demo.svc.cluster.local".into())));

        let backend = |name: &str, weight| Backend { service: ServiceKey::new("demo", name), port: 80, weight };
        m.routes.push(HttpRoute {
            namespace: "demo".into(),
            name: "split".into(),
            parents: vec![(ServiceKey::new("demo", "echo"), Some(50051))],
            rules: vec![
                RouteRule {
                    matches: vec![RouteMatch { path: Some(PathMatch::Prefix("/pkg.Admin/".into())), headers: vec![] }],
                    backends: vec![backend("twice", 0)],
                    timeout: None,
                    retry: None,
                },
                RouteRule {
                    matches: vec![],
                    backends: vec![backend("twice", 80), backend("multi", 20)],
                    timeout: Some(std::time::Duration::from_secs(2)),
                    retry: Some(Retry { attempts: 2, on: "5xx".into(), backoff: None }),
                },
            ],
        });
        let routes = listener_routes(&m, "echo.demo:50051");
        let paths: Vec<_> = routes.iter().map(|r| r.r#match.as_ref().and_then(|m| m.path_specifier.clone())).collect();
        assert_eq!(
            paths,
            [
                Some(route_match::PathSpecifier::Path("/pkg.Admin".into())),
                Some(route_match::PathSpecifier::Prefix("/pkg.Admin/".into())),
                Some(route_match::PathSpecifier::Prefix(String::new())),
            ]
        );
        assert!(matches!(routes[0].action, Some(route::Action::NonForwardingAction(_))), "all weights 0: RPCs fail");
        let Some(route::Action::Route(split)) = &routes[2].action else { panic!("route") };
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else { panic!("weighted") };
        let weights: Vec<(&str, u32)> = w.clusters.iter().map(|c: &weighted_cluster::ClusterWeight| (c.name.as_str(), c.weight.map_or(0, |w| w.value))).collect();
        assert_eq!(weights, [("outbound|80||twice.demo.svc.cluster.local", 80), ("outbound|80||multi.demo.svc.cluster.local", 20)]);
        assert_eq!(split.max_stream_duration.and_then(|d| d.max_stream_duration).map(|d| d.seconds), Some(2));
        assert_eq!(split.retry_policy.as_ref().map(|p| p.retry_on.as_str()), Some("unavailable"));
    }

    #[test]
    fn only_resolvable_names_become_listeners() {
        let got = api_listeners(&mesh(), ["echo.demo:50051", "nope.demo:1", "outbound"], None);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["echo.demo:50051"]);
    }
}
