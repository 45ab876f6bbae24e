//! The live stream, proxy side: beside the discovery stream, the proxy opens `Live` to a
//! control-plane server and answers what it asks — its rolling windows (`weft stat`,
//! `edges`) and taps (`weft tap`, `top`) — for as long as the stream lasts. Taps end with
//! the stream: the server opens them again on the next stream (a restarted sidecar is
//! tapped again as soon as it reconnects). Every tap ask is answered (`TapStarted`): tapping
//! from now on, or refused and why.
//!
//! Nothing here is on the request path: a stats answer reads the windows; a tap's events
//! come from the bounded queue [`crate::telemetry::tap`] fills.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use weft_api::discovery::{
    discovery_client::DiscoveryClient, live_ask::Ask, live_report::Report, Header, LiveAsk,
    LiveHello, LiveReport, StatsReport, TapAsk, TapEvent, TapStarted, Window,
};

use super::discovery::{backoff, connect};
use crate::proxy::RunningProxy;
use crate::telemetry::tap::{self, Filter, TapSpec};
use crate::telemetry::window::{Totals, SLOTS, SLOT_SECS};

/// Reports queued for the server before the proxy waits (stats answers and tap events
/// share it; each tap has its own bounded queue before this one).
const OUTBOX: usize = 256;

/// Who this proxy is on the live stream.
#[derive(Debug, Clone)]
pub struct LiveWho {
    /// The discovery stream's proxy id.
    pub proxy_id: String,
    /// Its service.
    pub service: String,
    /// Its SPIFFE ID.
    pub identity: String,
    /// The inbound listener (`gateway/listener`) whose open connections are reported.
    pub inbound: String,
}

/// Keeps a live stream open to one of `servers` for ever.
pub async fn follow(servers: &[String], who: &LiveWho, proxy: &RunningProxy) {
    let taps = proxy.taps();
    taps.set_own(tap::Own {
        service: who.service.clone(),
        identity: who.identity.clone(),
    });
    let mut failures: u32 = 0;
    for server in servers.iter().cycle() {
        let outcome = session(server, who, proxy).await;
        taps.close_all();
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                tracing::debug!(%server, error = %e, "live stream lost");
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep(backoff(failures.max(1))).await;
    }
}

async fn session(server: &str, who: &LiveWho, proxy: &RunningProxy) -> Result<(), String> {
    let channel = connect(server).await?;
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(OUTBOX);
    let hello = LiveReport {
        id: 0,
        report: Some(Report::Hello(LiveHello {
            proxy_id: who.proxy_id.clone(),
            service: who.service.clone(),
            identity: who.identity.clone(),
            acknowledges_taps: true,
        })),
    };
    let _ = tx.send(hello).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = super::control_api::token().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("x-weft-token", t);
    }
    let mut asks = client
        .live(request)
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    tracing::debug!(%server, "live stream open");
    // The forwarders of open taps, by ask id: dropped (aborted) when the tap stops.
    let mut forwarders: std::collections::HashMap<u64, tokio::task::JoinHandle<()>> =
        Default::default();
    let result = loop {
        let ask = match asks.next().await {
            Some(Ok(ask)) => ask,
            Some(Err(e)) => break Err(e.message().to_string()),
            None => break Ok(()),
        };
        let LiveAsk { id, ask } = ask;
        match ask {
            Some(Ask::Stats(s)) => {
                let report = stats(proxy, &who.inbound, u64::from(s.seconds));
                let answer = LiveReport {
                    id,
                    report: Some(Report::Stats(report)),
                };
                if tx.send(answer).await.is_err() {
                    break Err("stream closed".into());
                }
            }
            Some(Ask::Tap(t)) => {
                // The answer goes out before any of the tap's events (one queue): the
                // server tells its client "tapping" only once the proxy does.
                let (started, events) = match proxy.taps().open(id, spec_of(t)) {
                    Ok(events) => (TapStarted::default(), Some(events)),
                    Err(e) => {
                        tracing::warn!(tap = id, error = %e, "tap refused");
                        let refused = e.to_string();
                        (TapStarted { refused }, None)
                    }
                };
                let answer = LiveReport {
                    id,
                    report: Some(Report::TapStarted(started)),
                };
                if tx.send(answer).await.is_err() {
                    proxy.taps().close(id);
                    break Err("stream closed".into());
                }
                if let Some(events) = events {
                    forwarders.insert(id, tokio::spawn(forward(id, events, tx.clone())));
                }
            }
            Some(Ask::StopTap(tap)) => {
                proxy.taps().close(tap);
                if let Some(f) = forwarders.remove(&tap) {
                    f.abort();
                }
            }
            None => {}
        }
    };
    for (_, f) in forwarders {
        f.abort();
    }
    result
}

