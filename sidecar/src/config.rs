//! xDS resources → the proxy's routing tables. Pure: decoding, validation and
//! table building happen here, and a resource set that does not build is
//! NACKed with the error while the running tables stay in force.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, route, route_action, route_match, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_connection_manager, HttpConnectionManager};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use crate::fast_hash::FastMap;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The control plane's listener for the workload's own ports (inbound capture).
pub const INBOUND_LISTENER: &str = "inbound";

/// The protocol the control plane declares for a port (from the Service's
/// `appProtocol` or port name, as Istio reads them): an HTTP connection
/// manager or a TCP proxy in the listener's filter chain for that port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredProtocol {
    /// HTTP/1 or HTTP/2: always served as HTTP, never passed as bytes.
    Http,
    /// Opaque bytes.
    Tcp,
}

/// The raw resources held, per type and name.
pub type Resources = BTreeMap<String, BTreeMap<String, Any>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{kind} {name}: does not decode: {message}")]
    Decode { kind: &'static str, name: String, message: String },
    #[error("route configuration {route}: {message}")]
    Route { route: String, message: String },
    #[error("listener {listener}: {message}")]
    Listener { listener: String, message: String },
    #[error("cluster {cluster}: {message}")]
    Cluster { cluster: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    RingHash,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub http2: bool,
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    pub endpoints: Vec<SocketAddr>,
    /// Meshed endpoints → the `namespace/serviceaccount` their certificate
    /// must name; reached with mTLS. The rest get plaintext.
    pub mtls: FastMap<SocketAddr, String>,
    /// This cluster's balancing state, found by name in the proxy's
    /// `Balancers` on first use and kept here, so that the requests after it
    /// skip that lookup. A new config starts empty and finds the same state.
    pub balancer: crate::lb::BalancerSlot,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    /// Whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    SegmentPrefix(String),
    Exact(String),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
pub enum HeaderValueMatch {
    Exact(String),
    Regex(regex::Regex),
    Present,
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: String,
    pub value: HeaderValueMatch,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// Status codes that are retried; empty means 5xx (with `on_5xx`).
    pub status_codes: Vec<u16>,
    pub on_5xx: bool,
    pub on_connect_failure: bool,
    pub backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteRule {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    /// (cluster, weight)
    pub clusters: Vec<(String, u32)>,
    /// None: no timeout.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<RouteRule>,
}

/// The routing tables the proxy runs on.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Shared, so a request holds a cluster without copying it.
    pub clusters: FastMap<String, std::sync::Arc<ClusterConfig>>,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Original destination → cluster, for TCP services.
    pub tcp: FastMap<SocketAddr, String>,
    /// RDS names the listeners refer to (the xDS client subscribes to them).
    pub route_names: Vec<String>,
    /// Original destinations declared HTTP: a service's cluster IP and port,
    /// as its virtual host's domains list them. Connections to them are HTTP
    /// however slowly their first bytes come (never downgraded to TCP).
    pub http_destinations: FastMap<SocketAddr, ()>,
    /// The workload's own ports, as the inbound listener declares them.
    pub inbound_ports: FastMap<u16, DeclaredProtocol>,
}

impl ProxyConfig {
    /// Whether the control plane declares this outbound destination HTTP.
    pub fn declared_http(&self, destination: &SocketAddr) -> bool {
        self.http_destinations.contains_key(destination)
    }

    /// The declared protocol of an inbound port; None: not declared (sniffed).
    pub fn inbound_protocol(&self, port: u16) -> Option<DeclaredProtocol> {
        self.inbound_ports.get(&port).copied()
    }
}

fn decode<M: Message + Default>(kind: &'static str, name: &str, any: &Any) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice()).map_err(|e| ConfigError::Decode { kind, name: name.into(), message: e.to_string() })
}

fn socket(a: &Option<Address>) -> Option<SocketAddr> {
    match a.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
                _ => return None,
            };
            Some(SocketAddr::new(s.address.parse().ok()?, port))
        }
        _ => None,
    }
}

fn duration(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    let d = d.as_ref()?;
    Some(Duration::new(u64::try_from(d.seconds).ok()?, u32::try_from(d.nanos).ok()?))
}

