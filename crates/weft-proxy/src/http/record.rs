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
use hyper::body::Incoming;

use super::context::Context as ListenerContext;
use super::headers::X_REQUEST_ID;
use super::route::Rule;
use crate::telemetry::access_log::{rfc3339, AccessLog, Record};
use crate::telemetry::metrics::RouteStats;
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
    /// Boxed: it is there only with an access log, and the exchange travels with the
    /// response body, which is moved several times per request.
    pub(crate) log: Option<Box<(AccessLog, String, LogFields)>>,
}

/// What only the access log needs, gathered only when it is enabled.
pub(crate) struct LogFields {
    start_time: SystemTime,
    pub(crate) request_id: String,
    method: String,
    authority: String,
    path: String,
    protocol: &'static str,
    user_agent: String,
    client: SocketAddr,
}

impl Exchange {
    pub(crate) fn begin<B>(
        ctx: &ListenerContext,
        client: SocketAddr,
        req: &Request<B>,
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
            Box::new((log.clone(), ctx.name.clone(), fields))
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

    pub(crate) fn finish(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(stats) = self.stats.take() {
            stats.record(self.status, elapsed);
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
    pub(crate) inner: Incoming,
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
