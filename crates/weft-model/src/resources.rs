//! The resource kinds of DESIGN.md §2 that the data plane reads today: `Gateway`
//! (listeners), `HTTPRoute` and `Service`. Field names follow the Kubernetes Gateway API
//! spelling (camelCase in YAML) so users can carry their knowledge over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Common envelope of every resource: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource<S> {
    /// Optional, accepted for familiarity (`weft.dev/v1`); not interpreted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The kind, e.g. `HTTPRoute`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Kind-specific content.
    pub spec: S,
}

/// Resource metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique among resources of the same kind.
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- Gateway

/// `Gateway`: the listeners a proxy opens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// At least one listener.
    pub listeners: Vec<Listener>,
    /// Distributed tracing on these listeners: how often a new trace is recorded, and
    /// which propagation formats go out. Absent: trace context is still read and passed
    /// on (W3C, and B3 in the form it arrived), and 1% of new traces are recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// `tracing` of a `Gateway` (or of the `Mesh`, for every sidecar).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// Percent (0–100) of requests recorded when the caller did not decide (a caller's
    /// sampled flag is always followed). Default 1.
    #[serde(default = "Tracing::default_sampling")]
    pub sampling_percent: f64,
    /// Formats sent on every request besides W3C `traceparent`, which always goes: `b3multi`
    /// (`x-b3-*`), `b3single` (`b3`). B3 also goes, without being listed, in the form a
    /// request brought it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub propagation: Vec<Propagation>,
}

impl Tracing {
    fn default_sampling() -> f64 {
        1.0
    }
}

impl Default for Tracing {
    fn default() -> Tracing {
        Tracing {
            sampling_percent: Tracing::default_sampling(),
            propagation: Vec::new(),
        }
    }
}

/// A trace-context format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// W3C Trace Context (`traceparent`, `tracestate`): always sent.
    W3c,
    /// B3 multi-header (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`,
    /// `x-b3-flags`).
    B3multi,
    /// B3 single header (`b3`).
    B3single,
}

impl Propagation {
    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::W3c => "w3c",
            Propagation::B3multi => "b3multi",
            Propagation::B3single => "b3single",
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listener {
    /// Unique within the gateway; routes may attach to it by `sectionName`.
    pub name: String,
    /// `IP:PORT`; port 0 picks a free port (reported on start).
    pub address: String,
    /// Protocol spoken by clients.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// TLS settings: required for `HTTPS` and `TLS`, refused for `HTTP` and `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Bounds on what clients may do; every field has a safe default.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// How request paths are normalised before routing, intentions and rate limits (HTTP
    /// listeners); the defaults refuse what could be read two ways.
    #[serde(default, skip_serializing_if = "PathPolicy::is_default")]
    pub paths: PathPolicy,
    /// Set by a sidecar on its inbound listener (never from a file): mesh mutual TLS and
    /// intentions apply to the service named here.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshInbound>,
    /// Set by a sidecar on its outbound listeners and by an edge gateway on its own (never
    /// from a file): requests on this listener are calls made by this service.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub caller: Option<MeshCaller>,
}

/// Who makes the calls a listener receives (the source of its edges).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshCaller {
    /// The calling service (the sidecar's own, or the edge gateway's).
    pub service: String,
    /// A sidecar's outbound listener (its spans are client spans); `false` for an edge
    /// gateway, whose spans are server spans.
    pub outbound: bool,
}

/// A sidecar's inbound listener: whose calls it receives. Its mutual TLS mode is that
/// service's `mtls`, else the `Mesh`'s.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshInbound {
    /// The destination service (the sidecar's own).
    pub service: String,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), detected per connection.
    #[default]
    HTTP,
    /// HTTP/1.1 and HTTP/2 over TLS (ALPN `h2`, `http/1.1`); routes are `HTTPRoute`s.
    HTTPS,
    /// TLS, routed by SNI with `TLSRoute`s: passed through untouched (`mode: Passthrough`)
    /// or terminated and forwarded as plain TCP (`mode: Terminate`).
    TLS,
    /// Opaque TCP, forwarded by a `TCPRoute`.
    TCP,
}

impl ListenerProtocol {
    /// Whether `HTTPRoute`s attach to it.
    pub fn is_http(self) -> bool {
        matches!(self, ListenerProtocol::HTTP | ListenerProtocol::HTTPS)
    }
}