fn regex(route: &str, pattern: &str) -> Result<regex::Regex, ConfigError> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ConfigError::Route { route: route.into(), message: format!("regex {pattern:?} does not compile: {e}") })
}

fn string_match(route: &str, m: &StringMatcher) -> Result<HeaderValueMatch, ConfigError> {
    match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) => Ok(HeaderValueMatch::Exact(v.clone())),
        Some(string_matcher::MatchPattern::SafeRegex(r)) => Ok(HeaderValueMatch::Regex(regex(route, &r.regex)?)),
        Some(string_matcher::MatchPattern::Prefix(p)) => Ok(HeaderValueMatch::Regex(regex(route, &format!("{}.*", regex::escape(p)))?)),
        other => Err(ConfigError::Route { route: route.into(), message: format!("unsupported header matcher {other:?}") }),
    }
}

fn route_configuration(rc: &RouteConfiguration) -> Result<Vec<VirtualHost>, ConfigError> {
    let err = |message: String| ConfigError::Route { route: rc.name.clone(), message };
    let mut hosts = Vec::new();
    for vh in &rc.virtual_hosts {
        let mut routes = Vec::new();
        for r in &vh.routes {
            let m = r.r#match.as_ref().ok_or_else(|| err(format!("virtual host {}: a route without a match", vh.name)))?;
            let path = match &m.path_specifier {
                Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::SegmentPrefix(p.clone()),
                Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
                Some(route_match::PathSpecifier::SafeRegex(r)) => PathMatch::Regex(regex(&rc.name, &r.regex)?),
                other => return Err(err(format!("virtual host {}: unsupported path match {other:?}", vh.name))),
            };
            let mut headers = Vec::new();
            for h in &m.headers {
                let value = match &h.header_match_specifier {
                    Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) => string_match(&rc.name, s)?,
                    #[allow(deprecated)] // older control planes still send it
                    Some(header_matcher::HeaderMatchSpecifier::ExactMatch(v)) => HeaderValueMatch::Exact(v.clone()),
                    Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)) => HeaderValueMatch::Present,
                    other => return Err(err(format!("header {}: unsupported match {other:?}", h.name))),
                };
                headers.push(HeaderMatch { name: h.name.to_ascii_lowercase(), value });
            }
            let Some(route::Action::Route(action)) = &r.action else {
                return Err(err(format!("virtual host {}: only route actions are supported", vh.name)));
            };
            let clusters = match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w.clusters.iter().map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value))).collect(),
                other => return Err(err(format!("virtual host {}: unsupported cluster choice {other:?}", vh.name))),
            };
            if clusters.iter().all(|(_, w)| *w == 0) {
                return Err(err(format!("virtual host {}: every weighted cluster has weight 0", vh.name)));
            }
            let timeout = duration(&action.timeout).filter(|d| !d.is_zero());
            let retry = action.retry_policy.as_ref().map(|p| {
                let on: Vec<&str> = p.retry_on.split(',').map(str::trim).collect();
                RetryPolicy {
                    attempts: p.num_retries.as_ref().map_or(1, |n| n.value),
                    status_codes: p.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
                    on_5xx: on.iter().any(|o| *o == "5xx" || *o == "gateway-error"),
                    // Failures where the request never reached an app: a
                    // refused or reset connection, a stream refused by a
                    // draining peer's GOAWAY.
                    on_connect_failure: on.iter().any(|o| ["connect-failure", "5xx", "reset", "refused-stream", "unavailable", "cancelled"].contains(o)),
                    backoff: p.retry_back_off.as_ref().and_then(|b| duration(&b.base_interval)).unwrap_or(Duration::from_millis(25)),
                }
            });
            routes.push(RouteRule { path, headers, clusters, timeout, retry });
        }
        hosts.push(VirtualHost { name: vh.name.clone(), domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(), routes });
    }
    Ok(hosts)
}

/// The identity of a meshed endpoint, from the control plane's `revmesh`
/// filter metadata (`tlsMode: mtls`, `identity: namespace/serviceaccount`).
fn mesh_identity(e: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let fields = &e.metadata.as_ref()?.filter_metadata.get("revmesh")?.fields;
    let text = |k: &str| match fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    (text("tlsMode").as_deref() == Some("mtls")).then(|| text("identity")).flatten()
}

