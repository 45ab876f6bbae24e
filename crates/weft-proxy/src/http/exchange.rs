//! One exchange, step by step:
//!
//! ```text
//! route    path in normal form ─► intentions (sidecar inbound) ─► host ─► route table
//!          ─► redirect? answer now ─► rate limit, fault ─► backend by weight
//! prepare  headers for the upstream (hop-by-hop, x-forwarded-*, x-request-id, the rule's
//!          edits and rewrite); limits (deadline, breaker, adaptive, budget); the body
//!          (streamed, or kept for a retry or a mirror)
//! attempt  endpoint by policy ─► pooled client ─► outcome recorded (outlier detection)
//!          ─► retriable? another endpoint after a backoff, within attempts, budget, breaker
//! respond  upgrade spliced, hop-by-hop removed, the rule's response edits
//! ```
//!
//! Every step returns a `ProxyError` for the client rather than failing; [`handle`] turns
//! it into a precise reply.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::Either;
use hyper_util::rt::TokioIo;
use tokio::time::error::Elapsed;

use super::context::{Client, Context};
use super::filters::{self, Target, Template};
use super::headers::{self, Hop, GRPC_TIMEOUT, X_FORWARDED_PROTO, X_REQUEST_ID, X_WEFT_SOURCE};
use super::record::{Exchange, UpstreamBody};
use super::route::Rule;
use super::{ResponseBody, Routes};
use crate::error::ProxyError;
use crate::telemetry::tap::TapBody;
use crate::telemetry::trace::{self, SpanContext};
use crate::upstream::body::{RequestBody, Source, Verdict};
use crate::upstream::client::{Received, SendError};
use crate::upstream::endpoint::{Endpoint, InFlight};
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::Lease;
use crate::upstream::retry::{self, Permit};
use crate::upstream::service::Service;

/// Serves one request with the routes of its listener (those current when it arrived).
/// Never fails: every error becomes a precise reply. (This and `serve` return `async move`
/// blocks rather than being `async fn`s, which keep by-value arguments such as the
/// request twice in their futures: see `Upstream::send`.)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps the request twice in its future"
)]
pub fn handle(
    ctx: Arc<Context>,
    routes: Arc<Routes>,
    client: Client,
    req: Request<Source>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
    async move {
        let started = std::time::Instant::now();
        // This hop's span: a child of the caller's (or a new trace), passed on upstream.
        let span = SpanContext::start(trace::extract(req.headers()), routes.tracing.rate);
        let mut ex = Exchange::begin(&ctx, &client, &req, started, &span, routes.tracing.kind);
        ex.stats = Some(routes.unrouted.clone());
        // A tapped request's body is counted (and captured, if a tap asks) as it goes.
        let req = match ex.tap.as_deref_mut() {
            Some(tap) => req.map(|b| {
                Source::Other(http_body_util::BodyExt::boxed(TapBody::new(b, &mut tap.1)))
            }),
            None => req,
        };
        let resp = match serve(&ctx, &routes, &client, req, &mut ex, &span).await {
            Ok(resp) => resp,
            Err(e) => {
                ctx.metrics.local_reply(&ctx.name, e.code());
                ex.error = Some(e.code());
                let mut reply =
                    filters::local_reply(e.status(), Some(e.code()), format!("weft: {e}\n"));
                if let ProxyError::RateLimited(secs) = e {
                    reply
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                reply
            }
        };
        ex.status = resp.status().as_u16();
        if let Some(tap) = ex.tap.as_deref_mut() {
            tap.1
                .response(resp.headers(), headers::grpc_status(resp.headers()));
        }
        Ok(match resp.into_parts() {
            (parts, Either::Left(upstream)) => {
                Response::from_parts(parts, Either::Left(upstream.with_exchange(ex)))
            }
            (parts, local) => {
                if let Some(tap) = ex.tap.as_deref_mut() {
                    tap.1.event.response_bytes = local.size_hint().exact().unwrap_or(0);
                }
                ex.finish();
                Response::from_parts(parts, local)
            }
        })
    }
}

/// The request stays in this frame and is lent to the steps, and the steps that need no
/// waiting are plain functions: a request head is a few hundred bytes, and moving it from
/// future to future cost more than the steps themselves.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps the request twice in its future"
)]
fn serve<'a>(
    ctx: &'a Context,
    routes: &'a Routes,
    client: &'a Client,
    mut req: Request<Source>,
    ex: &'a mut Exchange,
    span: &'a SpanContext,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + 'a {
    async move {
        let mut routed = match route(ctx, routes, client, &mut req, ex).await? {
            Routing::Answer(resp) => return Ok(*resp),
            Routing::Forward(r) => r,
        };
        edit_head(client, &mut routed, &mut req, ex);
        span.inject(req.headers_mut(), routes.tracing.always);
        let limits = Limits::take(&routed, &req)?;
        let mut outgoing = Outgoing::prepare(ctx, routes, &routed, req);
        if outgoing.keep_copy {
            outgoing.copy_body(ctx, &routed).await?;
        }
        let answered = attempts(ctx, &routed, &limits, &mut outgoing, ex).await?;
        Ok(respond(routed, answered, ex))
    }
}