/// TLS settings of a listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough` (`TLS` listeners only).
    #[serde(default)]
    pub mode: TlsMode,
    /// Certificates chosen by SNI among the DNS names of each; the first one also answers
    /// clients that send no SNI or an unknown name (unless `strictSni`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateFiles>,
    /// Refuse handshakes whose SNI matches no certificate (alert `unrecognized_name`)
    /// instead of answering with the first certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_sni: bool,
}

/// Whether TLS ends at the proxy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// The proxy completes the handshake with its own certificates.
    #[default]
    Terminate,
    /// The proxy reads only the ClientHello's SNI and splices the bytes to the backend.
    Passthrough,
}

/// A certificate chain and its private key, as PEM files (relative paths are resolved
/// against the configuration file's directory). Re-read when the files change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateFiles {
    /// Leaf first, then intermediates.
    pub cert_file: String,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key_file: String,
}

/// Per-listener bounds on client behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerLimits {
    /// Open connections at most; beyond it new ones are closed at once (default 10000).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Time to receive a complete request head, counted from when the connection is ready
    /// for one (slowloris guard, and the keep-alive idle limit of HTTP/1.1); default `30s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A TLS handshake must finish within this (default `10s`).
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout: Duration,
    /// Longest pause between two pieces of a request body (default `60s`): 408.
    #[serde(default = "default_body_idle_timeout")]
    pub request_body_idle_timeout: Duration,
    /// Request line plus headers, in bytes (default 65536, at least 8192): 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_request_header_bytes: u32,
    /// Number of request headers (default 100): 431.
    #[serde(default = "default_max_headers")]
    pub max_request_headers: u32,
    /// Request body size in bytes; absent means unbounded: 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Concurrent streams per HTTP/2 connection (default 100).
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Streams a client may reset before the server sees them finish; beyond it the
    /// connection is closed with GOAWAY `ENHANCE_YOUR_CALM` (rapid reset; default 20).
    #[serde(default = "default_h2_resets")]
    pub http2_max_pending_resets: u32,
    /// An opaque TCP connection with no traffic, or an HTTP/2 connection with no stream
    /// open, for this long is closed (default `10m`).
    #[serde(default = "default_conn_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            tls_handshake_timeout: default_handshake_timeout(),
            request_body_idle_timeout: default_body_idle_timeout(),
            max_request_header_bytes: default_max_header_bytes(),
            max_request_headers: default_max_headers(),
            max_request_body_bytes: None,
            http2_max_concurrent_streams: default_h2_streams(),
            http2_max_pending_resets: default_h2_resets(),
            idle_timeout: default_conn_idle_timeout(),
        }
    }
}

fn default_max_connections() -> u32 {
    10_000
}
fn default_header_read_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_body_idle_timeout() -> Duration {
    Duration::from_millis(60_000)
}
fn default_max_header_bytes() -> u32 {
    65_536
}
fn default_max_headers() -> u32 {
    100
}
fn default_h2_streams() -> u32 {
    100
}
fn default_h2_resets() -> u32 {
    20
}
fn default_conn_idle_timeout() -> Duration {
    Duration::from_millis(600_000)
}

/// How a listener normalises request paths (docs/security.md, "Request paths"). Every
/// request's path is put in one normal form — unreserved characters decoded, other escapes
/// upper-cased, dot segments removed — which routing, intentions and rate limits judge and
/// which is forwarded, so the application sees exactly what was judged. These fields choose
/// what happens to the spellings that applications read in different ways.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathPolicy {
    /// Encoded slashes and backslashes (`%2F`, `%5C`) and raw backslashes: `reject` (400,
    /// the default) or `keep` (forwarded escaped, `\` as `%5C`, and never a separator when
    /// matching: only for applications that do not decode them into separators either).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Merge repeated slashes (`//a` is `/a`); default true.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// Path parameters (`;` inside a segment, which servers such as Tomcat strip before
    /// routing): `reject` (400, the default) or `strip` (removed before judging and
    /// forwarding).
    #[serde(default)]
    pub path_parameters: PathParameters,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            escaped_slashes: EscapedSlashes::default(),
            merge_slashes: true,
            path_parameters: PathParameters::default(),
        }
    }
}

