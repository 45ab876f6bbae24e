use super::*;

fn head(text: &str, head_request: bool) -> Result<Option<Head>, ProxyError> {
    parse_head(&mut BytesMut::from(text), head_request)
}

fn framing(text: &str) -> Framing {
    head(text, false).unwrap().unwrap().framing
}

/// The whole body of `text` (a response), as frames, given in pieces of `step` bytes.
fn body(text: &str, step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ProxyError> {
    let bytes = text.as_bytes();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut head_done = None;
    while head_done.is_none() {
        let end = (fed + step).min(bytes.len());
        buf.extend_from_slice(&bytes[fed..end]);
        fed = end;
        head_done = parse_head(&mut buf, false)?;
        assert!(head_done.is_some() || fed < bytes.len(), "head incomplete");
    }
    let mut framing = head_done.unwrap().framing;
    let (mut data, mut trailers) = (Vec::new(), None);
    loop {
        match framing.next(&mut buf, fed == bytes.len())? {
            Step::Frame(f) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Step::End => return Ok((data, trailers, buf)),
            Step::More => {
                let end = (fed + step).min(bytes.len());
                buf.extend_from_slice(&bytes[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn heads_are_parsed_with_values_kept_as_sent() {
    let h = head(
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 5\r\n\r\nhello",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.response.status(), 200);
    assert_eq!(h.response.version(), Version::HTTP_11);
    let all: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
    assert_eq!(all, ["1", "2"]);
    assert_eq!(h.response.headers()["server"], "nginx");
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.reusable);
    assert!(h
        .response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .is_none());
    let odd = head(
        "HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    let reason = odd
        .response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .unwrap();
    assert_eq!(reason.as_bytes(), b"Fine Thanks");
}

#[test]
fn incomplete_heads_wait_and_oversized_or_malformed_ones_fail() {
    assert!(head("HTTP/1.1 200 OK\r\nServer: ngi", false)
        .unwrap()
        .is_none());
    let big = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(head(&big, false).unwrap_err(), ProxyError::UpstreamProtocol);
    let whole = format!(
        "HTTP/1.1 200 OK\r\nx: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(
        head(&whole, false).unwrap_err(),
        ProxyError::UpstreamProtocol,
        "in one read too"
    );
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(
        head(&many, false).unwrap_err(),
        ProxyError::UpstreamProtocol
    );
    for bad in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: a\0b\r\n\r\n",
        "junk\r\n\r\n",
    ] {
        assert_eq!(
            head(bad, false).unwrap_err(),
            ProxyError::UpstreamProtocol,
            "{bad:?}"
        );
    }
}

#[test]
fn interim_answers_are_skipped_and_101_refused() {
    let h = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert_eq!(h.response.status(), 204);
    assert!(h.response.headers().get("link").is_none());
    assert!(head("HTTP/1.1 100 Continue\r\n\r\n", false)
        .unwrap()
        .is_none());
    assert_eq!(
        head(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            false
        )
        .unwrap_err(),
        ProxyError::UpstreamProtocol
    );
}

#[test]
fn framing_follows_rfc_9112() {
    // No body after HEAD, 204 or 304, whatever the headers say.
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Length(0));
    assert_eq!(
        h.response.headers()["content-length"],
        "100",
        "kept for the client"
    );
    assert_eq!(
        framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"),
        Framing::Length(0)
    );
    assert_eq!(
        framing("HTTP/1.1 204 No Content\r\n\r\n"),
        Framing::Length(0)
    );
    // Chunked wins over Content-Length, which is dropped; the connection is not reused.
    let both = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(both.framing, Framing::Chunked(Chunked::Size));
    assert!(both.response.headers().get("content-length").is_none());
    assert!(!both.reusable);
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"),
        Framing::Chunked(Chunked::Size)
    );
    let gzip = head(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!((gzip.framing, gzip.reusable), (Framing::Close, false));
    assert_eq!(
        head(
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false
        )
        .unwrap_err(),
        ProxyError::UpstreamProtocol
    );
    // Content-Length: the same number however often it is given, or refused.
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n"),
        Framing::Length(7)
    );
    for bad in ["1, 2", "-1", "+1", "0x1", "", "99999999999999999999", "1 2"] {
        let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
        assert_eq!(
            head(&text, false).unwrap_err(),
            ProxyError::UpstreamProtocol,
            "{bad:?}"
        );
    }
    // Neither: until close, never reused.
    let close = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
    assert_eq!((close.framing, close.reusable), (Framing::Close, false));
}

#[test]
fn reuse_follows_the_connection_header() {
    let reusable = |t: &str| head(t, false).unwrap().unwrap().reusable;
    assert!(reusable("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(!reusable(
        "HTTP/1.1 200 OK\r\nconnection: foo, Close\r\ncontent-length: 0\r\n\r\n"
    ));
    assert!(!reusable("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(reusable(
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
    ));
}

#[test]
fn connection_fields_that_name_nothing_are_left_out_and_the_others_kept() {
    let fields = |t: &str| head(t, false).unwrap().unwrap().response.headers().clone();
    // Only `keep-alive`/`close`, and `Keep-Alive`: hop-by-hop, read here and not carried.
    let h = fields(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nx-app: 1\r\ncontent-length: 0\r\n\r\n",
    );
    assert!(!h.contains_key(CONNECTION), "{h:?}");
    assert!(!h.contains_key("keep-alive"), "{h:?}");
    assert_eq!(h["x-app"], "1");
    // A `Connection` that names another field stays, so the proxy removes that field too.
    let h = fields(
        "HTTP/1.1 200 OK\r\nconnection: close, x-private\r\nx-private: 1\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(h[CONNECTION], "close, x-private");
    assert_eq!(h["x-private"], "1");
}

#[test]
fn bodies_read_whole_in_any_pieces() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1 \r\n!\r\n0\r\nx-sum: abc\r\n\r\n";
    for step in [1, 2, 3, 7, 1000] {
        let (data, trailers, rest) = body(chunked, step).unwrap();
        assert_eq!(data, b"hello!", "step {step}");
        assert_eq!(trailers.unwrap()["x-sum"], "abc");
        assert!(rest.is_empty());
        let (data, _, rest) = body(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA",
            step,
        )
        .unwrap();
        assert_eq!(data, b"hello");
        // Bytes after the end stay in the buffer (so the connection is not reused).
        assert!(b"EXTRA".starts_with(&rest), "{rest:?}");
        if step == 1000 {
            assert_eq!(&rest[..], b"EXTRA");
        }
        let (data, _, _) = body("HTTP/1.1 200 OK\r\n\r\nuntil close", step).unwrap();
        assert_eq!(data, b"until close");
    }
    let (data, trailers, _) = body(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        4,
    )
    .unwrap();
    assert!(data.is_empty() && trailers.is_none());
}

#[test]
fn broken_bodies_fail() {
    let chunked = |rest: &str| {
        body(
            &format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{rest}"),
            1000,
        )
    };
    for bad in [
        "5\r\nhelloXX0\r\n\r\n",     // no CRLF after the data
        "5\nhello\r\n0\r\n\r\n",     // bare LF
        "g\r\n",                     // not hex
        "\r\n",                      // no digits
        "11111111111111111\r\n",     // 17 digits
        "5 x\r\nhello\r\n0\r\n\r\n", // junk after the size
        "0\r\nbad name: v\r\n\r\n",  // bad trailer
    ] {
        assert_eq!(
            chunked(bad).unwrap_err(),
            ProxyError::UpstreamProtocol,
            "{bad:?}"
        );
    }
    let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
    assert_eq!(chunked(&long).unwrap_err(), ProxyError::UpstreamProtocol);
    // Closed early.
    assert_eq!(chunked("5\r\nhel").unwrap_err(), ProxyError::UpstreamReset);
    let short = body("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", 1000);
    assert_eq!(short.unwrap_err(), ProxyError::UpstreamReset);
}

#[test]
fn request_heads_carry_the_fields_as_they_are() {
    let mut req = Request::get("http://ignored/a/b?c=d")
        .header("host", "example.com")
        .header("x-dup", "1")
        .body(RequestBody::Bytes(None))
        .unwrap();
    req.headers_mut()
        .append("x-dup", HeaderValue::from_static("2"));
    assert!(fits(&req));
    let mut buf = BytesMut::new();
    encode_head(&mut buf, &req);
    assert_eq!(
        &buf[..],
        b"GET /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nx-dup: 1\r\nx-dup: 2\r\n\r\n"
    );
    let with_body = Request::post("/")
        .body(RequestBody::Bytes(Some(Bytes::from_static(b"x"))))
        .unwrap();
    assert!(!fits(&with_body));
    let upgrade = Request::get("/")
        .header("upgrade", "websocket")
        .body(RequestBody::Bytes(None))
        .unwrap();
    assert!(!fits(&upgrade));
}
