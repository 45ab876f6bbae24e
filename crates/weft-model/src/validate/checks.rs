//! Checks more than one kind needs: names, hostnames, path/header/method matches, regexes,
//! rate limits, retry policies, and which listeners a route attaches to.

use std::collections::HashSet;

use super::report::Report;
use crate::yaml::Document;
use crate::*;

/// The slowest rate a limit may have: below it a token would be minutes of arithmetic
/// away from overflowing the wait it announces.
pub const MIN_RATE: f64 = 0.001;

/// The protocol a route kind attaches to.
pub(crate) fn attaches_to(kind: &str, p: ListenerProtocol) -> bool {
    match kind {
        "HTTPRoute" => p.is_http(),
        "TCPRoute" => p == ListenerProtocol::TCP,
        _ => p == ListenerProtocol::TLS,
    }
}

pub(crate) fn parent_refs(
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

pub(crate) fn unique_names<'a>(
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

pub(crate) fn check_hostname(h: &str, wildcard_ok: bool) -> Result<(), String> {
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

pub(crate) fn check_value_match(m: &ValueMatch) -> Result<(), String> {
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

/// What is wrong with a rate limit, as (field below `rateLimit`, message) pairs.
pub(crate) fn rate_limit_problems(l: &RateLimit) -> Vec<(&'static str, String)> {
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

/// What is wrong with a `tracing` block, as (field below `tracing`, message) pairs.
pub(crate) fn tracing_problems(t: &Tracing) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !(0.0..=100.0).contains(&t.sampling_percent) {
        out.push(("samplingPercent", "must be between 0 and 100".to_string()));
    }
    let mut seen = HashSet::new();
    for p in &t.propagation {
        if !seen.insert(p) {
            out.push(("propagation", format!("`{}` is listed twice", p.as_str())));
        }
    }
    out
}

/// What is wrong with a retry policy, as (field below `retry`, message) pairs.
pub(crate) fn retry_problems(p: &RetryPolicy) -> Vec<(&'static str, String)> {
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
