//! A validated `Config` compiled into what the request path reads: route tables per
//! listener, services with balancers and connection pools, filters ready to apply, and
//! metric handles resolved. A snapshot is immutable; a new configuration builds a new one
//! that is swapped in atomically (`ArcSwap`), so a request sees one version from start to end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use weft_model::{
    Config, FilterType, HeaderModifier, ListenerLimits, ListenerProtocol, PathModifier,
    PathModifierType, ServiceSpec, TlsMode,
};

use crate::balance::{Balancer, Endpoint};
use crate::metrics::{Metrics, RouteStats};
use crate::retry::{Breaker, Budget, Retry};
use crate::router::{MatchError, Matcher, RouteTable};
use crate::stream::StreamTable;
use crate::upstream::{Settings, Upstream, UpstreamTls};

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
    /// How request paths are normalised before anything judges them.
    pub paths: weft_model::PathPolicy,
    /// TLS to terminate (`HTTPS`, and `TLS` in `Terminate` mode), certificates loaded.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The HTTP connection settings derived from `limits`.
    pub http: Arc<HttpBuilder>,
    /// Host/path/header routing (`HTTP`, `HTTPS`).
    pub table: RouteTable<Rule>,
    /// `TCPRoute`s / `TLSRoute`s (`TCP`, `TLS`).
    pub streams: StreamTable,
    /// Metrics for requests that matched no route.
    pub unrouted: Arc<RouteStats>,
    /// A sidecar's inbound listener: mutual TLS and intentions.
    pub mesh: Option<MeshListener>,
}

/// How a sidecar's inbound listener admits callers.
#[derive(Debug, Clone)]
pub struct MeshListener {
    /// Whether plaintext is accepted too.
    pub mode: weft_model::MtlsMode,
    /// The intentions for calls to the sidecar's service.
    pub authz: Arc<crate::authz::Authorizer>,
}

/// TLS state that outlives snapshots: session resumption, and a sidecar's mesh identity.
#[derive(Debug, Clone)]
pub struct TlsContext {
    /// Resumption state shared by every server configuration.
    pub resumption: weft_tls::Resumption,
    /// The mesh identity and trust bundle (sidecars only).
    pub mesh: Option<Arc<weft_tls::mesh::MeshTls>>,
}

