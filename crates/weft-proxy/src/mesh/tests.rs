use std::collections::BTreeMap;

use super::*;
use weft_model::ServiceProtocol;

fn spec() -> SidecarSpec {
    SidecarSpec {
        service: "web".into(),
        inbound: "127.0.0.1:0".into(),
        app: "127.0.0.1:8080".into(),
        app_protocol: AppProtocol::Http,
        upstreams: vec![("api".into(), "127.0.0.1:9001".into())],
        trust_domain: "weft.local".into(),
        gateway: Vec::new(),
        gateway_dir: None,
    }
}

fn endpoints(service: &str, list: &[(&str, u16, &str)]) -> String {
    let instances: Vec<Value> = list
        .iter()
        .map(|(a, p, h)| json!({"id": format!("{a}:{p}"), "address": a, "port": p, "health": h}))
        .collect();
    json!({"service": service, "instances": instances}).to_string()
}

#[test]
fn catalog_instances_become_http2_endpoints_without_the_critical_ones() {
    let mut r = BTreeMap::new();
    r.insert(
        "Endpoints/api".to_string(),
        endpoints(
            "api",
            &[
                ("127.0.0.1", 7001, "passing"),
                ("127.0.0.1", 7002, "critical"),
                ("::1", 7003, "unknown"),
            ],
        ),
    );
    let c = sidecar_config(&spec(), &r).unwrap();
    let api = c.service("api").unwrap();
    let addrs: Vec<&str> = api
        .spec
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:7001", "[::1]:7003"]);
    assert_eq!(api.spec.protocol, ServiceProtocol::Http2);
    // The default route sends the outbound listener's traffic to the service.
    let route = c
        .routes
        .iter()
        .find(|r| r.metadata.name == "weft.default.api")
        .unwrap();
    assert_eq!(
        route.spec.parent_refs[0].section_name.as_deref(),
        Some("out-api")
    );
    // The local app keeps its own protocol.
    assert_eq!(
        c.service(LOCAL_APP).unwrap().spec.protocol,
        ServiceProtocol::Http
    );
}

#[test]
fn mesh_routes_attach_to_the_upstream_listener_and_service_settings_are_kept() {
    let mut r = BTreeMap::new();
    r.insert(
        "HTTPRoute/split".to_string(),
        json!({"kind": "HTTPRoute", "metadata": {"name": "split"}, "spec": {
            "parentRefs": [{"kind": "Service", "name": "api"}],
            "rules": [{"backendRefs": [{"name": "api", "weight": 90}, {"name": "api-v2", "weight": 10}]}]}})
        .to_string(),
    );
    r.insert(
        "Service/api".to_string(),
        json!({"kind": "Service", "metadata": {"name": "api"}, "spec": {"retry": {"attempts": 4}}})
            .to_string(),
    );
    r.insert(
        "Endpoints/api".to_string(),
        endpoints("api", &[("127.0.0.1", 7001, "passing")]),
    );
    r.insert(
        "Endpoints/api-v2".to_string(),
        endpoints("api-v2", &[("127.0.0.1", 7002, "passing")]),
    );
    let c = sidecar_config(&spec(), &r).unwrap();
    let route = c
        .routes
        .iter()
        .find(|r| r.metadata.name == "split.api")
        .unwrap();
    assert_eq!(route.spec.rules[0].backend_refs.len(), 2);
    assert!(c
        .routes
        .iter()
        .all(|r| r.metadata.name != "weft.default.api"));
    assert_eq!(c.service("api").unwrap().spec.retry.attempts, 4);
    assert_eq!(c.service("api-v2").unwrap().spec.endpoints.len(), 1);
}

#[test]
fn a_bad_resource_is_refused_with_the_reason() {
    let mut r = BTreeMap::new();
    r.insert(
        "Service/api".to_string(),
        json!({"kind": "Service", "metadata": {"name": "api"}, "spec": {"retry": {"attempts": "many"}}}).to_string(),
    );
    let err = sidecar_config(&spec(), &r).unwrap_err();
    assert!(err.contains("attempts"), "{err}");
    r.insert("Service/api".to_string(), "{not json".to_string());
    assert!(sidecar_config(&spec(), &r)
        .unwrap_err()
        .contains("not JSON"));
}

#[test]
fn the_inbound_listener_and_mesh_services_are_marked_for_mutual_tls() {
    let mut resources = BTreeMap::new();
    resources.insert(
        "Endpoints/api".to_string(),
        endpoints("api", &[("127.0.0.1", 7001, "passing")]),
    );
    resources.insert(
        "Intention/web-api".to_string(),
        json!({"kind": "Intention", "metadata": {"name": "web-api"},
               "spec": {"source": "*", "destination": "web", "action": "allow"}})
        .to_string(),
    );
    let c = sidecar_config(&spec(), &resources).unwrap();
    let inbound = &c.gateways[0].spec.listeners[0];
    assert_eq!(inbound.name, "inbound");
    assert_eq!(
        inbound.mesh.as_ref().map(|m| m.service.as_str()),
        Some("web")
    );
    assert_eq!(
        c.service("api").unwrap().spec.mesh_peer.as_deref(),
        Some("spiffe://weft.local/svc/api")
    );
    assert_eq!(c.service(LOCAL_APP).unwrap().spec.mesh_peer, None);
    assert_eq!(c.intentions.len(), 1);
}

