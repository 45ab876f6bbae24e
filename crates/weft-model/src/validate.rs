//! Semantic checks that serde cannot express: names resolve, regexes compile, header names
//! are legal, filters are consistent with matches. Each error is mapped back to its line.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::yaml::Document;
use crate::*;

/// The document each resource came from, parallel to the vectors of `Config`.
#[derive(Default)]
pub(crate) struct Origins<'a> {
    pub gateways: Vec<&'a Document>,
    pub routes: Vec<&'a Document>,
    pub services: Vec<&'a Document>,
    pub tcp_routes: Vec<&'a Document>,
    pub tls_routes: Vec<&'a Document>,
    pub meshes: Vec<&'a Document>,
    pub intentions: Vec<&'a Document>,
}

pub(crate) struct Report<'a> {
    file: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Report<'_> {
    pub(crate) fn at(
        &mut self,
        doc: &Document,
        kind: &str,
        name: &str,
        field: String,
        message: String,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: doc.lines.line_of(&field).or(Some(doc.start_line)),
            field: format!("{kind}/{name}: {field}"),
            message,
        });
    }
}

pub(crate) fn validate(file: &str, c: &Config, o: &Origins<'_>, errors: &mut Vec<ConfigError>) {
    let mut r = Report { file, errors };
    fn names<S>(rs: &[Resource<S>]) -> Vec<&String> {
        rs.iter().map(|r| &r.metadata.name).collect()
    }
    for (kind, names, docs) in [
        ("Gateway", names(&c.gateways), &o.gateways),
        ("HTTPRoute", names(&c.routes), &o.routes),
        ("Service", names(&c.services), &o.services),
        ("TCPRoute", names(&c.tcp_routes), &o.tcp_routes),
        ("TLSRoute", names(&c.tls_routes), &o.tls_routes),
        ("Mesh", names(&c.meshes), &o.meshes),
        ("Intention", names(&c.intentions), &o.intentions),
    ] {
        unique_names(&mut r, kind, names.into_iter(), docs);
    }

    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    for (g, doc) in c.gateways.iter().zip(&o.gateways) {
        let name = &g.metadata.name;
        if g.spec.listeners.is_empty() {
            r.at(
                doc,
                "Gateway",
                name,
                "spec.listeners".into(),
                "needs at least one listener".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, l) in g.spec.listeners.iter().enumerate() {
            let at = format!("spec.listeners[{i}]");
            if !seen.insert(&l.name) {
                r.at(
                    doc,
                    "Gateway",
                    name,
                    format!("{at}.name"),
                    format!("duplicate listener `{}`", l.name),
                );
            }
            match l.address.parse::<SocketAddr>() {
                Err(_) => r.at(
                    doc,
                    "Gateway",
                    name,
                    format!("{at}.address"),
                    format!("`{}` is not IP:PORT", l.address),
                ),
                Ok(a) if a.port() != 0 => {
                    if let Some(prev) = addresses.insert(a, format!("{name}/{}", l.name)) {
                        r.at(
                            doc,
                            "Gateway",
                            name,
                            format!("{at}.address"),
                            format!("{a} is already used by listener {prev}"),
                        );
                    }
                }
                Ok(_) => {}
            }
            listener(&mut r, doc, name, &at, l);
        }
    }

    for (s, doc) in c.services.iter().zip(&o.services) {
        service(&mut r, s, doc);
    }
    for (route, doc) in c.routes.iter().zip(&o.routes) {
        http_route(&mut r, c, route, doc);
    }
    for (route, doc) in c.tcp_routes.iter().zip(&o.tcp_routes) {
        stream_route(&mut r, c, "TCPRoute", route, doc);
    }
    for (route, doc) in c.tls_routes.iter().zip(&o.tls_routes) {
        stream_route(&mut r, c, "TLSRoute", route, doc);
    }
    crate::validate_security::mesh(&mut r, c, &o.meshes);
    for (i, doc) in c.intentions.iter().zip(&o.intentions) {
        crate::validate_security::intention(&mut r, i, doc);
    }
}

/// The protocol a route kind attaches to.
fn attaches_to(kind: &str, p: ListenerProtocol) -> bool {
    match kind {
        "HTTPRoute" => p.is_http(),
        "TCPRoute" => p == ListenerProtocol::TCP,
        _ => p == ListenerProtocol::TLS,
    }
}

fn parent_refs(
    r: &mut Report<'_>,
    c: &Config,
    doc: &Document,
    kind: &str,
    name: &str,
    refs: &[ParentRef],
) {
    for (i, p) in refs.iter().enumerate() {
        if p.kind == ParentKind::Service {
            if kind != "HTTPRoute" {
                r.at(
                    doc,
                    kind,
                    name,
                    format!("spec.parentRefs[{i}].kind"),
                    format!("a {kind} attaches to a Gateway listener, not a Service"),
                );
            } else if p.section_name.is_some() {
                r.at(
                    doc,
                    kind,
                    name,
                    format!("spec.parentRefs[{i}].sectionName"),
                    "a Service parent has no sections".into(),
                );
            } else if c.service(&p.name).is_none() {
                r.at(
                    doc,
                    kind,
                    name,
                    format!("spec.parentRefs[{i}].name"),
                    format!("unknown Service `{}`", p.name),
                );
            }
            continue;
        }
        let Some(g) = c.gateways.iter().find(|g| g.metadata.name == p.name) else {
            r.at(
                doc,
                kind,
                name,
                format!("spec.parentRefs[{i}].name"),
                format!("unknown Gateway `{}`", p.name),
            );
            continue;
        };
        let Some(section) = &p.section_name else {
            continue;
        };
        match g.spec.listeners.iter().find(|l| &l.name == section) {
            None => r.at(
                doc,
                kind,
                name,
                format!("spec.parentRefs[{i}].sectionName"),
                format!("Gateway `{}` has no listener `{section}`", p.name),
            ),
            Some(l) if !attaches_to(kind, l.protocol) => r.at(
                doc,
                kind,
                name,
                format!("spec.parentRefs[{i}].sectionName"),
                format!(
                    "listener `{section}` speaks {:?}; a {kind} cannot attach to it",
                    l.protocol
                ),
            ),
            Some(_) => {}
        }
    }
}

fn listener(r: &mut Report<'_>, doc: &Document, gateway: &str, at: &str, l: &Listener) {
    let mut err =
        |field: &str, msg: String| r.at(doc, "Gateway", gateway, format!("{at}.{field}"), msg);
    match (l.protocol, &l.tls) {
        (ListenerProtocol::HTTP | ListenerProtocol::TCP, Some(_)) => err(
            "tls",
            format!("protocol {:?} takes no `tls`; use HTTPS or TLS", l.protocol),
        ),
        (ListenerProtocol::HTTPS | ListenerProtocol::TLS, None) => err(
            "tls",
            format!("protocol {:?} needs `tls` with certificates", l.protocol),
        ),
        (ListenerProtocol::HTTPS, Some(t)) if t.mode == TlsMode::Passthrough => err(
            "tls.mode",
            "HTTPS terminates TLS; for passthrough use protocol TLS with TLSRoutes".into(),
        ),
        (_, Some(t)) if t.mode == TlsMode::Passthrough && !t.certificates.is_empty() => err(
            "tls.certificates",
            "a passthrough listener never uses certificates; remove them".into(),
        ),
        (_, Some(t)) if t.mode == TlsMode::Terminate && t.certificates.is_empty() => {
            err("tls.certificates", "needs at least one certificate".into())
        }
        _ => {}
    }
    if let Some(t) = &l.tls {
        for (i, c) in t.certificates.iter().enumerate() {
            if c.cert_file.is_empty() || c.key_file.is_empty() {
                err(
                    &format!("tls.certificates[{i}]"),
                    "certFile and keyFile must not be empty".into(),
                );
            }
        }
    }
    let lim = &l.limits;
    if lim.max_connections == 0 {
        err("limits.maxConnections", "must be at least 1".into());
    }
    if !(8192..=1 << 20).contains(&lim.max_request_header_bytes) {
        err(
            "limits.maxRequestHeaderBytes",
            format!("{} is outside 8192..=1048576", lim.max_request_header_bytes),
        );
    }
    if !(1..=10_000).contains(&lim.max_request_headers) {
        err(
            "limits.maxRequestHeaders",
            format!("{} is outside 1..=10000", lim.max_request_headers),
        );
    }
    if lim.http2_max_concurrent_streams == 0 {
        err(
            "limits.http2MaxConcurrentStreams",
            "must be at least 1".into(),
        );
    }
    for (field, d) in [
        ("headerReadTimeout", lim.header_read_timeout),
        ("tlsHandshakeTimeout", lim.tls_handshake_timeout),
        ("requestBodyIdleTimeout", lim.request_body_idle_timeout),
        ("idleTimeout", lim.idle_timeout),
    ] {
        if d.get().is_zero() {
            err(&format!("limits.{field}"), "must be greater than 0".into());
        }
    }
}

/// The slowest rate a limit may have: below it a token would be minutes of arithmetic
/// away from overflowing the wait it announces.
pub const MIN_RATE: f64 = 0.001;

/// What is wrong with a rate limit, as (field below `rateLimit`, message) pairs.
fn rate_limit_problems(l: &RateLimit) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !(MIN_RATE..=1e9).contains(&l.requests_per_second) {
        out.push((
            "requestsPerSecond",
            format!("must be between {MIN_RATE} (one request per 1000 s) and 1e9"),
        ));
    }
    if l.burst == Some(0) {
        out.push(("burst", "must be at least 1".to_string()));
    }
    if let Some(k) = &l.key {
        if k.header.is_some() == k.client_address {
            out.push((
                "key",
                "set exactly one of header, clientAddress".to_string(),
            ));
        }
        if let Some(h) = &k.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                out.push(("key.header", format!("`{h}` is not a valid header name")));
            }
        }
    }
    out
}

