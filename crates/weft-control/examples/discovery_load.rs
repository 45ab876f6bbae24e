//! Discovery load: N simulated proxies against a running `weft server`.
//!
//! ```text
//! cargo run --release -p weft-control --example discovery_load -- \
//!     --server https://localhost:8500 --ca-file CA.pem --token MANAGEMENT \
//!     --server-pid PID --proxies 10000 [--services N/10] \
//!     [--upstreams 3] [--writes 50] [--streams-per-connection 100]
//! ```
//!
//! The server as it runs by default: TLS (verified with `--ca-file`) and ACLs. With
//! `--token`, every simulated proxy gets a service token of its own (made with that
//! management token) and uses it as a sidecar does: to register and on its stream. An
//! `http://` server with ACLs off needs neither.
//!
//! 1. makes one token per proxy, registers one instance per proxy (service
//!    `svc-(i mod S)`, lease TTL 300 s) with it;
//! 2. opens one discovery stream per proxy, each calling `--upstreams` services, and
//!    ACKs every update at once (a real sidecar's apply time is not measured here);
//! 3. `--writes` times: registers a new instance of a random service and measures the
//!    time until the **last** proxy calling that service has received the update;
//! 4. drops every stream and reconnects them all at once (a reconnect storm), with the
//!    versions they hold, and measures the time until all are in sync again; then once
//!    more holding nothing (a cold storm: every proxy gets its whole slice);
//! 5. prints one JSON line: convergence p50/p99, storm time, server RSS and CPU seconds.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig};
use weft_api::discovery::{
    discovery_client::DiscoveryClient, proxy_message::Message, Ack, Hello, ProxyMessage,
};

struct Args {
    /// `https://HOST:PORT` or `http://HOST:PORT`.
    server: String,
    ca_pem: Option<String>,
    token: Option<String>,
    server_pid: Option<u32>,
    proxies: usize,
    services: usize,
    upstreams: usize,
    writes: usize,
    per_connection: usize,
}

fn args() -> Args {
    let mut a = Args {
        server: "https://localhost:8500".into(),
        ca_pem: None,
        token: None,
        server_pid: None,
        proxies: 1000,
        services: 0,
        upstreams: 3,
        writes: 50,
        per_connection: 100,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--server" => a.server = v.to_string(),
            "--ca-file" => a.ca_pem = Some(std::fs::read_to_string(v).expect("--ca-file")),
            "--token" => a.token = Some(v.to_string()),
            "--server-pid" => a.server_pid = Some(v.parse().expect("--server-pid")),
            "--proxies" => a.proxies = v.parse().expect("--proxies"),
            "--services" => a.services = v.parse().expect("--services"),
            "--upstreams" => a.upstreams = v.parse().expect("--upstreams"),
            "--writes" => a.writes = v.parse().expect("--writes"),
            "--streams-per-connection" => {
                a.per_connection = v.parse().expect("--streams-per-connection")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if a.services == 0 {
        a.services = (a.proxies / 10).max(1);
    }
    a
}

/// The write being measured: which service, since when, how many proxies still to hear.
struct Probe {
    id: usize,
    key: String,
    since: Instant,
    remaining: usize,
    last: Instant,
}

struct Shared {
    probe: Mutex<Option<Probe>>,
    done: Notify,
    synced: AtomicUsize,
    all_synced: Notify,
    /// Streams opened again after a refusal or a drop before their first update.
    retries: AtomicUsize,
}

/// (user CPU + system CPU seconds, RSS bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kb * 1024)
}

/// The control plane's REST API over one keep-alive HTTP/1.1 connection (TLS verified
/// with the CA when the server is `https://`).
struct Api {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// Where the server is: (`HOST:PORT`, TLS client config when `https://`).
fn target(a: &Args) -> (String, Option<Arc<ClientConfig>>) {
    match a.server.strip_prefix("https://") {
        Some(host) => {
            let pem = a
                .ca_pem
                .as_deref()
                .expect("an https:// server needs --ca-file");
            let tls = weft_tls::client_config_pem(pem, "--ca-file", &[weft_tls::ALPN_HTTP11])
                .expect("--ca-file");
            (host.trim_end_matches('/').to_string(), Some(tls))
        }
        None => (
            a.server
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            None,
        ),
    }
}

impl Api {
    async fn open(host: &str, tls: Option<Arc<ClientConfig>>) -> Api {
        let tcp = tokio::net::TcpStream::connect(host)
            .await
            .expect("connect to the server");
        let _ = tcp.set_nodelay(true);
        let send = match tls {
            None => handshake(tcp).await,
            Some(config) => {
                let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let name = ServerName::try_from(name.to_string()).expect("server name");
                let io = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .expect("TLS to the server");
                handshake(io).await
            }
        };
        Api {
            send,
            host: host.to_string(),
        }
    }

    /// `POST PATH` with a JSON body and `token`: the answer's body; panics on any other
    /// status than 200 (a load run that half works measures nothing).
    async fn post(&mut self, path: &str, body: String, token: Option<&str>) -> serde_json::Value {
        self.send.ready().await.expect("server connection");
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header("x-weft-token", t);
        }
        let resp = self
            .send
            .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
            .await
            .expect("server answer");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap_or_default()
    }
}

async fn handshake<I>(io: I) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .expect("HTTP/1.1 to the server");
    tokio::spawn(conn);
    send
}