/// Where routing left a request.
enum Routing<'a> {
    /// Answered without a backend (a redirect).
    Answer(Box<Response<ResponseBody>>),
    /// To a backend.
    Forward(Routed<'a>),
}

/// Where a request goes: its rule and backend service, and what forwarding it needs.
struct Routed<'a> {
    rule: &'a Arc<Rule>,
    service: &'a Arc<Service>,
    /// The path to send instead of the request's own (normalised or rewritten).
    new_path: Option<String>,
    /// The route's matched prefix (`ReplacePrefixMatch`).
    prefix_len: Option<usize>,
    /// The client's side of a protocol upgrade (WebSocket), if it asked for one.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The client accepts trailers (`te: trailers`).
    trailers: bool,
    /// The request's hash for `RingHash` balancing.
    key: Option<u64>,
}

impl Routed<'_> {
    /// The rule's retry policy, else the service's.
    fn retry(&self) -> &retry::Retry {
        self.rule.retry.as_ref().unwrap_or(&self.service.retry)
    }
}

/// Step 1: the path's normal form, intentions, the route, filters that answer or refuse
/// before anything is sent, and the backend service.
async fn route<'a>(
    ctx: &Context,
    routes: &'a Routes,
    client: &Client,
    req: &mut Request<Source>,
    ex: &mut Exchange,
) -> Result<Routing<'a>, ProxyError> {
    // One normal form for everything that judges the path, and for the app: what is
    // judged is what is forwarded. (A clone of the URI is a few reference counts: `req`
    // can be edited below while a path that was already normal is borrowed, not copied.)
    let target = req.uri().clone();
    let path =
        super::path::normalize(target.path(), &routes.paths).map_err(ProxyError::InvalidPath)?;
    if let Some(authz) = &routes.authz {
        let allowed_by = super::authz::judge(ctx, authz, client, req, &path)?;
        if let Some(s) = ex.span.as_deref_mut() {
            s.intention = Some(allowed_by.to_string());
        }
        let headers = req.headers_mut();
        headers.remove(&X_WEFT_SOURCE);
        if let Some(v) = &client.peer_header {
            headers.insert(X_WEFT_SOURCE, v.clone());
        }
    }
    let host = headers::request_host(req).ok_or(ProxyError::InvalidHost)?;
    if let Some(max) = routes.max_body {
        // A declared length over the limit is refused before anything is forwarded.
        if headers::declared_length(req.headers()).is_some_and(|n| n > max) {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let (rule, info) = routes
        .table
        .route(&host, req.method(), &path, target.query(), req.headers())
        .ok_or(ProxyError::NoRoute)?;
    ex.rule = Some(rule.clone());
    ex.stats = Some(rule.local_stats.clone());
    if let Some(r) = &rule.filters.redirect {
        let to = Target {
            host: &host,
            path: &path,
            query: target.query(),
            prefix_len: info.prefix_len,
        };
        return Ok(Routing::Answer(Box::new(filters::redirect(
            ctx, client, rule, r, to,
        ))));
    }
    if let Some(limit) = &rule.rate_limit {
        limit.check(req.headers(), client.addr.ip())?;
    }
    if let Some(fault) = &rule.fault {
        filters::inject_fault(fault, &ctx.metrics, &rule.route).await?;
    }
    let backend = rule.pick_backend().ok_or(ProxyError::NoHealthyEndpoints)?;
    let service = &backend.service;
    ex.service = Some(service.clone());
    ex.stats = Some(backend.stats.clone());
    if let Some(edge) = &backend.edge {
        ex.edge = Some(edge.clone());
    }
    if let Some(limit) = &service.rate_limit {
        limit.check(req.headers(), client.addr.ip())?;
    }
    let upgrade = headers::is_upgrade(req);
    if upgrade && service.upstream.settings.is_http2() {
        return Err(ProxyError::UpgradeUnsupported);
    }
    let upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    let trailers = headers::accepts_trailers(req.headers());
    let routed = Routed {
        rule,
        service,
        new_path: match path {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        },
        prefix_len: info.prefix_len,
        upgrade,
        trailers,
        key: None,
    };
    Ok(Routing::Forward(routed))
}

/// Step 2: the request's head as the upstream gets it.
fn edit_head(client: &Client, r: &mut Routed<'_>, req: &mut Request<Source>, ex: &mut Exchange) {
    let upgrade_proto = r
        .upgrade
        .is_some()
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten();
    let authority = req.uri().authority().cloned();
    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers, Hop::Request);
    if let Some(proto) = upgrade_proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    headers::append_forwarded_for(headers, client);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme()));
    headers::ensure_request_id(headers);
    if ex.log.is_some() || ex.span.is_some() {
        let id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Some((_, _, fields)) = ex.log.as_deref_mut() {
            fields.request_id = id.to_string();
        }
        if let Some(s) = ex.span.as_deref_mut() {
            s.request_id = id.to_string();
        }
    }
    if !headers.contains_key(header::HOST) {
        // HTTP/2 clients send `:authority`; an HTTP/1.1 upstream (or mirror) needs it as
        // `Host`. (An HTTP/2 upstream gets it back as `:authority`: see `filters::aim`.)
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(header::HOST, v);
        }
    }
    if let Some(ops) = &r.rule.filters.request_headers {
        ops.apply(headers);
    }
    if let Some(rw) = &r.rule.filters.rewrite {
        if let Some(h) = &rw.hostname {
            req.headers_mut().insert(header::HOST, h.clone());
        }
        if let Some(p) = &rw.path {
            let current = r.new_path.as_deref().unwrap_or(req.uri().path());
            r.new_path = Some(p.apply(current, r.prefix_len));
        }
    }
    *req.version_mut() = if r.service.upstream.settings.is_http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    r.key = r
        .service
        .balancer
        .hash_key()
        .and_then(|k| k.hash(req.headers(), client.addr.ip()));
}

