//! Manifests → model → Envoy resources, without sockets.

use control_plane::source::manifests::{read_file, Objects};
use control_plane::translate::{self, cluster_name, ProxyContext, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use control_plane::model::ServiceKey;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use prost::Message;

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]
  notReadyAddresses: [{ip: 10.0.0.3}]
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v2-abc, namespace: shop, labels: {kubernetes.io/service-name: web-v2}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints: [{addresses: [10.0.1.1], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: tcp-postgres, port: 5432}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "yes"}]}]
    backendRefs: [{name: web-v2, port: 80}]
    timeouts: {request: 2s}
    retry: {attempts: 3, codes: [503]}
  - backendRefs: [{name: web, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
"#;

fn model() -> control_plane::model::MeshModel {
    let mut o = Objects::default();
    read_file("mesh.yaml", MESH, &mut o).expect("valid manifests");
    o.into_model()
}

#[test]
fn clusters_endpoints_listener_and_routes() {
    let r = translate::translate(&model(), &ProxyContext::default());
    let web = cluster_name(&ServiceKey::new("shop", "web"), 80);
    assert_eq!(web, "outbound|80||web.shop.svc.cluster.local");
    assert_eq!(r[CLUSTER_TYPE].len(), 3);
    let c = Cluster::decode(r[CLUSTER_TYPE][&web].value.as_slice()).expect("cluster");
    assert!(c.eds_cluster_config.is_some());

    let cla = ClusterLoadAssignment::decode(r[ENDPOINT_TYPE][&web].value.as_slice()).expect("cla");
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2, "only ready addresses, on the named port");
    let v2 = ClusterLoadAssignment::decode(r[ENDPOINT_TYPE][&cluster_name(&ServiceKey::new("shop", "web-v2"), 80)].value.as_slice()).expect("cla");
    assert_eq!(v2.endpoints[0].lb_endpoints.len(), 1, "from the EndpointSlice");

    let rc = RouteConfiguration::decode(r[ROUTE_TYPE]["outbound_http"].value.as_slice()).expect("routes");
    let vh = rc.virtual_hosts.iter().find(|v| v.name == "web.shop.svc.cluster.local:80").expect("web vhost");
    assert!(vh.domains.contains(&"web.shop".to_string()) && vh.domains.contains(&"10.96.0.20:80".to_string()));
    assert_eq!(vh.routes.len(), 2);
    let Some(route::Action::Route(first)) = &vh.routes[0].action else { panic!("route action") };
    assert_eq!(first.timeout.as_ref().map(|d| d.seconds), Some(2));
    assert_eq!(first.retry_policy.as_ref().map(|p| p.retriable_status_codes.clone()), Some(vec![503]));
    assert_eq!(vh.routes[0].r#match.as_ref().map(|m| m.headers.len()), Some(1));
    let Some(route::Action::Route(second)) = &vh.routes[1].action else { panic!("route action") };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &second.cluster_specifier else { panic!("weighted") };
    assert_eq!(w.clusters.iter().map(|c| c.weight.as_ref().map(|w| w.value)).collect::<Vec<_>>(), [Some(90), Some(10)]);
    // A rule that names no retries gets Istio's default: never-delivered
    // requests and 503s are tried again, twice.
    let default = second.retry_policy.as_ref().expect("default retry policy");
    assert_eq!((default.retry_on.as_str(), default.num_retries.as_ref().map(|n| n.value), default.retriable_status_codes.clone()), (translate::DEFAULT_RETRY_ON, Some(2), vec![503]));
    assert!(rc.virtual_hosts.iter().all(|v| !v.name.starts_with("db.")), "TCP services get no virtual host");

    let l = Listener::decode(r[LISTENER_TYPE]["outbound"].value.as_slice()).expect("listener");
    assert_eq!(l.filter_chains.len(), 2, "HTTP chain plus one TCP chain for db");
    assert_eq!(l.listener_filters.len(), 1, "original_dst for captured proxies");
}

#[test]
fn translation_is_deterministic() {
    let a = translate::translate(&model(), &ProxyContext::default());
    let b = translate::translate(&model(), &ProxyContext::default());
    assert_eq!(a, b);
}

#[test]
fn invalid_manifests_name_file_document_object_and_field() {
    let mut o = Objects::default();
    let err = read_file("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: y}\nspec:\n  ports: [{port: 0}]\n", &mut o).expect_err("invalid");
    let text = err.to_string();
    assert!(text.starts_with("bad.yaml: document 0 (Service y/x): spec.ports[0].port"), "{text}");
    let err = read_file("r.yaml", "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: web}]\n  rules: [{backendRefs: []}]\n", &mut o).expect_err("invalid");
    assert!(err.to_string().contains("backendRefs is empty"), "{err}");
    let err = read_file("r.yaml", "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules: []\n", &mut o).expect_err("gateway parent");
    assert!(err.to_string().contains("names no Service"), "{err}");
    assert!(read_file("y.yaml", "kind: [", &mut o).is_err());
    // Other kinds pass through: a folder may hold Deployments too.
    assert!(read_file("d.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", &mut o).is_ok());
}

#[test]
fn gateway_durations() {
    use control_plane::source::manifests::gateway_duration;
    use std::time::Duration;
    assert_eq!(gateway_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(gateway_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(gateway_duration("10"), None);
    assert_eq!(gateway_duration("x"), None);
}

#[test]
fn inbound_listener_for_the_proxys_own_ports() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    let m = model();
    let ctx = ProxyContext::default();
    // 10.0.0.1 backs web (named port http → 8080).
    let own = translate::inbound(&m, &["10.0.0.1".parse().expect("ip")], &ctx);
    assert_eq!(own[CLUSTER_TYPE].keys().collect::<Vec<_>>(), ["inbound|8080||"]);
    let l = Listener::decode(own[LISTENER_TYPE]["inbound"].value.as_slice()).expect("listener");
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(l.filter_chains[0].filter_chain_match.as_ref().and_then(|m| m.destination_port.as_ref()).map(|p| p.value), Some(8080));
    // A proxy that backs nothing, or is not captured, gets no inbound resources.
    assert!(translate::inbound(&m, &["10.9.9.9".parse().expect("ip")], &ctx).is_empty());
    let direct = ProxyContext { captured: false, ..ProxyContext::default() };
    assert!(translate::inbound(&m, &["10.0.0.1".parse().expect("ip")], &direct).is_empty());
}

#[test]
fn injected_pods_mark_their_endpoints_for_mtls_with_their_identity() {
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {revmesh.io/rev: 1-25-2}}\nspec: {serviceAccountName: web}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: shop}\nstatus: {podIP: 10.0.0.2}\n";
    let mut objects = Objects::default();
    read_file("mesh.yaml", MESH, &mut objects).expect("mesh");
    read_file("pods.yaml", pods, &mut objects).expect("pods");
    let model = objects.into_model();
    assert_eq!(model.meshed.len(), 1, "only the injected pod");
    let r = translate::translate(&model, &ProxyContext::default());
    let cla = ClusterLoadAssignment::decode(r[ENDPOINT_TYPE][&cluster_name(&ServiceKey::new("shop", "web"), 80)].value.as_slice()).expect("cla");
    let eps = &cla.endpoints[0].lb_endpoints;
    let meta = |i: usize| eps[i].metadata.as_ref().and_then(|m| m.filter_metadata.get(translate::MESH_METADATA)).map(|s| format!("{:?}", s.fields));
    assert!(meta(0).is_some_and(|m| m.contains("mtls") && m.contains("shop/web")), "{:?}", meta(0));
    assert_eq!(meta(1), None, "a pod without a proxy gets plaintext");
}

#[test]
fn endpoints_are_grouped_by_zone_with_a_weight_per_locality() {
    let slices = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports: [{name: grpc, port: 50051}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: grpc, port: 9000}]
endpoints:
- {addresses: [10.1.0.1], zone: eu-west-1a}
- {addresses: [10.1.0.2], zone: eu-west-1a}
- {addresses: [10.1.0.3], zone: eu-west-1b}
- {addresses: [10.1.0.4], zone: eu-west-1b, conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: api-2, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: grpc, port: 9000}]
endpoints:
- {addresses: [10.1.0.5], topology: {topology.kubernetes.io/zone: eu-west-1c}}
"#;
    let mut o = Objects::default();
    read_file("zones.yaml", slices, &mut o).expect("valid manifests");
    let r = translate::translate(&o.into_model(), &ProxyContext::default());
    let cla = ClusterLoadAssignment::decode(r[ENDPOINT_TYPE][&cluster_name(&ServiceKey::new("shop", "api"), 50051)].value.as_slice()).expect("cla");
    let localities: Vec<(String, Option<u32>, usize)> =
        cla.endpoints.iter().map(|l| (l.locality.clone().unwrap_or_default().zone, l.load_balancing_weight.map(|w| w.value), l.lb_endpoints.len())).collect();
    assert_eq!(
        localities,
        [("eu-west-1a".to_string(), Some(2), 2), ("eu-west-1b".to_string(), Some(1), 1), ("eu-west-1c".to_string(), Some(1), 1)],
        "one locality per zone, weighing its ready endpoints"
    );
    // Endpoints (v1) carry no zone: one locality with an empty zone, still weighted.
    let web = ClusterLoadAssignment::decode(translate::translate(&model(), &ProxyContext::default())[ENDPOINT_TYPE][&cluster_name(&ServiceKey::new("shop", "web"), 80)].value.as_slice()).expect("cla");
    assert_eq!(web.endpoints.len(), 1);
    assert_eq!((web.endpoints[0].locality.clone().map(|l| l.zone), web.endpoints[0].load_balancing_weight.map(|w| w.value)), (Some(String::new()), Some(2)));
}
