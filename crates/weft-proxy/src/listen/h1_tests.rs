//! weft's own HTTP/1.1 server: which heads it takes, and the bytes it writes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    fields: 100,
    bytes: 64 * 1024,
};

fn parsed(bytes: &[u8], limits: HeadLimits) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    (parse(&mut buf, limits), buf)
}

#[test]
fn plain_requests_are_taken_with_their_fields_and_the_rest_left() {
    let (p, rest) = parsed(
        b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\nContent-Length: 0\r\n\r\nGET /next",
        LIMITS,
    );
    let Parsed::Request(req, close) = p else {
        panic!("not taken: {p:?}");
    };
    assert!(!close);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "x");
    let two: Vec<_> = req.headers().get_all("x-two").iter().collect();
    assert_eq!(two, ["1", "2"]);
    assert!(req.body().is_end_stream());
    assert_eq!(
        &rest[..],
        b"GET /next",
        "a pipelined request stays buffered"
    );

    let (p, _) = parsed(
        b"DELETE /x HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
        LIMITS,
    );
    assert!(matches!(p, Parsed::Request(_, true)), "{p:?}");
    let (p, rest) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMITS);
    assert!(matches!(p, Parsed::Partial), "{p:?}");
    assert_eq!(rest.len(), 25, "a partial head is left whole");
}

#[test]
fn everything_not_plain_goes_to_hyper_with_its_bytes_untouched() {
    let cases: [(&str, &[u8]); 14] = [
        ("body", b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
        (
            "chunked",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "upgrade",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ),
        ("expect", b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
        ("trailers asked", b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n"),
        ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n"),
        ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        (
            "absolute-form",
            b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        ("asterisk", b"OPTIONS * HTTP/1.1\r\n\r\n"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("bad CL", b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
        ("space in name", b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
        ("control in value", b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
        ("method not a token", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let (p, rest) = parsed(bytes, LIMITS);
        assert!(matches!(p, Parsed::HandOff), "{what}: {p:?}");
        assert_eq!(&rest[..], bytes, "{what}: bytes kept for hyper");
    }
    // The listener's limits: fields, and head bytes whether whole or still arriving.
    let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
    let few = HeadLimits {
        fields: 2,
        bytes: 1024,
    };
    assert!(matches!(parsed(many, few).0, Parsed::HandOff));
    let small = HeadLimits {
        fields: 100,
        bytes: 20,
    };
    assert!(matches!(parsed(many, small).0, Parsed::HandOff));
    assert!(matches!(
        parsed(b"GET / HTTP/1.1\r\nx-long: aaaaaaaaaaaa", small).0,
        Parsed::HandOff
    ));
}

/// A body of these pieces whose length is not known ahead.
struct Pieces(VecDeque<&'static str>);

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|p| Ok(Frame::data(Bytes::from(p)))))
    }
}

fn head_of(status: StatusCode, body: impl Body, head_request: bool) -> (String, Framing, bool) {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("date", HeaderValue::from_static("then"));
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let (framing, keep) =
        encode_head(&mut out, &parts, &body, head_request, false).expect("not 1xx");
    (String::from_utf8(out).unwrap(), framing, keep)
}

#[test]
fn response_heads_follow_hypers_rules() {
    let (h, f, keep) = head_of(StatusCode::OK, Full::new(Bytes::from("hello")), false);
    assert_eq!(
        h,
        "HTTP/1.1 200 OK\r\ndate: then\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!((f, keep), (Framing::Length(5), true));
    let (h, f, _) = head_of(StatusCode::OK, Full::new(Bytes::new()), false);
    assert!(h.contains("content-length: 0\r\n"), "{h}");
    assert_eq!(f, Framing::Length(0));
    let (h, f, _) = head_of(StatusCode::NO_CONTENT, Full::new(Bytes::new()), false);
    assert!(!h.contains("content-length"), "{h}");
    assert_eq!(f, Framing::Length(0));
    let (h, f, _) = head_of(StatusCode::BAD_GATEWAY, Pieces(["a", "b"].into()), false);
    assert!(h.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{h}");
    assert!(h.contains("transfer-encoding: chunked\r\n"), "{h}");
    assert_eq!(f, Framing::Chunked);
    // HEAD: the length a GET would get is kept; nothing follows.
    let mut resp = Response::new(());
    resp.headers_mut()
        .insert("content-length", HeaderValue::from_static("42"));
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let (f, _) = encode_head(&mut out, &parts, &Full::new(Bytes::new()), true, true).unwrap();
    let h = String::from_utf8(out).unwrap();
    assert!(h.contains("content-length: 42\r\n"), "{h}");
    assert!(h.contains("date: "), "a date is added: {h}");
    assert!(h.ends_with("connection: close\r\n\r\n"), "{h}");
    assert_eq!(f, Framing::Length(0));
}

async fn exchange_over(
    wire: &[u8],
    answer: impl Fn(Request<Source>) -> Response<Full<Bytes>>,
) -> (String, bool) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(wire).await.unwrap();
    let flags = Flags::default();
    let serving = serve(server, &flags, LIMITS, Duration::from_secs(5), |req| {
        std::future::ready(Ok(answer(req)))
    });
    let reading = async {
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        String::from_utf8(got).unwrap()
    };
    let (end, got) = tokio::join!(serving, reading);
    (got, matches!(end, End::HandOff(..)))
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_answered_in_order_then_the_idle_connection_times_out() {
    let (got, handed) = exchange_over(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nHEAD /two HTTP/1.1\r\nHost: x\r\n\r\n",
        |req| Response::new(Full::new(Bytes::from(req.uri().path().to_string()))),
    )
    .await;
    assert!(!handed);
    let (one, two) = got.split_once("/one").expect("first body");
    assert!(one.starts_with("HTTP/1.1 200 OK\r\n") && one.contains("content-length: 4\r\n"));
    assert!(two.starts_with("HTTP/1.1 200 OK\r\n"), "{two}");
    assert!(two.ends_with("\r\n\r\n"), "no body after HEAD: {two}");
}

#[tokio::test(start_paused = true)]
async fn a_close_asked_for_is_kept_and_a_request_not_plain_is_handed_over() {
    let (got, handed) = exchange_over(
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
        |_| Response::new(Full::new(Bytes::from("x"))),
    )
    .await;
    assert!(!handed);
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");

    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client
        .write_all(b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let flags = Flags::default();
    let end = serve(server, &flags, LIMITS, Duration::from_secs(5), |_| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
    })
    .await;
    let End::HandOff(io, rest) = end else {
        panic!("POST not handed over");
    };
    assert_eq!(&rest[..], b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok");
    let mut rewound = Rewound::new(io, rest.freeze());
    let mut first = [0u8; 4];
    rewound.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"POST", "hyper reads the unparsed bytes first");
}