/// What is wrong with a retry policy, as (field below `retry`, message) pairs.
fn retry_problems(p: &RetryPolicy) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if p.attempts > 10 {
        out.push((
            "attempts",
            format!("{} is over the maximum of 10", p.attempts),
        ));
    }
    if let Some(c) = p.status_codes.iter().find(|c| !(100..=599).contains(*c)) {
        out.push(("statusCodes", format!("{c} is not an HTTP status")));
    }
    if let Some(c) = p.grpc_codes.iter().find(|c| **c > 16) {
        out.push(("grpcCodes", format!("{c} is not a gRPC status code (0-16)")));
    }
    if p.backoff.base.get().is_zero() || p.backoff.max.get() < p.backoff.base.get() {
        out.push(("backoff", "needs 0 < base <= max".to_string()));
    }
    if !(0.0..=1.0).contains(&p.budget.ratio) {
        out.push((
            "budget.ratio",
            format!("{} is outside 0..=1", p.budget.ratio),
        ));
    }
    out
}

fn stream_route(
    r: &mut Report<'_>,
    c: &Config,
    kind: &str,
    route: &Resource<StreamRouteSpec>,
    doc: &Document,
) {
    let name = &route.metadata.name;
    parent_refs(r, c, doc, kind, name, &route.spec.parent_refs);
    if kind == "TCPRoute" && !route.spec.hostnames.is_empty() {
        r.at(
            doc,
            kind,
            name,
            "spec.hostnames".into(),
            "a TCPRoute cannot match names (TCP carries none); use a TLSRoute".into(),
        );
    }
    for (i, h) in route.spec.hostnames.iter().enumerate() {
        if let Err(m) = check_hostname(h, true) {
            r.at(doc, kind, name, format!("spec.hostnames[{i}]"), m);
        }
    }
    if route.spec.rules.len() != 1 {
        r.at(
            doc,
            kind,
            name,
            "spec.rules".into(),
            "needs exactly one rule".into(),
        );
    }
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        if rule.backend_refs.is_empty() {
            r.at(
                doc,
                kind,
                name,
                format!("spec.rules[{ri}].backendRefs"),
                "needs at least one backend".into(),
            );
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            if c.service(&b.name).is_none() {
                r.at(
                    doc,
                    kind,
                    name,
                    format!("spec.rules[{ri}].backendRefs[{bi}].name"),
                    format!("unknown Service `{}`", b.name),
                );
            }
        }
    }
}

