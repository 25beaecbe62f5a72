//! Source model → Envoy resources. Pure and deterministic: the same model and
//! proxy give byte-identical resources, so versions can be content hashes.
//!
//! Naming follows Istio, which operators already read:
//! * cluster `outbound|<port>||<service>.<namespace>.svc.cluster.local` (EDS over ADS);
//! * listener `outbound` on the proxy's outbound capture port (15001): one HTTP
//!   filter chain routing by Host through RDS `outbound_http`, plus one TCP
//!   chain per TCP service port matched on cluster IP and port (original destination);
//! * route configuration `outbound_http`: one virtual host per HTTP service port.

use crate::model::*;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion, CidrRange, ConfigSource, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, retry_policy, route, route_action, route_match, weighted_cluster, HeaderMatcher, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch as EnvoyRouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::{Message, Name};
use std::collections::BTreeMap;

pub const OUTBOUND_LISTENER: &str = "outbound";
pub const OUTBOUND_ROUTE: &str = "outbound_http";

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// What the translator needs to know about the proxy it translates for (from
/// its node metadata).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyContext {
    /// Where the outbound listener binds; `0.0.0.0:15001` for captured sidecars.
    pub outbound_address: std::net::SocketAddr,
    /// Traffic arrives by iptables REDIRECT: recover the original destination.
    pub captured: bool,
}

impl Default for ProxyContext {
    fn default() -> Self {
        ProxyContext { outbound_address: ([0, 0, 0, 0], 15001).into(), captured: true }
    }
}

/// Resources by type URL, then by name.
pub type Resources = BTreeMap<&'static str, BTreeMap<String, Any>>;

pub fn pack<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

pub fn cluster_name(service: &ServiceKey, port: u16) -> String {
    format!("outbound|{port}||{}", service.fqdn())
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(crate) fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn socket(ip: std::net::IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// Translates the whole model for one proxy.
pub fn translate(model: &MeshModel, proxy: &ProxyContext) -> Resources {
    let mut out: Resources = BTreeMap::new();
    let clusters = out.entry(CLUSTER_TYPE).or_default();
    for svc in model.services.values() {
        for sp in &svc.ports {
            let name = cluster_name(&svc.key, sp.port);
            let mut c = Cluster {
                name: name.clone(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
                connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
                ..Default::default()
            };
            if sp.protocol == Protocol::Http2 {
                c.typed_extension_protocol_options.insert(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
                    pack(&http2_upstream()),
                );
            }
            clusters.insert(name, pack(&c));
        }
    }
    let endpoints = out.entry(ENDPOINT_TYPE).or_default();
    for svc in model.services.values() {
        let eps = model.endpoints.get(&svc.key).map(Vec::as_slice).unwrap_or(&[]);
        for sp in &svc.ports {
            let name = cluster_name(&svc.key, sp.port);
            endpoints.insert(name.clone(), pack(&load_assignment(&name, sp, eps, &model.meshed)));
        }
    }
    out.entry(ROUTE_TYPE).or_default().insert(OUTBOUND_ROUTE.into(), pack(&outbound_routes(model)));
    out.entry(LISTENER_TYPE).or_default().insert(OUTBOUND_LISTENER.into(), pack(&outbound_listener(model, proxy)));
    out
}

fn http2_upstream() -> envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions};
    envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default())),
        })),
        ..Default::default()
    }
}

/// The endpoint port for a service port: Endpoints name their ports after the
/// service port; a single unnamed port, or the numeric targetPort, otherwise.
fn endpoint_port(sp: &ServicePort, ep: &Endpoint) -> Option<u16> {
    if let Some(p) = ep.ports.get(&sp.name) {
        return Some(*p);
    }
    if ep.ports.len() == 1 {
        return ep.ports.values().next().copied();
    }
    match &sp.target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(_) => None,
    }
}

