//! Who is asking: the listener a request came to, and the client of its connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{Direction, EdgeStats, Metrics, UNKNOWN_SOURCE};
use crate::telemetry::otlp::Exporter;
use crate::telemetry::tap::Taps;

/// What every request on a listener shares (its routes come with each request: a reload
/// changes them for the next one).
#[derive(Debug)]
pub struct Context {
    /// `gateway/listener`.
    pub name: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Access log, if enabled.
    pub access_log: Option<AccessLog>,
    /// Local address (for redirects).
    pub local: SocketAddr,
    /// Where sampled spans go, if an OTLP endpoint is configured.
    pub exporter: Option<Exporter>,
    /// The taps open on this proxy.
    pub taps: Arc<Taps>,
}

/// The client of one connection, with what every request on it reuses.
#[derive(Debug, Clone)]
pub struct Client {
    /// Peer address.
    pub addr: SocketAddr,
    /// The peer IP as a header value, for `x-forwarded-for` (formatted once per connection).
    pub(crate) ip_header: HeaderValue,
    /// Whether the connection is TLS (`x-forwarded-proto`, redirects).
    pub secure: bool,
    /// The caller's verified SPIFFE ID (mesh mutual TLS), and its service.
    pub peer: Option<Arc<str>>,
    /// The SPIFFE ID as a header value, for `x-weft-source` (made once per connection).
    pub(crate) peer_header: Option<HeaderValue>,
    pub(crate) peer_service: Option<Arc<str>>,
    /// A sidecar's inbound listener: the metrics of the edge (this caller -> us).
    pub(crate) edge: Option<Arc<EdgeStats>>,
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
            peer_header: None,
            peer_service: None,
            edge: None,
        }
    }

    /// The same client, identified by its SPIFFE ID.
    pub fn with_peer(mut self, peer: Option<Arc<str>>) -> Client {
        self.peer_service = peer
            .as_deref()
            .and_then(weft_tls::spiffe::ServiceId::parse)
            .map(|id| Arc::from(id.service));
        self.peer_header = peer.as_deref().and_then(|p| HeaderValue::from_str(p).ok());
        self.peer = peer;
        self
    }

    /// The same client, counted on the edge to `destination` (a sidecar's own service).
    pub fn on_edge(mut self, metrics: &Metrics, destination: Option<&str>) -> Client {
        self.edge = destination.map(|d| {
            let source = self.peer_service.as_deref().unwrap_or(UNKNOWN_SOURCE);
            metrics.edge(Direction::Inbound, source, d)
        });
        self
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.secure {
            "https"
        } else {
            "http"
        }
    }
}
