//! A compiled `HTTPRoute` rule: its filters (header edits, redirect, rewrite, mirror), its
//! weighted backends, and its own timeouts, retry policy, rate limit and faults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use weft_model::{FilterType, HeaderModifier, PathModifier, PathModifierType};

use crate::telemetry::metrics::{Direction, EdgeStats, Metrics, RouteStats};
use crate::upstream::balance::pick_by_weight;
use crate::upstream::ratelimit::RateLimiter;
use crate::upstream::retry::Retry;
use crate::upstream::service::Service;

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
    pub rate_limit: Option<RateLimiter>,
    /// Faults to inject.
    pub fault: Option<weft_model::Fault>,
}

impl Rule {
    /// Compiles one rule of `HTTPRoute` `route` on listener `listener`, sending to
    /// `services`; its metric handles are registered in `metrics`.
    /// `caller`: the service whose calls the listener receives (mesh outbound, edge
    /// gateway), for per-edge metrics.
    pub fn build(
        listener: &str,
        caller: Option<&str>,
        route: &str,
        rule: &weft_model::HttpRouteRule,
        services: &HashMap<String, Arc<Service>>,
        metrics: &Metrics,
    ) -> Result<Rule, String> {
        let mut filters = Filters::default();
        for f in &rule.filters {
            match f.kind {
                FilterType::RequestMirror => {
                    if let Some(m) = &f.request_mirror {
                        let upstream = m.backend_ref.upstream();
                        let service = services
                            .get(upstream.as_ref())
                            .ok_or_else(|| format!("unknown service {upstream}"))?;
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
                                .map_err(|e| e.to_string())?,
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
                                .map_err(|e| e.to_string())?,
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
                // A subset is an upstream of its own (`SERVICE#SUBSET`), counted as such
                // per route; the edge is still to the service.
                let upstream = b.upstream();
                let service = services
                    .get(upstream.as_ref())
                    .ok_or_else(|| format!("unknown service {upstream}"))?;
                Ok(Backend {
                    service: service.clone(),
                    weight: b.weight,
                    stats: Arc::new(metrics.route_stats(listener, route, &upstream)),
                    edge: caller.map(|c| metrics.edge(Direction::Outbound, c, &b.name)),
                })
            })
            .collect::<Result<_, String>>()?;
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
            rate_limit: rule.rate_limit.as_ref().map(RateLimiter::new),
            fault: rule.fault.clone(),
        })
    }

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
    /// Mesh: the edge (the listener's caller -> this service), on a sidecar's outbound
    /// listener or an edge gateway's.
    pub edge: Option<Arc<EdgeStats>>,
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

fn header_ops(m: &HeaderModifier) -> Result<HeaderOps, String> {
    let pair = |h: &weft_model::HeaderValue| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?,
            HeaderValue::from_str(&h.value).map_err(|e| e.to_string())?,
        ))
    };
    Ok(HeaderOps {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string()))
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
