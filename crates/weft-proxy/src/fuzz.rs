//! Entry points for fuzzing the parsing weft does itself, shared by the `cargo fuzz`
//! targets in `fuzz/` and by the seed-corpus test below (so every CI run replays the
//! corpus). Not an API: the functions panic only when an invariant breaks.

use std::sync::{Arc, OnceLock};

use http::{Method, Request};

use crate::config::Snapshot;
use crate::telemetry::metrics::Metrics;

/// Routes with every kind of matcher, for the request fuzzer.
const ROUTES: &str = r#"
kind: Gateway
metadata: {name: gw}
spec: {listeners: [{name: web, address: "127.0.0.1:0"}]}
---
kind: HTTPRoute
metadata: {name: r}
spec:
  hostnames: ["a.example.com", "*.example.org"]
  rules:
    - matches:
        - path: {type: RegularExpression, value: "/v[0-9]+/.*"}
          headers: [{name: x-env, value: "canary|beta", type: RegularExpression}]
          queryParams: [{name: q, value: "a b"}]
          method: POST
      backendRefs: [{name: s}]
    - matches: [{path: {type: Exact, value: /exact}}, {path: {value: /prefix}}]
      backendRefs: [{name: s}]
---
kind: HTTPRoute
metadata: {name: any}
spec:
  rules: [{backendRefs: [{name: s}]}]
---
kind: Service
metadata: {name: s}
spec: {endpoints: [{address: "127.0.0.1:9"}]}
"#;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let config = weft_model::parse("fuzz.yaml", ROUTES).expect("fuzz routes parse");
        let rt = crate::config::Runtime::new(None).expect("runtime");
        Snapshot::build(Arc::new(config), &Metrics::new(), None, &rt).expect("fuzz routes compile")
    })
}

/// A request head as lines: method, request target, then `name: value` headers. Runs
/// everything the proxy parses itself before forwarding: host and authority checks, dot
/// path normalisation, routing (regex, query percent-decoding, headers), hop-by-hop removal,
/// and the upstream target.
pub fn request_head(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(target);
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            builder = builder.header(n.trim(), v.trim());
        }
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    let Ok(path) = normalized_path(req.uri().path(), &weft_model::PathPolicy::default()) else {
        return;
    };
    if let Some(host) = crate::http::headers::request_host(&req) {
        let table = &snapshot().listeners[0].1.http.table;
        let _ = table.route(&host, req.method(), &path, req.uri().query(), req.headers());
    }
    crate::http::headers::strip_hop_by_hop(req.headers_mut(), crate::http::headers::Hop::Request);
    assert!(!req.headers().contains_key(http::header::CONNECTION));
    let _ = crate::http::filters::upstream_uri(req.uri(), None, Some(path));
}

/// A path, under every path policy: normalisation refuses it or gives a path that is
/// idempotent, holds no dot segment and no escaped unreserved character.
pub fn normalized_paths(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{text}");
    for escaped_slashes in [
        weft_model::EscapedSlashes::Reject,
        weft_model::EscapedSlashes::Keep,
    ] {
        for path_parameters in [
            weft_model::PathParameters::Reject,
            weft_model::PathParameters::Strip,
        ] {
            for merge_slashes in [true, false] {
                let policy = weft_model::PathPolicy {
                    escaped_slashes,
                    merge_slashes,
                    path_parameters,
                };
                let _ = normalized_path(&path, &policy);
            }
        }
    }
}

/// Normalises `path` and checks the invariants of its normal form.
fn normalized_path(
    path: &str,
    policy: &weft_model::PathPolicy,
) -> Result<String, crate::http::path::PathError> {
    let once = crate::http::path::normalize(path, policy)?.into_owned();
    if !path.starts_with('/') {
        return Ok(once);
    }
    assert!(
        !once.split('/').any(|s| s == ".." || s == "."),
        "dot segment survived normalization: {path:?} -> {once:?}"
    );
    let bytes = once.as_bytes();
    for (i, _) in once.match_indices('%') {
        let escaped = std::str::from_utf8(&bytes[i + 1..i + 3])
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("bad escape in the normal form: {path:?} -> {once:?}"));
        assert!(
            !(escaped.is_ascii_alphanumeric() || b"-._~".contains(&escaped)),
            "escaped unreserved character in the normal form: {path:?} -> {once:?}"
        );
        assert!(
            bytes[i + 1..i + 3].iter().all(|b| !b.is_ascii_lowercase()),
            "lower-case escape in the normal form: {path:?} -> {once:?}"
        );
    }
    assert!(
        http::uri::PathAndQuery::try_from(once.as_str()).is_ok(),
        "the normal form is not a valid request target: {path:?} -> {once:?}"
    );
    let twice = crate::http::path::normalize(&once, policy);
    assert_eq!(
        twice.as_deref(),
        Ok(once.as_str()),
        "not idempotent: {path:?}"
    );
    Ok(once)
}

