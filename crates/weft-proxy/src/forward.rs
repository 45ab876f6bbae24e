//! The request path: route, filter, balance, forward, and account for one request.
//!
//! ```text
//! request ─► host + path ─► RouteTable ─► rate limit, fault ─► redirect? ─► headers
//!            (hop-by-hop, x-forwarded-*, x-request-id, modifiers, rewrite) ─► backend by
//!            weight ─► breaker, deadline ─► [mirror copy] ─► attempts: endpoint by policy
//!            ─► pooled client ─► retriable? another endpoint after a backoff, within the
//!            budget ─► response (hop-by-hop, modifiers) ─► client
//! ```
//!
//! The exchange is accounted for (metrics, access log, outstanding-request count) when the
//! response body finishes or is dropped, so durations include streaming time.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access_log::{rfc3339, AccessLog, Record};
use crate::balance::InFlight;
use crate::body::RequestBody;
use crate::error::{ProxyError, ERROR_HEADER};
use crate::metrics::{Metrics, RouteStats};
use crate::outlier::Outcome;
use crate::retry;
use crate::snapshot::{Rule, Snapshot};
use crate::upstream::Lease;
use crate::SnapshotHandle;

/// Body of every response the proxy sends.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The caller's verified SPIFFE ID, set by a sidecar's inbound listener for the
/// application (any value a caller sent is removed first).
pub const X_WEFT_SOURCE: HeaderName = HeaderName::from_static("x-weft-source-identity");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const X_WEFT_MIRRORED: HeaderName = HeaderName::from_static("x-weft-mirrored");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// A client-supplied request id longer than this is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What every request on a listener shares.
#[derive(Debug)]
pub struct ListenerContext {
    /// `gateway/listener`.
    pub name: String,
    /// The live configuration.
    pub snapshot: SnapshotHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Access log, if enabled.
    pub access_log: Option<AccessLog>,
    /// Local address (for redirects).
    pub local: SocketAddr,
}

/// The client of one connection, with what every request on it reuses.
#[derive(Debug, Clone)]
pub struct Client {
    /// Peer address.
    pub addr: SocketAddr,
    /// The peer IP as a header value, for `x-forwarded-for` (formatted once per connection).
    ip_header: HeaderValue,
    /// Whether the connection is TLS (`x-forwarded-proto`, redirects).
    pub secure: bool,
    /// The caller's verified SPIFFE ID (mesh mutual TLS), and its service.
    pub peer: Option<Arc<str>>,
    peer_service: Option<Arc<str>>,
}

impl Client {
    /// Describes a newly accepted connection's peer.
    pub fn new(addr: SocketAddr, secure: bool) -> Client {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Client {
            addr,
            ip_header,
            secure,
            peer: None,
            peer_service: None,
        }
    }

    /// The same client, identified by its SPIFFE ID.
    pub fn with_peer(mut self, peer: Option<Arc<str>>) -> Client {
        self.peer_service = peer
            .as_deref()
            .and_then(weft_tls::spiffe::ServiceId::parse)
            .map(|id| Arc::from(id.service));
        self.peer = peer;
        self
    }

    fn scheme(&self) -> &'static str {
        if self.secure {
            "https"
        } else {
            "http"
        }
    }
}