fn unique_names<'a>(
    r: &mut Report<'_>,
    kind: &str,
    names: impl Iterator<Item = &'a String>,
    docs: &[&Document],
) {
    let mut seen = HashSet::new();
    for (name, doc) in names.zip(docs) {
        if !valid_name(name) {
            r.at(
                doc,
                kind,
                name,
                "metadata.name".into(),
                format!("`{name}` is not a valid name: use 1-63 of a-z, 0-9, '-', '.', '_'"),
            );
        }
        if !seen.insert(name) {
            r.at(
                doc,
                kind,
                name,
                "metadata.name".into(),
                format!("duplicate {kind} `{name}`"),
            );
        }
    }
}

pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn service(r: &mut Report<'_>, s: &Resource<ServiceSpec>, doc: &Document) {
    let name = &s.metadata.name;
    let mut seen = HashSet::new();
    for (i, e) in s.spec.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        match e.address.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => r.at(
                doc,
                "Service",
                name,
                format!("{at}.address"),
                "port 0 is not a valid endpoint".into(),
            ),
            Ok(a) => {
                if !seen.insert(a) {
                    r.at(
                        doc,
                        "Service",
                        name,
                        format!("{at}.address"),
                        format!("duplicate endpoint {a}"),
                    );
                }
            }
            Err(_) => r.at(
                doc,
                "Service",
                name,
                format!("{at}.address"),
                format!("`{}` is not IP:PORT", e.address),
            ),
        }
        if !(1..=10_000).contains(&e.weight) {
            r.at(
                doc,
                "Service",
                name,
                format!("{at}.weight"),
                format!("weight {} is outside 1..=10000", e.weight),
            );
        }
    }
    let lb = &s.spec.load_balancer;
    match (&lb.policy, &lb.hash_on) {
        (LbPolicy::RingHash, None) => r.at(
            doc,
            "Service",
            name,
            "spec.loadBalancer.hashOn".into(),
            "RingHash needs `hashOn` (header, cookie or clientAddress)".into(),
        ),
        (LbPolicy::RingHash, Some(h)) => {
            let set = h.header.is_some() as u8 + h.cookie.is_some() as u8 + h.client_address as u8;
            if set != 1 {
                r.at(
                    doc,
                    "Service",
                    name,
                    "spec.loadBalancer.hashOn".into(),
                    "set exactly one of header, cookie, clientAddress".into(),
                );
            }
            if let Some(hn) = &h.header {
                if http::HeaderName::from_bytes(hn.as_bytes()).is_err() {
                    r.at(
                        doc,
                        "Service",
                        name,
                        "spec.loadBalancer.hashOn.header".into(),
                        format!("`{hn}` is not a valid header name"),
                    );
                }
            }
        }
        (_, Some(_)) => r.at(
            doc,
            "Service",
            name,
            "spec.loadBalancer.hashOn".into(),
            "hashOn applies only to policy RingHash".into(),
        ),
        (_, None) => {}
    }
    if s.spec.connect_timeout.get().is_zero() {
        r.at(
            doc,
            "Service",
            name,
            "spec.connectTimeout".into(),
            "must be greater than 0".into(),
        );
    }
    if let Some(name_) = s.spec.tls.as_ref().and_then(|t| t.server_name.as_ref()) {
        if let Err(m) = check_hostname(name_, false) {
            r.at(doc, "Service", name, "spec.tls.serverName".into(), m);
        }
    }
    if s.spec.timeouts.request.get().is_zero() {
        r.at(
            doc,
            "Service",
            name,
            "spec.timeouts.request".into(),
            "must be greater than 0".into(),
        );
    }
    if s.spec.timeouts.per_try.is_some_and(|d| d.get().is_zero()) {
        r.at(
            doc,
            "Service",
            name,
            "spec.timeouts.perTry".into(),
            "must be greater than 0".into(),
        );
    }
    for m in retry_problems(&s.spec.retry) {
        r.at(doc, "Service", name, format!("spec.retry.{}", m.0), m.1);
    }
    let od = &s.spec.outlier_detection;
    if od.max_ejection_percent > 100 {
        r.at(
            doc,
            "Service",
            name,
            "spec.outlierDetection.maxEjectionPercent".into(),
            format!("{} is over 100", od.max_ejection_percent),
        );
    }
    if od.base_ejection_time.get().is_zero()
        || od.max_ejection_time.get() < od.base_ejection_time.get()
    {
        r.at(
            doc,
            "Service",
            name,
            "spec.outlierDetection.baseEjectionTime".into(),
            "needs 0 < baseEjectionTime <= maxEjectionTime".into(),
        );
    }
    if let Some(l) = &s.spec.rate_limit {
        for (field, msg) in rate_limit_problems(l) {
            r.at(doc, "Service", name, format!("spec.rateLimit.{field}"), msg);
        }
    }
    if let Some(hc) = &s.spec.health_check {
        let mut bad = |field: &str, msg: String| {
            r.at(
                doc,
                "Service",
                name,
                format!("spec.healthCheck.{field}"),
                msg,
            )
        };
        if hc.interval.get() < std::time::Duration::from_millis(10) {
            bad("interval", "must be at least 10ms".into());
        }
        if hc.timeout.get().is_zero() {
            bad("timeout", "must be greater than 0".into());
        }
        if hc.unhealthy_threshold == 0 || hc.healthy_threshold == 0 {
            bad("unhealthyThreshold", "thresholds must be at least 1".into());
        }
        if let Some(h) = &hc.http {
            if !h.path.starts_with('/')
                || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err()
            {
                bad("http.path", format!("`{}` is not a request path", h.path));
            }
            if let Some(host) = &h.host {
                if http::HeaderValue::from_str(host).is_err() {
                    bad("http.host", format!("`{host}` is not a valid Host value"));
                }
            }
        }
    }
    if let Some(ac) = &s.spec.adaptive_concurrency {
        if ac.min_limit == 0 || ac.min_limit > ac.initial_limit || ac.initial_limit > ac.max_limit {
            r.at(
                doc,
                "Service",
                name,
                "spec.adaptiveConcurrency".into(),
                "needs 1 <= minLimit <= initialLimit <= maxLimit".into(),
            );
        }
        if !(1.0..=10.0).contains(&ac.tolerance) {
            r.at(
                doc,
                "Service",
                name,
                "spec.adaptiveConcurrency.tolerance".into(),
                "must be within 1..=10".into(),
            );
        }
        if ac.sample_count == 0 {
            r.at(
                doc,
                "Service",
                name,
                "spec.adaptiveConcurrency.sampleCount".into(),
                "must be at least 1".into(),
            );
        }
    }
    let cb = &s.spec.circuit_breaker;
    for (field, v) in [
        ("maxRequests", cb.max_requests),
        ("maxConnections", cb.max_connections),
        ("maxRetries", cb.max_retries),
    ] {
        if v == 0 {
            r.at(
                doc,
                "Service",
                name,
                format!("spec.circuitBreaker.{field}"),
                "must be at least 1".into(),
            );
        }
    }
    if s.spec.connection_pool.max_idle_per_endpoint > 10_000 {
        r.at(
            doc,
            "Service",
            name,
            "spec.connectionPool.maxIdlePerEndpoint".into(),
            "must be at most 10000".into(),
        );
    }
}

