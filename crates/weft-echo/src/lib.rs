//! `weft echo`: a small sample backend for demos and tests, in the spirit of httpbin.
//!
//! Speaks HTTP/1.1 and HTTP/2 (prior knowledge) on one port. Every response carries
//! `x-echo-name` with the instance's name, so load balancing is visible from the client.
//!
//! | path | answer |
//! | --- | --- |
//! | `/status/{code}` | that status |
//! | `/delay/{ms}` | waits (at most 60 s), then echoes |
//! | `/bytes/{n}` | `n` bytes (at most 64 MiB) |
//! | `/headers` | the request headers as JSON |
//! | `/_echo/stats` | `{"requests": n, "failed": f, "max_waiting": w, "mean_waiting": m}`: requests so far (this one excluded), those answered 503 on purpose, and the most that ever waited for a slot under `--max-concurrency` and how many an arriving request found waiting on average (`/_echo/reset` starts both over) |
//! | anything else | the request as JSON: name, method, authority, path, query, version, headers, body size, client |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

/// Longest `/delay`.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// How long `--call` waits for its callee's whole answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/bytes`.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Largest request body read for echoing.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// How an echo instance behaves.
#[derive(Debug, Clone, Default)]
pub struct EchoOptions {
    /// Reported in `x-echo-name` and echoed bodies.
    pub name: String,
    /// Added before every response (to make one instance slow on purpose).
    pub delay: Duration,
    /// Fraction of requests answered 503 (0.0–1.0), spread evenly: with 0.3, exactly 3 of
    /// every 10 requests fail (to play a flaky instance).
    pub fail_rate: f64,
    /// Requests served at once at most (0: unlimited); the rest wait their turn, so latency
    /// grows with load as in a real service at capacity.
    pub max_concurrency: usize,
    /// Answer every request 503 for this long after start, then recover (an outage).
    pub fail_for: Duration,
    /// Call this URL (`http://HOST:PORT/PATH`) for every echoed request before answering,
    /// passing on the trace headers (W3C, B3) and `x-request-id` the way an instrumented
    /// app does: a service with a dependency, for tracing demos and tests. The callee's
    /// answer shows in `x-echo-called` (its name) and `x-echo-called-status`; a failed
    /// call is answered 502.
    pub call: Option<String>,
}

/// The headers an app passes on to the calls it makes for a request.
const PROPAGATED: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
];

/// GETs `url` with the propagated headers of `incoming`: (status, callee's name).
async fn call(url: &str, incoming: &http::HeaderMap) -> Result<(StatusCode, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (host, port) = (
        uri.host().unwrap_or("127.0.0.1"),
        uri.port_u16().unwrap_or(80),
    );
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, uri.authority().map_or(host, |a| a.as_str()));
    for name in PROPAGATED {
        for v in incoming.get_all(name) {
            req = req.header(name, v);
        }
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let name = resp
        .headers()
        .get("x-echo-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok((status, name))
}

/// Counters shared by one instance's connections.
#[derive(Debug, Default)]
struct State {
    requests: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    started: Option<std::time::Instant>,
    waiting: std::sync::atomic::AtomicU64,
    max_waiting: std::sync::atomic::AtomicU64,
    /// Requests that asked for a slot, and the sum of how many were waiting as each did.
    arrivals: std::sync::atomic::AtomicU64,
    waiting_sum: std::sync::atomic::AtomicU64,
    slots: Option<tokio::sync::Semaphore>,
}

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, opts: EchoOptions, shutdown: impl Future<Output = ()>) {
    let opts = Arc::new(opts);
    let state = Arc::new(State {
        slots: (opts.max_concurrency > 0)
            .then(|| tokio::sync::Semaphore::new(opts.max_concurrency)),
        started: Some(std::time::Instant::now()),
        ..State::default()
    });
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let opts = opts.clone();
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| respond(opts.clone(), state.clone(), client, req));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[derive(Serialize)]
struct Echo<'a> {
    name: &'a str,
    method: &'a str,
    /// The URI authority (HTTP/2 `:authority`, absolute-form) or else the Host header.
    authority: String,
    path: &'a str,
    query: &'a str,
    version: String,
    headers: BTreeMap<String, String>,
    body_bytes: usize,
    client: String,
}