/// Registers `id` of `service`, as its sidecar would: with the proxy's own token.
async fn register(api: &mut Api, service: &str, id: &str, port: u16, token: Option<&str>) {
    let body = format!(
        r#"{{"service":"{service}","id":"{id}","address":"10.0.0.1","port":{port},"ttl":"300s","health":"passing"}}"#
    );
    api.post("/v1/catalog/register", body, token).await;
}

/// One item of the set-up: proxy `i` of `service` listening on `port` (made its token,
/// when ACLs are on, then registered).
struct Item {
    i: usize,
    service: String,
    port: u16,
}

/// Tokens (one per proxy, when a management token is given) and registrations, 32 at a
/// time over keep-alive connections. Returns each proxy's token.
async fn set_up(a: &Args, items: Vec<Item>) -> Vec<Option<String>> {
    let (host, tls) = target(a);
    let n = items.len();
    let queue = Arc::new(Mutex::new(items));
    let tokens = Arc::new(Mutex::new(vec![None; n]));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (queue, tokens, host, tls) =
                (queue.clone(), tokens.clone(), host.clone(), tls.clone());
            let management = a.token.clone();
            tokio::spawn(async move {
                let mut api = Api::open(&host, tls).await;
                loop {
                    let next = queue.lock().expect("queue").pop();
                    let Some(item) = next else { return };
                    let token = match &management {
                        None => None,
                        Some(m) => {
                            let body = format!(r#"{{"service":"{}"}}"#, item.service);
                            let made = api.post("/v1/acl/tokens", body, Some(m)).await;
                            Some(made["secretId"].as_str().expect("secretId").to_string())
                        }
                    };
                    let id = format!("i-{}", item.i);
                    register(&mut api, &item.service, &id, item.port, token.as_deref()).await;
                    tokens.lock().expect("tokens")[item.i] = token;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("set-up worker");
    }
    let mut tokens = tokens.lock().expect("tokens");
    std::mem::take(&mut *tokens)
}

/// One simulated proxy: as a sidecar does, it opens its stream again (after a short,
/// jittered pause) when the server refuses or drops it before the first update.
async fn proxy(
    channel: tonic::transport::Channel,
    i: usize,
    me: Arc<Planned>,
    known: Arc<Mutex<HashMap<String, u64>>>,
    shared: Arc<Shared>,
) {
    loop {
        if session(channel.clone(), i, &me, &known, &shared).await {
            return;
        }
        shared.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(..800))).await;
    }
}

/// One stream: hello, then ACK every update, noting probe keys. Whether it was ever in
/// sync (got its first update).
async fn session(
    channel: tonic::transport::Channel,
    i: usize,
    me: &Planned,
    known: &Mutex<HashMap<String, u64>>,
    shared: &Shared,
) -> bool {
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        proxy_id: format!("load-{i}"),
        service: me.service.clone(),
        upstreams: me.upstreams.clone(),
        known: known.lock().expect("known").clone(),
        build: "discovery_load".into(),
    };
    let _ = tx
        .send(ProxyMessage {
            message: Some(Message::Hello(hello)),
        })
        .await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = me.token.as_deref().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("x-weft-token", t);
    }
    let Ok(resp) = client.stream(request).await else {
        return false;
    };
    let mut updates = resp.into_inner();
    let mut first = true;
    let mut seen_probe = usize::MAX;
    while let Ok(Some(u)) = updates.message().await {
        let now = Instant::now();
        {
            let mut k = known.lock().expect("known");
            for r in &u.removes {
                k.remove(r);
            }
            for r in &u.upserts {
                k.insert(r.key.clone(), r.version);
            }
        }
        if first {
            first = false;
            shared.synced.fetch_add(1, Ordering::SeqCst);
            shared.all_synced.notify_waiters();
        }
        {
            let mut probe = shared.probe.lock().expect("probe");
            if let Some(p) = probe.as_mut() {
                if p.id != seen_probe && u.upserts.iter().any(|r| r.key == p.key) {
                    seen_probe = p.id;
                    p.remaining -= 1;
                    p.last = now;
                    if p.remaining == 0 {
                        shared.done.notify_waiters();
                    }
                }
            }
        }
        let ack = ProxyMessage {
            message: Some(Message::Ack(Ack {
                version: u.version,
                error: String::new(),
            })),
        };
        if tx.send(ack).await.is_err() {
            return !first;
        }
    }
    !first
}