fn http_route(r: &mut Report<'_>, c: &Config, route: &Resource<HttpRouteSpec>, doc: &Document) {
    let name = &route.metadata.name;
    let err =
        |r: &mut Report<'_>, field: String, msg: String| r.at(doc, "HTTPRoute", name, field, msg);

    parent_refs(r, c, doc, "HTTPRoute", name, &route.spec.parent_refs);
    for (i, h) in route.spec.hostnames.iter().enumerate() {
        if let Err(m) = check_hostname(h, true) {
            err(r, format!("spec.hostnames[{i}]"), m);
        }
    }
    if route.spec.rules.is_empty() {
        err(r, "spec.rules".into(), "needs at least one rule".into());
    }
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{ri}]");
        if let Some(retry) = &rule.retry {
            for (field, msg) in retry_problems(retry) {
                err(r, format!("{at}.retry.{field}"), msg);
            }
        }
        if let Some(l) = &rule.rate_limit {
            for (field, msg) in rate_limit_problems(l) {
                err(r, format!("{at}.rateLimit.{field}"), msg);
            }
        }
        if let Some(f) = &rule.fault {
            let pct = |p: f64| (0.0..=100.0).contains(&p);
            if let Some(d) = &f.delay {
                if !pct(d.percent) {
                    err(
                        r,
                        format!("{at}.fault.delay.percent"),
                        "must be within 0..=100".into(),
                    );
                }
            }
            if let Some(a) = &f.abort {
                if !pct(a.percent) {
                    err(
                        r,
                        format!("{at}.fault.abort.percent"),
                        "must be within 0..=100".into(),
                    );
                }
                if !(200..=599).contains(&a.status) {
                    err(
                        r,
                        format!("{at}.fault.abort.status"),
                        format!("{} is not a status to answer with", a.status),
                    );
                }
            }
        }
        if let Some(t) = &rule.timeouts {
            for (field, d) in [
                ("request", t.request),
                ("backendRequest", t.backend_request),
            ] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    err(
                        r,
                        format!("{at}.timeouts.{field}"),
                        "must be greater than 0".into(),
                    );
                }
            }
        }
        for (mi, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{mi}]");
            if let Some(p) = &m.path {
                if let Err(msg) = check_path_match(p) {
                    err(r, format!("{at}.path.value"), msg);
                }
            }
            for (hi, h) in m.headers.iter().enumerate() {
                for (field, msg) in header_match_problems(h) {
                    err(r, format!("{at}.headers[{hi}].{field}"), msg);
                }
            }
            for (qi, q) in m.query_params.iter().enumerate() {
                if q.name.is_empty() {
                    err(
                        r,
                        format!("{at}.queryParams[{qi}].name"),
                        "must not be empty".into(),
                    );
                }
                if let Err(msg) = check_value_match(q) {
                    err(r, format!("{at}.queryParams[{qi}].value"), msg);
                }
            }
            if let Some(msg) = m.method.as_deref().and_then(method_problem) {
                err(r, format!("{at}.method"), msg);
            }
        }
        let mut redirects = false;
        let mut seen_kinds = HashSet::new();
        for (fi, f) in rule.filters.iter().enumerate() {
            let at = format!("{at}.filters[{fi}]");
            if !seen_kinds.insert(f.kind) {
                err(
                    r,
                    format!("{at}.type"),
                    format!("{:?} appears twice in one rule", f.kind),
                );
            }
            let present = [
                (
                    FilterType::RequestHeaderModifier,
                    f.request_header_modifier.is_some(),
                    "requestHeaderModifier",
                ),
                (
                    FilterType::ResponseHeaderModifier,
                    f.response_header_modifier.is_some(),
                    "responseHeaderModifier",
                ),
                (
                    FilterType::RequestRedirect,
                    f.request_redirect.is_some(),
                    "requestRedirect",
                ),
                (
                    FilterType::URLRewrite,
                    f.url_rewrite.is_some(),
                    "urlRewrite",
                ),
                (
                    FilterType::RequestMirror,
                    f.request_mirror.is_some(),
                    "requestMirror",
                ),
            ];
            if let Some(m) = &f.request_mirror {
                if c.service(&m.backend_ref.name).is_none() {
                    err(
                        r,
                        format!("{at}.requestMirror.backendRef.name"),
                        format!("unknown Service `{}`", m.backend_ref.name),
                    );
                }
                if !(0.0..=100.0).contains(&m.percent) {
                    err(
                        r,
                        format!("{at}.requestMirror.percent"),
                        "must be within 0..=100".into(),
                    );
                }
            }
            for (kind, is_set, field) in present {
                if kind == f.kind && !is_set {
                    err(
                        r,
                        at.clone(),
                        format!("type {kind:?} needs the field `{field}`"),
                    );
                } else if kind != f.kind && is_set {
                    err(
                        r,
                        format!("{at}.{field}"),
                        format!("`{field}` does not belong to a filter of type {:?}", f.kind),
                    );
                }
            }
            if let Some(m) = f
                .request_header_modifier
                .as_ref()
                .or(f.response_header_modifier.as_ref())
            {
                let field = if f.request_header_modifier.is_some() {
                    "requestHeaderModifier"
                } else {
                    "responseHeaderModifier"
                };
                header_modifier(r, doc, name, &format!("{at}.{field}"), m);
            }
            let path_mod = match (&f.request_redirect, &f.url_rewrite) {
                (Some(rd), _) => {
                    redirects = true;
                    if ![301, 302, 303, 307, 308].contains(&rd.status_code) {
                        err(
                            r,
                            format!("{at}.requestRedirect.statusCode"),
                            format!(
                                "{} is not a redirect status (301, 302, 303, 307, 308)",
                                rd.status_code
                            ),
                        );
                    }
                    if let Some(s) = &rd.scheme {
                        if s != "http" && s != "https" {
                            err(
                                r,
                                format!("{at}.requestRedirect.scheme"),
                                format!("`{s}` must be http or https"),
                            );
                        }
                    }
                    if let Some(h) = &rd.hostname {
                        if let Err(m) = check_hostname(h, false) {
                            err(r, format!("{at}.requestRedirect.hostname"), m);
                        }
                    }
                    rd.path
                        .as_ref()
                        .map(|p| (p, format!("{at}.requestRedirect.path")))
                }
                (None, Some(rw)) => {
                    if let Some(h) = &rw.hostname {
                        if let Err(m) = check_hostname(h, false) {
                            err(r, format!("{at}.urlRewrite.hostname"), m);
                        }
                    }
                    rw.path
                        .as_ref()
                        .map(|p| (p, format!("{at}.urlRewrite.path")))
                }
                _ => None,
            };
            if let Some((p, field)) = path_mod {
                if let Err(m) = check_path_modifier(p, &rule.matches) {
                    err(r, field, m);
                }
            }
        }
        if seen_kinds.contains(&FilterType::RequestRedirect)
            && seen_kinds.contains(&FilterType::URLRewrite)
        {
            err(
                r,
                format!("{at}.filters"),
                "RequestRedirect and URLRewrite cannot be used together".into(),
            );
        }
        if rule.backend_refs.is_empty() && !redirects {
            err(
                r,
                format!("{at}.backendRefs"),
                "needs at least one backend (or a RequestRedirect filter)".into(),
            );
        }
        if !rule.backend_refs.is_empty() && rule.backend_refs.iter().all(|b| b.weight == 0) {
            err(
                r,
                format!("{at}.backendRefs"),
                "all weights are 0: no backend could ever be picked".into(),
            );
        }
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            if c.service(&b.name).is_none() {
                err(
                    r,
                    format!("{at}.backendRefs[{bi}].name"),
                    format!("unknown Service `{}`", b.name),
                );
            }
            if b.weight > 1_000_000 {
                err(
                    r,
                    format!("{at}.backendRefs[{bi}].weight"),
                    "must be at most 1000000".into(),
                );
            }
        }
    }
}