async fn respond(
    opts: Arc<EchoOptions>,
    state: Arc<State>,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    use std::sync::atomic::Ordering;
    if req.uri().path() == "/_echo/stats" {
        let n = state.requests.load(Ordering::Relaxed);
        let peak = state.max_waiting.load(Ordering::Relaxed);
        let failed = state.failed.load(Ordering::Relaxed);
        let arrivals = state.arrivals.load(Ordering::Relaxed);
        let mean = state.waiting_sum.load(Ordering::Relaxed) as f64 / arrivals.max(1) as f64;
        return Ok(json(&serde_json::json!({
            "requests": n, "failed": failed, "max_waiting": peak, "mean_waiting": mean,
        })));
    }
    if req.uri().path() == "/_echo/reset" {
        state.max_waiting.store(0, Ordering::Relaxed);
        state.arrivals.store(0, Ordering::Relaxed);
        state.waiting_sum.store(0, Ordering::Relaxed);
        return Ok(json(&serde_json::json!({ "reset": true })));
    }
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let _slot = match &state.slots {
        Some(slots) => {
            let waiting = state.waiting.fetch_add(1, Ordering::Relaxed) + 1;
            state.max_waiting.fetch_max(waiting, Ordering::Relaxed);
            state.arrivals.fetch_add(1, Ordering::Relaxed);
            state.waiting_sum.fetch_add(waiting, Ordering::Relaxed);
            let slot = slots.acquire().await.ok();
            state.waiting.fetch_sub(1, Ordering::Relaxed);
            slot
        }
        None => None,
    };
    if !opts.delay.is_zero() {
        tokio::time::sleep(opts.delay).await;
    }
    let name = &opts.name;
    // Request n fails when the running count of failures due steps up at it.
    let failures_due = |k: u64| (k as f64 * opts.fail_rate).floor();
    let in_outage = state.started.is_some_and(|t| t.elapsed() < opts.fail_for);
    if in_outage || (opts.fail_rate > 0.0 && failures_due(n + 1) > failures_due(n)) {
        state.failed.fetch_add(1, Ordering::Relaxed);
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "echo: failing on purpose\n",
        );
        if let Ok(v) = HeaderValue::from_str(name) {
            r.headers_mut().insert("x-echo-name", v);
        }
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or("");
    let arg = segments.next();
    let mut resp = match (first, arg) {
        ("status", Some(code)) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => {
                let mut r = json(&serde_json::json!({ "status": status.as_u16(), "name": name }));
                *r.status_mut() = status;
                r
            }
            None => text(StatusCode::BAD_REQUEST, "status must be 100-999\n"),
        },
        ("delay", Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await;
                echo(name, client, req).await
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "delay must be milliseconds\n"),
        },
        ("bytes", Some(n)) => match n.parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => {
                let mut r = Response::new(Full::new(Bytes::from(vec![b'x'; n])));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            _ => text(StatusCode::BAD_REQUEST, "bytes must be at most 67108864\n"),
        },
        ("headers", None) => json(&serde_json::json!({ "headers": header_map(&req) })),
        _ => match &opts.call {
            None => echo(name, client, req).await,
            Some(url) => match tokio::time::timeout(CALL_TIMEOUT, call(url, req.headers()))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
            {
                Ok((status, callee)) if !status.is_server_error() => {
                    let mut r = echo(name, client, req).await;
                    if let Ok(v) = HeaderValue::from_str(&callee) {
                        r.headers_mut().insert("x-echo-called", v);
                    }
                    r.headers_mut()
                        .insert("x-echo-called-status", HeaderValue::from(status.as_u16()));
                    r
                }
                Ok((status, _)) => {
                    let mut r = text(StatusCode::BAD_GATEWAY, "echo: the call failed\n");
                    r.headers_mut()
                        .insert("x-echo-called-status", HeaderValue::from(status.as_u16()));
                    r
                }
                Err(_) => text(StatusCode::BAD_GATEWAY, "echo: the call failed\n"),
            },
        },
    };
    if let Ok(v) = HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-echo-name", v);
    }
    Ok(resp)
}

fn header_map<B>(req: &Request<B>) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        m.entry(k.as_str().to_string())
            .and_modify(|prev| {
                prev.push_str(", ");
                prev.push_str(&v);
            })
            .or_insert(v);
    }
    m
}

async fn echo(name: &str, client: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body_bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
    };
    let req = Request::from_parts(parts, ());
    json(&Echo {
        name,
        method: req.method().as_str(),
        authority: req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        version: format!("{:?}", req.version()),
        headers: header_map(&req),
        body_bytes,
        client: client.to_string(),
    })
}

fn json<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