/// Step 3: how long and how much: the retry policy, timeouts (a caller's gRPC deadline
/// shortens them), and the permits of the service's limits, held until the response.
struct Limits {
    per_try: Option<std::time::Duration>,
    deadline: tokio::time::Instant,
    /// The caller sent `grpc-timeout`: each attempt tells the callee what is left.
    caller_deadline: bool,
    _in_flight: Permit,
    _adaptive: Option<Permit>,
}

impl Limits {
    fn take(r: &Routed<'_>, req: &Request<Source>) -> Result<Limits, ProxyError> {
        let (rule, service) = (&r.rule, &r.service);
        let caller = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_grpc_timeout);
        let mut allowed = rule.request_timeout.unwrap_or(service.request_timeout);
        if let Some(d) = caller {
            allowed = allowed.min(d);
        }
        let in_flight = service.breaker.request().ok_or(ProxyError::Overloaded)?;
        let adaptive = match &service.adaptive {
            Some(a) => Some(a.acquire().ok_or(ProxyError::ConcurrencyLimited)?),
            None => None,
        };
        service.budget.deposit();
        Ok(Limits {
            per_try: rule.per_try_timeout.or(service.per_try_timeout),
            deadline: tokio::time::Instant::now() + allowed,
            caller_deadline: caller.is_some(),
            _in_flight: in_flight,
            _adaptive: adaptive,
        })
    }
}

