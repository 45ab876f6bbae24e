//! End to end: hostile and broken input at the edge. Each case gets a bounded, precise
//! answer (status and `x-weft-error`), the connection closed where it must be, and the
//! proxy keeps serving everyone else. Raw sockets for what no polite client would send;
//! Python's `h2` library for HTTP/2 abuse.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_testkit::{curl, echo, metric_value, python, Echo, Proc, Proxy};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Listener `gw/web` with `limits`, routing to `backend`.
fn start(backend: &Echo, limits: &str) -> Proxy {
    weft_testkit::proxy(
        &weft(),
        &format!(
            "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners:\n  - name: web\n    address: \"127.0.0.1:0\"\n    limits: {{{limits}}}\n---\n\
             kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: s}}]}}]\n---\n\
             kind: Service\nmetadata: {{name: s}}\nspec:\n  endpoints: [{{address: \"{}\"}}]\n",
            backend.addr
        ),
        &[],
    )
}

/// Sends `bytes`, then reads until the proxy closes (or 20 s pass, which fails the
/// caller's "closed" check). Returns what was read and whether the connection closed.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set timeout");
    s.write_all(bytes).expect("send");
    read_to_close(&mut s)
}

fn read_to_close(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn oversized_headers_431_and_bodies_413() {
    let backend = echo(&weft(), "b", &[]);
    let p = start(&backend, "maxRequestBodyBytes: 1000, maxRequestHeaders: 20");
    let url = format!("{}/", p.url("gw/web"));

    let big = format!("x-big: {}", "a".repeat(70_000));
    let r = curl(&["-H", &big, &url]);
    assert_eq!(r.status, 431, "header bytes over 64 KiB: {r:?}");

    let many: Vec<String> = (0..30).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = many.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    args.push(&url);
    assert_eq!(curl(&args).status, 431, "30 headers over a limit of 20");

    let dir = weft_testkit::temp_dir();
    let file = |n: usize| {
        let f = dir.join(format!("body{n}"));
        std::fs::write(&f, vec![b'x'; n]).unwrap();
        format!("@{}", f.display())
    };
    // Declared length over the limit: refused before anything is forwarded.
    let r = curl(&["--data-binary", &file(2000), &url]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("x-weft-error"), Some("body-too-large"));
    // Chunked: cut off when the limit is crossed.
    let r = curl(&[
        "--data-binary",
        &file(5000),
        "-H",
        "transfer-encoding: chunked",
        &url,
    ]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("x-weft-error"), Some("body-too-large"));
    // Within the limit: forwarded whole.
    let r = curl(&["--data-binary", &file(1000), &url]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_bytes"], 1000);
}

#[test]
fn slow_clients_are_cut_off() {
    let backend = echo(&weft(), "b", &[]);
    let p = start(
        &backend,
        "headerReadTimeout: 300ms, requestBodyIdleTimeout: 300ms",
    );
    let addr = p.listener("gw/web");

    // A connection that never sends a byte: closed by the header read timeout too (it
    // holds no HTTP state while it waits; before, it stayed for the 10-minute idle limit).
    let (_, closed) = raw(addr, b"");
    assert!(closed, "silent connection left open");

    // Slowloris: a request head that never ends. Closed by the header read timeout.
    let (_, closed) = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-a: 1\r\n");
    assert!(closed, "slowloris connection left open");

    // A body that stalls: 408 naming the cause, and the connection closed.
    let (resp, closed) = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    );
    assert_eq!(status_of(&resp), 408, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("x-weft-error: body-timeout"),
        "{resp}"
    );
    assert!(closed);

    // An idle keep-alive connection is closed after the header read timeout too.
    let (resp, closed) = raw(addr, b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), 204, "{resp}");
    assert!(closed, "idle keep-alive connection left open");

    // And the listener still serves.
    assert_eq!(curl(&[&format!("{}/", p.url("gw/web"))]).status, 200);
}