fn lb_policy(c: &Cluster) -> LbPolicy {
    match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(cluster::LbPolicy::RingHash | cluster::LbPolicy::Maglev) => LbPolicy::RingHash,
        _ => LbPolicy::RoundRobin,
    }
}

/// Builds the tables from everything held. Listeners other than the outbound
/// one are read for their TCP chains and RDS names only.
pub fn build(resources: &Resources) -> Result<ProxyConfig, ConfigError> {
    let empty = BTreeMap::new();
    let of = |t: &str| resources.get(t).unwrap_or(&empty);
    let mut config = ProxyConfig::default();
    let mut assignments: HashMap<String, (Vec<SocketAddr>, FastMap<SocketAddr, String>)> = HashMap::new();
    for (name, any) in of(ENDPOINT_TYPE) {
        let cla: ClusterLoadAssignment = decode("endpoints", name, any)?;
        let (mut eps, mut mtls) = (Vec::new(), FastMap::default());
        for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { continue };
            let Some(addr) = socket(&ep.address) else { continue };
            eps.push(addr);
            if let Some(identity) = mesh_identity(e) {
                mtls.insert(addr, identity);
            }
        }
        assignments.insert(name.clone(), (eps, mtls));
    }
    for (name, any) in of(CLUSTER_TYPE) {
        let c: Cluster = decode("cluster", name, any)?;
        let http2 = c.typed_extension_protocol_options.contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
        // Static clusters (the proxy's own inbound ones) carry their endpoints inline.
        let inline = || -> (Vec<SocketAddr>, FastMap<SocketAddr, String>) {
            let eps = c.load_assignment.iter().flat_map(|l| &l.endpoints).flat_map(|l| &l.lb_endpoints).filter_map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => socket(&ep.address),
                _ => None,
            });
            (eps.collect(), FastMap::default())
        };
        let (endpoints, mtls) = assignments.get(name).cloned().unwrap_or_else(inline);
        config.clusters.insert(
            name.clone(),
            std::sync::Arc::new(ClusterConfig { name: name.clone(), http2, connect_timeout: duration(&c.connect_timeout).unwrap_or(Duration::from_secs(1)), lb: lb_policy(&c), endpoints, mtls, balancer: Default::default() }),
        );
    }
    for (name, any) in of(LISTENER_TYPE) {
        let l: Listener = decode("listener", name, any)?;
        for chain in &l.filter_chains {
            for f in &chain.filters {
                let Some(filter::ConfigType::TypedConfig(typed)) = &f.config_type else { continue };
                let declared_port = (name == INBOUND_LISTENER).then(|| chain.filter_chain_match.as_ref().and_then(|m| m.destination_port.as_ref()).and_then(|p| u16::try_from(p.value).ok())).flatten();
                if let Some(port) = declared_port {
                    if f.name.ends_with("http_connection_manager") {
                        config.inbound_ports.insert(port, DeclaredProtocol::Http);
                    } else if f.name.ends_with("tcp_proxy") {
                        config.inbound_ports.insert(port, DeclaredProtocol::Tcp);
                    }
                }
                if f.name.ends_with("http_connection_manager") {
                    let hcm: HttpConnectionManager = decode("listener", name, typed)?;
                    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                        if !config.route_names.contains(&rds.route_config_name) {
                            config.route_names.push(rds.route_config_name);
                        }
                    }
                } else if f.name.ends_with("tcp_proxy") {
                    let tcp: TcpProxy = decode("listener", name, typed)?;
                    let Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) = tcp.cluster_specifier else { continue };
                    let m = chain.filter_chain_match.as_ref();
                    let port = m.and_then(|m| m.destination_port.as_ref()).and_then(|p| u16::try_from(p.value).ok());
                    let ips: Vec<IpAddr> = m.map(|m| m.prefix_ranges.iter().filter_map(|r| r.address_prefix.parse().ok()).collect()).unwrap_or_default();
                    let Some(port) = port else {
                        return Err(ConfigError::Listener { listener: name.clone(), message: "a TCP chain without a destination port".into() });
                    };
                    for ip in ips {
                        config.tcp.insert(SocketAddr::new(ip, port), cluster.clone());
                    }
                }
            }
        }
    }
    for (name, any) in of(ROUTE_TYPE) {
        let rc: RouteConfiguration = decode("route configuration", name, any)?;
        config.virtual_hosts.extend(route_configuration(&rc)?);
    }
    // A virtual host's IP domains are its service's cluster IP with the
    // port ("10.96.0.10:8080"), or bare for port 80.
    for domain in config.virtual_hosts.iter().flat_map(|v| &v.domains) {
        let destination = domain.parse::<SocketAddr>().ok().or_else(|| domain.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 80)));
        if let Some(destination) = destination {
            config.http_destinations.insert(destination, ());
        }
    }
    Ok(config)
}

