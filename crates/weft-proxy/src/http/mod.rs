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
use hyper_util::rt::TokioTimer;
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

/// How a listener serves HTTP: weft's own servers (`listen/h1.rs`, `listen/h2.rs`), and
/// hyper's HTTP/1.1 server for the requests that are not plain.
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// hyper's HTTP/1.1 server, with the listener's limits.
    pub http1: hyper::server::conn::http1::Builder,
    /// weft's own HTTP/2 server, with the listener's limits.
    pub http2: h2::server::Builder,
}

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

/// HTTP/2 stream-level receive window (hyper's server default).
const H2_STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 connection-level receive window (hyper's server default).
const H2_CONN_WINDOW: u32 = 1 << 20;
/// Largest HTTP/2 frame accepted.
const H2_MAX_FRAME: u32 = 16 << 10;
/// Response bytes buffered per HTTP/2 stream before its sender waits.
const H2_MAX_SEND_BUFFER: usize = 400 << 10;
/// HTTP/2 streams reset for our own errors (a malformed request, say) before the
/// connection is closed: a peer provoking resets is misbehaving (hyper's default).
const H2_MAX_LOCAL_RESETS: usize = 1024;

/// The HTTP server settings a listener's limits imply.
pub fn server_settings(limits: &ListenerLimits) -> HttpServer {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(limits.max_request_header_bytes as usize)
        .max_headers(limits.max_request_headers as usize);
    let mut http2 = h2::server::Builder::new();
    http2
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buffer_size(H2_MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS))
        // The excess is refused with REFUSED_STREAM.
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // Streams the client resets before they are answered (rapid reset,
        // CVE-2023-44487): beyond this the connection is closed, ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets as usize)
        .max_header_list_size(limits.max_request_header_bytes);
    HttpServer { http1, http2 }
}

#[cfg(test)]
mod tests;