impl PathPolicy {
    /// Whether every field has its default (not written out).
    pub fn is_default(&self) -> bool {
        *self == PathPolicy::default()
    }
}

fn yes() -> bool {
    true
}

/// What a listener does with `%2F`, `%5C` and `\` in a path.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 `invalid-path`.
    #[default]
    Reject,
    /// Kept escaped (upper-cased), never decoded into a separator.
    Keep,
}

/// What a listener does with `;` path parameters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PathParameters {
    /// 400 `invalid-path`.
    #[default]
    Reject,
    /// Each segment loses everything from its first `;`.
    Strip,
}

// ---------------------------------------------------------------- TCPRoute / TLSRoute

/// `TCPRoute` (on a `TCP` listener) or `TLSRoute` (on a `TLS` listener): connections to
/// weighted services. A `TLSRoute` selects by the client's SNI (`hostnames`); a `TCPRoute`
/// has none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StreamRouteSpec {
    /// Gateways (and optionally listeners) it attaches to; empty: every listener of its
    /// protocol.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// `TLSRoute` only: SNI names matched (exact or `*.` wildcard); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Exactly one rule.
    pub rules: Vec<StreamRouteRule>,
}

/// The backends of a stream route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StreamRouteRule {
    /// Weighted services.
    pub backend_refs: Vec<BackendRef>,
}

// ---------------------------------------------------------------- HTTPRoute

/// `HTTPRoute`: hostnames and rules that send requests to services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways (and optionally one of their listeners) the route attaches to.
    /// Empty: every HTTP listener of every gateway.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names matched (exact, or `*.` wildcard). Empty: any host.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules; at least one.
    pub rules: Vec<HttpRouteRule>,
}

/// What a route attaches to: a gateway listener (edge), or a `Service` (mesh: the route
/// then applies to every call a sidecar makes to that service, as in the Gateway API's
/// GAMMA profile).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// `Gateway` (the default) or `Service`.
    #[serde(default, skip_serializing_if = "ParentKind::is_gateway")]
    pub kind: ParentKind,
    /// Gateway (or service) name.
    pub name: String,
    /// Listener name within the gateway; absent means all its listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// The kind of a route's parent.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ParentKind {
    /// A gateway listener.
    #[default]
    Gateway,
    /// A mesh service: the route applies to calls to that service.
    Service,
}

impl ParentKind {
    /// Whether this is the default kind (serialization helper).
    pub fn is_gateway(&self) -> bool {
        *self == ParentKind::Gateway
    }
}

/// One rule: any match selects it; filters then run; a backend is picked by weight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Matches (OR'ed). Empty: one match on path prefix `/`.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied in order.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends; may be empty only when the rule redirects.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts for this rule, overriding the service's (Gateway API `timeouts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Retry settings for this rule, overriding the service's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Local rate limit on the rule's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Faults injected into a share of the rule's requests (resilience testing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// A token bucket: `requestsPerSecond` sustained, `burst` at once; one bucket for all
/// requests, or one per client key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Tokens added per second.
    pub requests_per_second: f64,
    /// Bucket size (default: one second's worth, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per value of this key (header or client address); absent: one bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
}

/// What separates clients for a keyed rate limit; exactly one is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitKey {
    /// A request header's value (requests without it share one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The client's IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_address: bool,
}

/// Injected faults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    /// Delay a share of requests before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests without forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay fault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long.
    pub fixed: Duration,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// An abort fault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// Status answered (e.g. 503).
    pub status: u16,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// Gateway API `HTTPRouteTimeouts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTimeouts {
    /// Until the response headers arrive, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Each attempt (Gateway API's `backendRequest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Duration>,
}

/// Conditions on a request (AND'ed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path condition; default prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Path condition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path, prefix or regular expression.
    pub value: String,
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum PathMatchType {
    /// Whole path equal.
    Exact,
    /// Path begins with the value, on a `/` boundary.
    #[default]
    PathPrefix,
    /// Whole path matches the regular expression.
    RegularExpression,
}

/// Header or query parameter condition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    /// Header name (case-insensitive) or query parameter name (case-sensitive).
    pub name: String,
    /// Expected value or regular expression.
    pub value: String,
}

/// How a header or query value is compared.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum ValueMatchType {
    /// Equal.
    #[default]
    Exact,
    /// Whole value matches the regular expression.
    RegularExpression,
}