/// Serves one request. Never fails: every error becomes a precise reply.
pub async fn handle(
    ctx: Arc<ListenerContext>,
    client: Client,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snapshot = ctx.snapshot.load_full();
    let mut ex = Exchange::begin(&ctx, client.addr, &req, started);
    let resp = match route_and_forward(&ctx, &snapshot, &client, req, &mut ex).await {
        Ok(resp) => resp,
        Err(e) => {
            ctx.metrics.local_reply(&ctx.name, e.code());
            ex.error = Some(e.code());
            let mut reply = local_reply(e.status(), Some(e.code()), format!("weft: {e}\n"));
            if let ProxyError::RateLimited(secs) = e {
                reply
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            reply
        }
    };
    ex.status = resp.status().as_u16();
    Ok(match resp.into_parts() {
        (parts, Either::Left(upstream)) => {
            Response::from_parts(parts, Either::Left(upstream.with_exchange(ex)))
        }
        (parts, local) => {
            ex.finish();
            Response::from_parts(parts, local)
        }
    })
}

/// Judges one request on a sidecar's inbound listener against the intentions of the
/// snapshot it is served with (so a change applies to open connections too), by its
/// normalised `path` (the one that is forwarded).
fn authorize(
    ctx: &ListenerContext,
    mesh: &crate::snapshot::MeshListener,
    client: &Client,
    req: &Request<Incoming>,
    path: &str,
) -> Result<(), ProxyError> {
    let source = client.peer_service.as_deref();
    let verdict = mesh
        .authz
        .request(source, req.method(), path, req.uri().query(), req.headers());
    if verdict.action == weft_model::Action::Allow {
        return Ok(());
    }
    tracing::info!(
        listener = %ctx.name,
        client = %client.addr,
        source = %source.unwrap_or("(no identity)"),
        method = %req.method(),
        path = %path,
        reason = %verdict.reason,
        "request denied by intention"
    );
    Err(ProxyError::DeniedByIntention)
}

async fn route_and_forward(
    ctx: &ListenerContext,
    snapshot: &Snapshot,
    client: &Client,
    mut req: Request<Incoming>,
    ex: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    let listener = snapshot.listener(&ctx.name).ok_or(ProxyError::NoRoute)?;
    ex.stats = Some(listener.unrouted.clone());
    // One normal form for everything that judges the path, and for the app: what is
    // judged is what is forwarded.
    // (A clone of the URI is a few reference counts: it lets `req` be edited below while
    // a path that was already normal is borrowed, not copied.)
    let target = req.uri().clone();
    let path =
        crate::path::normalize(target.path(), &listener.paths).map_err(ProxyError::InvalidPath)?;
    if let Some(mesh) = &listener.mesh {
        authorize(ctx, mesh, client, &req, &path)?;
        let headers = req.headers_mut();
        headers.remove(&X_WEFT_SOURCE);
        if let Some(v) = client
            .peer
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            headers.insert(X_WEFT_SOURCE, v);
        }
    }
    let host = request_host(&req).ok_or(ProxyError::InvalidHost)?;
    if let Some(max) = listener.limits.max_request_body_bytes {
        // A declared length over the limit is refused before anything is forwarded.
        if declared_length(req.headers()).is_some_and(|n| n > max) {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let (rule, info) = listener
        .table
        .route(&host, req.method(), &path, req.uri().query(), req.headers())
        .ok_or(ProxyError::NoRoute)?;
    ex.rule = Some(rule.clone());
    ex.stats = Some(rule.local_stats.clone());

    if let Some(r) = &rule.filters.redirect {
        return Ok(redirect(
            ctx,
            client,
            rule,
            r,
            &host,
            &path,
            req.uri().query(),
            info.prefix_len,
        ));
    }

    // From here on `req` is edited: keep the path only if normalization changed it.
    let mut new_path: Option<String> = match path {
        Cow::Owned(p) => Some(p),
        Cow::Borrowed(_) => None,
    };

    if let Some(limit) = &rule.rate_limit {
        limit.check(req.headers(), client.addr.ip())?;
    }
    if let Some(fault) = &rule.fault {
        inject_fault(fault, &ctx.metrics, &rule.route).await?;
    }

    let backend = rule.pick_backend().ok_or(ProxyError::NoHealthyEndpoints)?;
    let service = &backend.service;
    ex.service = Some(service.clone());
    ex.stats = Some(backend.stats.clone());
    if let Some(limit) = &service.rate_limit {
        limit.check(req.headers(), client.addr.ip())?;
    }

    let upgrade = is_upgrade(&req);
    if upgrade && service.upstream.settings.is_http2() {
        return Err(ProxyError::UpgradeUnsupported);
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // Headers: hop-by-hop out, forwarding information in, then the route's edits.
    let upgrade_proto = if upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let authority = req.uri().authority().cloned();
    let trailers = accepts_trailers(req.headers());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, Hop::Request);
    if let Some(proto) = upgrade_proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    append_forwarded_for(headers, client);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme()));
    ensure_request_id(headers);
    if let Some((_, _, fields)) = ex.log.as_mut() {
        fields.request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
    }
    if !headers.contains_key(header::HOST) {
        // HTTP/2 clients send `:authority`; an HTTP/1.1 upstream needs it as `Host`.
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(header::HOST, v);
        }
    }
    if let Some(ops) = &rule.filters.request_headers {
        ops.apply(headers);
    }
    if let Some(rw) = &rule.filters.rewrite {
        if let Some(h) = &rw.hostname {
            req.headers_mut().insert(header::HOST, h.clone());
        }
        if let Some(p) = &rw.path {
            let current = new_path.as_deref().unwrap_or(req.uri().path());
            new_path = Some(p.apply(current, info.prefix_len));
        }
    }

    // Timeouts: the rule's over the service's; a caller's gRPC deadline shortens them.
    let retry = rule.retry.as_ref().unwrap_or(&service.retry);
    let per_try = rule.per_try_timeout.or(service.per_try_timeout);
    let caller_deadline = req
        .headers()
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(retry::parse_grpc_timeout);
    let mut allowed = rule.request_timeout.unwrap_or(service.request_timeout);
    if let Some(d) = caller_deadline {
        allowed = allowed.min(d);
    }
    let deadline = tokio::time::Instant::from_std(ex.started) + allowed;
    let _in_flight = service.breaker.request().ok_or(ProxyError::Overloaded)?;
    let _adaptive = match &service.adaptive {
        Some(a) => Some(a.acquire().ok_or(ProxyError::ConcurrencyLimited)?),
        None => None,
    };
    service.budget.deposit();

    let key = service
        .balancer
        .hash_key()
        .and_then(|k| k.hash(req.headers(), client.addr.ip()));
    let is_h2 = service.upstream.settings.is_http2();
    *req.version_mut() = if is_h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    // The body: read in full when a retry may have to send it again after it reached the
    // upstream and it is small enough; streamed otherwise. (A request that never left —
    // no connection — comes back from the upstream whole and needs no copy.)
    let (parts, body) = req.into_parts();
    let (body, verdict) = RequestBody::new(
        body,
        listener.limits.max_request_body_bytes,
        listener.limits.request_body_idle_timeout.get(),
    );
    let declared = declared_length(&parts.headers);
    let resendable = retry.may_resend(&parts.method);
    let small = |max: u64| body.is_end_stream() || declared.is_some_and(|n| n <= max);
    let resend = retry.attempts > 0
        && retry.retries_after_send()
        && resendable
        && downstream_upgrade.is_none()
        && small(retry.max_body_bytes);
    let mirror = rule
        .filters
        .mirror
        .as_ref()
        .filter(|m| downstream_upgrade.is_none() && fastrand::f64() * 100.0 < m.percent);
    let mirror = match mirror {
        Some(m) if small(MIRROR_MAX_BODY) => Some(m),
        Some(m) => {
            ctx.metrics
                .mirror(&rule.route, &m.service.name, "skipped-large-body");
            None
        }
        None => None,
    };
    // A copy is kept for resending, or for the mirror; only `resend` allows retries after
    // the request reached the upstream.
    let keep_copy = resend || mirror.is_some();
    let mut body = Some(match (keep_copy, body.is_end_stream()) {
        (true, true) => RequestBody::Bytes(None),
        (true, false) => RequestBody::Bytes(Some(body.into_bytes().await?)),
        (false, _) => body,
    });
    let template = keep_copy.then(|| Template::of(&parts));
    if let (Some(m), Some(t), Some(RequestBody::Bytes(b))) = (mirror, &template, &body) {
        send_mirror(
            m,
            t.parts(),
            b.clone(),
            new_path.clone(),
            &ctx.metrics,
            &rule.route,
        );
    }
    let mut parts = Some(parts);
    let mut unsent: Option<Request<RequestBody>> = None;

    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    let mut _retrying: Option<retry::Permit> = None;
    let (mut resp, lease, inflight) = loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ProxyError::RequestTimeout);
        }
        let endpoint = service
            .balancer
            .pick_avoiding(key, &tried)
            .ok_or(ProxyError::NoHealthyEndpoints)?;
        ex.upstream = Some(endpoint.addr);
        let inflight = endpoint.start();

        // The request for this attempt: one that came back unsent (its target already
        // rewritten), a copy of the original, or the original itself.
        let (mut head, this_body, path) = match (unsent.take(), &template, body.as_ref()) {
            (Some(req), _, _) => {
                let (head, body) = req.into_parts();
                (head, body, None)
            }
            (None, Some(t), Some(RequestBody::Bytes(b))) => {
                (t.parts(), RequestBody::Bytes(b.clone()), new_path.clone())
            }
            _ => (
                parts.take().ok_or(ProxyError::UpstreamReset)?,
                body.take().ok_or(ProxyError::UpstreamReset)?,
                new_path.take(),
            ),
        };
        // HTTP/1.1 goes out in origin-form with its Host header; HTTP/2 needs `:authority`,
        // which carries the (possibly rewritten) Host rather than the endpoint's address.
        let h2_authority = is_h2.then(|| {
            head.headers
                .get(header::HOST)
                .and_then(|v| http::uri::Authority::try_from(v.as_bytes()).ok())
                .unwrap_or_else(|| endpoint.authority.clone())
        });
        head.uri = upstream_uri(&head.uri, h2_authority, path)?;
        let remaining = deadline - now;
        if caller_deadline.is_some() {
            // The callee learns how long the caller will still wait.
            if let Ok(v) = HeaderValue::from_str(&retry::format_grpc_timeout(remaining)) {
                head.headers.insert(GRPC_TIMEOUT, v);
            }
        }
        let limit = per_try.map_or(remaining, |p| p.min(remaining));
        let attempt_started = Instant::now();
        let sent = tokio::time::timeout(
            limit,
            service
                .upstream
                .send(endpoint, Request::from_parts(head, this_body)),
        )
        .await;
        let outcome = match &sent {
            Ok(Ok((resp, _))) if resp.status().is_server_error() => {
                Outcome::ServerError(resp.status().as_u16())
            }
            Ok(Ok(_)) => {
                if let Some(a) = &service.adaptive {
                    if let Some(limit) = a.sample(attempt_started.elapsed()) {
                        ctx.metrics.adaptive_limit(&service.name, limit);
                    }
                }
                Outcome::Success
            }
            Ok(Err(f)) if verdict.error().is_some() || f.error == ProxyError::Overloaded => {
                Outcome::Success // the client's fault or our own limit, not the endpoint's
            }
            Ok(Err(_)) | Err(_) => Outcome::LocalFailure,
        };
        service.record(endpoint, outcome, &ctx.metrics);
        let failure = match sent {
            Ok(Ok((resp, lease))) => {
                if !(resend && retry.retries_response(resp.status(), resp.headers())) {
                    break (resp, lease, inflight);
                }
                Err(resp)
            }
            Ok(Err(failed)) => {
                if failed.error.before_request_sent() {
                    // Every failed connect counts, retried or not.
                    ctx.metrics
                        .connect_error(&service.name, failed.error.code());
                }
                let e = verdict.error().unwrap_or(failed.error);
                tracing::debug!(service = %service.name, endpoint = %endpoint.addr, error = %e, "upstream attempt failed");
                let again = match failed.unsent {
                    Some(req) if retry.retries_error(e, false) => {
                        unsent = Some(req);
                        true
                    }
                    _ => resend && retry.retries_error(e, resendable),
                };
                if !again {
                    return Err(e);
                }
                Ok(e)
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ProxyError::RequestTimeout)
            }
            Err(_) => {
                if !(resend && retry.retries_error(ProxyError::PerTryTimeout, resendable)) {
                    return Err(ProxyError::PerTryTimeout);
                }
                Ok(ProxyError::PerTryTimeout)
            }
        };
        tried.push(endpoint.addr);
        // Another attempt? Only within the attempts, the budget and the breaker.
        let refused = if attempt >= retry.attempts {
            Some(None)
        } else if !service.budget.withdraw() {
            Some(Some("budget-exhausted"))
        } else {
            match service.breaker.retry() {
                Some(p) => {
                    _retrying = Some(p);
                    None
                }
                None => Some(Some("overloaded")),
            }
        };
        if let Some(why) = refused {
            if let Some(why) = why {
                ctx.metrics.retry(&service.name, why);
            }
            match failure {
                Err(resp) => break (resp, None, inflight),
                Ok(e) => return Err(e),
            }
        }
        drop(failure); // an unwanted response closes its connection rather than being read
        ctx.metrics.retry(&service.name, "attempted");
        tokio::time::sleep_until(
            (tokio::time::Instant::now() + retry.backoff(attempt)).min(deadline),
        )
        .await;
        attempt += 1;
    };
    inflight.observe_response();

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((d, u)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(d),
                            &mut TokioIo::new(u),
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), Hop::Response { trailers });
    }
    if let Some(ops) = &rule.filters.response_headers {
        ops.apply(resp.headers_mut());
    }
    ex.inflight = Some(inflight);
    // A switched (upgraded) connection is the client's now: it never returns to the pool.
    let lease = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        None
    } else {
        lease
    };
    Ok(resp.map(|b| {
        Either::Left(UpstreamBody {
            inner: b,
            exchange: None,
            lease,
        })
    }))
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