impl TlsContext {
    /// A context with fresh resumption state.
    pub fn new(mesh: Option<Arc<weft_tls::mesh::MeshTls>>) -> Result<TlsContext, BuildError> {
        Ok(TlsContext {
            resumption: weft_tls::Resumption::new()
                .map_err(|e| BuildError::Invalid(e.to_string()))?,
            mesh,
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

impl std::fmt::Debug for ListenerRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRoutes")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("table", &self.table)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// HTTP/1.1 + HTTP/2 server settings of a listener.
pub type HttpBuilder = hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

/// Picks one of `items` with probability proportional to its weight (`total` = sum).
pub fn pick_by_weight<T>(items: &[T], total: u64, weight: impl Fn(&T) -> u32) -> Option<&T> {
    match items.len() {
        0 => None,
        1 => items.first(),
        _ => {
            let mut r = fastrand::u64(..total.max(1));
            for i in items {
                let w = u64::from(weight(i));
                if r < w {
                    return Some(i);
                }
                r -= w;
            }
            items.last()
        }
    }
}

/// One compiled `HTTPRoute` rule.
#[derive(Debug)]
pub struct Rule {
    /// `HTTPRoute` name.
    pub route: String,
    /// Filters.
    pub filters: Filters,
    /// Weighted backends (weight 0 entries are dropped).
    pub backends: Vec<Backend>,
    total_weight: u64,
    /// Metrics for replies made without a backend (redirects).
    pub local_stats: Arc<RouteStats>,
    /// The rule's own request timeout, over the service's.
    pub request_timeout: Option<Duration>,
    /// The rule's own per-try timeout, over the service's.
    pub per_try_timeout: Option<Duration>,
    /// The rule's own retry policy, over the service's.
    pub retry: Option<Retry>,
    /// The rule's rate limit.
    pub rate_limit: Option<crate::ratelimit::RateLimiter>,
    /// Faults to inject.
    pub fault: Option<weft_model::Fault>,
}

impl Rule {
    /// Picks a backend by weight.
    pub fn pick_backend(&self) -> Option<&Backend> {
        pick_by_weight(&self.backends, self.total_weight, |b| b.weight)
    }
}

/// A weighted service reference with its metrics.
#[derive(Debug)]
pub struct Backend {
    /// The service.
    pub service: Arc<Service>,
    /// Relative weight.
    pub weight: u32,
    /// Metrics of (listener, route, this service).
    pub stats: Arc<RouteStats>,
}

/// A service: endpoints, balancer, connection pool and resilience settings.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Endpoint selection.
    pub balancer: Balancer,
    /// Connections to the endpoints.
    pub upstream: Upstream,
    /// Until the response headers arrive, retries included.
    pub request_timeout: Duration,
    /// Each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Retry,
    /// Retry budget (kept across reloads while its settings stay).
    pub budget: Arc<Budget>,
    /// Fail-fast limits (in-flight counts kept across reloads).
    pub breaker: Arc<Breaker>,
    /// Outlier detection.
    pub outlier: crate::outlier::Outlier,
    /// The service-wide rate limit.
    pub rate_limit: Option<crate::ratelimit::RateLimiter>,
    /// The adaptive concurrency limit (kept across reloads while its settings stay).
    pub adaptive: Option<Arc<crate::adaptive::Adaptive>>,
    adaptive_settings: Option<weft_model::AdaptiveConcurrency>,
}

impl Service {
    /// Records how an attempt on `endpoint` ended (outlier detection), counting ejections.
    pub fn record(&self, endpoint: &Endpoint, outcome: crate::outlier::Outcome, metrics: &Metrics) {
        match self
            .outlier
            .record(endpoint, self.balancer.endpoints(), outcome)
        {
            Some(Ok(reason)) => {
                tracing::warn!(service = %self.name, endpoint = %endpoint.addr, reason, "endpoint ejected");
                metrics.ejection(&self.name, reason, "ejected");
            }
            Some(Err(reason)) => metrics.ejection(&self.name, reason, "capped"),
            None => {}
        }
    }
}

/// Compiled filters of a rule.
#[derive(Debug, Default)]
pub struct Filters {
    /// Request header edits.
    pub request_headers: Option<HeaderOps>,
    /// Response header edits.
    pub response_headers: Option<HeaderOps>,
    /// Redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Host/path rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Copies sent to another service.
    pub mirror: Option<Mirror>,
}

/// A `RequestMirror` filter.
#[derive(Debug)]
pub struct Mirror {
    /// Where copies go.
    pub service: Arc<Service>,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// Header edits, applied as remove, then set, then add.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Applies the edits.
    pub fn apply(&self, h: &mut http::HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// A compiled path replacement.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched prefix.
    Prefix(String),
}

impl PathRewrite {
    /// The new path; `prefix_len` is the length of the matched prefix.
    pub fn apply(&self, path: &str, prefix_len: Option<usize>) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(replacement) => {
                let rest = path.get(prefix_len.unwrap_or(0)..).unwrap_or("");
                let mut out = String::with_capacity(replacement.len() + rest.len());
                out.push_str(replacement.trim_end_matches('/'));
                if !rest.is_empty() && !rest.starts_with('/') {
                    out.push('/');
                }
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                out
            }
        }
    }
}

/// A compiled redirect.
#[derive(Debug)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: Option<PathRewrite>,
    /// Status.
    pub status: StatusCode,
}

/// A compiled URL rewrite.
#[derive(Debug)]
pub struct Rewrite {
    /// New host header.
    pub hostname: Option<HeaderValue>,
    /// New path.
    pub path: Option<PathRewrite>,
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
        tls: &TlsContext,
    ) -> Result<Snapshot, BuildError> {
        let services: HashMap<String, Arc<Service>> = config
            .services
            .iter()
            .map(|s| {
                let before = previous.and_then(|p| p.services.get(&s.metadata.name));
                Ok((
                    s.metadata.name.clone(),
                    Arc::new(build_service(
                        &config,
                        tls,
                        &s.metadata.name,
                        &s.spec,
                        before.map(|b| &**b),
                    )?),
                ))
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
                let mut table = RouteTable::default();
                for (ri, route) in config.routes.iter().enumerate() {
                    if !l.protocol.is_http() || !attached(&route.spec.parent_refs) {
                        continue;
                    }
                    for (rule_i, rule) in route.spec.rules.iter().enumerate() {
                        let compiled = Arc::new(build_rule(
                            &key,
                            &route.metadata.name,
                            rule,
                            &services,
                            metrics,
                        )?);
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
                let acceptor = match &l.tls {
                    Some(t) if t.mode == TlsMode::Terminate => {
                        let certs = t
                            .certificates
                            .iter()
                            .map(|c| {
                                weft_tls::load_cert(
                                    &config.resolve(&c.cert_file),
                                    &config.resolve(&c.key_file),
                                )
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| BuildError::Invalid(format!("listener {key}: {e}")))?;
                        let alpn: &[&[u8]] = if l.protocol.is_http() {
                            &[weft_tls::ALPN_H2, weft_tls::ALPN_HTTP11]
                        } else {
                            &[]
                        };
                        let config =
                            weft_tls::server_config(&certs, t.strict_sni, alpn, &tls.resumption)
                                .map_err(|e| BuildError::Invalid(format!("listener {key}: {e}")))?;
                        Some(tokio_rustls::TlsAcceptor::from(config))
                    }
                    _ => None,
                };
                let (acceptor, mesh) = match &l.mesh {
                    None => (acceptor, None),
                    Some(m) => {
                        let what = format!("listener {key}");
                        let server = tls
                            .mesh(&what)?
                            .server_config(
                                &[weft_tls::ALPN_H2, weft_tls::ALPN_HTTP11],
                                &tls.resumption,
                            )
                            .map_err(|e| BuildError::Invalid(format!("{what}: {e}")))?;
                        let mesh = MeshListener {
                            mode: config.mtls_mode(&m.service),
                            authz: Arc::new(crate::authz::Authorizer::build(&config, &m.service)?),
                        };
                        (Some(tokio_rustls::TlsAcceptor::from(server)), Some(mesh))
                    }
                };
                let unrouted = Arc::new(metrics.route_stats(&key, "", ""));
                listeners.push((
                    key,
                    ListenerRoutes {
                        protocol: l.protocol,
                        limits: l.limits.clone(),
                        paths: l.paths,
                        tls: acceptor,
                        http: Arc::new(crate::listener::http_builder(&l.limits)),
                        table,
                        streams,
                        unrouted,
                        mesh,
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

fn build_service(
    config: &Config,
    tls: &TlsContext,
    name: &str,
    spec: &ServiceSpec,
    previous: Option<&Service>,
) -> Result<Service, BuildError> {
    let tls = match &spec.mesh_peer {
        Some(peer) => {
            UpstreamTls::mesh(tls.mesh(&format!("service {name}"))?, peer, spec.protocol).map(Some)
        }
        None => spec
            .tls
            .as_ref()
            .map(|t| UpstreamTls::load(config, t, spec.protocol))
            .transpose(),
    }
    .map_err(|e| BuildError::Invalid(format!("service {name}: {e}")))?;
    let settings = Settings {
        protocol: spec.protocol,
        connect_timeout: spec.connect_timeout.get(),
        max_idle: spec.connection_pool.max_idle_per_endpoint,
        idle_timeout: spec.connection_pool.idle_timeout.get(),
        tls,
    };
    // Pools are only valid for the settings they were made with.
    let reusable = previous
        .filter(|p| p.upstream.settings == settings)
        .map(|p| p.balancer.endpoints())
        .unwrap_or(&[]);
    let endpoints = spec
        .endpoints
        .iter()
        .map(|e| {
            let addr: SocketAddr = e
                .address
                .parse()
                .map_err(|_| BuildError::Invalid(format!("bad address {}", e.address)))?;
            Ok(reusable
                .iter()
                .find(|old| old.addr == addr && old.weight == e.weight)
                .cloned()
                .unwrap_or_else(|| Arc::new(Endpoint::new(addr, e.weight))))
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    let balancer = Balancer::new(
        endpoints,
        spec.load_balancer.policy,
        spec.load_balancer.hash_on.as_ref(),
    );

    let breaker = Arc::new(match previous {
        Some(p) => p.breaker.with_limits(&spec.circuit_breaker),
        None => Breaker::new(&spec.circuit_breaker),
    });
    let budget = match previous {
        Some(p) if p.budget.same_settings(&spec.retry.budget) => p.budget.clone(),
        _ => Arc::new(Budget::new(&spec.retry.budget)),
    };
    let upstream = Upstream::new(settings, breaker.clone());
    Ok(Service {
        name: name.to_string(),
        balancer,
        upstream,
        request_timeout: spec.timeouts.request.get(),
        per_try_timeout: spec.timeouts.per_try.map(|d| d.get()),
        retry: Retry::new(&spec.retry),
        budget,
        breaker,
        outlier: crate::outlier::Outlier::new(&spec.outlier_detection),
        rate_limit: spec
            .rate_limit
            .as_ref()
            .map(crate::ratelimit::RateLimiter::new),
        adaptive: spec.adaptive_concurrency.as_ref().map(|c| {
            let same = previous
                .filter(|p| p.adaptive_settings.as_ref() == Some(c))
                .and_then(|p| p.adaptive.clone());
            same.unwrap_or_else(|| Arc::new(crate::adaptive::Adaptive::new(c)))
        }),
        adaptive_settings: spec.adaptive_concurrency.clone(),
    })
}

fn build_rule(
    listener: &str,
    route: &str,
    rule: &weft_model::HttpRouteRule,
    services: &HashMap<String, Arc<Service>>,
    metrics: &Metrics,
) -> Result<Rule, BuildError> {
    let mut filters = Filters::default();
    for f in &rule.filters {
        match f.kind {
            FilterType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    let service = services.get(m.backend_ref.name.as_str()).ok_or_else(|| {
                        BuildError::Invalid(format!("unknown service {}", m.backend_ref.name))
                    })?;
                    filters.mirror = Some(Mirror {
                        service: service.clone(),
                        percent: m.percent,
                    });
                }
            }
            FilterType::RequestHeaderModifier => {
                filters.request_headers = f
                    .request_header_modifier
                    .as_ref()
                    .map(header_ops)
                    .transpose()?
            }
            FilterType::ResponseHeaderModifier => {
                filters.response_headers = f
                    .response_header_modifier
                    .as_ref()
                    .map(header_ops)
                    .transpose()?
            }
            FilterType::RequestRedirect => {
                if let Some(r) = &f.request_redirect {
                    filters.redirect = Some(Redirect {
                        scheme: r.scheme.clone(),
                        hostname: r.hostname.clone(),
                        port: r.port,
                        path: r.path.as_ref().map(path_rewrite),
                        status: StatusCode::from_u16(r.status_code)
                            .map_err(|e| BuildError::Invalid(e.to_string()))?,
                    });
                }
            }
            FilterType::URLRewrite => {
                if let Some(r) = &f.url_rewrite {
                    filters.rewrite = Some(Rewrite {
                        hostname: r
                            .hostname
                            .as_deref()
                            .map(HeaderValue::from_str)
                            .transpose()
                            .map_err(|e| BuildError::Invalid(e.to_string()))?,
                        path: r.path.as_ref().map(path_rewrite),
                    });
                }
            }
        }
    }
    let backends: Vec<Backend> = rule
        .backend_refs
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            let service = services
                .get(b.name.as_str())
                .ok_or_else(|| BuildError::Invalid(format!("unknown service {}", b.name)))?;
            Ok(Backend {
                service: service.clone(),
                weight: b.weight,
                stats: Arc::new(metrics.route_stats(listener, route, &b.name)),
            })
        })
        .collect::<Result<_, BuildError>>()?;
    let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
    let timeouts = rule.timeouts.as_ref();
    Ok(Rule {
        route: route.to_string(),
        filters,
        backends,
        total_weight,
        local_stats: Arc::new(metrics.route_stats(listener, route, "")),
        request_timeout: timeouts.and_then(|t| t.request).map(|d| d.get()),
        per_try_timeout: timeouts.and_then(|t| t.backend_request).map(|d| d.get()),
        retry: rule.retry.as_ref().map(Retry::new),
        rate_limit: rule
            .rate_limit
            .as_ref()
            .map(crate::ratelimit::RateLimiter::new),
        fault: rule.fault.clone(),
    })
}

fn header_ops(m: &HeaderModifier) -> Result<HeaderOps, BuildError> {
    let pair = |h: &weft_model::HeaderValue| -> Result<(HeaderName, HeaderValue), BuildError> {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| BuildError::Invalid(e.to_string()))?,
            HeaderValue::from_str(&h.value).map_err(|e| BuildError::Invalid(e.to_string()))?,
        ))
    };
    Ok(HeaderOps {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes()).map_err(|e| BuildError::Invalid(e.to_string()))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_rewrite(p: &PathModifier) -> PathRewrite {
    match p.kind {
        PathModifierType::ReplaceFullPath => {
            PathRewrite::Full(p.replace_full_path.clone().unwrap_or_else(|| "/".into()))
        }
        PathModifierType::ReplacePrefixMatch => {
            PathRewrite::Prefix(p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PathRewrite;

    #[test]
    fn prefix_replacement_follows_gateway_api_examples() {
        let cases = [
            ("/foo", "/foo/bar", "/xyz", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo", "/foo/", "/xyz", "/xyz/"),
            ("/foo", "/foo/bar", "/", "/bar"),
            ("/foo", "/foo", "/", "/"),
            ("/foo", "/foo/bar", "/xyz/", "/xyz/bar"),
            ("", "/bar", "/xyz", "/xyz/bar"),
        ];
        for (prefix, path, replacement, want) in cases {
            let got = PathRewrite::Prefix(replacement.into()).apply(path, Some(prefix.len()));
            assert_eq!(
                got, want,
                "prefix {prefix} path {path} replacement {replacement}"
            );
        }
    }
}