/// Ready endpoints grouped by zone (EndpointSlice `zone`; one locality with
/// an empty zone otherwise). Each locality weighs its endpoint count, so a
/// client balancing by locality first (gRPC, which also ignores a locality
/// without a weight) spreads load evenly over endpoints, as Envoy does.
pub fn load_assignment(name: &str, sp: &ServicePort, eps: &[Endpoint], meshed: &BTreeMap<std::net::IpAddr, String>) -> ClusterLoadAssignment {
    let mut by_zone: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    for e in eps.iter().filter(|e| e.ready) {
        let Some(port) = endpoint_port(sp, e) else { continue };
        by_zone.entry(e.zone.as_deref().unwrap_or("")).or_default().push(LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint { address: Some(socket(e.ip, port)), ..Default::default() })),
            metadata: meshed.get(&e.ip).map(|identity| mesh_metadata(identity)),
            ..Default::default()
        });
    }
    let endpoints = by_zone
        .into_iter()
        .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
            locality: Some(Locality { zone: zone.to_string(), ..Default::default() }),
            load_balancing_weight: Some(UInt32Value { value: u32::try_from(lb_endpoints.len()).unwrap_or(u32::MAX) }),
            lb_endpoints,
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment { cluster_name: name.into(), endpoints, ..Default::default() }
}

/// Filter metadata key under which an endpoint's mesh facts travel.
pub const MESH_METADATA: &str = "revmesh";

/// Marks an endpoint as a meshed pod: clients use mTLS and expect the
/// identity `namespace/serviceaccount` (Envoy ignores metadata it has no use for).
fn mesh_metadata(identity: &str) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
    let fields = [("tlsMode".to_string(), s("mtls")), ("identity".to_string(), s(identity))].into_iter().collect();
    envoy_types::pb::envoy::config::core::v3::Metadata { filter_metadata: [(MESH_METADATA.to_string(), Struct { fields })].into_iter().collect(), ..Default::default() }
}

fn domains(svc: &Service, port: u16) -> Vec<String> {
    let k = &svc.key;
    let mut hosts = vec![k.fqdn(), format!("{}.{}.svc", k.name, k.namespace), format!("{}.{}", k.name, k.namespace)];
    if let Some(ip) = svc.cluster_ip {
        hosts.push(ip.to_string());
    }
    let mut out: Vec<String> = hosts.iter().map(|h| format!("{h}:{port}")).collect();
    if port == 80 {
        out.extend(hosts);
    }
    out
}

fn string_exact(v: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(string_matcher::MatchPattern::Exact(v.into())), ..Default::default() }
}

pub(crate) fn regex(v: &str) -> RegexMatcher {
    RegexMatcher { regex: v.into(), ..Default::default() }
}

fn envoy_match(m: &RouteMatch) -> EnvoyRouteMatch {
    let path_specifier = Some(match &m.path {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(PathMatch::Prefix(p)) => route_match::PathSpecifier::PathSeparatedPrefix(p.trim_end_matches('/').to_string()),
        Some(PathMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(PathMatch::Regex(r)) => route_match::PathSpecifier::SafeRegex(regex(r)),
    });
    // "/" as a separated prefix is empty: use a plain prefix for it.
    let path_specifier = match path_specifier {
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) if p.is_empty() => Some(route_match::PathSpecifier::Prefix("/".into())),
        other => other,
    };
    EnvoyRouteMatch { path_specifier, headers: header_matchers(m), ..Default::default() }
}

pub(crate) fn header_matchers(m: &RouteMatch) -> Vec<HeaderMatcher> {
    m.headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(if h.regex {
                StringMatcher { match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(&h.value))), ..Default::default() }
            } else {
                string_exact(&h.value)
            })),
            ..Default::default()
        })
        .collect()
}

