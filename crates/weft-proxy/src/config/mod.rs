//! A validated `Config` compiled into what the request path reads: per listener how to
//! accept and where its routes lead, and every service with its balancer and pools. A
//! snapshot is immutable; a new configuration builds a new one that is swapped in
//! atomically ([`SnapshotHandle`]), so a request sees one version from start to end.
//!
//! Each stage compiles its own types ([`Rule::build`], [`service::build`],
//! [`stream::StreamTable::build`], [`Authorizer::build`]); this module only decides what
//! attaches to which listener and carries state over from the running version.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use weft_model::{Config, ListenerLimits, ListenerProtocol, TlsMode};

use crate::http::authz::{Authorizer, MeshListener};
use crate::http::route::Rule;
use crate::http::router::{MatchError, Matcher, RouteTable};
use crate::http::{HttpServer, Routes};
use crate::stream::StreamTable;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{otlp, trace};
use crate::upstream::service::{self, Service};
use crate::upstream::transport::{Network, UpstreamTls};

/// The live configuration, swapped atomically.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// Everything the request path needs, for one configuration version.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was built from (served by `/config`).
    pub config: Arc<Config>,
    /// `gateway/listener` → its routes. A short list: a linear scan with string compares
    /// beats hashing the name on every request.
    pub listeners: Vec<(String, ListenerRoutes)>,
    /// Every service by name (also those no route reaches yet).
    pub services: HashMap<String, Arc<Service>>,
}

impl Snapshot {
    /// The routes of listener `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerRoutes> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l)
    }
}

/// One listener's compiled configuration: how to accept, and where its routes lead.
/// Everything here changes with a reload; only the bound address does not.
pub struct ListenerRoutes {
    /// What clients speak.
    pub protocol: ListenerProtocol,
    /// Bounds on clients.
    pub limits: ListenerLimits,
    /// TLS to terminate (`HTTPS`, and `TLS` in `Terminate` mode), certificates loaded.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The HTTP connection settings derived from `limits`.
    pub server: Arc<HttpServer>,
    /// HTTP routing (`HTTP`, `HTTPS`).
    pub http: Arc<Routes>,
    /// `TCPRoute`s / `TLSRoute`s (`TCP`, `TLS`).
    pub streams: StreamTable,
    /// A sidecar's inbound listener: mutual TLS and intentions.
    pub mesh: Option<MeshListener>,
    /// Mesh: the service whose calls this listener carries (a sidecar's outbound
    /// listener, an edge gateway's).
    pub caller: Option<String>,
}

impl std::fmt::Debug for ListenerRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRoutes")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("http", &self.http)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// What outlives snapshots: TLS session resumption, a sidecar's mesh identity, and the
/// network connections go over (TCP but in tests).
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Resumption state shared by every server configuration.
    pub resumption: weft_tls::Resumption,
    /// The mesh identity and trust bundle (sidecars only).
    pub mesh: Option<Arc<weft_tls::mesh::MeshTls>>,
    /// Where upstream connections go.
    pub network: Network,
}

impl Runtime {
    /// Fresh resumption state, TCP.
    pub fn new(mesh: Option<Arc<weft_tls::mesh::MeshTls>>) -> Result<Runtime, BuildError> {
        Ok(Runtime {
            resumption: weft_tls::Resumption::new()
                .map_err(|e| BuildError::Invalid(e.to_string()))?,
            mesh,
            network: Network::Tcp,
        })
    }

    fn mesh(&self, what: &str) -> Result<&Arc<weft_tls::mesh::MeshTls>, BuildError> {
        self.mesh.as_ref().ok_or_else(|| {
            BuildError::Invalid(format!(
                "{what}: mesh mutual TLS needs a mesh identity (only `weft sidecar` has one)"
            ))
        })
    }
}

/// Why a validated config still failed to compile (should not happen; guards only).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A match did not compile.
    #[error(transparent)]
    Match(#[from] MatchError),
    /// A value did not convert.
    #[error("{0}")]
    Invalid(String),
}

