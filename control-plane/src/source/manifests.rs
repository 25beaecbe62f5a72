//! Kubernetes manifests (Service, Endpoints, EndpointSlice, HTTPRoute) read into
//! the [`MeshModel`]. Pure: text in, model or positioned errors out. Used by the
//! folder source; the Kubernetes source feeds the same conversion functions.

use crate::model::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// What was wrong with which object of which file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}{object}: {message}")]
pub struct ManifestError {
    pub file: String,
    /// 0-based index of the YAML document in the file.
    pub document: usize,
    /// ` (Kind namespace/name)` when known.
    pub object: String,
    pub message: String,
}

/// Objects gathered from manifests before they are joined into a model.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub services: Vec<Service>,
    /// From v1 Endpoints or EndpointSlices, keyed by service.
    pub endpoints: BTreeMap<ServiceKey, Vec<Endpoint>>,
    pub routes: Vec<HttpRoute>,
    /// Injected pods' IPs → `namespace/serviceaccount`.
    pub meshed: BTreeMap<std::net::IpAddr, String>,
}

impl Objects {
    /// Joins the objects; a route or endpoint naming an unknown service is kept
    /// (the service may arrive later) and simply has no effect until it does.
    pub fn into_model(self) -> MeshModel {
        let mut model = MeshModel::default();
        for s in self.services {
            model.services.insert(s.key.clone(), s);
        }
        model.endpoints = self.endpoints;
        for eps in model.endpoints.values_mut() {
            eps.sort();
            eps.dedup();
        }
        model.routes = self.routes;
        model.meshed = self.meshed;
        model.routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        model
    }
}

/// Reads every document of one file into `objects`. Unknown kinds are ignored
/// (a folder may hold Deployments too); known kinds must be valid.
pub fn read_file(file: &str, text: &str, objects: &mut Objects) -> Result<(), ManifestError> {
    for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |object: String, message: String| ManifestError { file: file.into(), document, object, message };
        let value: Value = serde::Deserialize::deserialize(de).map_err(|e| err(String::new(), format!("not valid YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let items: Vec<&Value> = if value["kind"] == "List" { value["items"].as_array().map(|a| a.iter().collect()).unwrap_or_default() } else { vec![&value] };
        for item in items {
            let kind = item["kind"].as_str().unwrap_or("");
            let ns = item["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = item["metadata"]["name"].as_str().unwrap_or("");
            let object = format!(" ({kind} {ns}/{name})");
            if name.is_empty() && matches!(kind, "Service" | "Endpoints" | "EndpointSlice" | "HTTPRoute") {
                return Err(err(object, "metadata.name is missing".into()));
            }
            let result = match kind {
                "Service" => service(item, ns, name).map(|s| objects.services.push(s)),
                "Endpoints" => endpoints(item, ns, name).map(|e| {
                    objects.endpoints.entry(ServiceKey::new(ns, name)).or_default().extend(e);
                }),
                "EndpointSlice" => endpoint_slice(item, ns).map(|(svc, e)| objects.endpoints.entry(svc).or_default().extend(e)),
                "HTTPRoute" => http_route(item, ns, name).map(|r| objects.routes.push(r)),
                "Pod" => meshed_pod(item, ns).map(|found| objects.meshed.extend(found)),
                _ => Ok(()),
            };
            result.map_err(|m| err(object, m))?;
        }
    }
    Ok(())
}

fn port_number(v: &Value, field: &str) -> Result<u16, String> {
    v.as_u64().filter(|p| (1..=65535).contains(p)).map(|p| p as u16).ok_or_else(|| format!("{field} must be a port number from 1 to 65535, found {v}"))
}

/// Istio's convention, so existing Services need no change: appProtocol wins,
/// then the port name's prefix (`http-`, `http2-`, `grpc-`, `tcp-`); HTTP otherwise.
fn protocol(app_protocol: Option<&str>, name: &str) -> Protocol {
    let hint = app_protocol.unwrap_or_else(|| name.split('-').next().unwrap_or(""));
    match hint.to_ascii_lowercase().as_str() {
        "tcp" | "mongo" | "mysql" | "redis" | "tls" | "https" => Protocol::Tcp,
        "http2" | "grpc" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
        _ => Protocol::Http,
    }
}

/// An injected pod's addresses and identity; nothing for other pods or pods
/// without an IP yet.
pub fn meshed_pod(v: &Value, ns: &str) -> Result<Vec<(std::net::IpAddr, String)>, String> {
    if v["metadata"]["labels"]["revmesh.io/rev"].as_str().is_none() {
        return Ok(Vec::new());
    }
    let sa = v["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    let mut ips: Vec<&str> = v["status"]["podIPs"].as_array().map(|a| a.iter().filter_map(|i| i["ip"].as_str()).collect()).unwrap_or_default();
    if let Some(ip) = v["status"]["podIP"].as_str() {
        ips.push(ip);
    }
    ips.into_iter()
        .map(|ip| ip.parse().map(|ip| (ip, format!("{ns}/{sa}"))).map_err(|_| format!("status.podIP {ip:?} is not an IP address")))
        .collect()
}

pub fn service(v: &Value, ns: &str, name: &str) -> Result<Service, String> {
    let spec = &v["spec"];
    let cluster_ip = match spec["clusterIP"].as_str() {
        None | Some("") | Some("None") => None,
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| format!("spec.clusterIP {ip:?} is not an IP address"))?),
    };
    let mut ports = Vec::new();
    for (i, p) in spec["ports"].as_array().into_iter().flatten().enumerate() {
        let port = port_number(&p["port"], &format!("spec.ports[{i}].port"))?;
        let pname = p["name"].as_str().unwrap_or("").to_string();
        let target_port = match &p["targetPort"] {
            Value::Null => TargetPort::Number(port),
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) => TargetPort::Number(n),
                Err(_) => TargetPort::Name(s.clone()),
            },
            other => TargetPort::Number(port_number(other, &format!("spec.ports[{i}].targetPort"))?),
        };
        if let Some(proto) = p["protocol"].as_str() {
            if proto != "TCP" {
                continue; // UDP and SCTP are not proxied
            }
        }
        ports.push(ServicePort { protocol: protocol(p["appProtocol"].as_str(), &pname), name: pname, port, target_port });
    }
    if ports.is_empty() {
        return Err("spec.ports has no TCP port".into());
    }
    Ok(Service { key: ServiceKey::new(ns, name), cluster_ip, ports })
}