#[allow(clippy::too_many_arguments)]
fn redirect(
    ctx: &ListenerContext,
    client: &Client,
    rule: &Rule,
    r: &crate::snapshot::Redirect,
    host: &str,
    path: &str,
    query: Option<&str>,
    prefix_len: Option<usize>,
) -> Response<ResponseBody> {
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
fn local_reply(
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

/// Host of the request, lower-case and without port: the authority of an absolute or
/// HTTP/2 URI, else the `Host` header. Borrowed unless it needs lower-casing.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return None; // two Host headers: which one a backend believes is anyone's guess
    }
    let authority = match req.uri().authority() {
        Some(a) => {
            if req.version() <= Version::HTTP_11 {
                // Absolute-form: only http(s), and a Host header, if any, must agree.
                if !matches!(req.uri().scheme_str(), Some("http" | "https")) {
                    return None;
                }
                if let Some(h) = host_header {
                    let h = host_of(h.to_str().ok()?)?;
                    if !h.eq_ignore_ascii_case(host_of(a.as_str())?) {
                        return None;
                    }
                }
            }
            a.as_str()
        }
        None => host_header?.to_str().ok()?,
    };
    let host = host_of(authority)?;
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// The host part of `host[:port]` or `[v6][:port]`, if well formed.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (h, rest) = authority.split_at(end + 1);
        if !h[1..end]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (h, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let valid = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    valid.then_some(host)
}

/// Whether the request asks to switch protocols (WebSocket and the like). `h2c` is not
/// honoured: HTTP/2 by upgrade is deprecated (RFC 9113 §3.1), and tunnelling it would let
/// every later request on the connection bypass routing; the request is served as plain
/// HTTP/1.1 instead (its Upgrade and HTTP2-Settings headers are hop-by-hop and dropped).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Which message hop-by-hop fields are removed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hop {
    /// A request: `te: trailers` is kept (gRPC and HTTP/1.1 trailers need it end to end).
    Request,
    /// A response; `trailers`: whether the client asked for trailers (`te: trailers`), in
    /// which case the `Trailer` header that announces them is kept, so an HTTP/1.1 client
    /// gets them after a chunked body.
    Response {
        /// The client sent `te: trailers`.
        trailers: bool,
    },
}