/// What the attempts send: the head, and the body — read in full when a retry may have to
/// send it again after it reached the upstream (and it is small enough) or a mirror wants
/// a copy; streamed otherwise. (A request that never left — no connection — comes back
/// from the upstream whole and needs no copy.)
struct Outgoing {
    parts: Option<http::request::Parts>,
    body: Option<RequestBody>,
    /// Kept to rebuild the head for another attempt.
    template: Option<Box<Template>>,
    /// A copy of the request is kept: for resending, or for the mirror.
    keep_copy: bool,
    /// The mirror gets a copy of this request.
    mirror: bool,
    /// Whether a retry may resend the request after it reached the upstream.
    resend: bool,
    /// The method allows resending at all (idempotent, or the route says so).
    resendable: bool,
    /// Why the body stopped early, if a limit cut it (the client's fault).
    verdict: Verdict,
}

impl Outgoing {
    /// Decides whether a copy is kept (see [`Outgoing::copy_body`]).
    fn prepare(ctx: &Context, routes: &Routes, r: &Routed<'_>, req: Request<Source>) -> Outgoing {
        let retry = r.retry();
        let (parts, body) = req.into_parts();
        let (body, verdict) = RequestBody::new(body, routes.max_body, routes.body_idle);
        let declared = headers::declared_length(&parts.headers);
        let resendable = retry.may_resend(&parts.method);
        let small = |max: u64| body.is_end_stream() || declared.is_some_and(|n| n <= max);
        let resend = retry.attempts > 0
            && retry.retries_after_send()
            && resendable
            && r.upgrade.is_none()
            && small(retry.max_body_bytes);
        let mirror = r
            .rule
            .filters
            .mirror
            .as_ref()
            .filter(|m| r.upgrade.is_none() && fastrand::f64() * 100.0 < m.percent);
        let mirror = match mirror {
            Some(m) if small(filters::MIRROR_MAX_BODY) => Some(m),
            Some(m) => {
                ctx.metrics
                    .mirror(&r.rule.route, &m.service.name, "skipped-large-body");
                None
            }
            None => None,
        };
        // A copy is kept for resending, or for the mirror; only `resend` allows retries
        // after the request reached the upstream.
        let keep_copy = resend || mirror.is_some();
        Outgoing {
            parts: Some(parts),
            body: Some(body),
            template: None,
            keep_copy,
            mirror: mirror.is_some(),
            resend,
            resendable,
            verdict,
        }
    }

    /// Reads the body in full (it is small: `prepare` checked) to keep a copy, and sends
    /// the mirror its own.
    async fn copy_body(&mut self, ctx: &Context, r: &Routed<'_>) -> Result<(), ProxyError> {
        let (Some(parts), Some(body)) = (&self.parts, self.body.take()) else {
            return Err(ProxyError::UpstreamReset);
        };
        let body = match body.is_end_stream() {
            true => RequestBody::Bytes(None),
            false => RequestBody::Bytes(Some(body.into_bytes().await?)),
        };
        let template = Box::new(Template::of(parts));
        if let (Some(m), RequestBody::Bytes(b)) = (r.rule.filters.mirror.as_ref(), &body) {
            if self.mirror {
                let path = r.new_path.clone();
                let (route, metrics) = (&r.rule.route, &ctx.metrics);
                filters::send_mirror(m, template.parts(), b.clone(), path, metrics, route);
            }
        }
        self.body = Some(body);
        self.template = Some(template);
        Ok(())
    }

    /// The request for the next attempt: one that came back unsent (its target already
    /// rewritten), a copy of the original, or the original itself; and the path to set.
    fn next(
        &mut self,
        unsent: Option<Box<Request<RequestBody>>>,
        new_path: &Option<String>,
    ) -> Result<(http::request::Parts, RequestBody, Option<String>), ProxyError> {
        Ok(match (unsent, &self.template, self.body.as_ref()) {
            (Some(req), _, _) => {
                let (head, body) = (*req).into_parts();
                (head, body, None)
            }
            (None, Some(t), Some(RequestBody::Bytes(b))) => {
                (t.parts(), RequestBody::Bytes(b.clone()), new_path.clone())
            }
            _ => (
                self.parts.take().ok_or(ProxyError::UpstreamReset)?,
                self.body.take().ok_or(ProxyError::UpstreamReset)?,
                new_path.clone(),
            ),
        })
    }
}

/// The upstream's answer, with the connection it came on and the endpoint's in-flight mark.
struct Answered {
    resp: Response<Received>,
    lease: Option<Lease>,
    inflight: InFlight,
}

