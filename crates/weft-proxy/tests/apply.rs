//! The config-source seam: a new configuration applied to a running proxy takes effect for
//! the next request, without a restart and without touching open listeners. This is what the
//! control plane's stream will call; the file source calls it today.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::{ProxyOptions, RunningProxy};

async fn backend(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = weft_echo::EchoOptions {
        name: name.into(),
        ..Default::default()
    };
    tokio::spawn(weft_echo::serve(listener, opts, std::future::pending()));
    addr
}

fn config(listen: &str, endpoint: SocketAddr) -> weft_model::Config {
    config_with(listen, endpoint, "")
}

/// `extra` is appended to the service's spec.
fn config_with(listen: &str, endpoint: SocketAddr, extra: &str) -> weft_model::Config {
    let text = format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"{listen}\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: s}}]}}]\n---\n\
         kind: Service\nmetadata: {{name: s}}\nspec:\n  endpoints: [{{address: \"{endpoint}\"}}]\n{extra}"
    );
    weft_model::parse("test.yaml", &text).unwrap()
}

/// One HTTP/1.1 request on a fresh client connection; returns the echo's JSON body.
async fn echo_body(addr: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let body = buf.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

/// Starts a proxy on an ephemeral port in front of `endpoint`.
async fn start(endpoint: SocketAddr) -> (RunningProxy, SocketAddr) {
    let opts = ProxyOptions {
        admin: None,
        access_log: None,
        source: "test".into(),
        mesh: None,
        tracing: None,
    };
    let proxy = RunningProxy::start(config("127.0.0.1:0", endpoint), opts)
        .await
        .unwrap();
    let addr = proxy.listeners()[0].1;
    (proxy, addr)
}

/// Which echo backend served a request.
async fn served_by(addr: SocketAddr) -> String {
    echo_body(addr).await["name"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_swaps_routes_without_restart() {
    let a = backend("a").await;
    let b = backend("b").await;
    let (proxy, addr) = start(a).await;
    assert_eq!(served_by(addr).await, "a");

    // Same listener spec (it keeps its bound port), new endpoint.
    proxy.apply(config("127.0.0.1:0", b)).unwrap();
    assert_eq!(served_by(addr).await, "b");

    // A version whose new listener cannot be bound is refused whole: the running
    // listener and routes stay.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = proxy
        .apply(config(&taken.local_addr().unwrap().to_string(), a))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot listen on"), "{err}");
    assert_eq!(served_by(addr).await, "b");
    assert_eq!(proxy.listeners()[0].1, addr);

    // A listener moved to a new address: the new one serves, the old socket is closed.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    proxy.apply(config(&free.to_string(), a)).unwrap();
    assert_eq!(proxy.listeners(), vec![("gw/web".to_string(), free)]);
    assert_eq!(served_by(free).await, "a");
    let mut closed = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(closed, "the old listener still accepts");
    assert!(proxy.shutdown(std::time::Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_keeps_unchanged_endpoints_and_their_pooled_connections() {
    let a = backend("a").await;
    let (proxy, addr) = start(a).await;
    let upstream_port = |v: serde_json::Value| v["client"].as_str().unwrap().to_string();
    let first = upstream_port(echo_body(addr).await);
    let endpoint = proxy.snapshot().services["s"].balancer.endpoints()[0].clone();

    // A new version that leaves the service alone: same endpoint, same pooled connection.
    let mut same = config("127.0.0.1:0", a);
    same.version = "v2".into();
    proxy.apply(same).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &endpoint,
        &proxy.snapshot().services["s"].balancer.endpoints()[0]
    ));
    assert_eq!(
        upstream_port(echo_body(addr).await),
        first,
        "pooled connection was dropped by the swap"
    );

    // Different connection settings: a fresh endpoint with fresh connections.
    proxy
        .apply(config_with("127.0.0.1:0", a, "  connectTimeout: 1s\n"))
        .unwrap();
    assert!(!std::sync::Arc::ptr_eq(
        &endpoint,
        &proxy.snapshot().services["s"].balancer.endpoints()[0]
    ));
    assert_ne!(upstream_port(echo_body(addr).await), first);
    assert!(proxy.shutdown(std::time::Duration::from_secs(5)).await);
}
