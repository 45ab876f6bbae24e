//! The admin listener: `/metrics`, `/ready`, `/live`, `/config`.
//!
//! It runs on its own single-threaded runtime in its own OS thread, so a scrape or a large
//! `/config` never competes with the data path's workers, and a saturated data path never
//! makes the proxy look dead to a liveness probe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::config::SnapshotHandle;
use crate::telemetry::metrics::Metrics;

/// State the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// The live configuration.
    pub snapshot: SnapshotHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False while starting and once draining.
    pub ready: AtomicBool,
    /// Where the configuration came from.
    pub source: String,
    /// Bound listener addresses, `gateway/listener` → address.
    pub listeners: std::sync::Mutex<Vec<(String, SocketAddr)>>,
    /// Why the most recent new version was refused, until a later one is applied.
    pub rejected: std::sync::Mutex<Option<Rejection>>,
}

/// A refused configuration version, shown by `/config`.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Every problem, one per line (`file:line: field: message`).
    pub reason: String,
}

/// Binds the admin address and serves it on a dedicated thread.
pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("weft-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| respond(state.clone(), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(local)
}

#[derive(Serialize)]
struct ConfigView<'a> {
    version: &'a str,
    source: &'a str,
    /// The last refused version, if the newest attempt was refused.
    last_rejected: Option<Rejection>,
    listeners: Vec<ListenerView>,
    config: &'a weft_model::Config,
}

#[derive(Serialize)]
struct ListenerView {
    name: String,
    address: String,
}

async fn respond(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let wants_openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if wants_openmetrics {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    state.metrics.encode_openmetrics(),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    state.metrics.encode(),
                )
            }
        }
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            if state.ready.load(Ordering::Relaxed) {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/config" => {
            let snap = state.snapshot.load();
            let view = ConfigView {
                version: &snap.config.version,
                source: &state.source,
                last_rejected: state
                    .rejected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                listeners: state
                    .listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(n, a)| ListenerView {
                        name: n.clone(),
                        address: a.to_string(),
                    })
                    .collect(),
                config: &snap.config,
            };
            match serde_json::to_string_pretty(&view) {
                Ok(body) => reply(StatusCode::OK, "application/json", body + "\n"),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/stats" => stats(&state, req.uri().query()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "endpoints: /metrics /ready /live /config /stats\n".into(),
        ),
    })
}

/// `GET /stats?window=10s|1m|10m` (default 1m): every route and edge with traffic in the
/// window, as JSON.
fn stats(state: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    use crate::telemetry::window::WINDOWS;
    let asked = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("window="))
        .unwrap_or("1m");
    let Some(&(_, seconds)) = WINDOWS.iter().find(|(name, _)| *name == asked) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("window `{asked}`: expected 10s, 1m or 10m\n"),
        );
    };
    let view = state.metrics.windows(std::time::Instant::now(), seconds);
    match serde_json::to_string_pretty(&view) {
        Ok(body) => reply(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
