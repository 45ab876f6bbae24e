//! The record of one exchange: filled in as the request goes, completed when the response
//! body ends (or is dropped) — route metrics and the access log then see the whole
//! duration, streaming included. The upstream response body carries it to that end, and
//! returns its HTTP/1.1 connection to the pool once read to the end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header;
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};

use super::context::{Client, Context as ListenerContext};
use super::headers::X_REQUEST_ID;
use super::route::Rule;
use crate::telemetry::access_log::{rfc3339, AccessLog, Record};
use crate::telemetry::metrics::{EdgeStats, RouteStats};
use crate::telemetry::otlp::{Exporter, Kind, Span, Value};
use crate::telemetry::tap::{self, Captured, Tapped, Taps};
use crate::telemetry::trace::SpanContext;
use crate::upstream::endpoint::InFlight;
use crate::upstream::pool::Lease;
use crate::upstream::service::Service;

/// Accounting for one request, completed when the response body ends.
pub(crate) struct Exchange {
    pub(crate) started: Instant,
    pub(crate) stats: Option<Arc<RouteStats>>,
    pub(crate) status: u16,
    pub(crate) error: Option<&'static str>,
    pub(crate) rule: Option<Arc<Rule>>,
    pub(crate) service: Option<Arc<Service>>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) inflight: Option<InFlight>,
    /// Mesh: the edge this request travels (caller -> callee).
    pub(crate) edge: Option<Arc<EdgeStats>>,
    /// Attempts sent upstream (a retry is the second and later).
    pub(crate) attempts: u32,
    /// Boxed: it is there only with an access log, and the exchange travels with the
    /// response body, which is moved several times per request.
    pub(crate) log: Option<Box<(AccessLog, String, LogFields)>>,
    /// Boxed, and there only when this request's span is recorded and exported.
    pub(crate) span: Option<Box<SpanFields>>,
    /// Boxed, and there only while a tap open on this proxy could match the request.
    pub(crate) tap: Option<Box<(Arc<Taps>, Tapped)>>,
}

/// What the request itself says, for the access log and the span.
struct Facts {
    method: String,
    authority: String,
    path: String,
    protocol: &'static str,
    user_agent: String,
}

impl Facts {
    fn of<B>(req: &Request<B>) -> Facts {
        let header = |n| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Facts {
            method: req.method().to_string(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| header(header::HOST)),
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
            user_agent: header(header::USER_AGENT),
        }
    }
}

/// What only the access log needs, gathered only when it is enabled.
pub(crate) struct LogFields {
    start_time: SystemTime,
    pub(crate) request_id: String,
    facts: Facts,
    client: SocketAddr,
    trace_id: String,
    span_id: String,
}

/// What only a recorded span needs, gathered only when the request is sampled and an
/// exporter is configured.
pub(crate) struct SpanFields {
    exporter: Exporter,
    trace_id: u128,
    span_id: u64,
    parent_id: Option<u64>,
    tracestate: String,
    kind: Kind,
    start: SystemTime,
    facts: Facts,
    scheme: &'static str,
    listener: String,
    client: SocketAddr,
    source: Option<Arc<str>>,
    /// The intention that allowed the call (a sidecar's inbound listener).
    pub(crate) intention: Option<String>,
    /// The gRPC status, from the response's headers or trailers.
    pub(crate) grpc_status: Option<i64>,
    /// `x-request-id` as forwarded.
    pub(crate) request_id: String,
}