/// Trace headers as `name: value` lines (any names; the trace ones matter). Whatever
/// arrives, the context read from it is continued exactly: what this hop sends on reads
/// back as this hop's span of the same trace, sampled alike, in every format it sent,
/// with `tracestate` within its bound.
pub fn trace_headers(data: &[u8]) {
    use crate::telemetry::trace::{self, Formats, SpanContext};
    use http::{HeaderMap, HeaderName, HeaderValue};

    let mut h = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value),
        ) {
            h.append(n, v);
        }
    }
    let incoming = trace::extract(&h);
    let carried = incoming.parent.as_ref().map(|p| p.trace_id);
    for (always, rate) in [
        (Formats::W3C, 0.0),
        (
            Formats::W3C
                .union(Formats::B3_MULTI)
                .union(Formats::B3_SINGLE),
            1.0,
        ),
    ] {
        let span = SpanContext::start(trace::extract(&h), rate);
        if let Some(t) = carried {
            assert_eq!(span.trace_id, t, "the trace was not continued");
        }
        let mut out = h.clone();
        span.inject(&mut out, always);
        let sent = [
            (Formats::W3C, vec![trace::TRACEPARENT, trace::TRACESTATE]),
            (Formats::B3_SINGLE, vec![trace::B3]),
            (
                Formats::B3_MULTI,
                vec![
                    trace::B3_TRACE_ID,
                    trace::B3_SPAN_ID,
                    trace::B3_PARENT_SPAN_ID,
                    trace::B3_SAMPLED,
                    trace::B3_FLAGS,
                ],
            ),
        ];
        for (format, names) in sent {
            if !out.contains_key(&names[0]) {
                continue;
            }
            // Each format on its own reads back as this hop.
            let mut alone = HeaderMap::new();
            for n in names {
                for v in out.get_all(&n) {
                    alone.append(n.clone(), v.clone());
                }
            }
            let back = trace::extract(&alone);
            let parent = back
                .parent
                .unwrap_or_else(|| panic!("{format:?} sent unreadable: {alone:?}"));
            assert_eq!(parent.span_id, span.span_id, "{format:?}: {alone:?}");
            let mask = if parent.short_trace_id {
                u128::from(u64::MAX)
            } else {
                u128::MAX
            };
            assert_eq!(
                parent.trace_id,
                span.trace_id & mask,
                "{format:?}: {alone:?}"
            );
            assert_eq!(
                back.sampled.unwrap_or(back.debug),
                span.sampled,
                "{format:?}: {alone:?}"
            );
            if let Some(ts) = parent.tracestate {
                assert!(ts.len() <= trace::MAX_TRACESTATE, "tracestate: {ts:?}");
            }
        }
        assert!(out.contains_key(trace::TRACEPARENT), "W3C is always sent");
    }
}

/// An upstream's answer as weft's own HTTP/1.1 client reads it ([`crate::upstream::h1`]):
/// the first byte says whether the request was HEAD (bit 0) and in what pieces the rest
/// arrives (its value + 1 bytes at a time). Read in pieces or all at once, the outcome is
/// the same (status, body bytes, trailers, or a failure); reading always ends — more is
/// never asked for once the server has closed; a body never yields more than arrived,
/// and a `Content-Length` body read to its end has exactly that length.
pub fn upstream_response(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let whole = read_response(rest, rest.len().max(1), head_request);
    let pieces = read_response(rest, usize::from(flags >> 1) + 1, head_request);
    assert_eq!(
        whole,
        pieces,
        "whole vs pieces of {}",
        usize::from(flags >> 1) + 1
    );
}

/// Client bytes as weft's own HTTP/1.1 server reads them (`listen/h1.rs`): the first byte
/// picks a piece size and a field limit. Read whole and read in pieces, the requests taken
/// are the same, in the same order, and the reading ends the same way (a head still
/// arriving, or the connection handed to hyper with the same unread bytes); a request taken
/// is plain — HTTP/1.1, origin-form, not CONNECT, no body, no `Transfer-Encoding`,
/// `Upgrade`, `Expect` or `TE` — and its fields hold exactly what was sent.
pub fn server_request(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = crate::listen::h1::HeadLimits {
        fields: usize::from(flags & 0x0f) * 8 + 1,
        bytes: 2048,
    };
    let step = usize::from(flags >> 4) * 7 + 1;
    let whole = read_requests(rest, rest.len().max(1), limits);
    let pieces = read_requests(rest, step, limits);
    assert_eq!(whole, pieces, "whole vs pieces of {step}");
}