/// How one attempt ended.
enum Tried {
    /// The answer to give.
    Answer(Answered),
    /// A response a retry may replace (a retriable status), or a failure a retry may
    /// overcome; `unsent`: the request came back without having left.
    Failed {
        response: Option<Answered>,
        error: ProxyError,
        unsent: Option<Box<Request<RequestBody>>>,
        retriable: bool,
    },
}

/// Step 4: attempts on endpoints chosen by the service's policy, until one answers for
/// good, the deadline passes, or the attempts, budget or breaker allow no more.
async fn attempts(
    ctx: &Context,
    r: &Routed<'_>,
    limits: &Limits,
    out: &mut Outgoing,
    ex: &mut Exchange,
) -> Result<Answered, ProxyError> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut unsent = None;
    let mut _retrying: Option<Permit> = None;
    for attempt in 0.. {
        if tokio::time::Instant::now() >= limits.deadline {
            return Err(ProxyError::RequestTimeout);
        }
        let (response, error) =
            match attempt_once(ctx, r, limits, out, &tried, unsent.take(), ex).await? {
                Tried::Answer(a) => return Ok(a),
                Tried::Failed {
                    response,
                    error,
                    unsent: back,
                    retriable,
                } => {
                    if !retriable {
                        return response.ok_or(error);
                    }
                    unsent = back;
                    (response, error)
                }
            };
        if let Some(addr) = ex.upstream {
            tried.push(addr);
        }
        // Another attempt? Only within the attempts, the budget and the breaker.
        let refused = if attempt >= r.retry().attempts {
            Some(None)
        } else if !r.service.budget.withdraw() {
            Some(Some("budget-exhausted"))
        } else {
            match r.service.breaker.retry() {
                Some(p) => {
                    _retrying = Some(p);
                    None
                }
                None => Some(Some("overloaded")),
            }
        };
        if let Some(why) = refused {
            if let Some(why) = why {
                ctx.metrics.retry(&r.service.name, why);
            }
            return response.ok_or(error);
        }
        // An unwanted response closes its connection rather than being read.
        drop(response);
        ctx.metrics.retry(&r.service.name, "attempted");
        let wake = tokio::time::Instant::now() + r.retry().backoff(attempt);
        tokio::time::sleep_until(wake.min(limits.deadline)).await;
    }
    unreachable!("the attempts loop returns")
}

/// One attempt on one endpoint, its outcome recorded for outlier detection.
async fn attempt_once(
    ctx: &Context,
    r: &Routed<'_>,
    limits: &Limits,
    out: &mut Outgoing,
    tried: &[SocketAddr],
    unsent: Option<Box<Request<RequestBody>>>,
    ex: &mut Exchange,
) -> Result<Tried, ProxyError> {
    let service = &r.service;
    let endpoint = service
        .balancer
        .pick_avoiding(r.key, tried)
        .ok_or(ProxyError::NoHealthyEndpoints)?;
    ex.upstream = Some(endpoint.addr);
    let inflight = endpoint.start();
    ex.attempts += 1;
    let (mut head, body, path) = out.next(unsent, &r.new_path)?;
    let limit = address(&mut head, service, endpoint, limits, path)?;
    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(
        limit,
        service
            .upstream
            .send(endpoint, Request::from_parts(head, body)),
    )
    .await;
    let outcome = outcome_of(ctx, service, out, &sent, started);
    service.record(endpoint, outcome, &ctx.metrics);
    Ok(judge(ctx, r, limits, out, sent, inflight, endpoint.addr))
}

/// Aims the request head at `endpoint` (URI, and the caller's deadline for gRPC); returns
/// how long this attempt may take.
fn address(
    head: &mut http::request::Parts,
    service: &Service,
    endpoint: &Endpoint,
    limits: &Limits,
    path: Option<String>,
) -> Result<std::time::Duration, ProxyError> {
    filters::aim(head, service.upstream.settings.is_http2(), endpoint, path)?;
    let remaining = limits.deadline - tokio::time::Instant::now();
    if limits.caller_deadline {
        // The callee learns how long the caller will still wait.
        if let Ok(v) = HeaderValue::from_str(&retry::format_grpc_timeout(remaining)) {
            head.headers.insert(GRPC_TIMEOUT, v);
        }
    }
    Ok(limits.per_try.map_or(remaining, |p| p.min(remaining)))
}