fn spec_of(t: TapAsk) -> TapSpec {
    TapSpec {
        filter: Filter {
            path_prefix: t.path_prefix,
            method: t.method,
            authority: t.authority,
            to: t.to,
            from: t.from,
        },
        redact: t.redact,
        body_bytes: t.body_bytes as usize,
        max_rps: t.max_rps,
    }
}

/// Sends tap `id`'s events to the server until either side ends.
async fn forward(id: u64, mut events: mpsc::Receiver<tap::Event>, tx: mpsc::Sender<LiveReport>) {
    while let Some(e) = events.recv().await {
        let headers = |h: Vec<(String, String)>| {
            h.into_iter()
                .map(|(name, value)| Header { name, value })
                .collect()
        };
        let event = TapEvent {
            direction: e.direction.to_string(),
            method: e.method,
            authority: e.authority,
            path: e.path,
            status: u32::from(e.status),
            grpc_status: e.grpc_status.map_or(-1, |s| s as i32),
            error: e.error.unwrap_or_default().to_string(),
            started_ms: e.started_ms,
            latency_us: e.latency.as_micros() as u64,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            source: e.source,
            destination: e.destination,
            source_identity: e.source_identity,
            destination_identity: e.destination_identity,
            trace_id: e.trace_id,
            route: e.route,
            request_headers: headers(e.request_headers),
            response_headers: headers(e.response_headers),
            request_body: e.request_body.to_vec(),
            request_body_truncated: e.request_body_truncated,
            response_body: e.response_body.to_vec(),
            response_body_truncated: e.response_body_truncated,
            dropped: e.dropped,
        };
        let report = LiveReport {
            id,
            report: Some(Report::Tap(event)),
        };
        if tx.send(report).await.is_err() {
            return;
        }
    }
}

/// The proxy's windows over the last `seconds` (clamped to what the ring holds).
fn stats(proxy: &RunningProxy, inbound: &str, seconds: u64) -> StatsReport {
    let seconds = seconds.clamp(SLOT_SECS, SLOTS as u64 * SLOT_SECS);
    let metrics = proxy.metrics();
    let (routes, edges) = metrics.totals(Instant::now(), seconds);
    let mut covered = 0.0f64;
    let mut window = |t: &Totals| {
        covered = covered.max(t.seconds);
        Window {
            requests: t.requests,
            successes: t.successes,
            latency: t.latency.to_sparse(),
            tcp_connections: t.tcp_connections,
            tcp_failures: t.tcp_failures,
            tcp_bytes: t.tcp_bytes,
            ..Window::default()
        }
    };
    let routes = routes
        .iter()
        .map(|((listener, route, service), t)| Window {
            listener: listener.clone(),
            route: route.clone(),
            service: service.clone(),
            ..window(t)
        })
        .collect();
    let edges = edges
        .iter()
        .map(|((direction, source, destination), t)| Window {
            direction: direction.as_str().to_string(),
            source: source.clone(),
            destination: destination.clone(),
            ..window(t)
        })
        .collect();
    StatsReport {
        seconds: covered,
        routes,
        edges,
        inbound_connections: metrics.open_connections(inbound).max(0) as u64,
    }
}
