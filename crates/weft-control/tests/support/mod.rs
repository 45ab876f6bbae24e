//! Shared by the control plane's socket tests: a real `weft server` in process (embedded
//! store behind a counting wrapper, ACLs on, plaintext) on an ephemeral loopback port, and
//! raw HTTP/1.1 over TCP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use weft_control::server::{Limits, Options};
use weft_control::store::{
    LeaseId, RangeResult, Revision, Store, StoreFuture, Txn, TxnResult, WatchEvent,
};

/// The embedded store, counting the reads of ACL tokens.
pub struct Counting {
    inner: weft_control::embedded::Embedded,
    token_reads: Arc<AtomicUsize>,
}

impl Store for Counting {
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        from: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, RangeResult> {
        if prefix.starts_with(weft_control::acl::TOKENS)
            && prefix.len() > weft_control::acl::TOKENS.len()
        {
            self.token_reads.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.range(prefix, from, limit)
    }
    fn txn(&self, txn: Txn) -> StoreFuture<'_, TxnResult> {
        self.inner.txn(txn)
    }
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> StoreFuture<'a, mpsc::Receiver<WatchEvent>> {
        self.inner.watch(prefix, after)
    }
    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId> {
        self.inner.grant(ttl)
    }
    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        self.inner.keep_alive(lease)
    }
    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        self.inner.revoke(lease)
    }
    fn kind(&self) -> &'static str {
        "embedded"
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub token_reads: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start(limits: Limits, metrics_public: bool) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_reads = Arc::new(AtomicUsize::new(0));
    let store: Arc<dyn Store> = Arc::new(Counting {
        inner: weft_control::embedded::Embedded::open(dir.path()).expect("store"),
        token_reads: token_reads.clone(),
    });
    let ca =
        weft_control::ca::Ca::init(store.clone(), "weft.local", Duration::from_secs(3600), None)
            .await
            .expect("ca");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = Options {
        advertise: addr.to_string(),
        acl: true,
        tls: None,
        ca_file: None,
        metrics_public,
        limits,
        judge: None,
        dns: None,
        virtual_ips: None,
    };
    tokio::spawn(weft_control::server::serve(
        listener,
        store,
        Arc::new(ca),
        opts,
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        addr,
        token_reads,
        _dir: dir,
        _stop: stop,
    }
}

/// Sends `head` (and `body`), then reads the answer until the server closes or 5 s pass:
/// (status, JSON body or Null, the raw answer).
pub fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Value, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = find_end(&raw) {
            raw.truncate(end);
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json, text)
}

/// Where a complete response with a Content-Length ends.
pub fn find_end(raw: &[u8]) -> Option<usize> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (raw.len() >= head_end + len).then_some(head_end + len)
}

pub fn request(method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (String, Vec<u8>) {
    let token = token
        .map(|t| format!("x-weft-token: {t}\r\n"))
        .unwrap_or_default();
    (
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{token}\r\n",
            body.len()
        ),
        body.to_vec(),
    )
}

pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let (head, body) = request(method, path, token, body);
    let (status, json, _) = exchange(addr, &head, &body);
    (status, json)
}

/// The management token, and tokens for services `a` and `b`.
pub fn tokens(addr: SocketAddr) -> (String, String, String) {
    let (status, v) = call(addr, "POST", "/v1/acl/bootstrap", None, b"");
    assert_eq!(status, 200, "{v}");
    let root = v["secretId"].as_str().expect("secretId").to_string();
    let service = |name: &str| {
        let body =
            json!({"rules": [format!("service:{name}:write"), "service:*:read"]}).to_string();
        let (status, v) = call(addr, "POST", "/v1/acl/tokens", Some(&root), body.as_bytes());
        assert_eq!(status, 200, "{v}");
        v["secretId"].as_str().expect("secretId").to_string()
    };
    let (a, b) = (service("a"), service("b"));
    (root, a, b)
}

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}