/// What an attempt's result was, as a send under a per-try timeout.
type Sent = Result<Result<(Response<Received>, Option<Lease>), SendError>, Elapsed>;

/// The attempt as outlier detection counts it: a 5xx, a local failure, or a success
/// (the client's own fault, or our own limit, is not the endpoint's).
fn outcome_of(
    ctx: &Context,
    service: &Service,
    out: &Outgoing,
    sent: &Sent,
    started: std::time::Instant,
) -> Outcome {
    match sent {
        Ok(Ok((resp, _))) if resp.status().is_server_error() => {
            Outcome::ServerError(resp.status().as_u16())
        }
        Ok(Ok(_)) => {
            if let Some(a) = &service.adaptive {
                if let Some(limit) = a.sample(started.elapsed()) {
                    ctx.metrics.adaptive_limit(&service.name, limit);
                }
            }
            Outcome::Success
        }
        Ok(Err(f)) if out.verdict.error().is_some() || f.error == ProxyError::Overloaded => {
            Outcome::Success // the client's fault or our own limit, not the endpoint's
        }
        Ok(Err(_)) | Err(_) => Outcome::LocalFailure,
    }
}

/// Whether the attempt answers the client, or failed in a way a retry may overcome.
fn judge(
    ctx: &Context,
    r: &Routed<'_>,
    limits: &Limits,
    out: &Outgoing,
    sent: Sent,
    inflight: InFlight,
    endpoint: SocketAddr,
) -> Tried {
    let service = &r.service;
    let retry = r.retry();
    match sent {
        Ok(Ok((resp, lease))) => {
            let retriable = out.resend && retry.retries_response(resp.status(), resp.headers());
            let answered = Answered {
                resp,
                lease,
                inflight,
            };
            if !retriable {
                Tried::Answer(answered)
            } else {
                Tried::Failed {
                    response: Some(Answered {
                        lease: None,
                        ..answered
                    }),
                    error: ProxyError::UpstreamReset,
                    unsent: None,
                    retriable: true,
                }
            }
        }
        Ok(Err(failed)) => {
            if failed.error.before_request_sent() {
                // Every failed connect counts, retried or not.
                ctx.metrics
                    .connect_error(&service.name, failed.error.code());
            }
            let e = out.verdict.error().unwrap_or(failed.error);
            tracing::debug!(service = %service.name, endpoint = %endpoint, error = %e, "upstream attempt failed");
            let (retriable, unsent) = match failed.unsent {
                Some(req) if retry.retries_error(e, false) => (true, Some(Box::new(req))),
                _ => (out.resend && retry.retries_error(e, out.resendable), None),
            };
            Tried::Failed {
                response: None,
                error: e,
                unsent,
                retriable,
            }
        }
        Err(_) if tokio::time::Instant::now() >= limits.deadline => Tried::Failed {
            response: None,
            error: ProxyError::RequestTimeout,
            unsent: None,
            retriable: false,
        },
        Err(_) => Tried::Failed {
            response: None,
            error: ProxyError::PerTryTimeout,
            unsent: None,
            retriable: out.resend && retry.retries_error(ProxyError::PerTryTimeout, out.resendable),
        },
    }
}

/// Step 5: the response as the client gets it; an accepted upgrade is spliced.
fn respond(r: Routed<'_>, a: Answered, ex: &mut Exchange) -> Response<ResponseBody> {
    let Answered {
        mut resp,
        lease,
        inflight,
    } = a;
    inflight.observe_response();
    if let Some(s) = ex.span.as_deref_mut() {
        // A trailers-only gRPC answer carries its status in the headers (otherwise the
        // trailers do, and the response body notes it).
        s.grpc_status = headers::grpc_status(resp.headers());
    }
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        if let Some(downstream) = r.upgrade {
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
        headers::strip_hop_by_hop(
            resp.headers_mut(),
            Hop::Response {
                trailers: r.trailers,
            },
        );
    }
    if let Some(ops) = &r.rule.filters.response_headers {
        ops.apply(resp.headers_mut());
    }
    ex.inflight = Some(inflight);
    // A switched (upgraded) connection is the client's now: it never returns to the pool.
    let lease = if switched { None } else { lease };
    resp.map(|b| {
        Either::Left(UpstreamBody {
            inner: b,
            exchange: None,
            lease,
        })
    })
}