fn header_modifier(r: &mut Report<'_>, doc: &Document, route: &str, at: &str, m: &HeaderModifier) {
    let names = m.set.iter().chain(&m.add).map(|h| &h.name).chain(&m.remove);
    for n in names {
        if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
            r.at(
                doc,
                "HTTPRoute",
                route,
                at.to_string(),
                format!("`{n}` is not a valid header name"),
            );
        }
    }
    for h in m.set.iter().chain(&m.add) {
        if http::HeaderValue::from_str(&h.value).is_err() {
            r.at(
                doc,
                "HTTPRoute",
                route,
                at.to_string(),
                format!(
                    "value of `{}` contains characters not allowed in a header",
                    h.name
                ),
            );
        }
    }
}

fn check_hostname(h: &str, wildcard_ok: bool) -> Result<(), String> {
    let body = match h.strip_prefix("*.") {
        Some(rest) if wildcard_ok => rest,
        Some(_) => return Err(format!("`{h}`: a wildcard is not allowed here")),
        None => h,
    };
    let labels_ok = !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if labels_ok {
        Ok(())
    } else {
        Err(format!("`{h}` is not a valid host name (lower-case DNS labels; wildcard only as a leading `*.`)"))
    }
}

pub(crate) fn check_path_match(p: &PathMatch) -> Result<(), String> {
    match p.kind {
        PathMatchType::Exact | PathMatchType::PathPrefix => {
            if !p.value.starts_with('/') {
                return Err(format!("`{}` must start with `/`", p.value));
            }
            if p.value.contains(['?', '#'])
                || p.value.contains("//")
                || p.value.contains("/./")
                || p.value.contains("/../")
            {
                return Err(format!(
                    "`{}` must be a normalized path without query or fragment",
                    p.value
                ));
            }
            Ok(())
        }
        PathMatchType::RegularExpression => check_regex(&p.value),
    }
}

