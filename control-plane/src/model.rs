//! The mesh as the control plane sees it, independent of where it came from
//! (the Kubernetes API or a folder of manifests).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceKey { namespace: namespace.into(), name: name.into() }
    }

    /// `name.namespace.svc.cluster.local`
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// HTTP/2 or gRPC to the backend.
    Http2,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
}

/// One backend address with its named ports (from Endpoints or EndpointSlices).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    /// port name ("" when unnamed) → port number
    pub ports: BTreeMap<String, u16>,
    /// The endpoint's zone (EndpointSlice `zone`): its locality in EDS.
    pub zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
    pub regex: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: ServiceKey,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    /// Envoy retry_on conditions, e.g. "5xx,connect-failure".
    pub on: String,
    /// Base interval between attempts (Gateway API `retry.backoff`).
    pub backoff: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Empty means "match everything".
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<Backend>,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

/// A Gateway API HTTPRoute attached to a Service (the GAMMA mesh model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    pub namespace: String,
    pub name: String,
    /// Services this route applies to, with an optional port.
    pub parents: Vec<(ServiceKey, Option<u16>)>,
    pub rules: Vec<RouteRule>,
}

/// Everything the translator needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshModel {
    pub services: BTreeMap<ServiceKey, Service>,
    pub endpoints: BTreeMap<ServiceKey, Vec<Endpoint>>,
    pub routes: Vec<HttpRoute>,
    /// Addresses of injected pods (label `revmesh.io/rev`), with the
    /// `namespace/serviceaccount` their proxy's certificate names: clients
    /// reach these with mTLS and expect that identity.
    pub meshed: BTreeMap<IpAddr, String>,
}