impl Snapshot {
    /// Compiles `config`; metric handles are registered in `metrics`. Endpoints that are
    /// unchanged since `previous` (same service settings, address and weight) are carried
    /// over with their pooled connections and latency history, so a new version does not
    /// cost a burst of reconnects or forget which endpoint is slow.
    pub fn build(
        config: Arc<Config>,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
        rt: &Runtime,
    ) -> Result<Snapshot, BuildError> {
        // Each service, and each of its subsets as a service of its own (`NAME#SUBSET`:
        // the same settings over the endpoints the subset selects), which backends that
        // name the subset send to.
        let services: HashMap<String, Arc<Service>> = config
            .services
            .iter()
            .flat_map(|s| {
                let whole = (s.metadata.name.clone(), std::borrow::Cow::Borrowed(&s.spec));
                let subsets = s.spec.subsets.iter().map(|(subset, labels)| {
                    let mut spec = s.spec.clone();
                    spec.endpoints.retain(|e| e.matches(labels));
                    (
                        weft_model::subset_key(&s.metadata.name, subset),
                        std::borrow::Cow::Owned(spec),
                    )
                });
                std::iter::once(whole).chain(subsets)
            })
            .map(|(name, spec)| {
                let before = previous.and_then(|p| p.services.get(&name));
                let service = build_service(&config, rt, &name, &spec, before.map(|b| &**b))?;
                Ok((name, Arc::new(service)))
            })
            .collect::<Result<_, BuildError>>()?;
        let mut listeners = Vec::new();
        for g in &config.gateways {
            for l in &g.spec.listeners {
                let key = format!("{}/{}", g.metadata.name, l.name);
                let attached = |refs: &[weft_model::ParentRef]| {
                    refs.is_empty()
                        || refs.iter().any(|p| {
                            p.kind == weft_model::ParentKind::Gateway
                                && p.name == g.metadata.name
                                && p.section_name.as_ref().is_none_or(|s| s == &l.name)
                        })
                };
                let caller = l.caller.as_ref().map(|c| c.service.as_str());
                let table = if l.protocol.is_http() {
                    route_table(&config, (&key, caller), &attached, &services, metrics)?
                } else {
                    RouteTable::default()
                };
                let stream_routes = match l.protocol {
                    ListenerProtocol::TCP => &config.tcp_routes[..],
                    ListenerProtocol::TLS => &config.tls_routes[..],
                    _ => &[],
                };
                let streams = StreamTable::build(
                    stream_routes
                        .iter()
                        .filter(|r| attached(&r.spec.parent_refs)),
                    &services,
                );
                let (tls, mesh) = acceptor(&config, rt, &key, l)?;
                let http = Routes {
                    table,
                    unrouted: Arc::new(metrics.route_stats(&key, "", "")),
                    authz: mesh.as_ref().map(|m| m.authz.clone()),
                    paths: l.paths,
                    max_body: l.limits.max_request_body_bytes,
                    body_idle: l.limits.request_body_idle_timeout.get(),
                    tracing: tracing_of(&config, g, l),
                    inbound_edge: l.mesh.as_ref().map(|m| Arc::from(m.service.as_str())),
                };
                listeners.push((
                    key,
                    ListenerRoutes {
                        protocol: l.protocol,
                        limits: l.limits.clone(),
                        tls,
                        server: Arc::new(crate::http::server_settings(&l.limits)),
                        http: Arc::new(http),
                        streams,
                        mesh,
                        caller: l.caller.as_ref().map(|c| c.service.clone()),
                    },
                ));
            }
        }
        Ok(Snapshot {
            config,
            listeners,
            services,
        })
    }
}

