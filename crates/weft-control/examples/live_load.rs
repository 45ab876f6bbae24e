//! Live load: a synthetic mesh of N services and M caller → callee edges, as proxies that
//! answer the control plane's live questions (`weft stat`, the UI's topology) with
//! windows of made-up traffic. For bench/ui.py.
//!
//! ```text
//! cargo run --release -p weft-control --example live_load -- \
//!     --server 127.0.0.1:8500 --services 1000 --edges 5000 [--seconds 600]
//! ```
//!
//! Registers one instance per service (`svc-I`, lease TTL 300 s), opens one live stream
//! per service (250 per HTTP/2 connection) whose proxy reports, for every edge into its
//! service, an inbound window (requests, successes, a latency sketch), then prints
//! `{"event":"ready",...}` and answers until `--seconds` pass. Edges are drawn at random
//! with a fixed seed, callers mostly before their callees (a mesh has layers) with some
//! calls back; a few edges fail often enough to be drawn as failing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use weft_api::discovery::{
    discovery_client::DiscoveryClient, live_ask, live_report, LiveHello, LiveReport, StatsReport,
    Window,
};
use weft_api::sketch::Sketch;

struct Args {
    server: SocketAddr,
    services: usize,
    edges: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        server: "127.0.0.1:8500".parse().expect("default address"),
        services: 1000,
        edges: 5000,
        seconds: 600,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--server" => a.server = v.parse().expect("--server IP:PORT"),
            "--services" => a.services = v.parse().expect("--services"),
            "--edges" => a.edges = v.parse().expect("--edges"),
            "--seconds" => a.seconds = v.parse().expect("--seconds"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.services >= 2, "--services: at least 2");
    let most = a.services * (a.services - 1);
    assert!(
        a.edges <= most,
        "--edges: at most {most} for {} services",
        a.services
    );
    a
}

/// The edges, `(caller, callee)`: distinct, no self-calls; 9 in 10 go to a later service.
fn draw_edges(services: usize, edges: usize) -> Vec<(usize, usize)> {
    let mut rng = fastrand::Rng::with_seed(20261205);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(edges);
    while out.len() < edges {
        let a = rng.usize(..services);
        let b = rng.usize(..services);
        let (s, d) = if rng.u8(..10) == 0 || a == b {
            (a, b)
        } else {
            (a.min(b), a.max(b))
        };
        if s != d && seen.insert((s, d)) {
            out.push((s, d));
        }
    }
    out
}

/// The inbound window of one edge: a made-up rate, 1 in 50 edges failing 10%.
fn window(rng: &mut fastrand::Rng, source: usize, destination: usize, seconds: u32) -> Window {
    let rps = 1 + rng.u64(..50);
    let requests = rps * u64::from(seconds);
    let failing = rng.u8(..50) == 0;
    let failures = if failing {
        requests / 10
    } else {
        requests / 1000
    };
    let mut sketch = Sketch::default();
    for _ in 0..64 {
        sketch.add(Duration::from_micros(300 + rng.u64(..5000)));
    }
    Window {
        direction: "inbound".into(),
        source: format!("svc-{source}"),
        destination: format!("svc-{destination}"),
        requests,
        successes: requests - failures,
        latency: sketch.to_sparse(),
        ..Window::default()
    }
}

fn register(server: SocketAddr, service: &str, id: &str, port: u16) {
    let body = format!(
        r#"{{"service":"{service}","id":"{id}","address":"10.0.0.1","port":{port},"ttl":"300s","health":"passing","metadata":{{"version":"v1","zone":"zone-{z}"}}}}"#,
        z = port % 3
    );
    let (status, answer) =
        weft_testkit::mesh::http(server, "POST", "/v1/catalog/register", body.as_bytes())
            .expect("register");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

/// One proxy of service `i`: hello, then its windows for every stats ask.
async fn proxy(channel: tonic::transport::Channel, i: usize, inbound: Arc<Vec<Window>>) {
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let hello = LiveReport {
        id: 0,
        report: Some(live_report::Report::Hello(LiveHello {
            proxy_id: format!("svc-{i}-1"),
            service: format!("svc-{i}"),
            identity: format!("spiffe://bench.local/svc/svc-{i}"),
            // It never taps (the UI bench asks only for windows).
            acknowledges_taps: false,
        })),
    };
    tx.send(hello).await.expect("hello queued");
    let mut asks = client
        .live(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("live stream")
        .into_inner();
    while let Ok(Some(ask)) = asks.message().await {
        if let Some(live_ask::Ask::Stats(s)) = ask.ask {
            let report = LiveReport {
                id: ask.id,
                report: Some(live_report::Report::Stats(StatsReport {
                    seconds: f64::from(s.seconds),
                    routes: Vec::new(),
                    edges: inbound.to_vec(),
                    inbound_connections: inbound.len() as u64,
                })),
            };
            if tx.send(report).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let edges = draw_edges(a.services, a.edges);
    let server = a.server;
    let services = a.services;
    tokio::task::spawn_blocking(move || {
        for i in 0..services {
            register(
                server,
                &format!("svc-{i}"),
                &format!("svc-{i}-1"),
                10_000 + i as u16,
            );
        }
    })
    .await
    .expect("registration");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut inbound: Vec<Vec<Window>> = vec![Vec::new(); a.services];
    for &(s, d) in &edges {
        inbound[d].push(window(&mut rng, s, d, 60));
    }
    let mut channel = None;
    for (i, windows) in inbound.into_iter().enumerate() {
        if i % 250 == 0 {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", a.server))
                .expect("endpoint");
            channel = Some(ep.connect().await.expect("connect to the server"));
        }
        let ch = channel.clone().expect("a channel");
        tokio::spawn(proxy(ch, i, Arc::new(windows)));
    }
    // Until the server holds every stream.
    let url = "/v1/stats?window=10s&local=true";
    for _ in 0..600 {
        let answer = tokio::task::spawn_blocking(move || {
            weft_testkit::mesh::http(server, "GET", url, b"").ok()
        })
        .await
        .expect("ask");
        let held = answer
            .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .and_then(|v| v["proxies"].as_array().map(Vec::len))
            .unwrap_or(0);
        if held >= a.services {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        r#"{{"event":"ready","services":{},"edges":{}}}"#,
        a.services,
        edges.len()
    );
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
}
