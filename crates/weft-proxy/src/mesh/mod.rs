//! Mesh mode: the proxy as a sidecar, configured by the control plane.
//!
//! ```text
//! discovery.rs  stream from `weft server`: deltas of resources (Service, HTTPRoute,
//!               Endpoints) ─► sidecar_config (this file) ─► RunningProxy::apply ─► ACK/NACK
//! live.rs       the live stream beside it: the server asks for windows and taps
//! control_api.rs  a small client of the control plane's HTTP API
//! registration.rs  the local instance in the catalog: register, keep the lease alive,
//!               check the local app's health and report it, deregister on shutdown
//! ```
//!
//! A sidecar's configuration is an ordinary [`Config`], so everything the file-configured
//! proxy does (routing, balancing, retries, breakers, outlier detection) applies between
//! sidecars too:
//! * gateway `sidecar`, listener `inbound` → service `weft.local-app` (the application);
//! * one listener `out-<service>` per declared upstream; the mesh routes attached to that
//!   service (`parentRefs: [{kind: Service, name: ...}]`) are attached to it, or a default
//!   route sends everything to the service;
//! * each mesh service's endpoints are the catalog instances that are not critical, and
//!   between sidecars HTTP travels as HTTP/2 (`protocol: http2`, one shared connection
//!   per peer) over mutual TLS (`mesh_peer`: the SPIFFE ID the far sidecar must prove);
//!   the far sidecar speaks the application's own protocol to it;
//! * the inbound listener is marked `mesh` (mutual TLS, intentions from the slice).
//!
//! An edge gateway (`weft sidecar --gateway FILE`) has no inbound or outbound listeners:
//! its file's Gateway and HTTPRoutes are served instead, and the route backends the file
//! does not define are mesh services, called like a sidecar calls them.
//!
//! `identity.rs`: the sidecar's certificate (CSR to the control plane's CA, renewal).
//! `transparent.rs`: transparent mode (iptables redirection, the original destination,
//! on-demand subscription).

pub mod control_api;
pub mod discovery;
pub mod identity;
pub mod live;
pub mod registration;
pub mod transparent;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use weft_model::{AppProtocol, Config};

/// The name of the local application's service inside a sidecar's configuration.
pub const LOCAL_APP: &str = "weft.local-app";
/// The sidecar's gateway.
pub const GATEWAY: &str = "sidecar";

/// The mesh services whose every registered instance speaks opaque TCP (from the
/// `Endpoints` resources): a sidecar calls them through a TCP listener.
fn tcp_services(resources: &BTreeMap<String, String>) -> std::collections::BTreeSet<String> {
    resources
        .iter()
        .filter_map(|(key, json)| {
            let name = key.strip_prefix("Endpoints/")?;
            let v: Value = serde_json::from_str(json).ok()?;
            let instances = v.get("instances")?.as_array()?;
            let tcp = !instances.is_empty()
                && instances
                    .iter()
                    .all(|i| i.get("protocol").and_then(Value::as_str) == Some("tcp"));
            tcp.then(|| name.to_string())
        })
        .collect()
}

/// How paths of calls to `service` are normalised: its `Service`'s `paths`, else the
/// `Mesh`'s (None: the defaults). The callee's inbound listener and its callers' outbound
/// ones use the same policy, so a caller's sidecar never refuses what the callee admits.
fn path_policy(resources: &BTreeMap<String, String>, service: &str) -> Option<Value> {
    let spec_paths = |key: &str| -> Option<Value> {
        let v: Value = serde_json::from_str(resources.get(key)?).ok()?;
        v.pointer("/spec/paths").filter(|p| !p.is_null()).cloned()
    };
    spec_paths(&format!("Service/{service}")).or_else(|| spec_paths("Mesh/mesh"))
}

/// A route of `kind` named `name` sending everything that reaches the sidecar's listener
/// `listener` to service `to`.
fn catch_all(kind: &str, name: &str, listener: &str, to: &str) -> Value {
    json!({
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": GATEWAY, "sectionName": listener}],
            "rules": [{"backendRefs": [{"name": to}]}],
        },
    })
}