/// The `HTTPRoute` rules attached to listener `key`, compiled into its route table.
fn route_table(
    config: &Config,
    (key, caller): (&str, Option<&str>),
    attached: &dyn Fn(&[weft_model::ParentRef]) -> bool,
    services: &HashMap<String, Arc<Service>>,
    metrics: &Metrics,
) -> Result<RouteTable<Rule>, BuildError> {
    let mut table = RouteTable::default();
    for (ri, route) in config.routes.iter().enumerate() {
        if !attached(&route.spec.parent_refs) {
            continue;
        }
        for (rule_i, rule) in route.spec.rules.iter().enumerate() {
            let compiled = Arc::new(
                Rule::build(key, caller, &route.metadata.name, rule, services, metrics)
                    .map_err(BuildError::Invalid)?,
            );
            let default_match = [weft_model::HttpRouteMatch::default()];
            let matches = if rule.matches.is_empty() {
                &default_match[..]
            } else {
                &rule.matches[..]
            };
            for (mi, m) in matches.iter().enumerate() {
                table.add(
                    &route.spec.hostnames,
                    Matcher::compile(m)?,
                    compiled.clone(),
                    (ri, rule_i, mi),
                );
            }
        }
    }
    table.finish();
    Ok(table)
}

/// A listener's tracing: its gateway's `tracing`, else the `Mesh`'s (a sidecar's), else
/// the defaults; a sidecar's outbound listener records client spans.
fn tracing_of(
    config: &Config,
    g: &weft_model::Resource<weft_model::GatewaySpec>,
    l: &weft_model::Listener,
) -> trace::Settings {
    let mesh = config.meshes.first().and_then(|m| m.spec.tracing.as_ref());
    let kind = match &l.caller {
        Some(c) if c.outbound => otlp::Kind::Client,
        _ => otlp::Kind::Server,
    };
    trace::Settings::from_model(g.spec.tracing.as_ref().or(mesh), kind)
}

/// The TLS a listener terminates (its certificates, or a sidecar's mesh identity for its
/// inbound listener), and the mesh admission of a sidecar's inbound listener.
fn acceptor(
    config: &Config,
    rt: &Runtime,
    key: &str,
    l: &weft_model::Listener,
) -> Result<(Option<tokio_rustls::TlsAcceptor>, Option<MeshListener>), BuildError> {
    if let Some(m) = &l.mesh {
        let what = format!("listener {key}");
        let server = rt
            .mesh(&what)?
            .server_config(&[weft_tls::ALPN_H2, weft_tls::ALPN_HTTP11], &rt.resumption)
            .map_err(|e| BuildError::Invalid(format!("{what}: {e}")))?;
        let mesh = MeshListener {
            mode: config.mtls_mode(&m.service),
            authz: Arc::new(Authorizer::build(config, &m.service)?),
        };
        return Ok((Some(tokio_rustls::TlsAcceptor::from(server)), Some(mesh)));
    }
    let Some(t) = l.tls.as_ref().filter(|t| t.mode == TlsMode::Terminate) else {
        return Ok((None, None));
    };
    let certs = t
        .certificates
        .iter()
        .map(|c| weft_tls::load_cert(&config.resolve(&c.cert_file), &config.resolve(&c.key_file)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BuildError::Invalid(format!("listener {key}: {e}")))?;
    let alpn: &[&[u8]] = if l.protocol.is_http() {
        &[weft_tls::ALPN_H2, weft_tls::ALPN_HTTP11]
    } else {
        &[]
    };
    let server = weft_tls::server_config(&certs, t.strict_sni, alpn, &rt.resumption)
        .map_err(|e| BuildError::Invalid(format!("listener {key}: {e}")))?;
    Ok((Some(tokio_rustls::TlsAcceptor::from(server)), None))
}

/// A service with its TLS origination: the mesh's mutual TLS toward another sidecar, or
/// the `tls` the resource asks for (files read now).
fn build_service(
    config: &Config,
    rt: &Runtime,
    name: &str,
    spec: &weft_model::ServiceSpec,
    previous: Option<&Service>,
) -> Result<Service, BuildError> {
    let invalid = |e: String| BuildError::Invalid(format!("service {name}: {e}"));
    let tls = match &spec.mesh_peer {
        Some(peer) => {
            UpstreamTls::mesh(rt.mesh(&format!("service {name}"))?, peer, spec.protocol).map(Some)
        }
        None => spec
            .tls
            .as_ref()
            .map(|t| UpstreamTls::load(config, t, spec.protocol))
            .transpose(),
    }
    .map_err(|e| invalid(e.to_string()))?;
    service::build(tls, &rt.network, name, spec, previous).map_err(invalid)
}
