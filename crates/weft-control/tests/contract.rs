//! The API answers the way docs/api.md says, for every kind of answer: errors (axum's own
//! 405 and rejections included) are JSON with a stable code, every answer carries
//! `X-Weft-Index`, the last page of a list has no `next`, and a lease renews without
//! anything the OpenAPI document does not mention.

mod support;

use serde_json::{json, Value};
use support::{blocking, call, exchange, request, start, tokens};
use weft_control::server::Limits;

/// `(status, headers lower-cased, JSON body)` of one request.
fn answer(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String, Value) {
    let (head, body) = request(method, path, token, body);
    let (status, json, raw) = exchange(addr, &head, &body);
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (status, head, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_json_when_it_fails_and_carries_the_index() {
    let s = start(Limits::default(), false).await;
    let addr = s.addr;
    blocking(move || {
        let (root, _, _) = tokens(addr);
        for (method, path, token, status, code) in [
            (
                "DELETE",
                "/v1/status",
                Some(root.as_str()),
                405,
                "method-not-allowed",
            ),
            (
                "TRACE",
                "/v1/kv/x",
                Some(root.as_str()),
                405,
                "method-not-allowed",
            ),
            (
                "PATCH",
                "/v1/config",
                Some(root.as_str()),
                405,
                "method-not-allowed",
            ),
            (
                "GET",
                "/v1/nothing-here",
                Some(root.as_str()),
                404,
                "not-found",
            ),
            ("GET", "/v1/status", None, 401, "acl-token-missing"),
            ("GET", "/v1/status", Some("nope"), 401, "acl-token-invalid"),
            (
                "GET",
                "/v1/proxies?revision=null",
                Some(root.as_str()),
                400,
                "invalid-query",
            ),
            (
                "PUT",
                "/v1/catalog/leases/x/renew",
                Some(root.as_str()),
                400,
                "invalid-lease",
            ),
        ] {
            let (got, head, body) = answer(addr, method, path, token, b"");
            assert_eq!(got, status, "{method} {path}: {head}\n{body}");
            assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
            assert!(
                head.contains("content-type: application/json"),
                "{method} {path}: {head}"
            );
            assert!(
                head.contains("x-weft-index: "),
                "{method} {path}: no index: {head}"
            );
            if status == 405 {
                assert!(head.contains("\r\nallow: "), "{method} {path}: {head}");
            }
        }
        for path in ["/v1/openapi.json", "/v1/ca/roots"] {
            let (got, head, _) = answer(addr, "GET", path, None, b"");
            assert_eq!(got, 200);
            assert!(head.contains("x-weft-index: "), "{path}: {head}");
        }
        // Lists: `next` only while there is more.
        for i in 0..3 {
            let (st, v) = call(addr, "PUT", &format!("/v1/kv/page/{i}"), Some(&root), b"v");
            assert_eq!(st, 200, "{v}");
        }
        let (_, first) = call(addr, "GET", "/v1/kv?prefix=page/&limit=2", Some(&root), b"");
        let next = first["next"]
            .as_str()
            .expect("a next token on a page with more")
            .to_string();
        let (_, last) = call(
            addr,
            "GET",
            &format!("/v1/kv?prefix=page/&limit=2&after={next}"),
            Some(&root),
            b"",
        );
        assert_eq!(last["items"].as_array().map(Vec::len), Some(1), "{last}");
        assert!(
            last.get("next").is_none(),
            "`next` on the last page: {last}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renews_with_acls_without_naming_its_service() {
    let s = start(Limits::default(), false).await;
    let addr = s.addr;
    blocking(move || {
        let (_, a, b) = tokens(addr);
        let reg = json!({"service": "a", "id": "a-1", "address": "127.0.0.1", "port": 9000, "ttl": "30s"});
        let (st, v) = call(addr, "POST", "/v1/catalog/register", Some(&a), reg.to_string().as_bytes());
        assert_eq!(st, 200, "{v}");
        let lease = v["lease"].as_u64().expect("lease");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (st, v) = call(addr, "PUT", &format!("/v1/catalog/leases/{lease}/renew"), Some(&a), b"");
        assert_eq!((st, v["lease"].as_u64()), (200, Some(lease)), "{v}");
        // b's token cannot keep a's instance alive, named or not.
        let (st, _) = call(addr, "PUT", &format!("/v1/catalog/leases/{lease}/renew"), Some(&b), b"");
        assert_eq!(st, 403);
        let (st, _) = call(addr, "PUT", &format!("/v1/catalog/leases/{lease}/renew?service=b"), Some(&b), b"");
        assert_eq!(st, 403);
        let (st, v) = call(addr, "PUT", "/v1/catalog/leases/999999/renew", Some(&a), b"");
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("lease-not-found")), "{v}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_authenticated_upload_keeps_the_connection() {
    use std::io::{Read, Write};
    let s = start(Limits::default(), false).await;
    let addr = s.addr;
    blocking(move || {
        let (root, _, _) = tokens(addr);
        // A path axum refuses before the handler runs (a key that is not UTF-8), with a
        // body of 200 KiB sent in full: the client reads the 400, and the same connection
        // serves the next request (the rest of the body was read and discarded).
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let body = vec![b'v'; 200 * 1024];
        let (head, _) = request("PUT", "/v1/kv/%FF%FE", Some(&root), &body);
        conn.write_all(head.as_bytes()).expect("head");
        conn.write_all(&body).expect("body");
        let (head2, _) = request("GET", "/v1/status", Some(&root), b"");
        let read_one = |conn: &mut std::net::TcpStream| {
            let mut raw = Vec::new();
            let mut buf = [0u8; 65536];
            while support::find_end(&raw).is_none() {
                let n = conn.read(&mut buf).expect("read");
                assert!(n > 0, "closed before answering");
                raw.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&raw).into_owned()
        };
        let first = read_one(&mut conn);
        assert!(first.starts_with("HTTP/1.1 400"), "{first}");
        assert!(
            first.contains("\"code\"") && !first.to_ascii_lowercase().contains("connection: close"),
            "{first}"
        );
        conn.write_all(head2.as_bytes()).expect("second request");
        let second = read_one(&mut conn);
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    })
    .await;
}
