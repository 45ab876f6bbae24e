//! The control plane checks who calls before it reads, and bounds what one caller may
//! hold: a real `weft server` (in process, embedded store, ACLs on) on an ephemeral
//! loopback port, spoken to over raw sockets and with the real gRPC discovery client.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use support::{blocking, call, exchange, find_end, request, start, tokens};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_api::discovery::{
    discovery_client::DiscoveryClient, proxy_message::Message, Ack, Hello, ProxyMessage, Update,
};
use weft_control::server::Limits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_valid_token_is_refused_before_its_body_is_read() {
    let s = start(Limits::default(), false).await;
    let addr = s.addr;
    blocking(move || {
        let (_, a, _) = tokens(addr);
        // Each write announces 4 MiB and sends none of it: the answer must come anyway,
        // at once, because the token is checked before the body is read.
        for (method, path) in [
            ("POST", "/v1/config"),
            ("PUT", "/v1/kv/x"),
            ("POST", "/v1/catalog/register"),
            ("POST", "/v1/ca/sign"),
            ("POST", "/v1/acl/tokens"),
            ("POST", "/v1/ca/rotate"),
        ] {
            for (token, code) in [
                (None, "acl-token-missing"),
                (Some("made-up"), "acl-token-invalid"),
                (Some(""), "acl-token-missing"),
            ] {
                let token = token
                    .map(|t| format!("x-weft-token: {t}\r\n"))
                    .unwrap_or_default();
                let head = format!(
                    "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 4194304\r\n{token}\r\n"
                );
                let (status, json, raw) = exchange(addr, &head, b"");
                assert_eq!(status, 401, "{method} {path}: {raw}");
                assert_eq!(json["error"]["code"], code, "{method} {path}");
                assert!(
                    raw.to_ascii_lowercase().contains("connection: close"),
                    "{raw}"
                );
            }
        }
        // A valid token's body is read: a service token announcing a body and sending it.
        let (status, v) = call(addr, "PUT", "/v1/kv/x", Some(&a), b"v");
        assert_eq!(status, 403, "a service token has no KV rule: {v}");
        // /metrics needs operator:read unless the server makes it public.
        assert_eq!(call(addr, "GET", "/metrics", None, b"").0, 401);
        assert_eq!(call(addr, "GET", "/metrics", Some(&a), b"").0, 403);
        // The open endpoints stay open.
        assert_eq!(call(addr, "GET", "/v1/openapi.json", None, b"").0, 200);
        assert_eq!(call(addr, "GET", "/v1/ca/roots", None, b"").0, 200);
    })
    .await;
    let public = start(Limits::default(), true).await;
    let addr = public.addr;
    blocking(move || assert_eq!(call(addr, "GET", "/metrics", None, b"").0, 200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_its_limit_gets_413_json_and_the_connection_survives() {
    let s = start(Limits::default(), false).await;
    let addr = s.addr;
    blocking(move || {
        let (root, _, _) = tokens(addr);
        // 5 MiB to a 512 KiB KV value, sent in full over HTTP/1.1: the client reads a 413
        // with a code, not a reset, and the same connection serves the next request.
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let big = vec![b'x'; 5 * 1024 * 1024];
        let (head, _) = request("PUT", "/v1/kv/big", Some(&root), &big);
        conn.write_all(head.as_bytes()).expect("head");
        conn.write_all(&big).expect("the whole body is taken");
        let (head2, _) = request("GET", "/v1/status", Some(&root), b"");
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        while find_end(&raw).is_none() {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "closed before answering");
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(
            text.contains("\"too-large\"") && text.contains("application/json"),
            "{text}"
        );
        conn.write_all(head2.as_bytes())
            .expect("second request on the same connection");
        let mut raw = Vec::new();
        while find_end(&raw).is_none() {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "closed before answering the second request");
            raw.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));

        // The configuration limit (4 MiB) answers 413 one byte over it, like the rest.
        let over = vec![b'#'; 4 * 1024 * 1024 + 1];
        let (status, v) = call(addr, "POST", "/v1/config", Some(&root), &over);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (413, Some("too-large")),
            "{v}"
        );
        // Far over (past what is drained): answered at once, and the connection closed.
        let head = "POST /v1/config HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n"
            .to_string()
            + &format!("x-weft-token: {root}\r\n\r\n");
        let (status, json, raw) = exchange(addr, &head, b"");
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (413, Some("too-large")),
            "{raw}"
        );
        assert!(
            raw.to_ascii_lowercase().contains("connection: close"),
            "{raw}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_looked_up_in_the_store_once_per_interval() {
    let s = start(Limits::default(), false).await;
    let (addr, reads) = (s.addr, s.token_reads.clone());
    blocking(move || {
        let _ = tokens(addr);
        let before = reads.load(Ordering::Relaxed);
        for _ in 0..50 {
            assert_eq!(
                call(addr, "GET", "/v1/status", Some("not-a-token"), b"").0,
                401
            );
        }
        let store_reads = reads.load(Ordering::Relaxed) - before;
        assert!(
            store_reads <= 2,
            "{store_reads} store reads for one unknown token"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let s = start(
        Limits {
            max_connections: 3,
            ..Limits::default()
        },
        false,
    )
    .await;
    let addr = s.addr;
    blocking(move || {
        let held: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(addr).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = extra.write_all(b"GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut buf = [0u8; 16];
        assert!(
            matches!(extra.read(&mut buf), Ok(0) | Err(_)),
            "the fourth connection was served"
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            call(addr, "GET", "/v1/openapi.json", None, b"").0,
            200,
            "slots come back"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_bounded_and_a_reregistration_ends_the_lease_it_replaces() {
    let s = start(
        Limits {
            instances_per_service: 2,
            ..Limits::default()
        },
        false,
    )
    .await;
    let addr = s.addr;
    blocking(move || {
        let (_, a, _) = tokens(addr);
        let register = |id: &str| {
            let body = json!({"service": "a", "id": id, "address": "127.0.0.1", "port": 9000, "ttl": "60s"});
            call(addr, "POST", "/v1/catalog/register", Some(&a), body.to_string().as_bytes())
        };
        let (status, first) = register("a-1");
        assert_eq!(status, 200, "{first}");
        assert_eq!(register("a-2").0, 200);
        // The view follows the store within milliseconds.
        std::thread::sleep(Duration::from_millis(300));
        let (status, v) = register("a-3");
        assert_eq!((status, v["error"]["code"].as_str()), (409, Some("limit-reached")), "{v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains("--max-instances-per-service"));
        // Registering a-1 again is not a new instance, and its old lease ends.
        let (status, again) = register("a-1");
        assert_eq!(status, 200, "{again}");
        let old = first["lease"].as_u64().expect("lease");
        assert_ne!(Some(old), again["lease"].as_u64());
        let (status, v) = call(addr, "PUT", &format!("/v1/catalog/leases/{old}/renew?service=a"), Some(&a), b"");
        assert!(status == 404 || status == 403, "the replaced lease still lives: {status} {v}");
    })
    .await;
}

/// A discovery stream: the sender of the proxy's messages and the server's answers.
struct Stream {
    tx: mpsc::Sender<ProxyMessage>,
    rx: tonic::Streaming<Update>,
}

async fn open(
    addr: SocketAddr,
    token: &str,
    hello: Option<Hello>,
) -> Result<Stream, tonic::Status> {
    let mut client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    if let Some(h) = hello {
        tx.send(ProxyMessage {
            message: Some(Message::Hello(h)),
        })
        .await
        .expect("queue hello");
    }
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-weft-token", token.parse().expect("token"));
    let resp = tokio::time::timeout(Duration::from_secs(5), client.stream(req))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer within 5 s"))??;
    Ok(Stream {
        tx,
        rx: resp.into_inner(),
    })
}

fn hello(id: &str, service: &str) -> Hello {
    Hello {
        proxy_id: id.into(),
        service: service.into(),
        upstreams: vec![],
        known: Default::default(),
        build: "test".into(),
    }
}

async fn proxies(addr: SocketAddr, root: String) -> Value {
    blocking(move || call(addr, "GET", "/v1/proxies", Some(&root), b"").1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_streams_authenticate_first_and_cannot_take_over_or_loop() {
    let s = start(
        Limits {
            streams_per_token: 2,
            ..Limits::default()
        },
        false,
    )
    .await;
    let addr = s.addr;
    let (root, a, b) = blocking(move || tokens(addr)).await;

    // An unknown token is refused at once, though it never sends its Hello.
    let started = std::time::Instant::now();
    let e = open(addr, "made-up", None).await.err().expect("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // a-1 connects; a proxy of b cannot take its id over.
    let mut real = open(addr, &a, Some(hello("p-1", "a")))
        .await
        .expect("a's stream");
    assert!(real.rx.message().await.expect("update").is_some());
    let e = open(addr, &b, Some(hello("p-1", "b")))
        .await
        .err()
        .expect("takeover refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let listed = proxies(addr, root.clone()).await;
    let entry = listed["items"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["proxyId"] == "p-1"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(entry["service"], "a", "{listed}");
    // A later Hello may not switch the stream's identity either.
    real.tx
        .send(ProxyMessage {
            message: Some(Message::Hello(hello("p-9", "a"))),
        })
        .await
        .expect("send");
    let e = real.rx.message().await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // A build string is bounded.
    let mut long = hello("p-2", "a");
    long.build = "x".repeat(1000);
    let e = open(addr, &a, Some(long)).await.err().expect("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Two streams per token here; the third is refused with the limit's name.
    let _s1 = open(addr, &a, Some(hello("p-3", "a")))
        .await
        .expect("first");
    let _s2 = open(addr, &a, Some(hello("p-4", "a")))
        .await
        .expect("second");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = open(addr, &a, Some(hello("p-5", "a")))
        .await
        .err()
        .expect("third refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-streams-per-token"), "{e:?}");

    // Hello → NACK → Hello as fast as possible: one full resync per second at most.
    let mut looping = open(addr, &b, Some(hello("p-6", "b")))
        .await
        .expect("b's stream");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut updates = 0;
    while let Ok(Ok(Some(update))) = tokio::time::timeout_at(deadline, looping.rx.message()).await {
        updates += 1;
        let nack = ProxyMessage {
            message: Some(Message::Ack(Ack {
                version: update.version,
                error: "refused on purpose".into(),
            })),
        };
        let again = ProxyMessage {
            message: Some(Message::Hello(hello("p-6", "b"))),
        };
        if looping.tx.send(nack).await.is_err() || looping.tx.send(again).await.is_err() {
            break;
        }
    }
    assert!(
        (2..=5).contains(&updates),
        "{updates} updates in 3 s of a Hello/NACK loop"
    );
}