/// What is wrong with a header condition: `(field, message)`.
pub(crate) fn header_match_problems(h: &ValueMatch) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
        problems.push(("name", format!("`{}` is not a valid header name", h.name)));
    }
    if let Err(msg) = check_value_match(h) {
        problems.push(("value", msg));
    }
    problems
}

/// What is wrong with an HTTP method name, if anything.
pub(crate) fn method_problem(method: &str) -> Option<String> {
    (http::Method::from_bytes(method.as_bytes()).is_err()
        || method.chars().any(|c| c.is_ascii_lowercase()))
    .then(|| format!("`{method}` is not an HTTP method (use upper case, e.g. GET)"))
}

fn check_value_match(m: &ValueMatch) -> Result<(), String> {
    match m.kind {
        ValueMatchType::Exact => Ok(()),
        ValueMatchType::RegularExpression => check_regex(&m.value),
    }
}

/// Regexes are compiled with a size limit so a hostile config cannot blow up memory.
pub(crate) fn check_regex(re: &str) -> Result<(), String> {
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| format!("invalid regular expression: {e}"))
}

fn check_path_modifier(p: &PathModifier, matches: &[HttpRouteMatch]) -> Result<(), String> {
    match p.kind {
        PathModifierType::ReplaceFullPath => match &p.replace_full_path {
            Some(v) if v.starts_with('/') => Ok(()),
            Some(v) => Err(format!("replaceFullPath `{v}` must start with `/`")),
            None => Err("type ReplaceFullPath needs `replaceFullPath`".into()),
        },
        PathModifierType::ReplacePrefixMatch => {
            let all_prefix = !matches.is_empty()
                && matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
                });
            let default_prefix = matches.is_empty();
            if !(all_prefix || default_prefix) {
                return Err(
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
                        .into(),
                );
            }
            match &p.replace_prefix_match {
                Some(v) if v.starts_with('/') => Ok(()),
                Some(v) => Err(format!("replacePrefixMatch `{v}` must start with `/`")),
                None => Err("type ReplacePrefixMatch needs `replacePrefixMatch`".into()),
            }
        }
    }
}
