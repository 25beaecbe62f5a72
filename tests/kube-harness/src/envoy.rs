//! Real Envoy as the reference xDS client: a bootstrap whose only static
//! cluster is a control plane's ADS on loopback.

/// What differs between the tests' Envoys.
pub struct AdsBootstrap<'a> {
    pub node_id: &'a str,
    pub node_cluster: &'a str,
    /// Entries of the node metadata flow mapping, e.g. `REVMESH_REVISION: "1-25-2"`.
    pub metadata: &'a str,
    pub admin_port: u16,
    pub xds_port: u16,
    /// Delta xDS, or State of the World.
    pub delta: bool,
    /// YAML lines (indented for the xds cluster) such as a TLS transport socket; may be empty.
    pub transport: &'a str,
}

pub fn ads_bootstrap(b: &AdsBootstrap<'_>) -> String {
    ads_bootstrap_authenticated(b, "")
}

/// As [`ads_bootstrap`], with gRPC metadata Envoy sends on every xDS stream
/// (entries of a YAML flow sequence, e.g. `{key: authorization, value: "Bearer …"}`):
/// how a proxy presents its service-account token to the control plane.
pub fn ads_bootstrap_authenticated(b: &AdsBootstrap<'_>, initial_metadata: &str) -> String {
    format!(
        r#"node:
  id: "{node_id}"
  cluster: {node_cluster}
  metadata: {{{metadata}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}, initial_metadata: [{initial_metadata}]}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
{transport}    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]}}]
"#,
        node_id = b.node_id,
        node_cluster = b.node_cluster,
        metadata = b.metadata,
        admin = b.admin_port,
        xds = b.xds_port,
        transport = b.transport,
        api = if b.delta { "DELTA_GRPC" } else { "GRPC" },
        initial_metadata = initial_metadata,
    )
}