/// What a sidecar is told on its command line.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// The service it stands beside.
    pub service: String,
    /// Inbound listener address (`IP:PORT`; port 0 picks one).
    pub inbound: String,
    /// The local application (`IP:PORT`).
    pub app: String,
    /// The application's protocol.
    pub app_protocol: AppProtocol,
    /// Upstreams: service name → local listener address.
    pub upstreams: Vec<(String, String)>,
    /// The mesh's trust domain (from the CA): mesh services are called over mutual TLS
    /// and must prove `spiffe://<trust domain>/svc/<service>`.
    pub trust_domain: String,
    /// Edge gateway mode (`weft sidecar --gateway FILE`): the file's Gateway, HTTPRoute
    /// and Service documents replace the inbound and outbound listeners, and `upstreams`
    /// name the mesh services its routes reach (their listener addresses are unused).
    pub gateway: Vec<Value>,
    /// The gateway file's directory: its relative certificate paths resolve there.
    pub gateway_dir: Option<std::path::PathBuf>,
}

impl SidecarSpec {
    /// This spec with an edge gateway file's documents (none for a sidecar): the mesh
    /// services to subscribe to are those its routes reach, then the `declared` upstreams.
    pub fn with_gateway(mut self, gateway: Vec<Value>, declared: &[(String, String)]) -> Self {
        self.upstreams = gateway_upstreams(&gateway)
            .into_iter()
            .map(|n| (n, String::new()))
            .chain(declared.iter().cloned())
            .collect();
        self.gateway = gateway;
        self
    }
}