fn endpoint_ports(ports: &Value, field: &str) -> Result<BTreeMap<String, u16>, String> {
    let mut out = BTreeMap::new();
    for (i, p) in ports.as_array().into_iter().flatten().enumerate() {
        if p["protocol"].as_str().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        out.insert(p["name"].as_str().unwrap_or("").to_string(), port_number(&p["port"], &format!("{field}[{i}].port"))?);
    }
    Ok(out)
}

fn ip(v: &Value, field: &str) -> Result<IpAddr, String> {
    let s = v.as_str().ok_or_else(|| format!("{field} is missing"))?;
    s.parse().map_err(|_| format!("{field} {s:?} is not an IP address"))
}

pub fn endpoints(v: &Value, _ns: &str, _name: &str) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for (si, subset) in v["subsets"].as_array().into_iter().flatten().enumerate() {
        let ports = endpoint_ports(&subset["ports"], &format!("subsets[{si}].ports"))?;
        for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for (ai, a) in subset[field].as_array().into_iter().flatten().enumerate() {
                out.push(Endpoint { ip: ip(&a["ip"], &format!("subsets[{si}].{field}[{ai}].ip"))?, ready, ports: ports.clone(), zone: None });
            }
        }
    }
    Ok(out)
}

pub fn endpoint_slice(v: &Value, ns: &str) -> Result<(ServiceKey, Vec<Endpoint>), String> {
    let service = v["metadata"]["labels"]["kubernetes.io/service-name"]
        .as_str()
        .ok_or("metadata.labels[kubernetes.io/service-name] is missing: an EndpointSlice must name its Service")?;
    let ports = endpoint_ports(&v["ports"], "ports")?;
    let mut out = Vec::new();
    for (ei, e) in v["endpoints"].as_array().into_iter().flatten().enumerate() {
        let ready = e["conditions"]["ready"].as_bool().unwrap_or(true);
        // discovery.k8s.io/v1 says `zone`; v1beta1 (Kubernetes 1.20) said it in `topology`.
        let zone = e["zone"].as_str().or_else(|| e["topology"]["topology.kubernetes.io/zone"].as_str()).filter(|z| !z.is_empty()).map(str::to_string);
        for (ai, a) in e["addresses"].as_array().into_iter().flatten().enumerate() {
            out.push(Endpoint { ip: ip(a, &format!("endpoints[{ei}].addresses[{ai}]"))?, ready, ports: ports.clone(), zone: zone.clone() });
        }
    }
    Ok((ServiceKey::new(ns, service), out))
}

/// Gateway API durations: `10s`, `500ms`, `1m`, `1h`, or combinations like `1m30s`.
pub fn gateway_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") { (Duration::from_millis(1), 2) } else {
            match rest.chars().next()? {
                'h' => (Duration::from_secs(3600), 1),
                'm' => (Duration::from_secs(60), 1),
                's' => (Duration::from_secs(1), 1),
                _ => return None,
            }
        };
        total += unit * n as u32;
        rest = &rest[len..];
    }
    Some(total)
}