impl Exchange {
    pub(crate) fn begin<B>(
        ctx: &ListenerContext,
        client: &Client,
        req: &Request<B>,
        started: Instant,
        trace: &SpanContext,
        kind: Kind,
    ) -> Exchange {
        // The client's id, if any, so that replies made before forwarding log it too
        // (the forwarded one replaces it once known).
        let request_id = || {
            req.headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let log = ctx.access_log.as_ref().map(|log| {
            let fields = LogFields {
                start_time: SystemTime::now(),
                request_id: request_id(),
                facts: Facts::of(req),
                client: client.addr,
                trace_id: trace.trace_hex(),
                span_id: trace.span_hex(),
            };
            Box::new((log.clone(), ctx.name.clone(), fields))
        });
        let span = match (&ctx.exporter, trace.sampled) {
            (Some(exporter), true) => Some(Box::new(SpanFields {
                exporter: exporter.clone(),
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                parent_id: trace.parent_id,
                tracestate: trace.tracestate().to_string(),
                kind,
                start: SystemTime::now(),
                facts: Facts::of(req),
                scheme: client.scheme(),
                listener: ctx.name.clone(),
                client: client.addr,
                source: client.peer.clone(),
                intention: None,
                grpc_status: None,
                request_id: request_id(),
            })),
            _ => None,
        };
        // With no tap open, one atomic load and nothing else.
        let tap = if ctx.taps.active() {
            tapped(ctx, client, req, trace, kind)
        } else {
            None
        };
        Exchange {
            started,
            stats: None,
            status: 0,
            error: None,
            rule: None,
            service: None,
            upstream: None,
            inflight: None,
            edge: client.edge.clone(),
            attempts: 0,
            log,
            span,
            tap,
        }
    }

    pub(crate) fn finish(&mut self) {
        let elapsed = self.started.elapsed();
        let ended = self.started + elapsed;
        if let Some(stats) = self.stats.take() {
            stats.record(self.status, elapsed, ended);
        }
        if let Some(edge) = self.edge.take() {
            edge.record(self.status, elapsed, ended);
        }
        self.inflight.take();
        if let Some(entry) = self.log.take() {
            let (log, listener, f) = *entry;
            log.log(&Record {
                start_time: rfc3339(f.start_time),
                listener: &listener,
                route: self.rule.as_ref().map_or("", |r| r.route.as_str()),
                service: self.service.as_ref().map_or("", |s| s.name.as_str()),
                upstream: self.upstream.map(|a| a.to_string()).unwrap_or_default(),
                client: f.client.to_string(),
                method: &f.facts.method,
                authority: &f.facts.authority,
                path: &f.facts.path,
                protocol: f.facts.protocol,
                status: self.status,
                error: self.error,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                request_id: &f.request_id,
                user_agent: &f.facts.user_agent,
                trace_id: &f.trace_id,
                span_id: &f.span_id,
            });
        }
        if let Some(span) = self.span.take() {
            self.export(*span);
        }
        if let Some(entry) = self.tap.take() {
            let (taps, t) = *entry;
            let request = t.request_body();
            let mut e = t.event;
            e.status = self.status;
            e.error = self.error;
            e.latency = elapsed;
            e.route = self
                .rule
                .as_ref()
                .map(|r| r.route.clone())
                .unwrap_or_default();
            if e.direction == "outbound" {
                if let Some(s) = &self.service {
                    e.destination = s.name.clone();
                    if let Some(peer) = s.upstream.settings.tls.as_ref().and_then(|t| t.peer()) {
                        e.destination_identity = peer.to_string();
                    }
                }
            }
            if let Some((bytes, kept)) = request {
                if bytes > 0 {
                    e.request_bytes = bytes;
                }
                e.request_body = kept;
            }
            e.response_body = t.response.kept.freeze();
            taps.publish(e);
        }
    }

    /// The span, named and attributed per the OpenTelemetry HTTP semantic conventions,
    /// with weft's own attributes beside them.
    fn export(&self, f: SpanFields) {
        use Value::{Addr, Int, Ip, Static, Str};
        let route = self.rule.as_ref().map(|r| r.route.as_str());
        let name = match route {
            Some(r) => format!("{} {r}", f.facts.method),
            None => f.facts.method.clone(),
        };
        let (host, port) = split_authority(&f.facts.authority);
        let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(24);
        a.push(("http.request.method", Str(f.facts.method)));
        let mut path = f.facts.path;
        path.truncate(path_only(&path).len());
        a.push(("url.path", Str(path)));
        a.push(("url.scheme", Static(f.scheme)));
        a.push(("server.address", Str(host.to_string())));
        if let Some(p) = port {
            a.push(("server.port", Int(i64::from(p))));
        }
        let version = match f.facts.protocol {
            "HTTP/2.0" => "2",
            "HTTP/1.0" => "1.0",
            _ => "1.1",
        };
        a.push(("network.protocol.version", Static(version)));
        a.push(("client.address", Ip(f.client.ip())));
        if !f.facts.user_agent.is_empty() {
            a.push(("user_agent.original", Str(f.facts.user_agent)));
        }
        if self.status != 0 {
            a.push(("http.response.status_code", Int(i64::from(self.status))));
        }
        if let Some(r) = route {
            a.push(("http.route", Str(r.to_string())));
        }
        if self.attempts > 1 {
            a.push((
                "http.request.resend_count",
                Int(i64::from(self.attempts - 1)),
            ));
        }
        if let Some(s) = f.grpc_status {
            a.push(("rpc.grpc.status_code", Int(s)));
        }
        a.push(("weft.listener", Str(f.listener)));
        if let Some(s) = &self.service {
            a.push(("weft.service", Str(s.name.clone())));
            if let Some(peer) = s.upstream.settings.tls.as_ref().and_then(|t| t.peer()) {
                a.push(("weft.destination.identity", Str(peer.to_string())));
            }
        }
        if let Some(u) = self.upstream {
            a.push(("weft.upstream.address", Addr(u)));
        }
        if let Some(s) = &f.source {
            a.push(("weft.source.identity", Str(s.to_string())));
        }
        if let Some(i) = f.intention {
            a.push(("weft.intention", Str(i)));
        }
        if let Some(e) = self.error {
            a.push(("weft.error", Static(e)));
        }
        if !f.request_id.is_empty() {
            a.push(("weft.request_id", Str(f.request_id)));
        }
        // Server spans fail on 5xx; client spans on 4xx too (OpenTelemetry); the proxy's
        // own refusals (x-weft-error) always say why.
        let failed = self.status >= 500
            || (f.kind == Kind::Client && self.status >= 400)
            || self.error.is_some()
            || self.status == 0;
        let error = failed.then(|| match self.error {
            Some(e) => e.to_string(),
            None if self.status == 0 => "no response".to_string(),
            None => format!("HTTP {}", self.status),
        });
        f.exporter.export(Span {
            trace_id: f.trace_id,
            span_id: f.span_id,
            parent_id: f.parent_id,
            tracestate: f.tracestate,
            name,
            kind: f.kind,
            start: f.start,
            end: SystemTime::now(),
            attributes: a,
            error,
        });
    }
}

/// The request's head, copied for the taps, when one open could match it.
fn tapped<B>(
    ctx: &ListenerContext,
    client: &Client,
    req: &Request<B>,
    trace: &SpanContext,
    kind: Kind,
) -> Option<Box<(Arc<Taps>, Tapped)>> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    if !ctx
        .taps
        .wants(req.method().as_str(), req.uri().path(), authority)
    {
        return None;
    }
    let own = ctx.taps.own();
    let facts = Facts::of(req);
    let mut event = tap::Event {
        method: facts.method,
        authority: facts.authority,
        path: facts.path,
        started_ms: tap::unix_ms(),
        request_bytes: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
        trace_id: trace.trace_hex(),
        request_headers: tap::pairs(req.headers()),
        ..tap::Event::default()
    };
    if kind == Kind::Client {
        event.direction = "outbound";
        event.source = own.service;
        event.source_identity = own.identity;
    } else {
        event.direction = "inbound";
        event.source = client
            .peer_service
            .as_deref()
            .unwrap_or(crate::telemetry::metrics::UNKNOWN_SOURCE)
            .to_string();
        event.source_identity = client.peer.as_deref().unwrap_or_default().to_string();
        event.destination = own.service;
        event.destination_identity = own.identity;
    }
    let tapped = Tapped {
        event,
        response: Captured::new(ctx.taps.body_bytes()),
        request: None,
    };
    Some(Box::new((ctx.taps.clone(), tapped)))
}

