//! An HTTP exchange, from the request a listener accepted to the response it sends back.
//!
//! ```text
//! exchange.rs  handle: route ─► prepare ─► attempts ─► respond (the steps, top to bottom)
//!  ├ path.rs      one normal form for the path: what is judged is what is forwarded
//!  ├ authz.rs     intentions, on a sidecar's inbound listener
//!  ├ router.rs    RouteTable: host, path, headers, query, method → rule (Gateway API precedence)
//!  ├ route.rs     Rule: filters, weighted backends, the rule's own timeouts and retries
//!  ├ headers.rs   hop-by-hop, x-forwarded-*, x-request-id, host, upgrades, trailers
//!  ├ filters.rs   redirects, the proxy's own replies, faults, mirrors, the upstream target
//!  └ record.rs    the exchange's record: metrics and access log when the body ends
//! context.rs   the listener and the client a request came from
//! ```
//!
//! The exchange takes any request body ([`Source`](crate::upstream::body::Source)), and reaches upstreams through the
//! service's connector, which an in-memory network can replace: the whole path runs in a
//! unit test without sockets (`tests.rs`).

pub mod authz;
pub mod context;
pub mod exchange;
pub mod filters;
pub mod headers;
pub mod path;
pub mod record;
pub mod route;
pub mod router;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use weft_model::ListenerLimits;

pub use context::{Client, Context};
pub use exchange::handle;
pub use headers::X_WEFT_SOURCE;

use crate::telemetry::metrics::RouteStats;

use authz::Authorizer;
use route::Rule;
use router::RouteTable;

/// Body of every response the proxy sends.
pub type ResponseBody = Either<record::UpstreamBody, Full<Bytes>>;

/// HTTP/1.1 + HTTP/2 server settings of a listener.
pub type HttpBuilder = auto::Builder<TokioExecutor>;

/// What a listener's HTTP requests are served with, for one configuration version.
#[derive(Debug)]
pub struct Routes {
    /// Host/path/header routing.
    pub table: RouteTable<Rule>,
    /// Metrics for requests that matched no route.
    pub unrouted: Arc<RouteStats>,
    /// A sidecar's inbound listener: the intentions about calls to its service.
    pub authz: Option<Arc<Authorizer>>,
    /// How request paths are normalised before anything judges them.
    pub paths: weft_model::PathPolicy,
    /// Request bodies: bytes at most (`maxRequestBodyBytes`).
    pub max_body: Option<u64>,
    /// Request bodies: longest pause between two pieces.
    pub body_idle: Duration,
    /// Distributed tracing: sampling, propagation, span kind.
    pub tracing: crate::telemetry::trace::Settings,
    /// A sidecar's inbound listener: its own service, the destination of every edge it
    /// sees (the source is each caller's identity).
    pub inbound_edge: Option<Arc<str>>,
}

/// The HTTP server settings a listener's limits imply.
pub fn server_settings(limits: &ListenerLimits) -> HttpBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(limits.max_request_header_bytes as usize)
        .max_headers(limits.max_request_headers as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets as usize)
        .max_header_list_size(limits.max_request_header_bytes)
        // A peer that stops answering pings is gone; free its streams.
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

#[cfg(test)]
mod tests;
