//! What a rule does besides forwarding: redirects and the proxy's own replies, fault
//! injection, mirroring a copy; and the request target each upstream attempt is sent with.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};

use super::context::{Client, Context};
use super::headers::X_WEFT_MIRRORED;
use super::route::{Mirror, Redirect, Rule};
use super::ResponseBody;
use crate::error::{ProxyError, ERROR_HEADER};
use crate::telemetry::metrics::Metrics;
use crate::upstream::body::RequestBody;
use crate::upstream::endpoint::Endpoint;

/// Aims `head` at `endpoint`: its URI as the upstream's protocol needs it, with `path` if
/// the route rewrote it. HTTP/1.1 goes out in origin-form with its Host header. HTTP/2
/// carries the (possibly rewritten) Host as `:authority` alone (RFC 9113 §8.3.1: a client
/// uses `:authority` rather than `Host`; one field fewer to compress and decompress on
/// every request of a mesh hop). A request coming back unsent for another attempt has it
/// in its URI already; the endpoint's address is the last resort.
pub(crate) fn aim(
    head: &mut http::request::Parts,
    http2: bool,
    endpoint: &Endpoint,
    path: Option<String>,
) -> Result<(), ProxyError> {
    let authority = http2.then(|| {
        head.headers
            .remove(header::HOST)
            .and_then(|v| http::uri::Authority::try_from(v.as_bytes()).ok())
            .or_else(|| head.uri.authority().cloned())
            .unwrap_or_else(|| endpoint.authority.clone())
    });
    head.uri = upstream_uri(&head.uri, authority, path)?;
    Ok(())
}

/// The upstream request target: origin-form (`/path?query`) for HTTP/1.1, or absolute with
/// `authority` for HTTP/2. Reuses the original path-and-query buffer when the path is unchanged.
pub(crate) fn upstream_uri(
    orig: &Uri,
    authority: Option<http::uri::Authority>,
    new_path: Option<String>,
) -> Result<Uri, ProxyError> {
    let path_and_query = match new_path {
        None => orig
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        Some(mut p) => {
            if let Some(q) = orig.query() {
                p.push('?');
                p.push_str(q);
            }
            http::uri::PathAndQuery::from_maybe_shared(p).map_err(|_| ProxyError::InvalidHost)?
        }
    };
    let mut parts = http::uri::Parts::default();
    if authority.is_some() {
        parts.scheme = Some(http::uri::Scheme::HTTP);
    }
    parts.authority = authority;
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| ProxyError::InvalidHost)
}

/// Where a request is sent back to: what its rule's `RequestRedirect` says.
pub(crate) struct Target<'a> {
    /// The request's host.
    pub host: &'a str,
    /// Its path, normalised.
    pub path: &'a str,
    /// Its query.
    pub query: Option<&'a str>,
    /// The length of the prefix its route matched (`ReplacePrefixMatch`).
    pub prefix_len: Option<usize>,
}

/// The redirect a rule answers with.
pub(crate) fn redirect(
    ctx: &Context,
    client: &Client,
    rule: &Rule,
    r: &Redirect,
    to: Target<'_>,
) -> Response<ResponseBody> {
    let Target {
        host,
        path,
        query,
        prefix_len,
    } = to;
    let scheme = r.scheme.as_deref().unwrap_or(client.scheme());
    let mut location = format!("{scheme}://{}", r.hostname.as_deref().unwrap_or(host));
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(ctx.local.port()),
    };
    match (port, scheme) {
        (Some(80), "http") | (Some(443), "https") | (None, _) => {}
        (Some(p), _) => location.push_str(&format!(":{p}")),
    }
    match &r.path {
        Some(p) => location.push_str(&p.apply(path, prefix_len)),
        None => location.push_str(path),
    }
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = local_reply(r.status, None, String::new());
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(ops) = &rule.filters.response_headers {
        ops.apply(resp.headers_mut());
    }
    resp
}

/// A reply the proxy makes itself.
pub(crate) fn local_reply(
    status: StatusCode,
    code: Option<&'static str>,
    body: String,
) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(code) = code {
        h.insert(ERROR_HEADER, HeaderValue::from_static(code));
    }
    if status == StatusCode::BAD_REQUEST {
        // After a malformed request the connection's framing cannot be trusted.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Largest request body copied to a mirror; requests with larger (or undeclared) bodies
/// are not mirrored.
pub(crate) const MIRROR_MAX_BODY: u64 = 65_536;

/// Sends a copy of a request to the mirror's service in its own task: the response is
/// read and dropped, failures only counted, and the mirror's own circuit breaker decides
/// whether it goes at all — a slow mirror never slows the real request.
pub(crate) fn send_mirror(
    m: &Mirror,
    mut head: http::request::Parts,
    body: Option<Bytes>,
    new_path: Option<String>,
    metrics: &Arc<Metrics>,
    route: &str,
) {
    let service = m.service.clone();
    let metrics = metrics.clone();
    let route = route.to_string();
    tokio::spawn(async move {
        let record = |result: &str| metrics.mirror(&route, &service.name, result);
        let Some(_permit) = service.breaker.request() else {
            return record("overloaded");
        };
        let Some(endpoint) = service.balancer.pick(None).cloned() else {
            return record("no-healthy-endpoints");
        };
        let is_h2 = service.upstream.settings.is_http2();
        if aim(&mut head, is_h2, &endpoint, new_path).is_err() {
            return record("failed");
        }
        head.version = if is_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        head.headers
            .insert(X_WEFT_MIRRORED, HeaderValue::from_static("true"));
        let req = Request::from_parts(head, RequestBody::Bytes(body));
        let sent = tokio::time::timeout(
            service.request_timeout,
            service.upstream.send(&endpoint, req),
        )
        .await;
        match sent {
            Ok(Ok((resp, lease))) => {
                use http_body_util::BodyExt;
                let read = http_body_util::Limited::new(resp.into_body(), 1 << 20)
                    .collect()
                    .await;
                if let (Ok(_), Some(lease)) = (read, lease) {
                    lease.release();
                }
                record("sent");
            }
            _ => record("failed"),
        }
    });
}

/// Applies a rule's fault injection: maybe a delay, then maybe an abort.
pub(crate) async fn inject_fault(
    fault: &weft_model::Fault,
    metrics: &Metrics,
    route: &str,
) -> Result<(), ProxyError> {
    let hit = |percent: f64| fastrand::f64() * 100.0 < percent;
    if let Some(d) = &fault.delay {
        if hit(d.percent) {
            metrics.fault(route, "delay");
            tokio::time::sleep(d.fixed.get()).await;
        }
    }
    if let Some(a) = &fault.abort {
        if hit(a.percent) {
            metrics.fault(route, "abort");
            return Err(ProxyError::FaultInjected(a.status));
        }
    }
    Ok(())
}

/// What a retry needs to rebuild the request: everything but the body and extensions.
pub(crate) struct Template {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    pub(crate) fn of(p: &http::request::Parts) -> Template {
        Template {
            method: p.method.clone(),
            uri: p.uri.clone(),
            version: p.version,
            headers: p.headers.clone(),
        }
    }

    pub(crate) fn parts(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        parts
    }
}
