//! Checks of `HTTPRoute` resources: matches, filters, backends, timeouts and retries.

use std::collections::HashSet;

use super::checks::*;
use super::report::Report;
use crate::yaml::Document;
use crate::*;

pub(crate) fn http_route(
    r: &mut Report<'_>,
    c: &Config,
    route: &Resource<HttpRouteSpec>,
    doc: &Document,
) {
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
                if let Some(problem) = super::service::subset_problem(c, &m.backend_ref) {
                    err(r, format!("{at}.requestMirror.backendRef.subset"), problem);
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
            if let Some(m) = super::service::subset_problem(c, b) {
                err(r, format!("{at}.backendRefs[{bi}].subset"), m);
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