#[test]
fn an_edge_gateway_serves_its_file_and_calls_the_mesh_services_its_routes_name() {
    let gateway = vec![
        json!({"kind": "Gateway", "metadata": {"name": "edge"},
               "spec": {"listeners": [{"name": "web", "address": "127.0.0.1:0", "protocol": "HTTP"}]}}),
        json!({"kind": "HTTPRoute", "metadata": {"name": "shop"},
               "spec": {"parentRefs": [{"name": "edge"}],
                        "rules": [{"backendRefs": [{"name": "api"}, {"name": "legacy"}]}]}}),
        json!({"kind": "Service", "metadata": {"name": "legacy"},
               "spec": {"endpoints": [{"address": "10.0.0.9:80"}]}}),
    ];
    assert_eq!(gateway_upstreams(&gateway), vec!["api".to_string()]);
    let spec = SidecarSpec {
        service: "edge".into(),
        inbound: String::new(),
        app: String::new(),
        app_protocol: AppProtocol::Http,
        upstreams: vec![("api".into(), String::new())],
        trust_domain: "weft.local".into(),
        gateway,
        gateway_dir: None,
    };
    let c = sidecar_config(&spec, &BTreeMap::new()).unwrap();
    assert_eq!(c.gateways.len(), 1);
    assert_eq!(c.gateways[0].metadata.name, "edge");
    assert!(c.gateways[0]
        .spec
        .listeners
        .iter()
        .all(|l| l.mesh.is_none()));
    assert_eq!(
        c.service("api").unwrap().spec.mesh_peer.as_deref(),
        Some("spiffe://weft.local/svc/api")
    );
    assert_eq!(
        c.service("legacy").unwrap().spec.mesh_peer,
        None,
        "outside the mesh"
    );
    assert!(c.service(LOCAL_APP).is_none());
}

#[test]
fn a_tcp_app_gets_a_tcp_inbound_and_tcp_services_get_tcp_outbound_listeners() {
    let mut s = spec();
    s.app_protocol = AppProtocol::Tcp;
    s.upstreams.push(("db".into(), "127.0.0.1:9002".into()));
    let mut r = BTreeMap::new();
    r.insert(
        "Endpoints/api".to_string(),
        endpoints("api", &[("127.0.0.1", 7001, "passing")]),
    );
    let db = json!({"service": "db", "instances": [
        {"id": "db-1", "address": "127.0.0.1", "port": 7002, "health": "passing", "protocol": "tcp"}
    ]});
    r.insert("Endpoints/db".to_string(), db.to_string());
    let c = sidecar_config(&s, &r).unwrap();
    let protocol = |name: &str| {
        c.gateways[0]
            .spec
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.protocol)
            .unwrap()
    };
    assert_eq!(protocol("inbound"), weft_model::ListenerProtocol::TCP);
    assert_eq!(protocol("out-db"), weft_model::ListenerProtocol::TCP);
    assert_eq!(protocol("out-api"), weft_model::ListenerProtocol::HTTP);
    let tcp_routes: Vec<&str> = c
        .tcp_routes
        .iter()
        .map(|r| r.metadata.name.as_str())
        .collect();
    assert_eq!(tcp_routes, ["weft.inbound", "weft.default.db"]);
    // db is still a mesh peer: mutual TLS, its SPIFFE ID checked.
    assert_eq!(
        c.service("db").unwrap().spec.mesh_peer.as_deref(),
        Some("spiffe://weft.local/svc/db")
    );
    assert!(!c.routes.iter().any(|r| r.metadata.name.ends_with(".db")));
}

#[test]
fn path_policies_come_from_the_called_service_else_the_mesh() {
    use weft_model::{EscapedSlashes, PathParameters, PathPolicy};
    let two = SidecarSpec {
        upstreams: vec![
            ("api".into(), "127.0.0.1:9001".into()),
            ("files".into(), "127.0.0.1:9002".into()),
        ],
        ..spec()
    };
    let mut resources = BTreeMap::new();
    resources.insert(
        "Mesh/mesh".to_string(),
        json!({"kind": "Mesh", "metadata": {"name": "mesh"},
               "spec": {"paths": {"pathParameters": "strip"}}})
        .to_string(),
    );
    resources.insert(
        "Service/files".to_string(),
        json!({"kind": "Service", "metadata": {"name": "files"},
               "spec": {"paths": {"escapedSlashes": "keep", "mergeSlashes": false}}})
        .to_string(),
    );
    let c = sidecar_config(&two, &resources).unwrap();
    let paths = |name: &str| {
        c.gateways[0]
            .spec
            .listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap()
            .paths
    };
    let mesh = PathPolicy {
        path_parameters: PathParameters::Strip,
        ..PathPolicy::default()
    };
    assert_eq!(paths("inbound"), mesh, "web has no Service: the mesh's");
    assert_eq!(paths("out-api"), mesh);
    assert_eq!(
        paths("out-files"),
        PathPolicy {
            escaped_slashes: EscapedSlashes::Keep,
            merge_slashes: false,
            path_parameters: PathParameters::Reject,
        },
        "a Service's own policy replaces the mesh's whole"
    );
    let plain = sidecar_config(&spec(), &BTreeMap::new()).unwrap();
    assert!(plain.gateways[0]
        .spec
        .listeners
        .iter()
        .all(|l| l.paths.is_default()));
}