/// A filter: `type` names which of the other fields holds its settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: FilterType,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

/// Filter kinds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum FilterType {
    /// Set/add/remove request headers.
    RequestHeaderModifier,
    /// Set/add/remove response headers.
    ResponseHeaderModifier,
    /// Answer with a redirect instead of forwarding.
    RequestRedirect,
    /// Rewrite host and/or path before forwarding.
    URLRewrite,
    /// Send a copy of a share of the requests to another service, fire and forget.
    RequestMirror,
}

/// Gateway API `HTTPRequestMirrorFilter`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// The service receiving the copies (its weight is ignored).
    pub backend_ref: BackendRef,
    /// Share of requests mirrored, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Header edits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace (or create) these headers.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Append these headers.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Redirect settings; unset parts keep the request's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// Rewrite settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Host header sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// Path replacement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// Which replacement.
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// For `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch` (only with a `PathPrefix` match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// Path replacement kinds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PathModifierType {
    /// Replace the whole path.
    ReplaceFullPath,
    /// Replace the matched prefix, keep the rest.
    ReplacePrefixMatch,
}

/// A weighted reference to a `Service`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// Service name.
    pub name: String,
    /// Relative weight (default 1); 0 takes the backend out of rotation.
    #[serde(default = "one")]
    pub weight: u32,
    /// Only the service's endpoints in this subset (one of the Service's `subsets`):
    /// e.g. its `version: v2` instances, for a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

impl BackendRef {
    /// The key of the upstream this backend sends to: the service, or `SERVICE#SUBSET`
    /// (`#` is in no service name, so the two never collide).
    pub fn upstream(&self) -> std::borrow::Cow<'_, str> {
        match &self.subset {
            None => std::borrow::Cow::Borrowed(&self.name),
            Some(s) => std::borrow::Cow::Owned(subset_key(&self.name, s)),
        }
    }
}

/// The upstream key of a service's subset (see [`BackendRef::upstream`]).
pub fn subset_key(service: &str, subset: &str) -> String {
    format!("{service}#{subset}")
}

fn one() -> u32 {
    1
}

// ---------------------------------------------------------------- Service

/// `Service`: how to reach and balance over a set of endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Upstream protocol.
    #[serde(default)]
    pub protocol: ServiceProtocol,
    /// Static endpoints (file mode).
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Balancing policy.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Upstream connection pool.
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// TCP connect timeout (default `2s`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Originate TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// How long requests may take.
    #[serde(default)]
    pub timeouts: ServiceTimeouts,
    /// When and how failed requests are tried again.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Limits beyond which requests fail fast instead of queueing.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Passive health: endpoints that keep failing are taken out for a while.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// Local rate limit on all requests to the service (from every route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Active health checks of the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// A concurrency limit that follows measured latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
    /// Mesh only: this service's inbound mutual TLS mode, overriding `Mesh`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<crate::MeshMtls>,
    /// Mesh only: how paths of calls to this service are normalised (by its sidecars'
    /// inbound listeners and its callers' outbound ones), overriding `Mesh`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<PathPolicy>,
    /// Named subsets of the endpoints, by metadata: `{v2: {version: v2}}` makes
    /// `backendRefs: [{name: SERVICE, subset: v2}]` reach only the endpoints whose
    /// metadata has every listed label (in the mesh, the instances registered with it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Set by a sidecar for a mesh service (never from a file): the SPIFFE ID its
    /// endpoints must prove; they are called over mutual TLS.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub mesh_peer: Option<String>,
}

/// Gradient-style adaptive concurrency (after Netflix's concurrency-limits "Gradient2"):
/// the limit shrinks when recent latency rises above the long-run latency and grows while
/// it does not; requests over the limit fail fast with 503 `concurrency-limited`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdaptiveConcurrency {
    /// Starting limit (default 20).
    #[serde(default = "default_ac_initial")]
    pub initial_limit: u32,
    /// Never below (default 1).
    #[serde(default = "default_ac_min")]
    pub min_limit: u32,
    /// Never above (default 1000).
    #[serde(default = "default_ac_max")]
    pub max_limit: u32,
    /// Recent latency above `tolerance` × the long-run latency shrinks the limit
    /// (default 1.5).
    #[serde(default = "default_ac_tolerance")]
    pub tolerance: f64,
    /// Latency samples per limit update (default 20).
    #[serde(default = "default_ac_window")]
    pub sample_count: u32,
}