struct Fleet {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What each simulated proxy is: its service, the services it calls, its token.
struct Planned {
    service: String,
    upstreams: Vec<String>,
    token: Option<String>,
}

async fn open_fleet(
    a: &Args,
    plan: &[Arc<Planned>],
    known: &[Arc<Mutex<HashMap<String, u64>>>],
    shared: &Arc<Shared>,
) -> Fleet {
    let mut tasks = Vec::new();
    let mut channel = None;
    for (i, p) in plan.iter().enumerate() {
        if i % a.per_connection == 0 {
            let mut ep = tonic::transport::Endpoint::from_shared(a.server.clone()).expect("url");
            if let Some(pem) = &a.ca_pem {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem));
                ep = ep.tls_config(tls).expect("TLS settings");
            }
            channel = Some(ep.connect().await.expect("connect to the server"));
        }
        tasks.push(tokio::spawn(proxy(
            channel.clone().expect("channel"),
            i,
            p.clone(),
            known[i].clone(),
            shared.clone(),
        )));
    }
    Fleet { tasks }
}

impl Fleet {
    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Drops every stream of `fleet`, then reconnects all at once; seconds until all are in
/// sync, and the new fleet.
async fn storm(
    a: &Args,
    plan: &[Arc<Planned>],
    known: &[Arc<Mutex<HashMap<String, u64>>>],
    shared: &Arc<Shared>,
    fleet: Fleet,
) -> (f64, Fleet) {
    fleet.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.synced.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let fleet = open_fleet(a, plan, known, shared).await;
    wait_synced(shared, a.proxies).await;
    (t.elapsed().as_secs_f64(), fleet)
}

async fn wait_synced(shared: &Shared, n: usize) {
    let since = Instant::now();
    loop {
        let notified = shared.all_synced.notified();
        let synced = shared.synced.load(Ordering::SeqCst);
        if synced >= n {
            return;
        }
        if since.elapsed() > Duration::from_secs(600) {
            panic!(
                "only {synced} of {n} proxies in sync after 600 s ({} streams reopened)",
                shared.retries.load(Ordering::Relaxed)
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut rng = fastrand::Rng::with_seed(7);
    let services: Vec<String> = (0..a.services).map(|s| format!("svc-{s}")).collect();
    // 1. One instance per proxy.
    let t = Instant::now();
    let items = (0..a.proxies)
        .map(|i| Item {
            i,
            service: services[i % a.services].clone(),
            port: 10_000 + (i % 50_000) as u16,
        })
        .collect();
    let mut tokens = set_up(&a, items).await;
    let registration_s = t.elapsed().as_secs_f64();

    // 2. Streams.
    let plan: Vec<Arc<Planned>> = (0..a.proxies)
        .map(|i| {
            Arc::new(Planned {
                service: services[i % a.services].clone(),
                upstreams: (0..a.upstreams)
                    .map(|_| services[rng.usize(..a.services)].clone())
                    .collect(),
                token: tokens[i].take(),
            })
        })
        .collect();
    let mut callers: HashMap<&str, usize> = HashMap::new();
    for p in &plan {
        let mut ups = p.upstreams.clone();
        ups.sort();
        ups.dedup();
        for u in ups {
            *callers
                .entry(services.iter().find(|s| **s == u).expect("service"))
                .or_default() += 1;
        }
    }
    let known: Vec<_> = (0..a.proxies)
        .map(|_| Arc::new(Mutex::new(HashMap::new())))
        .collect();
    let shared = Arc::new(Shared {
        probe: Mutex::new(None),
        done: Notify::new(),
        synced: AtomicUsize::new(0),
        all_synced: Notify::new(),
        retries: AtomicUsize::new(0),
    });
    let (cpu0, _) = a.server_pid.map_or((0.0, 0), usage);
    let t = Instant::now();
    let fleet = open_fleet(&a, &plan, &known, &shared).await;
    wait_synced(&shared, a.proxies).await;
    let initial_sync_s = t.elapsed().as_secs_f64();

    // 3. Writes: a new instance of a service some proxies call.
    let called: Vec<&str> = callers.keys().copied().collect();
    let mut latencies = Vec::new();
    let mut api = {
        let (host, tls) = target(&a);
        Api::open(&host, tls).await
    };
    for w in 0..a.writes {
        let svc = called[rng.usize(..called.len())].to_string();
        let expected = callers[svc.as_str()];
        let since = Instant::now();
        *shared.probe.lock().expect("probe") = Some(Probe {
            id: w,
            key: format!("Endpoints/{svc}"),
            since,
            remaining: expected,
            last: since,
        });
        register(&mut api, &svc, &format!("w-{w}"), 9000, a.token.as_deref()).await;
        loop {
            let notified = shared.done.notified();
            let finished = shared
                .probe
                .lock()
                .expect("probe")
                .as_ref()
                .map(|p| (p.remaining == 0).then(|| p.last.duration_since(p.since)));
            if let Some(Some(d)) = finished {
                latencies.push(d.as_secs_f64() * 1000.0);
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
            if since.elapsed() > Duration::from_secs(60) {
                panic!("write {w}: not every caller of {svc} heard of it within 60 s");
            }
        }
    }
    latencies.sort_by(|x, y| x.total_cmp(y));
    let (cpu1, rss_steady) = a.server_pid.map_or((0.0, 0), usage);

    // 4. Reconnect storm: every stream dropped, all reconnect at once.
    let (storm_s, fleet) = storm(&a, &plan, &known, &shared, fleet).await;
    let (cpu2, rss_after) = a.server_pid.map_or((0.0, 0), usage);
    // 5. A cold storm: all reconnect holding nothing (e.g. every sidecar restarted).
    for k in &known {
        k.lock().expect("known").clear();
    }
    let (cold_s, fleet) = storm(&a, &plan, &known, &shared, fleet).await;
    let (cpu3, _) = a.server_pid.map_or((0.0, 0), usage);
    fleet.stop();
    println!(
        "{}",
        serde_json::json!({
            "proxies": a.proxies,
            "instances": a.proxies + a.writes,
            "services": a.services,
            "upstreams_per_proxy": a.upstreams,
            "registration_s": registration_s,
            "initial_sync_s": initial_sync_s,
            "writes": a.writes,
            "convergence_ms_p50": percentile(&latencies, 0.50),
            "convergence_ms_p99": percentile(&latencies, 0.99),
            "convergence_ms_max": latencies.last().copied().unwrap_or(0.0),
            "storm_resync_s": storm_s,
            "stream_retries": shared.retries.load(Ordering::Relaxed),
            "cold_storm_s": cold_s,
            "server_cpu_s_cold_storm": cpu3 - cpu2,
            "server_rss_mb": rss_steady as f64 / 1e6,
            "server_rss_after_storm_mb": rss_after as f64 / 1e6,
            "server_cpu_s_sync_and_writes": cpu1 - cpu0,
            "server_cpu_s_storm": cpu2 - cpu1,
        })
    );
}
