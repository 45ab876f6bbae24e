//! What the proxy itself reads and writes in headers: the host a request is for, hop-by-hop
//! fields (removed in both directions), `x-forwarded-*`, `x-request-id`, upgrades,
//! trailers.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

use super::context::Client;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The caller's verified SPIFFE ID, set by a sidecar's inbound listener for the
/// application (any value a caller sent is removed first).
pub const X_WEFT_SOURCE: HeaderName = HeaderName::from_static("x-weft-source-identity");
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(crate) const X_WEFT_MIRRORED: HeaderName = HeaderName::from_static("x-weft-mirrored");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// A client-supplied request id longer than this is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

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
pub(crate) fn host_of(authority: &str) -> Option<&str> {
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
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
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

/// `grpc-status` of a gRPC response's headers or trailers.
pub(crate) fn grpc_status(h: &HeaderMap) -> Option<i64> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Whether a request's `TE` header accepts trailers.
pub(crate) fn accepts_trailers(h: &HeaderMap) -> bool {
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
    // One pass over the names, noting which hop-by-hop fields are present in a bitmask
    // (standard names compare as enum tags: no hashing, no allocation); most messages
    // carry none or only `connection: keep-alive`.
    let mut present = 0u8;
    for n in h.keys() {
        present |= hop_bit(n);
    }
    if present == 0 {
        return;
    }
    // Fields the `Connection` header names beyond the hop-by-hop ones (rare).
    let mut named: Vec<HeaderName> = Vec::new();
    if present & hop_bit(&header::CONNECTION) != 0 {
        for token in h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                if hop_bit(&n) == 0 {
                    named.push(n);
                }
            }
        }
    }
    let keep_te = hop == Hop::Request
        && h.get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if keep_te {
        present &= !hop_bit(&header::TE);
    }
    if matches!(hop, Hop::Request | Hop::Response { trailers: true }) {
        present &= !hop_bit(&header::TRAILER);
    }
    while present != 0 {
        let bit = present & present.wrapping_neg();
        present &= !bit;
        h.remove(hop_name(bit));
    }
    for n in named {
        h.remove(n);
    }
}

/// `n`'s bit among the hop-by-hop fields (RFC 9110 §7.6.1, and the legacy
/// `proxy-connection`), or 0.
fn hop_bit(n: &HeaderName) -> u8 {
    if n == header::CONNECTION {
        1
    } else if n == header::TRANSFER_ENCODING {
        2
    } else if n == header::UPGRADE {
        4
    } else if n == header::TE {
        8
    } else if n == header::TRAILER {
        16
    } else if n == KEEP_ALIVE {
        32
    } else if n == PROXY_CONNECTION {
        64
    } else {
        0
    }
}

/// The field of a bit of [`hop_bit`].
fn hop_name(bit: u8) -> HeaderName {
    match bit {
        1 => header::CONNECTION,
        2 => header::TRANSFER_ENCODING,
        4 => header::UPGRADE,
        8 => header::TE,
        16 => header::TRAILER,
        32 => KEEP_ALIVE,
        _ => PROXY_CONNECTION,
    }
}

pub(crate) fn append_forwarded_for(h: &mut HeaderMap, client: &Client) {
    match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        None => {
            h.insert(X_FORWARDED_FOR, client.ip_header.clone());
        }
        Some(prev) => {
            // `prev, ip` from bytes already written (a sidecar behind another proxy does
            // this for every request; `format!` of an address costs ~2,000 instructions).
            let ip = client.ip_header.as_bytes();
            let mut value = Vec::with_capacity(prev.len() + 2 + ip.len());
            value.extend_from_slice(prev.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(ip);
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
    }
}

/// Keeps the request's id (or makes one), marked for HPACK's "never indexed" form, as a
/// span's `traceparent` is: a value that differs on every request gains nothing from
/// indexing (it never repeats) and costs both ends of an HTTP/2 connection a table
/// insertion, an eviction of a field that does repeat (then sent again in full), and
/// comparisons against every earlier value of the same name. HTTP/1 ignores the mark.
pub(crate) fn ensure_request_id(h: &mut HeaderMap) {
    match h.get_mut(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN => v.set_sensitive(true),
        _ => {
            let mut id = [0u8; 32];
            crate::telemetry::trace::hex_into(&mut id, &fastrand::u128(..).to_be_bytes());
            if let Ok(mut v) = HeaderValue::from_bytes(&id) {
                v.set_sensitive(true);
                h.insert(X_REQUEST_ID, v);
            }
        }
    }
}

/// The request body's length as its `Content-Length` declares it.
pub(crate) fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_appended_to_what_arrived() {
        let v4 = Client::new("10.1.2.3:5000".parse().unwrap(), false);
        let v6 = Client::new("[2001:db8::7]:5000".parse().unwrap(), false);
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &v4);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        append_forwarded_for(&mut h, &v6);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, 2001:db8::7");
        // A value that is not text is replaced, not extended.
        h.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        append_forwarded_for(&mut h, &v4);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
    }

    #[test]
    fn request_ids_are_never_indexed_by_hpack() {
        // Generated, and kept as it arrived: both marked, the kept one unchanged.
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let made = h[&X_REQUEST_ID].clone();
        assert_eq!(made.len(), 32);
        assert!(made.is_sensitive());
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        ensure_request_id(&mut h);
        assert_eq!(h[&X_REQUEST_ID], "abc-123");
        assert!(h[&X_REQUEST_ID].is_sensitive());
        // An empty one is replaced.
        h.insert(X_REQUEST_ID, HeaderValue::from_static(""));
        ensure_request_id(&mut h);
        assert_eq!(h[&X_REQUEST_ID].len(), 32);
    }

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