/// Each request taken (method, target, fields, close), then how reading ended.
type Requests = (Vec<String>, String);

fn read_requests(bytes: &[u8], step: usize, limits: crate::listen::h1::HeadLimits) -> Requests {
    use crate::listen::h1::{parse, Parsed};
    use http_body::Body;
    let mut buf = bytes::BytesMut::new();
    let mut fed = 0;
    let mut taken = Vec::new();
    loop {
        match parse(&mut buf, limits) {
            Parsed::Request(req, close) => {
                assert_eq!(req.version(), http::Version::HTTP_11);
                assert_ne!(req.method(), http::Method::CONNECT);
                assert!(req.uri().path().starts_with('/'), "{}", req.uri());
                assert!(req.uri().authority().is_none());
                assert!(req.body().is_end_stream());
                let h = req.headers();
                for refused in ["transfer-encoding", "upgrade", "expect", "te"] {
                    assert!(!h.contains_key(refused), "{refused} taken");
                }
                assert!(h.get_all("content-length").iter().all(|v| v == "0"));
                assert!(h.len() <= limits.fields);
                let fields: Vec<String> = h
                    .iter()
                    .map(|(n, v)| format!("{n}={:?}", v.as_bytes()))
                    .collect();
                taken.push(format!("{} {} {fields:?} {close}", req.method(), req.uri()));
            }
            // hyper reads what was buffered, then the rest from the connection.
            Parsed::HandOff => {
                buf.extend_from_slice(&bytes[fed..]);
                return (taken, format!("hand-off {:?}", &buf[..]));
            }
            Parsed::Partial if fed == bytes.len() => {
                return (taken, format!("partial {:?}", &buf[..]))
            }
            Parsed::Partial => {
                let end = (fed + step).min(bytes.len());
                buf.extend_from_slice(&bytes[fed..end]);
                fed = end;
            }
        }
    }
}

type ReadOutcome = Result<(u16, Vec<u8>, Option<http::HeaderMap>), crate::error::ProxyError>;

fn read_response(bytes: &[u8], step: usize, head_request: bool) -> ReadOutcome {
    use crate::upstream::h1::{self, Framing, Step};
    let mut buf = bytes::BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut bytes::BytesMut| {
        let end = (fed + step).min(bytes.len());
        buf.extend_from_slice(&bytes[fed..end]);
        fed = end;
        fed == bytes.len()
    };
    let mut eof = feed(&mut buf);
    let head = loop {
        match h1::parse_head(&mut buf, head_request)? {
            Some(head) => break head,
            None if eof => return Err(crate::error::ProxyError::UpstreamReset),
            None => eof = feed(&mut buf),
        }
    };
    let declared = match head.framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut framing = head.framing;
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match framing.next(&mut buf, eof)? {
            Step::Frame(f) => match f.into_data() {
                Ok(d) => body.extend_from_slice(&d),
                Err(f) => trailers = Some(f.into_trailers().expect("data or trailers")),
            },
            Step::End => break,
            Step::More => {
                assert!(!eof, "more asked for after the server closed");
                eof = feed(&mut buf);
            }
        }
        assert!(body.len() <= bytes.len(), "more body than bytes");
    }
    if let Some(n) = declared {
        assert_eq!(
            body.len() as u64,
            n,
            "a Content-Length body read to its end"
        );
    }
    Ok((head.response.status().as_u16(), body, trailers))
}

/// Bytes as the first flight of a TLS client, as TLS passthrough reads it.
pub fn client_hello(data: &[u8]) {
    let _ = weft_tls::peek_sni(data);
}

#[cfg(test)]
mod tests {
    /// Replays the checked-in fuzz corpora, so a crash found once stays fixed.
    #[test]
    fn seed_corpora_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        let mut replayed = 0;
        for (dir, run) in [
            ("request_head", super::request_head as fn(&[u8])),
            ("client_hello", super::client_hello),
            ("normalized_paths", super::normalized_paths),
            ("trace_headers", super::trace_headers),
            ("upstream_response", super::upstream_response),
            ("server_request", super::server_request),
        ] {
            for entry in std::fs::read_dir(root.join(dir)).expect("seed directory") {
                let bytes = std::fs::read(entry.expect("entry").path()).expect("seed");
                run(&bytes);
                replayed += 1;
            }
        }
        assert!(replayed >= 4, "only {replayed} seeds");
    }
}