/// Whether a request's `TE` header accepts trailers.
fn accepts_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header
/// names. `te: trailers` is kept on requests; `Trailer` is kept on requests and on the
/// responses of clients that accept trailers (see [`Hop`]).
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, hop: Hop) {
    // One pass over the names (standard names compare as enum tags, no hashing); most
    // messages carry none or only `connection: keep-alive`.
    let mut found: Vec<HeaderName> = Vec::new();
    for n in h.keys() {
        if is_hop_by_hop(n) {
            found.push(n.clone());
        }
    }
    if found.is_empty() {
        return;
    }
    if found.contains(&header::CONNECTION) {
        for token in h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            let known = [
                "keep-alive",
                "close",
                "upgrade",
                "te",
                "trailer",
                "transfer-encoding",
                "proxy-connection",
            ];
            if token.is_empty() || known.iter().any(|k| token.eq_ignore_ascii_case(k)) {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                found.push(n);
            }
        }
    }
    let keep_te = hop == Hop::Request
        && h.get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let keep_trailer = matches!(hop, Hop::Request | Hop::Response { trailers: true });
    for n in found {
        if !(keep_te && n == header::TE || keep_trailer && n == header::TRAILER) {
            h.remove(n);
        }
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::TRAILER
        || n == header::TE
}

