//! `/debug/config_dump?proxy=ID`: what a connected proxy is served, as JSON an
//! operator can read (the way `istioctl proxy-config` reads Envoy's dump).
//!
//! envoy-types has no serde support, so each resource is shown as its name,
//! version and a summary of the fields translation sets; `&format=text` gives
//! the complete decoded protobuf instead.

use crate::translate::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use crate::xds::{format_version, ProxyResources, TYPE_ORDER};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, route_match, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_connection_manager, HttpConnectionManager};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::{json, Value};

fn seconds(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Value {
    d.as_ref().map_or(Value::Null, |d| json!(d.seconds as f64 + f64::from(d.nanos) / 1e9))
}

fn socket(a: &Option<envoy_types::pb::envoy::config::core::v3::Address>) -> String {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
            _ => s.address.clone(),
        },
        _ => String::new(),
    }
}

fn cluster(c: &Cluster) -> Value {
    json!({
        "name": c.name,
        "discovery": if c.eds_cluster_config.is_some() { "EDS" } else { "other" },
        "connectTimeoutSeconds": seconds(&c.connect_timeout),
        "http2Upstream": c.typed_extension_protocol_options.contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
    })
}

fn endpoints(cla: &ClusterLoadAssignment) -> Value {
    let hosts: Vec<String> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => Some(socket(&ep.address)),
            _ => None,
        })
        .collect();
    json!({"clusterName": cla.cluster_name, "endpoints": hosts})
}

fn network_filter(f: &envoy_types::pb::envoy::config::listener::v3::Filter) -> Value {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { return json!({"name": f.name}) };
    if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
        if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            return json!({"name": f.name, "rds": rds.route_config_name});
        }
    }
    if f.name.ends_with("tcp_proxy") {
        if let Ok(tcp) = TcpProxy::decode(any.value.as_slice()) {
            if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = tcp.cluster_specifier {
                return json!({"name": f.name, "cluster": c});
            }
        }
    }
    json!({"name": f.name})
}

fn listener(l: &Listener) -> Value {
    let chains: Vec<Value> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.as_ref();
            json!({
                "destinationPort": m.and_then(|m| m.destination_port.as_ref()).map(|p| p.value),
                "prefixRanges": m.map(|m| m.prefix_ranges.iter().map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.as_ref().map_or(0, |p| p.value))).collect::<Vec<_>>()),
                "filters": c.filters.iter().map(network_filter).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut out = json!({
        "name": l.name,
        "address": socket(&l.address),
        "listenerFilters": l.listener_filters.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "filterChains": chains,
    });
    // A proxyless gRPC client's listener: no address, its routes inline.
    if let Some(any) = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()) {
        out["apiListener"] = match HttpConnectionManager::decode(any.value.as_slice()).map(|h| h.route_specifier) {
            Ok(Some(http_connection_manager::RouteSpecifier::RouteConfig(rc))) => json!({"routes": routes(&rc)}),
            Ok(Some(http_connection_manager::RouteSpecifier::Rds(rds))) => json!({"rds": rds.route_config_name}),
            Ok(_) => json!({}),
            Err(e) => json!({"error": format!("does not decode: {e}")}),
        };
    }
    out
}

fn routes(rc: &RouteConfiguration) -> Value {
    let hosts: Vec<Value> = rc
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes: Vec<Value> = vh
                .routes
                .iter()
                .map(|r| {
                    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                        Some(route_match::PathSpecifier::Prefix(p)) => format!("prefix {p}"),
                        Some(route_match::PathSpecifier::Path(p)) => format!("exact {p}"),
                        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => format!("prefix {p}/"),
                        Some(route_match::PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
                        _ => String::new(),
                    };
                    let headers: Vec<String> = r.r#match.iter().flat_map(|m| &m.headers).map(|h| h.name.clone()).collect();
                    let (clusters, timeout, retries, max_stream) = match &r.action {
                        Some(route::Action::Route(a)) => {
                            let clusters = match &a.cluster_specifier {
                                Some(route_action::ClusterSpecifier::Cluster(c)) => json!([{"cluster": c, "weight": 1}]),
                                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                                    json!(w.clusters.iter().map(|c| json!({"cluster": c.name, "weight": c.weight.as_ref().map_or(0, |w| w.value)})).collect::<Vec<_>>())
                                }
                                _ => Value::Null,
                            };
                            let max_stream = a.max_stream_duration.as_ref().map(|d| seconds(&d.max_stream_duration));
                            (clusters, seconds(&a.timeout), a.retry_policy.as_ref().and_then(|p| p.num_retries.as_ref()).map(|n| n.value), max_stream)
                        }
                        _ => (Value::Null, Value::Null, None, None),
                    };
                    let mut route = json!({"path": path, "headers": headers, "clusters": clusters, "timeoutSeconds": timeout, "retries": retries});
                    // gRPC's deadline for the route (API listeners only).
                    if let Some(d) = max_stream {
                        route["maxStreamDurationSeconds"] = d;
                    }
                    route
                })
                .collect();
            json!({"name": vh.name, "domains": vh.domains, "routes": routes})
        })
        .collect();
    json!({"name": rc.name, "virtualHosts": hosts})
}

fn summary(type_url: &str, any: &Any) -> Value {
    let bytes = any.value.as_slice();
    let decoded = match type_url {
        CLUSTER_TYPE => Cluster::decode(bytes).map(|c| cluster(&c)),
        ENDPOINT_TYPE => ClusterLoadAssignment::decode(bytes).map(|c| endpoints(&c)),
        LISTENER_TYPE => Listener::decode(bytes).map(|l| listener(&l)),
        ROUTE_TYPE => RouteConfiguration::decode(bytes).map(|r| routes(&r)),
        _ => return Value::Null,
    };
    decoded.unwrap_or_else(|e| json!({"error": format!("does not decode: {e}")}))
}

fn full_text(type_url: &str, any: &Any) -> String {
    let bytes = any.value.as_slice();
    let text = match type_url {
        CLUSTER_TYPE => Cluster::decode(bytes).map(|m| format!("{m:#?}")),
        ENDPOINT_TYPE => ClusterLoadAssignment::decode(bytes).map(|m| format!("{m:#?}")),
        LISTENER_TYPE => Listener::decode(bytes).map(|m| format!("{m:#?}")),
        ROUTE_TYPE => RouteConfiguration::decode(bytes).map(|m| format!("{m:#?}")),
        _ => Ok(format!("{} bytes of {type_url}", bytes.len())),
    };
    text.unwrap_or_else(|e| format!("does not decode: {e}"))
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// JSON: `{ "modelVersion", "resources": { "<Type>": [ {name, version, summary} ] } }`.
pub fn json_dump(proxy_id: &str, resources: &ProxyResources) -> Value {
    let mut by_type = serde_json::Map::new();
    for type_url in TYPE_ORDER {
        let items: Vec<Value> =
            resources.iter(type_url).map(|(name, any, version)| json!({"name": name, "version": format_version(version), "summary": summary(type_url, any)})).collect();
        by_type.insert(short(type_url).to_string(), Value::Array(items));
    }
    json!({"proxy": proxy_id, "modelVersion": resources.shared.version, "resources": by_type})
}

/// Every resource, decoded in full.
pub fn text_dump(proxy_id: &str, resources: &ProxyResources) -> String {
    let mut out = format!("# proxy {proxy_id}, model version {}\n", resources.shared.version);
    for type_url in TYPE_ORDER {
        for (name, any, version) in resources.iter(type_url) {
            out.push_str(&format!("\n## {} {name} (version {})\n{}\n", short(type_url), format_version(version), full_text(type_url, any)));
        }
    }
    out
}
