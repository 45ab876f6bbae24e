//! Why a request failed, as the client and the operator see it.
//!
//! Every reply the proxy generates itself carries a status and an `x-weft-error` header
//! naming the cause, so nobody has to guess what a bare 503 meant.

use std::io;

use http::StatusCode;

/// The header naming the cause of a proxy-generated reply.
pub const ERROR_HEADER: &str = "x-weft-error";

/// A failure the proxy answers for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No route matched the host, path, headers, query and method.
    #[error("no route matched the request")]
    NoRoute,
    /// The chosen service has no endpoint to send to.
    #[error("the service has no healthy endpoints")]
    NoHealthyEndpoints,
    /// Host header or authority missing or malformed.
    #[error("missing or invalid host")]
    InvalidHost,
    /// The path has a spelling its listener refuses (see [`crate::http::path`]).
    #[error("invalid path: {0}")]
    InvalidPath(PathError),
    /// An intention (or the mesh default) denies this caller this request.
    #[error("denied by intention")]
    DeniedByIntention,
    /// The endpoint refused the TCP connection.
    #[error("upstream refused the connection")]
    ConnectRefused,
    /// The TCP connection did not complete within the service's `connectTimeout`.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// Another connect failure (unreachable network, no route to host, ...).
    #[error("upstream connect failed")]
    ConnectFailed,
    /// The TLS handshake with the upstream failed (certificate not trusted, expired, or
    /// not valid for the expected name; or no common protocol version).
    #[error("TLS handshake with the upstream failed")]
    UpstreamTls,
    /// The request body is larger than the listener's `maxRequestBodyBytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client paused sending its request body for longer than `requestBodyIdleTimeout`.
    #[error("request body timed out")]
    BodyTimeout,
    /// The client's request body was malformed (bad chunked encoding) or cut short.
    #[error("invalid or incomplete request body")]
    BodyMalformed,
    /// A rate limit refused the request; a token is due in this many seconds.
    #[error("rate limited")]
    RateLimited(u32),
    /// A fault injected by the route's `fault.abort`, with the configured status.
    #[error("fault injected")]
    FaultInjected(u16),
    /// The service's adaptive concurrency limit was reached.
    #[error("the service is at its adaptive concurrency limit")]
    ConcurrencyLimited,
    /// A circuit-breaker limit of the service was reached: failed fast instead of queued.
    #[error("the service is at its concurrency limit")]
    Overloaded,
    /// No response headers within the request timeout (retries included).
    #[error("the request timed out")]
    RequestTimeout,
    /// The last attempt exceeded the per-try timeout.
    #[error("the upstream attempt timed out")]
    PerTryTimeout,
    /// The upstream closed or reset the connection before a complete response.
    #[error("upstream reset the connection before responding")]
    UpstreamReset,
    /// The upstream refused the request without processing it (HTTP/2: REFUSED_STREAM, or
    /// a stream above its GOAWAY's last stream id), again after it was sent once more.
    #[error("upstream refused the request unprocessed")]
    UpstreamRefused,
    /// The upstream answered with something that is not valid HTTP.
    #[error("upstream sent an invalid response")]
    UpstreamProtocol,
    /// A protocol upgrade (WebSocket) was asked of a service that cannot carry it.
    #[error("protocol upgrade is not supported to this service")]
    UpgradeUnsupported,
}

impl ProxyError {
    /// Status code of the reply.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::DeniedByIntention => StatusCode::FORBIDDEN,
            ProxyError::InvalidHost | ProxyError::InvalidPath(_) | ProxyError::BodyMalformed => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::RequestTimeout | ProxyError::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultInjected(s) => {
                StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::NoHealthyEndpoints
            | ProxyError::Overloaded
            | ProxyError::ConcurrencyLimited
            | ProxyError::ConnectRefused
            | ProxyError::ConnectTimeout
            | ProxyError::ConnectFailed
            | ProxyError::UpstreamRefused => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamReset | ProxyError::UpstreamProtocol | ProxyError::UpstreamTls => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UpgradeUnsupported => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Stable code for `x-weft-error`, metrics and logs.
    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::NoHealthyEndpoints => "no-healthy-endpoints",
            ProxyError::InvalidHost => "invalid-host",
            ProxyError::InvalidPath(_) => "invalid-path",
            ProxyError::DeniedByIntention => "denied-by-intention",
            ProxyError::ConnectRefused => "connect-refused",
            ProxyError::ConnectTimeout => "connect-timeout",
            ProxyError::ConnectFailed => "connect-failed",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::UpstreamRefused => "upstream-refused",
            ProxyError::Overloaded => "overloaded",
            ProxyError::ConcurrencyLimited => "concurrency-limited",
            ProxyError::RateLimited(_) => "rate-limited",
            ProxyError::FaultInjected(_) => "fault-injected",
            ProxyError::RequestTimeout => "request-timeout",
            ProxyError::PerTryTimeout => "per-try-timeout",
            ProxyError::UpstreamTls => "upstream-tls-error",
            ProxyError::BodyTooLarge => "body-too-large",
            ProxyError::BodyTimeout => "body-timeout",
            ProxyError::BodyMalformed => "invalid-body",
            ProxyError::UpstreamProtocol => "upstream-protocol-error",
            ProxyError::UpgradeUnsupported => "upgrade-unsupported",
        }
    }

    /// Whether the request never reached the upstream (so replaying it elsewhere is safe).
    pub fn before_request_sent(self) -> bool {
        matches!(
            self,
            ProxyError::ConnectRefused
                | ProxyError::ConnectTimeout
                | ProxyError::ConnectFailed
                | ProxyError::UpstreamTls
        )
    }

    /// Classifies a failed TCP connect.
    pub fn from_connect(err: &io::Error) -> ProxyError {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ProxyError::ConnectRefused,
            io::ErrorKind::TimedOut => ProxyError::ConnectTimeout,
            _ => ProxyError::ConnectFailed,
        }
    }

    /// Classifies an HTTP-level failure on an established upstream connection.
    pub fn from_hyper(err: &hyper::Error) -> ProxyError {
        if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
            ProxyError::UpstreamProtocol
        } else {
            ProxyError::UpstreamReset
        }
    }
}

/// Why a path is refused (400 `invalid-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C` or `\` under `escapedSlashes: reject`.
    #[error(
        "an encoded slash or backslash (%2F, %5C, \\) in the path (paths.escapedSlashes: reject)"
    )]
    EscapedSlash,
    /// `;` under `pathParameters: reject`.
    #[error("a path parameter (;) in the path (paths.pathParameters: reject)")]
    PathParameter,
    /// `%` not followed by two hex digits.
    #[error("a malformed percent-escape in the path")]
    BadEscape,
    /// `%00`–`%1F` or `%7F`.
    #[error("an encoded control character (%00-%1F, %7F) in the path")]
    ControlCharacter,
    /// The escapes decode to bytes that are not UTF-8 (overlong or truncated sequences).
    #[error("the path's escapes do not decode to UTF-8")]
    NotUtf8,
    /// `%252E`, `%252F` or `%255C`.
    #[error("a double-encoded dot, slash or backslash (%252E, %252F, %255C) in the path")]
    DoubleEncoded,
}