#[test]
fn malformed_http1_gets_400_and_the_connection_closes() {
    let backend = echo(&weft(), "b", &[]);
    let p = start(&backend, "");
    let addr = p.listener("gw/web");
    let cases: [(&str, &[u8], Option<&str>); 7] = [
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            Some("invalid-body"),
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            None,
        ),
        (
            "non-numeric Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
            None,
        ),
        (
            "Transfer-Encoding other than chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            None,
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            Some("invalid-host"),
        ),
        (
            "absolute-form disagreeing with Host",
            b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
            Some("invalid-host"),
        ),
        (
            "absolute-form with a foreign scheme",
            b"GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Some("invalid-host"),
        ),
    ];
    for (what, bytes, reason) in cases {
        let (resp, closed) = raw(addr, bytes);
        assert_eq!(status_of(&resp), 400, "{what}: {resp}");
        if let Some(reason) = reason {
            assert!(
                resp.contains(&format!("x-weft-error: {reason}")),
                "{what}: {resp}"
            );
        }
        // One response, then the connection is closed: a smuggled request is never read.
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{what}: {resp}");
        assert!(closed, "{what}: connection left open");
    }
    // None of them reached the backend.
    let served = || {
        metric_value(
            &p.admin_get("/metrics"),
            "weft_requests_total{listener=\"gw/web\",route=\"r\",service=\"s\",status_class=\"2xx\"}",
        )
    };
    assert_eq!(served(), Some(0.0));

    // The smuggling shape: Content-Length and Transfer-Encoding together. Framed by
    // Transfer-Encoding alone (the Content-Length is discarded, never forwarded), answered
    // once, and the connection closed (RFC 9112 §6.1), so the request hidden in the body
    // is never read as a second request.
    let (resp, closed) = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    assert!(!resp.contains("/smuggled"), "{resp}");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let echoed: serde_json::Value = serde_json::from_str(body).expect("echo body");
    assert!(
        echoed["headers"].get("content-length").is_none(),
        "{echoed}"
    );
    assert!(closed, "connection left open after an ambiguous request");
    assert_eq!(
        served(),
        Some(1.0),
        "exactly one request reached the backend"
    );
}

#[test]
fn connections_beyond_the_maximum_are_refused_while_open_ones_keep_working() {
    let backend = echo(&weft(), "b", &[]);
    let p = start(&backend, "maxConnections: 3");
    let addr = p.listener("gw/web");
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        status_of(&String::from_utf8_lossy(&buf[..n]))
    };
    let mut open: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            assert_eq!(ask(&mut s), 200);
            s
        })
        .collect();
    // The fourth is accepted by the kernel and closed by the proxy at once.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (resp, closed) = read_to_close(&mut extra);
        assert!(
            closed && resp.is_empty(),
            "over the limit but served: {resp}"
        );
    }
    for s in &mut open {
        assert_eq!(ask(s), 200, "an open connection stopped working");
    }
    let m = p.admin_get("/metrics");
    assert_eq!(
        metric_value(
            &m,
            "weft_downstream_connections_refused_total{listener=\"gw/web\",reason=\"max-connections\"}"
        ),
        Some(3.0),
        "{m}"
    );
    // Closing one frees a slot.
    drop(open.pop());
    weft_testkit::eventually("a freed slot", Duration::from_secs(10), || {
        (curl(&[&format!("{}/", p.url("gw/web"))]).status == 200).then_some(())
    });
}

fn h2_peer(addr: SocketAddr, scenario: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/h2_abuse.py");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script).arg(addr.to_string()).arg(scenario);
    let proc = Proc::spawn(cmd);
    proc.ready.clone()
}

#[test]
fn http2_abuse_is_bounded() {
    let backend = echo(&weft(), "b", &[]);
    let p = start(
        &backend,
        "http2MaxConcurrentStreams: 10, http2MaxPendingResets: 20",
    );
    let addr = p.listener("gw/web");

    // Rapid reset (CVE-2023-44487): open and cancel streams in a burst. The connection is
    // closed with GOAWAY ENHANCE_YOUR_CALM.
    let r = h2_peer(addr, "rapid-reset");
    assert_eq!(r["goaway"], "ENHANCE_YOUR_CALM", "{r}");

    // More concurrent streams than allowed: the excess is refused (REFUSED_STREAM), the
    // allowed ones are answered.
    let r = h2_peer(addr, "excess-streams");
    assert_eq!(
        (r["answered"].as_u64(), r["refused"].as_u64()),
        (Some(10), Some(50)),
        "{r}"
    );

    // A header list beyond the limit (200 KiB against 64 KiB): never buffered whole nor
    // served; the connection is closed with GOAWAY ENHANCE_YOUR_CALM.
    let r = h2_peer(addr, "header-flood");
    assert_eq!(r["goaway"], "ENHANCE_YOUR_CALM", "{r}");
    assert!(r["status"].is_null(), "{r}");

    // The proxy serves on.
    let r = curl(&["--http2-prior-knowledge", &format!("{}/", p.url("gw/web"))]);
    assert_eq!(r.status, 200);
}