fn default_ac_initial() -> u32 {
    20
}
fn default_ac_min() -> u32 {
    1
}
fn default_ac_max() -> u32 {
    1000
}
fn default_ac_tolerance() -> f64 {
    1.5
}
fn default_ac_window() -> u32 {
    20
}

/// Active health checking: each endpoint is probed every `interval`; `unhealthyThreshold`
/// failures in a row take it out of the balancing set, `healthyThreshold` successes bring
/// it back. Endpoints start healthy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probe with an HTTP/1.1 GET; absent: a TCP connect (and TLS handshake, for services
    /// with `tls`) is the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Between probes of one endpoint (default `5s`).
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// One probe's limit (default `1s`).
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    /// Failures in a row that mark an endpoint down (default 3).
    #[serde(default = "default_hc_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Successes in a row that mark it up again (default 2).
    #[serde(default = "default_hc_healthy")]
    pub healthy_threshold: u32,
}

/// The HTTP probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Path requested (default `/`).
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// `Host` sent (default: the endpoint's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn default_hc_interval() -> Duration {
    Duration::from_millis(5_000)
}
fn default_hc_timeout() -> Duration {
    Duration::from_millis(1_000)
}
fn default_hc_unhealthy() -> u32 {
    3
}
fn default_hc_healthy() -> u32 {
    2
}
fn default_hc_path() -> String {
    "/".into()
}

/// Outlier detection: consecutive failures eject an endpoint for a time that grows with
/// repeated ejections; it comes back by itself afterwards and is watched again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject (default 5; 0 disables).
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 responses that eject (default 0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_gateway_errors: u32,
    /// Consecutive local failures — connect failures, resets, per-try timeouts, TLS
    /// failures — that eject (default 5; 0 disables).
    #[serde(default = "default_consecutive")]
    pub consecutive_local_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this (default `30s`).
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// No ejection lasts longer (default `300s`).
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// At most this share of a service's endpoints is ejected at once (default 50%); the
    /// last endpoint is never ejected.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: default_consecutive(),
            consecutive_gateway_errors: 0,
            consecutive_local_failures: default_consecutive(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_millis(30_000)
}
fn default_max_ejection() -> Duration {
    Duration::from_millis(300_000)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// Timeouts of a service's requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceTimeouts {
    /// Until the response headers arrive, retries included (default `15s`): 504
    /// `request-timeout`. Streaming response bodies are not cut by it.
    #[serde(default = "default_request_timeout")]
    pub request: Duration,
    /// Each attempt; absent: only the request timeout applies. 504 `per-try-timeout` when
    /// no retry is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
}

impl Default for ServiceTimeouts {
    fn default() -> Self {
        ServiceTimeouts {
            request: default_request_timeout(),
            per_try: None,
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_millis(15_000)
}

/// What makes an attempt worth repeating.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection could not be made (the request was never sent): always safe.
    ConnectFailure,
    /// The upstream reset or broke the connection before a response.
    Reset,
    /// A per-try timeout expired.
    PerTryTimeout,
    /// HTTP 503, or gRPC `UNAVAILABLE`.
    Unavailable,
    /// HTTP 502, 503 or 504.
    GatewayError,
}

/// Retry settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 2; 0 disables).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Conditions (default: connect-failure only — the request never left, so retrying
    /// it is always safe and needs no copy of it).
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Further HTTP statuses that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// Further gRPC status codes (numbers, e.g. 14 for UNAVAILABLE) that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<u32>,
    /// Backoff before retry n: a uniformly random wait in [0, min(max, base × 2^n)].
    #[serde(default)]
    pub backoff: Backoff,
    /// Retry methods that are not idempotent (POST, PATCH) too (default false). A request
    /// that was never sent (connect failure) is retried whatever its method.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
    /// Request bodies up to this size are kept so they can be replayed (default 65536);
    /// a larger body, or one without `Content-Length`, is sent once.
    #[serde(default = "default_retry_body")]
    pub max_body_bytes: u64,
    /// How many retries the service may see, relative to its requests.
    #[serde(default)]
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: default_attempts(),
            on: default_retry_on(),
            status_codes: Vec::new(),
            grpc_codes: Vec::new(),
            backoff: Backoff::default(),
            non_idempotent: false,
            max_body_bytes: default_retry_body(),
            budget: RetryBudget::default(),
        }
    }
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure]
}
fn default_retry_body() -> u64 {
    65_536
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    /// First retry waits up to this (default `25ms`).
    #[serde(default = "default_backoff_base")]
    pub base: Duration,
    /// No wait is longer than this (default `250ms`).
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

/// A retry budget: over a sliding window, retries may be at most `ratio` × requests plus
/// `minPerSecond` × the window's seconds (Linkerd's 20% + 10/s by default). On by default,
/// so retries can never multiply the load on a service that is failing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries per request (default 0.2).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Retries always allowed per second (default 10).
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
    /// Switch the budget off (only the `attempts` bound stays). Not recommended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_floor(),
            unlimited: false,
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    10
}