/// A Host header or :authority, lowercased (without allocating when it already is), port kept.
fn normalise_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.trim();
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

impl VirtualHost {
    fn matches(&self, host: &str) -> bool {
        self.domains.iter().any(|d| d == "*" || d == host)
    }
}

/// A request's headers as routing reads them, whichever form holds them.
pub trait RequestHeaders {
    /// The first value of the header `name` (any case), if it is visible ASCII.
    fn header(&self, name: &str) -> Option<&str>;
}

impl RequestHeaders for hyper::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl RouteRule {
    fn matches(&self, path: &str, headers: &dyn RequestHeaders) -> bool {
        let path_only = path.split('?').next().unwrap_or(path);
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path_only.starts_with(p.as_str()),
            PathMatch::SegmentPrefix(p) => path_only == p || path_only.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/')),
            PathMatch::Exact(p) => path_only == p,
            PathMatch::Regex(r) => r.is_match(path_only),
        };
        path_ok
            && self.headers.iter().all(|h| {
                let value = headers.header(&h.name);
                match (&h.value, value) {
                    (HeaderValueMatch::Present, v) => v.is_some(),
                    (HeaderValueMatch::Exact(e), Some(v)) => v == e,
                    (HeaderValueMatch::Regex(r), Some(v)) => r.is_match(v),
                    (_, None) => false,
                }
            })
    }
}

impl ProxyConfig {
    /// The route for a request, by host, then path and headers in order.
    pub fn route(&self, host: &str, path: &str, headers: &dyn RequestHeaders) -> Option<&RouteRule> {
        let host = normalise_host(host);
        let vh = self.virtual_hosts.iter().find(|v| v.matches(&host))?;
        vh.routes.iter().find(|r| r.matches(path, headers))
    }
}

