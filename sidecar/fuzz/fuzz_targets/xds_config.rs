//! xDS resources → the proxy's routing tables (`sidecar::config::build`),
//! with resources built from the input: some as raw protobuf bytes (any
//! bytes, decoded by prost), most assembled field by field so that the
//! translation itself is reached. It never panics; a table that builds
//! routes every probe to one of its rule's clusters, and its durations can
//! be used by the proxy's timers.
#![no_main]

use arbitrary::Arbitrary;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, CidrRange, Metadata, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, retry_policy, route, route_action, route_match, weighted_cluster, HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_connection_manager, HttpConnectionManager, Rds};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::{value, Any, Duration, Struct, UInt32Value, Value};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sidecar::config::{self, Resources, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

#[derive(Arbitrary, Debug)]
struct Input {
    /// (type, name, protobuf bytes) taken as they are.
    raw: Vec<(u8, u8, Vec<u8>)>,
    clusters: Vec<ArbCluster>,
    assignments: Vec<ArbAssignment>,
    listeners: Vec<ArbListener>,
    routes: Vec<ArbRouteConfig>,
    probes: Vec<Probe>,
}

#[derive(Arbitrary, Debug)]
struct ArbCluster {
    name: u8,
    lb_policy: i32,
    connect_timeout: Option<(i64, i32)>,
    http2: bool,
    inline: Vec<(String, u32)>,
}

#[derive(Arbitrary, Debug)]
struct ArbAssignment {
    cluster: u8,
    endpoints: Vec<(String, u32, Option<(String, String)>)>,
}

#[derive(Arbitrary, Debug)]
struct ArbListener {
    name: u8,
    rds: Option<u8>,
    tcp: Option<(u8, Option<u32>, Vec<String>)>,
    filter_name: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct ArbRouteConfig {
    name: u8,
    hosts: Vec<(String, Vec<String>, Vec<ArbRoute>)>,
}

#[derive(Arbitrary, Debug)]
enum ArbPath {
    Prefix(String),
    SegmentPrefix(String),
    Exact(String),
    Regex(String),
    Missing,
}

#[derive(Arbitrary, Debug)]
enum ArbHeaderMatch {
    Exact(String),
    Regex(String),
    Prefix(String),
    Suffix(String),
    Present(bool),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct ArbRoute {
    path: Option<ArbPath>,
    headers: Vec<(String, ArbHeaderMatch)>,
    clusters: Vec<(u8, Option<u32>)>,
    weighted: bool,
    timeout: Option<(i64, i32)>,
    retry: Option<(String, Option<u32>, Vec<u32>, Option<(i64, i32)>)>,
    no_action: bool,
}

#[derive(Arbitrary, Debug)]
struct Probe {
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    roll: u64,
}

fn duration((seconds, nanos): (i64, i32)) -> Duration {
    Duration { seconds, nanos }
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address { address: Some(address::Address::SocketAddress(SocketAddress { address: ip.into(), port_specifier: Some(socket_address::PortSpecifier::PortValue(port)), ..Default::default() })) })
}

fn lb_endpoint(ip: &str, port: u32, identity: Option<&(String, String)>) -> LbEndpoint {
    let metadata = identity.map(|(mode, id)| {
        let text = |s: &str| Value { kind: Some(value::Kind::StringValue(s.into())) };
        let mut revmesh = Struct::default();
        revmesh.fields.insert("tlsMode".into(), text(mode));
        revmesh.fields.insert("identity".into(), text(id));
        let mut m = Metadata::default();
        m.filter_metadata.insert("revmesh".into(), revmesh);
        m
    });
    LbEndpoint { host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint { address: socket(ip, port), ..Default::default() })), metadata, ..Default::default() }
}

fn string_matcher(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher { match_pattern: Some(pattern), ..Default::default() }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher { regex: r.into(), ..Default::default() }
}

fn route(r: &ArbRoute) -> Route {
    let path_specifier = r.path.as_ref().map(|p| match p {
        ArbPath::Prefix(p) => Some(route_match::PathSpecifier::Prefix(p.clone())),
        ArbPath::SegmentPrefix(p) => Some(route_match::PathSpecifier::PathSeparatedPrefix(p.clone())),
        ArbPath::Exact(p) => Some(route_match::PathSpecifier::Path(p.clone())),
        ArbPath::Regex(p) => Some(route_match::PathSpecifier::SafeRegex(regex(p))),
        ArbPath::Missing => None,
    });
    let headers = r
        .headers
        .iter()
        .map(|(name, m)| {
            let specifier = match m {
                ArbHeaderMatch::Exact(v) => Some(header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(string_matcher::MatchPattern::Exact(v.clone())))),
                ArbHeaderMatch::Regex(v) => Some(header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(string_matcher::MatchPattern::SafeRegex(regex(v))))),
                ArbHeaderMatch::Prefix(v) => Some(header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(string_matcher::MatchPattern::Prefix(v.clone())))),
                ArbHeaderMatch::Suffix(v) => Some(header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(string_matcher::MatchPattern::Suffix(v.clone())))),
                ArbHeaderMatch::Present(p) => Some(header_matcher::HeaderMatchSpecifier::PresentMatch(*p)),
                ArbHeaderMatch::Missing => None,
            };
            HeaderMatcher { name: name.clone(), header_match_specifier: specifier, ..Default::default() }
        })
        .collect();
    let cluster_specifier = match (r.weighted, r.clusters.as_slice()) {
        (_, []) => None,
        (false, [(c, _), ..]) => Some(route_action::ClusterSpecifier::Cluster(format!("c{c}"))),
        (true, many) => Some(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many.iter().map(|(c, w)| weighted_cluster::ClusterWeight { name: format!("c{c}"), weight: w.map(|value| UInt32Value { value }), ..Default::default() }).collect(),
            ..Default::default()
        })),
    };
    let retry_policy = r.retry.as_ref().map(|(on, n, codes, backoff)| RetryPolicy {
        retry_on: on.clone(),
        num_retries: n.map(|value| UInt32Value { value }),
        retriable_status_codes: codes.clone(),
        retry_back_off: backoff.map(|b| retry_policy::RetryBackOff { base_interval: Some(duration(b)), ..Default::default() }),
        ..Default::default()
    });
    let action = RouteAction { cluster_specifier, timeout: r.timeout.map(duration), retry_policy, ..Default::default() };
    Route {
        r#match: r.path.as_ref().map(|_| RouteMatch { path_specifier: path_specifier.flatten(), headers, ..Default::default() }),
        action: (!r.no_action).then_some(route::Action::Route(action)),
        ..Default::default()
    }
}

fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.into(), value: m.encode_to_vec() }
}

fn resources(input: &Input) -> Resources {
    let mut held = Resources::new();
    let mut put = |type_url: &str, name: String, any: Any| {
        held.entry(type_url.to_string()).or_default().insert(name, any);
    };
    let types = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];
    for (kind, name, bytes) in &input.raw {
        let type_url = types[usize::from(*kind) % types.len()];
        put(type_url, format!("raw{name}"), Any { type_url: type_url.into(), value: bytes.clone() });
    }
    for c in &input.clusters {
        let mut cluster = Cluster { name: format!("c{}", c.name), lb_policy: c.lb_policy, connect_timeout: c.connect_timeout.map(duration), ..Default::default() };
        if c.http2 {
            cluster.typed_extension_protocol_options.insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), Any::default());
        }
        if !c.inline.is_empty() {
            let lb_endpoints = c.inline.iter().map(|(ip, port)| lb_endpoint(ip, *port, None)).collect();
            cluster.load_assignment = Some(ClusterLoadAssignment { cluster_name: cluster.name.clone(), endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }], ..Default::default() });
        }
        put(CLUSTER_TYPE, cluster.name.clone(), pack(CLUSTER_TYPE, &cluster));
    }
    for a in &input.assignments {
        let lb_endpoints = a.endpoints.iter().map(|(ip, port, id)| lb_endpoint(ip, *port, id.as_ref())).collect();
        let cla = ClusterLoadAssignment { cluster_name: format!("c{}", a.cluster), endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }], ..Default::default() };
        put(ENDPOINT_TYPE, cla.cluster_name.clone(), pack(ENDPOINT_TYPE, &cla));
    }
    for l in &input.listeners {
        let mut chains = Vec::new();
        if let Some(rds) = l.rds {
            let hcm = HttpConnectionManager { route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds { route_config_name: format!("r{rds}"), ..Default::default() })), ..Default::default() };
            let name = l.filter_name.clone().unwrap_or_else(|| "envoy.filters.network.http_connection_manager".into());
            chains.push(FilterChain { filters: vec![Filter { name, config_type: Some(filter::ConfigType::TypedConfig(pack("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", &hcm))) }], ..Default::default() });
        }
        if let Some((cluster, port, prefixes)) = &l.tcp {
            let tcp = TcpProxy { cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(format!("c{cluster}"))), ..Default::default() };
            let filter_chain_match = FilterChainMatch {
                destination_port: port.map(|value| UInt32Value { value }),
                prefix_ranges: prefixes.iter().map(|p| CidrRange { address_prefix: p.clone(), ..Default::default() }).collect(),
                ..Default::default()
            };
            chains.push(FilterChain {
                filter_chain_match: Some(filter_chain_match),
                filters: vec![Filter { name: "envoy.filters.network.tcp_proxy".into(), config_type: Some(filter::ConfigType::TypedConfig(pack("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", &tcp))) }],
                ..Default::default()
            });
        }
        let listener = Listener { name: format!("l{}", l.name), filter_chains: chains, ..Default::default() };
        put(LISTENER_TYPE, listener.name.clone(), pack(LISTENER_TYPE, &listener));
    }
    for rc in &input.routes {
        let virtual_hosts = rc.hosts.iter().map(|(name, domains, routes)| VirtualHost { name: name.clone(), domains: domains.clone(), routes: routes.iter().map(route).collect(), ..Default::default() }).collect();
        let rc = RouteConfiguration { name: format!("r{}", rc.name), virtual_hosts, ..Default::default() };
        put(ROUTE_TYPE, rc.name.clone(), pack(ROUTE_TYPE, &rc));
    }
    held
}

struct Headers<'a>(&'a [(String, String)]);

impl config::RequestHeaders for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fuzz_target!(|input: Input| {
    let Ok(table) = config::build(&resources(&input)) else { return };
    for rule in table.virtual_hosts.iter().flat_map(|v| &v.routes) {
        // The proxy jitters the backoff by up to 1.5x and sleeps for it.
        if let Some(retry) = &rule.retry {
            let _ = retry.backoff.mul_f64(1.5);
        }
    }
    for probe in &input.probes {
        let Some(rule) = table.route(&probe.host, &probe.path, &Headers(&probe.headers)) else { continue };
        if let Some(picked) = config::pick_weighted(&rule.clusters, probe.roll) {
            assert!(rule.clusters.iter().any(|(c, w)| c == picked && *w > 0), "{picked} is not a weighted choice of {:?}", rule.clusters);
        }
    }
});