/// One cluster, or a weighted split over the backends that weigh more than 0;
/// None when none does.
pub(crate) fn cluster_specifier(rule: &RouteRule) -> Option<route_action::ClusterSpecifier> {
    let live: Vec<&Backend> = rule.backends.iter().filter(|b| b.weight > 0).collect();
    Some(match live.as_slice() {
        [] => return None,
        [one] => route_action::ClusterSpecifier::Cluster(cluster_name(&one.service, one.port)),
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: live
                .iter()
                .map(|b| weighted_cluster::ClusterWeight {
                    name: cluster_name(&b.service, b.port),
                    weight: Some(UInt32Value { value: b.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    })
}

fn action(rule: &RouteRule) -> RouteAction {
    // No live backend: an empty split, which Envoy answers with an error, as
    // Gateway API asks.
    let cluster_specifier = cluster_specifier(rule).unwrap_or_else(|| route_action::ClusterSpecifier::WeightedClusters(WeightedCluster::default()));
    RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // Gateway API: no timeout means none; Envoy's default would be 15 s.
        timeout: Some(duration(rule.timeout.unwrap_or_default())),
        retry_policy: Some(rule.retry.as_ref().map_or_else(default_retry_policy, |r| RetryPolicy {
            retry_on: r.on.clone(),
            num_retries: Some(UInt32Value { value: r.attempts }),
            retry_back_off: r.backoff.map(|b| retry_policy::RetryBackOff { base_interval: Some(duration(b)), ..Default::default() }),
            retriable_status_codes: retriable_codes(&r.on),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Istio's default for routes that name no retries: up to 2 more attempts
/// when the request never reached an app (connection refused or reset,
/// a stream refused by a draining peer's GOAWAY) or the peer answered 503
/// (its app is gone). Without it, every pod restart during an upgrade fails
/// the requests in flight to it.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

fn retriable_codes(on: &str) -> Vec<u32> {
    on.split_once("retriable-status-codes:").map(|(_, codes)| codes.split(',').filter_map(|c| c.parse().ok()).collect()).unwrap_or_default()
}

/// The rules of every HTTPRoute attached to a service port, in order.
pub(crate) fn attached_rules<'m>(model: &'m MeshModel, service: &ServiceKey, port: u16) -> Vec<&'m RouteRule> {
    model
        .routes
        .iter()
        .filter(|r| r.parents.iter().any(|(k, p)| k == service && p.is_none_or(|p| p == port)))
        .flat_map(|r| r.rules.iter())
        .collect()
}

fn outbound_routes(model: &MeshModel) -> RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    // Envoy refuses a whole route configuration with a repeated domain; two
    // Services claiming one cluster IP must not take every route down with them.
    let mut used_domains = std::collections::HashSet::new();
    for svc in model.services.values() {
        for sp in svc.ports.iter().filter(|p| p.protocol != Protocol::Tcp) {
            let attached = attached_rules(model, &svc.key, sp.port);
            let routes = if attached.is_empty() {
                vec![Route {
                    r#match: Some(envoy_match(&RouteMatch::default())),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(&svc.key, sp.port))),
                        timeout: Some(duration(std::time::Duration::ZERO)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }]
            } else {
                attached
                    .iter()
                    .flat_map(|rule| {
                        let matches = if rule.matches.is_empty() { vec![RouteMatch::default()] } else { rule.matches.clone() };
                        matches.into_iter().map(move |m| Route {
                            r#match: Some(envoy_match(&m)),
                            action: Some(route::Action::Route(action(rule))),
                            ..Default::default()
                        })
                    })
                    .collect()
            };
            let mut own = domains(svc, sp.port);
            own.retain(|d| {
                let fresh = used_domains.insert(d.clone());
                if !fresh {
                    tracing::warn!(service = %svc.key, domain = %d, "domain already claimed by another service; skipped");
                }
                fresh
            });
            virtual_hosts.push(VirtualHost { name: format!("{}:{}", svc.key.fqdn(), sp.port), domains: own, routes, ..Default::default() });
        }
    }
    RouteConfiguration { name: OUTBOUND_ROUTE.into(), virtual_hosts, ..Default::default() }
}

pub(crate) fn router_filter() -> HttpFilter {
    HttpFilter { name: "envoy.filters.http.router".into(), config_type: Some(http_filter::ConfigType::TypedConfig(pack(&Router::default()))), ..Default::default() }
}

fn outbound_listener(model: &MeshModel, proxy: &ProxyContext) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "outbound_http".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds { config_source: Some(ads()), route_config_name: OUTBOUND_ROUTE.into() })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    let mut filter_chains = vec![FilterChain {
        name: "http".into(),
        filters: vec![Filter { name: "envoy.filters.network.http_connection_manager".into(), config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))) }],
        ..Default::default()
    }];
    for svc in model.services.values() {
        let Some(ip) = svc.cluster_ip else { continue };
        for sp in svc.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            let cluster = cluster_name(&svc.key, sp.port);
            let tcp = TcpProxy { stat_prefix: cluster.clone(), cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.clone())), ..Default::default() };
            filter_chains.push(FilterChain {
                name: cluster,
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: u32::from(sp.port) }),
                    prefix_ranges: vec![CidrRange { address_prefix: ip.to_string(), prefix_len: Some(UInt32Value { value: if ip.is_ipv4() { 32 } else { 128 } }) }],
                    ..Default::default()
                }),
                filters: vec![Filter { name: "envoy.filters.network.tcp_proxy".into(), config_type: Some(filter::ConfigType::TypedConfig(pack(&tcp))) }],
                ..Default::default()
            });
        }
    }
    let listener_filters = if proxy.captured {
        vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack(&OriginalDst::default()))),
            ..Default::default()
        }]
    } else {
        vec![]
    };
    Listener {
        name: OUTBOUND_LISTENER.into(),
        address: Some(socket(proxy.outbound_address.ip(), proxy.outbound_address.port())),
        filter_chains,
        listener_filters,
        ..Default::default()
    }
}