fn append_forwarded_for(h: &mut HeaderMap, client: &Client) {
    match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        None => {
            h.insert(X_FORWARDED_FOR, client.ip_header.clone());
        }
        Some(prev) => {
            let value = format!("{prev}, {}", client.addr.ip());
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
    }
}

fn ensure_request_id(h: &mut HeaderMap) {
    let keep = h
        .get(&X_REQUEST_ID)
        .is_some_and(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN);
    if !keep {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let r = fastrand::u128(..);
        let mut id = [0u8; 32];
        for (i, c) in id.iter_mut().enumerate() {
            *c = HEX[((r >> (124 - 4 * i)) & 0xf) as usize];
        }
        if let Ok(v) = HeaderValue::from_bytes(&id) {
            h.insert(X_REQUEST_ID, v);
        }
    }
}

/// Accounting for one request, completed when the response body ends.
struct Exchange {
    started: Instant,
    stats: Option<Arc<RouteStats>>,
    status: u16,
    error: Option<&'static str>,
    rule: Option<Arc<Rule>>,
    service: Option<Arc<crate::snapshot::Service>>,
    upstream: Option<SocketAddr>,
    inflight: Option<InFlight>,
    log: Option<(AccessLog, String, LogFields)>,
}

/// What only the access log needs, gathered only when it is enabled.
struct LogFields {
    start_time: SystemTime,
    request_id: String,
    method: String,
    authority: String,
    path: String,
    protocol: &'static str,
    user_agent: String,
    client: SocketAddr,
}