/// `host[:port]` of an authority.
fn split_authority(a: &str) -> (&str, Option<u16>) {
    match a.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || a.starts_with('[') => match p.parse() {
            Ok(p) => (h.trim_start_matches('[').trim_end_matches(']'), Some(p)),
            Err(_) => (a, None),
        },
        _ => (a, None),
    }
}

/// A request target without its query (queries may carry secrets: not exported).
fn path_only(p: &str) -> &str {
    p.split_once('?').map_or(p, |(path, _)| path)
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An upstream response body that completes its exchange's accounting when it ends, and
/// returns its HTTP/1.1 connection to the pool once read to the end.
pub struct UpstreamBody {
    pub(crate) inner: crate::upstream::client::Received,
    pub(crate) exchange: Option<Exchange>,
    pub(crate) lease: Option<Lease>,
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
    pub(crate) fn with_exchange(mut self, ex: Exchange) -> Self {
        self.exchange = Some(ex);
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = crate::upstream::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(ex)) = (&polled, self.exchange.as_mut()) {
            if let Some(t) = frame.trailers_ref() {
                if let Some(s) = ex.span.as_deref_mut() {
                    s.grpc_status = super::headers::grpc_status(t).or(s.grpc_status);
                }
                if let Some(tap) = ex.tap.as_deref_mut() {
                    tap.1.event.grpc_status =
                        super::headers::grpc_status(t).or(tap.1.event.grpc_status);
                }
            }
            if let (Some(d), Some(tap)) = (frame.data_ref(), ex.tap.as_deref_mut()) {
                tap.1.data(d);
            }
        }
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