pub const INBOUND_LISTENER: &str = "inbound";
/// The inbound capture port of a sidecar (iptables REDIRECT target).
pub const INBOUND_PORT: u16 = 15006;

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// The resources that belong to one proxy alone: its workload's ports, found by
/// matching its addresses against the endpoints of every service. A listener on
/// the inbound capture port sends each port to the app on localhost. Nothing is
/// produced for a proxy that is not captured, or that backs no service.
pub fn inbound(model: &MeshModel, instance_ips: &[std::net::IpAddr], proxy: &ProxyContext) -> Resources {
    let mut out: Resources = BTreeMap::new();
    if !proxy.captured || instance_ips.is_empty() {
        return out;
    }
    let mut ports: BTreeMap<u16, Protocol> = BTreeMap::new();
    for svc in model.services.values() {
        let Some(eps) = model.endpoints.get(&svc.key) else { continue };
        for ep in eps.iter().filter(|e| instance_ips.contains(&e.ip)) {
            for sp in &svc.ports {
                if let Some(p) = endpoint_port(sp, ep) {
                    ports.entry(p).or_insert(sp.protocol);
                }
            }
        }
    }
    if ports.is_empty() {
        return out;
    }
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let clusters = out.entry(CLUSTER_TYPE).or_default();
    for port in ports.keys() {
        let name = inbound_cluster_name(*port);
        let c = Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint { address: Some(socket(localhost, *port)), ..Default::default() })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        clusters.insert(name, pack(&c));
    }
    let filter_chains = ports
        .iter()
        .map(|(port, protocol)| {
            let cluster = inbound_cluster_name(*port);
            let filter = if *protocol == Protocol::Tcp {
                let tcp = TcpProxy { stat_prefix: cluster.clone(), cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.clone())), ..Default::default() };
                Filter { name: "envoy.filters.network.tcp_proxy".into(), config_type: Some(filter::ConfigType::TypedConfig(pack(&tcp))) }
            } else {
                let routes = RouteConfiguration {
                    name: cluster.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: cluster.clone(),
                        domains: vec!["*".into()],
                        routes: vec![Route {
                            r#match: Some(envoy_match(&RouteMatch::default())),
                            action: Some(route::Action::Route(RouteAction {
                                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
                                timeout: Some(duration(std::time::Duration::ZERO)),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let hcm = HttpConnectionManager {
                    stat_prefix: cluster.clone(),
                    route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
                    http_filters: vec![HttpFilter {
                        name: "envoy.filters.http.router".into(),
                        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&Router::default()))),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                Filter { name: "envoy.filters.network.http_connection_manager".into(), config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))) }
            };
            FilterChain {
                name: cluster,
                filter_chain_match: Some(FilterChainMatch { destination_port: Some(UInt32Value { value: u32::from(*port) }), ..Default::default() }),
                filters: vec![filter],
                ..Default::default()
            }
        })
        .collect();
    let listener = Listener {
        name: INBOUND_LISTENER.into(),
        address: Some(socket(std::net::IpAddr::from([0, 0, 0, 0]), INBOUND_PORT)),
        filter_chains,
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack(&OriginalDst::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    out.entry(LISTENER_TYPE).or_default().insert(INBOUND_LISTENER.into(), pack(&listener));
    out
}