/// Per-service concurrency limits; over one, a request fails at once with 503
/// `overloaded` instead of queueing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Requests in flight to the service (default 1024).
    #[serde(default = "default_cb_requests")]
    pub max_requests: u32,
    /// Upstream connections open to the service, over all endpoints (default 1024).
    #[serde(default = "default_cb_connections")]
    pub max_connections: u32,
    /// Retries in flight to the service (default 64).
    #[serde(default = "default_cb_retries")]
    pub max_retries: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_requests: default_cb_requests(),
            max_connections: default_cb_connections(),
            max_retries: default_cb_retries(),
        }
    }
}

fn default_cb_requests() -> u32 {
    1024
}
fn default_cb_connections() -> u32 {
    1024
}
fn default_cb_retries() -> u32 {
    64
}

/// TLS from the proxy to a service's endpoints. The server certificate is always verified.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTls {
    /// PEM bundle of trusted roots; default: the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Name sent as SNI and verified in the certificate; default: none sent, and the
    /// endpoint's IP address is verified against the certificate's IP SANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client certificate for upstreams that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertificateFiles>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_millis(2000)
}

/// Upstream protocol.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// gRPC: HTTP/2 (h2c); trailers preserved.
    Grpc,
}

/// What a mesh instance's application speaks (`weft sidecar --app-protocol`), as the
/// catalog records it. Between sidecars HTTP of every kind travels as HTTP/2; `tcp` is
/// carried as opaque bytes, so callers open a TCP listener for it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/2 (h2c).
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl AppProtocol {
    /// `http`, `http2`, `grpc` or `tcp`.
    pub fn parse(s: &str) -> Option<AppProtocol> {
        Some(match s {
            "http" => AppProtocol::Http,
            "http2" => AppProtocol::Http2,
            "grpc" => AppProtocol::Grpc,
            "tcp" => AppProtocol::Tcp,
            _ => return None,
        })
    }

    /// The HTTP protocol to speak to the app, or None for opaque TCP.
    pub fn http(self) -> Option<ServiceProtocol> {
        match self {
            AppProtocol::Http => Some(ServiceProtocol::Http),
            AppProtocol::Http2 => Some(ServiceProtocol::Http2),
            AppProtocol::Grpc => Some(ServiceProtocol::Grpc),
            AppProtocol::Tcp => None,
        }
    }
}

/// One endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// `IP:PORT`.
    pub address: String,
    /// Relative weight, 1..=10000 (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Labels the Service's `subsets` select by (in the mesh: the instance's metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl EndpointSpec {
    /// Whether this endpoint carries every label of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.metadata.get(k) == Some(v))
    }
}

/// Balancing settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// The policy.
    #[serde(default)]
    pub policy: LbPolicy,
    /// What to hash for `RingHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

/// Balancing policies.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum LbPolicy {
    /// Power of two random choices over peak-EWMA latency × outstanding requests.
    #[default]
    P2CPeakEwma,
    /// Weighted round robin.
    RoundRobin,
    /// Fewest outstanding requests (relative to weight).
    LeastRequest,
    /// Consistent hashing on a ring (Ketama-style), keyed by `hashOn`.
    RingHash,
}

/// The request property consistent hashing keys on; exactly one is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashOn {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The client's IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_address: bool,
}

/// Upstream connection pool bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Idle connections kept per endpoint (default 64).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// An idle connection is closed after this long (default `90s`).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_idle() -> usize {
    64
}

fn default_idle_timeout() -> Duration {
    Duration::from_millis(90_000)
}
