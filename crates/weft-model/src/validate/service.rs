//! Checks of `Service` resources.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::checks::*;
use super::report::Report;
use crate::yaml::Document;
use crate::*;

pub(crate) fn service(r: &mut Report<'_>, s: &Resource<ServiceSpec>, doc: &Document) {
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
    subsets(r, s, doc);
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

/// Most subsets one Service may name, and labels one subset may select by.
const MAX_SUBSETS: usize = 64;
const MAX_SUBSET_LABELS: usize = 16;

/// Subset names are DNS-label-like (they appear in metric labels); each selects by at
/// least one label; an endpoint's labels follow the catalog's metadata limits.
fn subsets(r: &mut Report<'_>, s: &Resource<ServiceSpec>, doc: &Document) {
    let name = &s.metadata.name;
    if s.spec.subsets.len() > MAX_SUBSETS {
        r.at(
            doc,
            "Service",
            name,
            "spec.subsets".into(),
            format!("{} subsets: at most {MAX_SUBSETS}", s.spec.subsets.len()),
        );
    }
    for (subset, labels) in &s.spec.subsets {
        let at = format!("spec.subsets.{subset}");
        let valid = !subset.is_empty()
            && subset.len() <= 63
            && subset
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            r.at(
                doc,
                "Service",
                name,
                at.clone(),
                format!("subset name `{subset}`: lowercase letters, digits and `-`, at most 63"),
            );
        }
        if labels.is_empty() {
            r.at(
                doc,
                "Service",
                name,
                at.clone(),
                "selects by no label: it would be every endpoint (name at least one, e.g. version: v2)".into(),
            );
        }
        if labels.len() > MAX_SUBSET_LABELS {
            r.at(
                doc,
                "Service",
                name,
                at.clone(),
                format!("{} labels: at most {MAX_SUBSET_LABELS}", labels.len()),
            );
        }
        for (k, v) in labels {
            if k.is_empty() || k.len() > 128 || v.len() > 512 {
                r.at(
                    doc,
                    "Service",
                    name,
                    format!("{at}.{k}"),
                    "label names are 1–128 bytes, values at most 512".into(),
                );
            }
        }
    }
    for (i, e) in s.spec.endpoints.iter().enumerate() {
        if e.metadata.len() > 64
            || e.metadata
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 512)
        {
            r.at(
                doc,
                "Service",
                name,
                format!("spec.endpoints[{i}].metadata"),
                "at most 64 labels, names 1–128 bytes, values at most 512".into(),
            );
        }
    }
}

/// The problem with `backend`'s subset, if any: its Service must name it.
pub(crate) fn subset_problem(c: &Config, backend: &BackendRef) -> Option<String> {
    let subset = backend.subset.as_ref()?;
    let service = c.service(&backend.name)?;
    if service.spec.subsets.contains_key(subset) {
        return None;
    }
    let known: Vec<&str> = service.spec.subsets.keys().map(String::as_str).collect();
    Some(if known.is_empty() {
        format!(
            "Service `{}` defines no subsets (spec.subsets)",
            backend.name
        )
    } else {
        format!(
            "Service `{}` has no subset `{subset}` (it has: {})",
            backend.name,
            known.join(", ")
        )
    })
}
