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
    /// An HTTP/2 or opaque TCP connection with no traffic for this long is closed (default `10m`).
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

/// Reference to a gateway listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    pub name: String,
    /// Listener name within the gateway; absent means all its listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
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

/// One endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// `IP:PORT`.
    pub address: String,
    /// Relative weight, 1..=10000 (default 1).
    #[serde(default = "one")]
    pub weight: u32,
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