impl Exchange {
    fn begin(
        ctx: &ListenerContext,
        client: SocketAddr,
        req: &Request<Incoming>,
        started: Instant,
    ) -> Exchange {
        let log = ctx.access_log.as_ref().map(|log| {
            let fields = LogFields {
                start_time: SystemTime::now(),
                // The client's id, if any, so that replies made before forwarding log it too.
                request_id: req
                    .headers()
                    .get(&X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                method: req.method().to_string(),
                authority: req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .or_else(|| {
                        req.headers()
                            .get(header::HOST)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    })
                    .unwrap_or_default(),
                path: req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                protocol: match req.version() {
                    Version::HTTP_2 => "HTTP/2.0",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                user_agent: req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                client,
            };
            (log.clone(), ctx.name.clone(), fields)
        });
        Exchange {
            started,
            stats: None,
            status: 0,
            error: None,
            rule: None,
            service: None,
            upstream: None,
            inflight: None,
            log,
        }
    }

    fn finish(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(stats) = self.stats.take() {
            stats.record(self.status, elapsed);
        }
        self.inflight.take();
        if let Some((log, listener, f)) = self.log.take() {
            log.log(&Record {
                start_time: rfc3339(f.start_time),
                listener: &listener,
                route: self.rule.as_ref().map_or("", |r| r.route.as_str()),
                service: self.service.as_ref().map_or("", |s| s.name.as_str()),
                upstream: self.upstream.map(|a| a.to_string()).unwrap_or_default(),
                client: f.client.to_string(),
                method: &f.method,
                authority: &f.authority,
                path: &f.path,
                protocol: f.protocol,
                status: self.status,
                error: self.error,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                request_id: &f.request_id,
                user_agent: &f.user_agent,
            });
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An upstream response body that completes its exchange's accounting when it ends, and
/// returns its HTTP/1.1 connection to the pool once read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    exchange: Option<Exchange>,
    lease: Option<Lease>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Complete (e.g. an empty body nobody polled): the connection is reusable.
        if self.inner.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

impl UpstreamBody {
    fn with_exchange(mut self, ex: Exchange) -> Self {
        self.exchange = Some(ex);
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
            self.exchange.take(); // finished: account now rather than at drop
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body's length as its `Content-Length` declares it.
fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Largest request body copied to a mirror; requests with larger (or undeclared) bodies
/// are not mirrored.
const MIRROR_MAX_BODY: u64 = 65_536;

/// Sends a copy of a request to the mirror's service in its own task: the response is
/// read and dropped, failures only counted, and the mirror's own circuit breaker decides
/// whether it goes at all — a slow mirror never slows the real request.
fn send_mirror(
    m: &crate::snapshot::Mirror,
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
        let authority = is_h2.then(|| {
            head.headers
                .get(header::HOST)
                .and_then(|v| http::uri::Authority::try_from(v.as_bytes()).ok())
                .unwrap_or_else(|| endpoint.authority.clone())
        });
        let Ok(uri) = upstream_uri(&head.uri, authority, new_path) else {
            return record("failed");
        };
        head.uri = uri;
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
async fn inject_fault(
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
struct Template {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn of(p: &http::request::Parts) -> Template {
        Template {
            method: p.method.clone(),
            uri: p.uri.clone(),
            version: p.version,
            headers: p.headers.clone(),
        }
    }

    fn parts(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_is_an_upgrade_h2c_is_not() {
        let req = |proto: &str| {
            Request::builder()
                .header("connection", "Upgrade, HTTP2-Settings")
                .header("upgrade", proto)
                .body(())
                .unwrap()
        };
        assert!(is_upgrade(&req("websocket")));
        assert!(!is_upgrade(&req("h2c")));
        assert!(!is_upgrade(
            &Request::builder()
                .header("upgrade", "websocket")
                .body(())
                .unwrap()
        ));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert("trailer", "x-checksum".parse().unwrap());
        strip_hop_by_hop(&mut h, Hop::Request);
        assert!(
            h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
                && h.get("connection").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("x-kept").is_some() && h.get("trailer").is_some());
        let mut r = h.clone();
        strip_hop_by_hop(&mut r, Hop::Response { trailers: true });
        assert!(r.get("te").is_none());
        assert_eq!(r.get("trailer").unwrap(), "x-checksum");
        strip_hop_by_hop(&mut h, Hop::Response { trailers: false });
        assert!(h.get("te").is_none() && h.get("trailer").is_none());
        let te = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("te", v.parse().unwrap());
            accepts_trailers(&h)
        };
        assert!(te("trailers") && te("gzip, Trailers") && te("trailers;q=1") && !te("gzip"));
    }

    #[test]
    fn host_of_handles_ports_ipv6_and_garbage() {
        assert_eq!(host_of("a.b:80"), Some("a.b"));
        assert_eq!(host_of("a.b"), Some("a.b"));
        assert_eq!(host_of("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_of("[::1]"), Some("[::1]"));
        for bad in [
            "",
            ":80",
            "a.b:",
            "a.b:x",
            "a.b:123456",
            "a b",
            "[::1",
            "[zz]:1",
            "a/b",
            "u@h",
        ] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn host_is_taken_from_authority_or_header() {
        let r = Request::builder()
            .uri("/x")
            .header("host", "Example.COM:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("example.com"));
        // Absolute-form: the target's authority, which a Host header must agree with
        // (a disagreement would route by one name and reach the backend with another).
        let r = Request::builder()
            .uri("http://a.b/x")
            .header("host", "A.B:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("a.b"));
        let r = Request::builder()
            .uri("http://a.b/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), None);
        let r = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(request_host(&r), None);
        let r = Request::builder()
            .uri("/x")
            .header("host", "u@evil")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), None);
    }
}