/// The mesh services a gateway file's routes send to: backends it does not define as
/// Services of its own (those, with static endpoints, are outside the mesh).
pub fn gateway_upstreams(docs: &[Value]) -> Vec<String> {
    let defined: std::collections::BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("Service"))
        .filter_map(|d| d.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    let mut out: Vec<String> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("HTTPRoute"))
        .flat_map(|d| {
            d.pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|r| {
                    r.get("backendRefs")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(|b| b.get("name").and_then(Value::as_str))
        })
        .filter(|n| !defined.contains(n))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Builds the sidecar's configuration from the resources the control plane sent
/// (`Kind/name` → JSON). Errors are the model's validation messages.
pub fn sidecar_config(
    spec: &SidecarSpec,
    resources: &BTreeMap<String, String>,
) -> Result<Config, String> {
    let parse = |key: &str, json: &str| -> Result<Value, String> {
        serde_json::from_str(json).map_err(|e| format!("{key}: not JSON: {e}"))
    };
    let mut docs: Vec<Value> = Vec::new();
    let edge = !spec.gateway.is_empty();
    let tcp = tcp_services(resources);
    let protocol_of = |is_tcp: bool| if is_tcp { "TCP" } else { "HTTP" };
    if edge {
        docs.extend(spec.gateway.iter().cloned());
    } else {
        let app_tcp = spec.app_protocol == AppProtocol::Tcp;
        let mut inbound =
            json!({"name": "inbound", "address": spec.inbound, "protocol": protocol_of(app_tcp)});
        if let Some(p) = path_policy(resources, &spec.service) {
            inbound["paths"] = p;
        }
        let mut listeners = vec![inbound];
        for (name, addr) in &spec.upstreams {
            let mut out = json!({
                "name": format!("out-{name}"),
                "address": addr,
                "protocol": protocol_of(tcp.contains(name)),
            });
            if let Some(p) = path_policy(resources, name) {
                out["paths"] = p;
            }
            listeners.push(out);
        }
        docs.push(
            json!({"kind": "Gateway", "metadata": {"name": GATEWAY}, "spec": {"listeners": listeners}}),
        );
        let kind = if app_tcp { "TCPRoute" } else { "HTTPRoute" };
        docs.push(catch_all(kind, "weft.inbound", "inbound", LOCAL_APP));
        let mut app = json!({"endpoints": [{"address": spec.app}]});
        if let Some(p) = spec.app_protocol.http() {
            app["protocol"] = json!(p);
        }
        docs.push(json!({"kind": "Service", "metadata": {"name": LOCAL_APP}, "spec": app}));
    }

    // The inbound policy: the mesh settings and the intentions about calls to us.
    for (key, json) in resources {
        if key.starts_with("Mesh/") || key.starts_with("Intention/") {
            docs.push(parse(key, json)?);
        }
    }
    // Mesh services: the Service resource (if any) with the catalog's endpoints.
    let mut services: BTreeMap<String, Value> = BTreeMap::new();
    let mut mesh_services = std::collections::BTreeSet::new();
    for (key, json) in resources {
        if let Some(name) = key.strip_prefix("Service/") {
            services.insert(name.to_string(), parse(key, json)?);
        }
    }
    for (key, json) in resources {
        let Some(name) = key.strip_prefix("Endpoints/") else {
            continue;
        };
        let endpoints: Vec<Value> = parse(key, json)?
            .get("instances")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|i| i.get("health").and_then(Value::as_str) != Some("critical"))
            .filter_map(|i| {
                let addr = i.get("address")?.as_str()?;
                let port = i.get("port")?.as_u64()?;
                let addr = if addr.contains(':') {
                    format!("[{addr}]:{port}")
                } else {
                    format!("{addr}:{port}")
                };
                // Its metadata: what the Service's subsets select by.
                let metadata = i
                    .get("metadata")
                    .filter(|m| m.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                Some(json!({"address": addr, "metadata": metadata}))
            })
            .collect();
        let service = services
            .entry(name.to_string())
            .or_insert_with(|| json!({"kind": "Service", "metadata": {"name": name}, "spec": {}}));
        let spec_has_static = service
            .pointer("/spec/endpoints")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if !endpoints.is_empty() || !spec_has_static {
            service["spec"]["endpoints"] = Value::Array(endpoints);
            // Peer sidecars: HTTP/2 over one shared connection, mutual TLS.
            service["spec"]["protocol"] = json!("http2");
            mesh_services.insert(name.to_string());
        }
    }
    // An edge gateway's own routes reach the mesh services directly.
    if edge {
        for (name, _) in &spec.upstreams {
            if !services.contains_key(name) {
                services.insert(name.clone(), json!({"kind": "Service", "metadata": {"name": name}, "spec": {"protocol": "http2"}}));
                mesh_services.insert(name.clone());
            }
        }
    }
    // Mesh routes, attached to the outbound listener of each upstream they apply to.
    for (name, _) in spec.upstreams.iter().filter(|_| !edge) {
        let (default_route, listener) = (format!("weft.default.{name}"), format!("out-{name}"));
        // A TCP upstream: its listener sends every connection to the service (HTTP
        // routes cannot apply to opaque bytes).
        if tcp.contains(name) {
            docs.push(catch_all("TCPRoute", &default_route, &listener, name));
            continue;
        }
        let mut attached = false;
        for (key, json) in resources {
            if !key.starts_with("HTTPRoute/") {
                continue;
            }
            let mut route = parse(key, json)?;
            let applies = route
                .pointer("/spec/parentRefs")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter().any(|p| {
                        p.get("kind").and_then(Value::as_str) == Some("Service")
                            && p.get("name").and_then(Value::as_str) == Some(name)
                    })
                });
            if !applies {
                continue;
            }
            let route_name = route
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            route["metadata"]["name"] = json!(format!("{route_name}.{name}"));
            route["spec"]["parentRefs"] = json!([{"name": GATEWAY, "sectionName": listener}]);
            docs.push(route);
            attached = true;
        }
        if !attached {
            docs.push(catch_all("HTTPRoute", &default_route, &listener, name));
            if !services.contains_key(name) {
                services.insert(name.clone(), json!({"kind": "Service", "metadata": {"name": name}, "spec": {"protocol": "http2"}}));
                mesh_services.insert(name.clone());
            }
        }
    }
    docs.extend(services.into_values());
    let text = docs
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut config = weft_model::parse("control-plane", &text).map_err(|e| e.to_string())?;
    config.base_dir = spec.gateway_dir.clone();
    // What no file may say: the inbound listener is the mesh's, and peers prove who
    // they are.
    // Whose calls each listener carries (per-edge metrics, span kinds): the sidecar's
    // outbound listeners and an edge gateway's listeners are its own service's calls.
    for g in &mut config.gateways {
        for l in &mut g.spec.listeners {
            if !edge && l.name == "inbound" {
                l.mesh = Some(weft_model::MeshInbound {
                    service: spec.service.clone(),
                });
            } else {
                l.caller = Some(weft_model::MeshCaller {
                    service: spec.service.clone(),
                    outbound: !edge,
                });
            }
        }
    }
    for s in &mut config.services {
        if mesh_services.contains(&s.metadata.name) {
            if s.spec.tls.is_some() {
                return Err(format!(
                    "Service {}: spec.tls: calls between sidecars use the mesh's mutual TLS; \
                     `tls` is for services outside the mesh (static endpoints)",
                    s.metadata.name
                ));
            }
            s.spec.mesh_peer = Some(weft_tls::spiffe::service_id(
                &spec.trust_domain,
                &s.metadata.name,
            ));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