pub fn http_route(v: &Value, ns: &str, name: &str) -> Result<HttpRoute, String> {
    let spec = &v["spec"];
    let mut parents = Vec::new();
    for (i, p) in spec["parentRefs"].as_array().into_iter().flatten().enumerate() {
        let kind = p["kind"].as_str().unwrap_or("Gateway");
        let group = p["group"].as_str().unwrap_or("gateway.networking.k8s.io");
        if kind != "Service" || !(group.is_empty() || group == "core") {
            continue; // attached to a Gateway: not a mesh route
        }
        let pname = p["name"].as_str().ok_or(format!("spec.parentRefs[{i}].name is missing"))?;
        let pns = p["namespace"].as_str().unwrap_or(ns);
        let port = match &p["port"] {
            Value::Null => None,
            other => Some(port_number(other, &format!("spec.parentRefs[{i}].port"))?),
        };
        parents.push((ServiceKey::new(pns, pname), port));
    }
    if parents.is_empty() {
        return Err("spec.parentRefs names no Service (kind: Service, group: \"\"): mesh routes attach to Services".into());
    }
    let mut rules = Vec::new();
    for (ri, r) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let at = format!("spec.rules[{ri}]");
        let mut matches = Vec::new();
        for (mi, m) in r["matches"].as_array().into_iter().flatten().enumerate() {
            let path = match m.get("path") {
                None => None,
                Some(p) => {
                    let value = p["value"].as_str().unwrap_or("/").to_string();
                    Some(match p["type"].as_str().unwrap_or("PathPrefix") {
                        "PathPrefix" => PathMatch::Prefix(value),
                        "Exact" => PathMatch::Exact(value),
                        "RegularExpression" => PathMatch::Regex(value),
                        other => return Err(format!("{at}.matches[{mi}].path.type {other:?} is not PathPrefix, Exact or RegularExpression")),
                    })
                }
            };
            let mut headers = Vec::new();
            for (hi, h) in m["headers"].as_array().into_iter().flatten().enumerate() {
                let hname = h["name"].as_str().ok_or(format!("{at}.matches[{mi}].headers[{hi}].name is missing"))?;
                let value = h["value"].as_str().ok_or(format!("{at}.matches[{mi}].headers[{hi}].value is missing"))?;
                let regex = match h["type"].as_str().unwrap_or("Exact") {
                    "Exact" => false,
                    "RegularExpression" => true,
                    other => return Err(format!("{at}.matches[{mi}].headers[{hi}].type {other:?} is not Exact or RegularExpression")),
                };
                headers.push(HeaderMatch { name: hname.to_ascii_lowercase(), value: value.into(), regex });
            }
            matches.push(RouteMatch { path, headers });
        }
        let mut backends = Vec::new();
        for (bi, b) in r["backendRefs"].as_array().into_iter().flatten().enumerate() {
            let bname = b["name"].as_str().ok_or(format!("{at}.backendRefs[{bi}].name is missing"))?;
            let bns = b["namespace"].as_str().unwrap_or(ns);
            let port = port_number(&b["port"], &format!("{at}.backendRefs[{bi}].port"))?;
            let weight = match &b["weight"] {
                Value::Null => 1,
                w => w.as_u64().filter(|w| *w <= 1_000_000).ok_or(format!("{at}.backendRefs[{bi}].weight must be 0..1000000"))? as u32,
            };
            backends.push(Backend { service: ServiceKey::new(bns, bname), port, weight });
        }
        if backends.is_empty() {
            return Err(format!("{at}.backendRefs is empty: name at least one Service and port"));
        }
        if backends.iter().all(|b| b.weight == 0) {
            return Err(format!("{at}.backendRefs all have weight 0"));
        }
        let timeout = match r["timeouts"]["request"].as_str() {
            None => None,
            Some(t) => Some(gateway_duration(t).ok_or(format!("{at}.timeouts.request {t:?} is not a duration like 10s or 500ms"))?),
        };
        let retry = match r.get("retry") {
            None => None,
            Some(rt) => {
                let attempts = rt["attempts"].as_u64().unwrap_or(1).min(10) as u32;
                let on = match rt["codes"].as_array() {
                    Some(codes) if !codes.is_empty() => {
                        let list: Vec<String> = codes.iter().filter_map(Value::as_u64).map(|c| c.to_string()).collect();
                        format!("connect-failure,retriable-status-codes:{}", list.join(","))
                    }
                    _ => "5xx,connect-failure,reset".into(),
                };
                let backoff = match rt["backoff"].as_str() {
                    None => None,
                    Some(b) => Some(gateway_duration(b).ok_or(format!("{at}.retry.backoff {b:?} is not a duration"))?),
                };
                Some(Retry { attempts, on, backoff })
            }
        };
        rules.push(RouteRule { matches, backends, timeout, retry });
    }
    if rules.is_empty() {
        return Err("spec.rules is empty".into());
    }
    Ok(HttpRoute { namespace: ns.into(), name: name.into(), parents, rules })
}