/// Picks a cluster from weighted choices with `roll` in 0..total weight.
pub fn pick_weighted(clusters: &[(String, u32)], roll: u64) -> Option<&str> {
    let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut at = roll % total;
    for (name, w) in clusters {
        if at < u64::from(*w) {
            return Some(name);
        }
        at -= u64::from(*w);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, Route, RouteAction, RouteMatch, VirtualHost as EnvoyVh, WeightedCluster};
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn pack<M: Message>(type_url: &str, m: &M) -> Any {
        Any { type_url: type_url.into(), value: m.encode_to_vec() }
    }

    fn route_config(path: route_match::PathSpecifier, headers: Vec<HeaderMatcher>) -> RouteConfiguration {
        let weighted = WeightedCluster {
            clusters: vec![
                ClusterWeight { name: "a".into(), weight: Some(UInt32Value { value: 80 }), ..Default::default() },
                ClusterWeight { name: "b".into(), weight: Some(UInt32Value { value: 20 }), ..Default::default() },
            ],
            ..Default::default()
        };
        RouteConfiguration {
            name: "outbound_http".into(),
            virtual_hosts: vec![EnvoyVh {
                name: "web".into(),
                domains: vec!["web.demo".into(), "web.demo:80".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch { path_specifier: Some(path), headers, ..Default::default() }),
                    action: Some(route::Action::Route(RouteAction { cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(weighted)), ..Default::default() })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn resources(rc: &RouteConfiguration) -> Resources {
        let mut r = Resources::new();
        r.entry(ROUTE_TYPE.into()).or_default().insert(rc.name.clone(), pack(ROUTE_TYPE, rc));
        r
    }

    #[test]
    fn routes_by_host_segment_prefix_and_header() {
        let header = HeaderMatcher {
            name: "X-Canary".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher { match_pattern: Some(string_matcher::MatchPattern::Exact("yes".into())), ..Default::default() })),
            ..Default::default()
        };
        let config = build(&resources(&route_config(route_match::PathSpecifier::PathSeparatedPrefix("/api".into()), vec![header]))).expect("builds");
        let mut headers = hyper::HeaderMap::new();
        assert!(config.route("web.demo", "/api/x", &headers).is_none(), "header missing");
        headers.insert("x-canary", "yes".parse().expect("value"));
        assert!(config.route("WEB.demo:80", "/api/x?q=1", &headers).is_some());
        assert!(config.route("web.demo", "/api", &headers).is_some());
        assert!(config.route("web.demo", "/apix", &headers).is_none(), "segments, not characters");
        assert!(config.route("other.demo", "/api", &headers).is_none());
    }

    #[test]
    fn a_bad_regex_is_refused_with_its_place() {
        let bad = route_config(route_match::PathSpecifier::SafeRegex(RegexMatcher { regex: "([".into(), ..Default::default() }), vec![]);
        let err = build(&resources(&bad)).expect_err("refused");
        assert!(err.to_string().contains("outbound_http") && err.to_string().contains("does not compile"), "{err}");
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let clusters = vec![("a".to_string(), 80), ("b".to_string(), 20)];
        let picks: Vec<&str> = (0..100).filter_map(|i| pick_weighted(&clusters, i)).collect();
        assert_eq!(picks.iter().filter(|p| **p == "a").count(), 80);
        assert_eq!(pick_weighted(&[("z".to_string(), 0)], 5), None);
    }

    /// The protocols the control plane declares: each inbound port by the
    /// filter its chain runs, and outbound HTTP services by the cluster IPs
    /// their virtual hosts list (with the port, or bare for port 80).
    #[test]
    fn declared_protocols_come_from_listeners_and_virtual_hosts() {
        use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
        let chain = |port: u32, filter: &str, typed: Any| FilterChain {
            filter_chain_match: Some(FilterChainMatch { destination_port: Some(UInt32Value { value: port }), ..Default::default() }),
            filters: vec![Filter { name: filter.into(), config_type: Some(filter::ConfigType::TypedConfig(typed)) }],
            ..Default::default()
        };
        let hcm = pack("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", &HttpConnectionManager::default());
        let tcp = pack("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", &TcpProxy { cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("inbound|5432||".into())), ..Default::default() });
        let inbound = Listener { name: INBOUND_LISTENER.into(), filter_chains: vec![chain(8080, "envoy.filters.network.http_connection_manager", hcm), chain(5432, "envoy.filters.network.tcp_proxy", tcp)], ..Default::default() };
        let mut rc = route_config(route_match::PathSpecifier::Prefix("/".into()), vec![]);
        rc.virtual_hosts[0].domains.extend(["10.96.0.10:8080".to_string(), "10.96.0.11".to_string()]);
        let mut r = resources(&rc);
        r.entry(LISTENER_TYPE.into()).or_default().insert(INBOUND_LISTENER.into(), pack(LISTENER_TYPE, &inbound));
        let config = build(&r).expect("builds");
        assert_eq!((config.inbound_protocol(8080), config.inbound_protocol(5432), config.inbound_protocol(9090)), (Some(DeclaredProtocol::Http), Some(DeclaredProtocol::Tcp), None));
        assert!(config.declared_http(&"10.96.0.10:8080".parse().unwrap()) && config.declared_http(&"10.96.0.11:80".parse().unwrap()));
        assert!(!config.declared_http(&"10.96.0.10:80".parse().unwrap()), "web.demo names no address");
        assert!(config.tcp.is_empty(), "the inbound TCP chain is not an outbound TCP service");
    }

    #[test]
    fn undecodable_resources_are_refused() {
        let mut r = Resources::new();
        r.entry(CLUSTER_TYPE.into()).or_default().insert("c".into(), Any { type_url: CLUSTER_TYPE.into(), value: vec![0xff, 0xff, 0xff] });
        assert!(matches!(build(&r), Err(ConfigError::Decode { kind: "cluster", .. })));
    }
}
