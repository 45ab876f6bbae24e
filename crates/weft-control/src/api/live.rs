//! `/v1/stats` and `/v1/tap/{service}`: the live views, answered by the proxies.
//!
//! `GET /v1/stats` asks every proxy held by this replica (and, unless `local`, every peer
//! replica for its own) for its windows, then merges them: per service (its instances'
//! inbound traffic), per edge (caller → callee, from the callee's side when the callee
//! reported it, else from the caller's) and per route. Latency quantiles come from the
//! instances' sketches added together, so they are the service's quantiles, within the
//! sketch's 1/16, not an average of the instances'.
//!
//! `GET /v1/tap/{service}` streams the service's proxies' live requests as server-sent
//! events until the client goes.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::{
    body::Body,
    extract::{Path, State as AxState},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weft_api::discovery::{StatsReport, TapAsk, TapEvent, Window};
use weft_api::sketch::Sketch;

use super::context::{Api, ApiResult};
use super::query::Params;
use crate::{
    acl::{Access, Caller, Need},
    error::ApiError,
    live::{ProxyStats, TapMessage},
    peers,
};

/// The live routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/tap/{service}", get(tap))
}

/// The windows a caller may ask for.
const WINDOWS: [(&str, u32); 3] = [("10s", 10), ("1m", 60), ("10m", 600)];
/// Largest response body capture a tap may ask for, per event.
const MAX_TAP_BODY: u32 = 64 * 1024;
/// Extra header names a tap may ask to redact.
const MAX_REDACT: usize = 32;

/// The window asked for: its name as peers are asked with it, and its seconds.
pub(super) fn window(p: &Params) -> Result<(String, u32), ApiError> {
    let w = p.window.as_deref().unwrap_or("1m");
    if let Some((n, secs)) = WINDOWS.into_iter().find(|(n, _)| *n == w) {
        return Ok((n.to_string(), secs));
    }
    // Any whole number of seconds the proxies keep (a canary's interval).
    match w.strip_suffix('s').and_then(|n| n.parse::<u32>().ok()) {
        Some(secs) if (1..=600).contains(&secs) && !w.starts_with('0') => Ok((w.to_string(), secs)),
        _ => Err(ApiError::bad_request(
            "invalid-query",
            format!("window `{w}`: expected 10s, 1m, 10m, or 1s to 600s"),
        )),
    }
}

/// What the proxies `ids` received over the last `seconds` (their inbound edges, from
/// every caller): requests, successes, p99 in ms. A blue/green canary's green instances
/// receive only mirrored copies, so this is how they are judged.
pub(super) async fn received_totals(
    api: &Api,
    seconds: u32,
    ids: &std::collections::BTreeSet<String>,
    headers: &HeaderMap,
) -> Result<(u64, u64, Option<f64>), ApiError> {
    let g = gather(api, &format!("{seconds}s"), seconds, headers, false).await?;
    let mut sum = Sum::default();
    for x in g.proxies.iter().filter(|x| ids.contains(&x.proxy_id)) {
        for e in x.edges.iter().filter(|e| e.direction == "inbound") {
            sum.add(e);
        }
    }
    Ok(sum.totals())
}

/// One backend's traffic over the last `seconds`, as every proxy that sends to it saw it
/// (their route windows for that backend, e.g. `payments#canary`): requests, successes,
/// p99 in ms. What a canary's analysis judges.
pub(super) async fn backend_totals(
    api: &Api,
    seconds: u32,
    backend: &str,
    headers: &HeaderMap,
) -> Result<(u64, u64, Option<f64>), ApiError> {
    let g = gather(api, &format!("{seconds}s"), seconds, headers, false).await?;
    let mut sum = Sum::default();
    for x in &g.proxies {
        for r in x.routes.iter().filter(|r| r.service == backend) {
            sum.add(r);
        }
    }
    Ok(sum.totals())
}

/// One proxy's answer as replicas pass it to each other (sketches sparse).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawProxy {
    proxy_id: String,
    service: String,
    identity: String,
    seconds: f64,
    inbound_connections: u64,
    routes: Vec<RawWindow>,
    edges: Vec<RawWindow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawWindow {
    listener: String,
    route: String,
    service: String,
    direction: String,
    source: String,
    destination: String,
    requests: u64,
    successes: u64,
    latency: Vec<u32>,
    tcp_connections: u64,
    tcp_failures: u64,
    tcp_bytes: u64,
}

impl From<&Window> for RawWindow {
    fn from(w: &Window) -> RawWindow {
        RawWindow {
            listener: w.listener.clone(),
            route: w.route.clone(),
            service: w.service.clone(),
            direction: w.direction.clone(),
            source: w.source.clone(),
            destination: w.destination.clone(),
            requests: w.requests,
            successes: w.successes,
            latency: w.latency.clone(),
            tcp_connections: w.tcp_connections,
            tcp_failures: w.tcp_failures,
            tcp_bytes: w.tcp_bytes,
        }
    }
}

impl RawProxy {
    fn of(p: &ProxyStats) -> RawProxy {
        let StatsReport {
            seconds,
            routes,
            edges,
            inbound_connections,
        } = &p.report;
        RawProxy {
            proxy_id: p.proxy_id.clone(),
            service: p.service.clone(),
            identity: p.identity.clone(),
            seconds: *seconds,
            inbound_connections: *inbound_connections,
            routes: routes.iter().map(RawWindow::from).collect(),
            edges: edges.iter().map(RawWindow::from).collect(),
        }
    }
}

/// Sums of several windows.
#[derive(Default)]
struct Sum {
    requests: u64,
    successes: u64,
    latency: Sketch,
    tcp_connections: u64,
    tcp_failures: u64,
    tcp_bytes: u64,
}

impl Sum {
    /// Requests, successes and p99 in ms.
    fn totals(&self) -> (u64, u64, Option<f64>) {
        let p99 = self
            .latency
            .quantile(0.99)
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        (self.requests, self.successes, p99)
    }

    fn add(&mut self, w: &RawWindow) {
        self.requests += w.requests;
        self.successes += w.successes;
        self.latency.add_sparse(&w.latency);
        self.tcp_connections += w.tcp_connections;
        self.tcp_failures += w.tcp_failures;
        self.tcp_bytes += w.tcp_bytes;
    }

    /// The JSON fields every row shares.
    fn json(&self, seconds: f64) -> Value {
        let ms = |q| {
            self.latency
                .quantile(q)
                .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
        };
        let rate = (self.requests > 0).then(|| self.successes as f64 / self.requests as f64);
        json!({
            "requests": self.requests,
            "successes": self.successes,
            "successRate": rate,
            "rps": if seconds > 0.0 { self.requests as f64 / seconds } else { 0.0 },
            "p50Ms": ms(0.5),
            "p95Ms": ms(0.95),
            "p99Ms": ms(0.99),
            "tcpConnectionsClosed": self.tcp_connections,
            "tcpFailures": self.tcp_failures,
            "tcpBytes": self.tcp_bytes,
        })
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://TD/...`).
fn trust_domain(identity: &str) -> Option<&str> {
    identity.strip_prefix("spiffe://")?.split('/').next()
}

/// Services, edges and routes from the proxies' answers.
/// `only`: one service's rows (and the edges touching it); `from`: traffic from one caller.
pub(super) fn summarise(
    proxies: &[RawProxy],
    seconds: f64,
    only: Option<&str>,
    from: Option<&str>,
    catalog: &BTreeMap<String, (usize, usize)>,
) -> Value {
    let td = proxies.iter().find_map(|x| trust_domain(&x.identity));
    let identity = |svc: &str| match (td, svc) {
        (_, crate::live::UNKNOWN_SOURCE) | (None, _) => Value::Null,
        (Some(td), s) => json!(weft_tls::spiffe::service_id(td, s)),
    };
    // Services: each instance's inbound traffic (from `from` only, when given).
    let mut services: BTreeMap<&str, (Sum, u64, u64)> = BTreeMap::new();
    for name in catalog.keys() {
        services.entry(name.as_str()).or_default();
    }
    for x in proxies {
        let entry = services.entry(x.service.as_str()).or_default();
        entry.1 += 1;
        entry.2 += x.inbound_connections;
        for e in x.edges.iter().filter(|e| {
            e.direction == "inbound"
                && e.destination == x.service
                && from.is_none_or(|f| f == e.source)
        }) {
            entry.0.add(e);
        }
    }
    let services: Vec<Value> = services
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == **name))
        .map(|(name, (sum, meshed, open))| {
            let (instances, healthy) = catalog.get(*name).copied().unwrap_or_default();
            let mut v = json!({
                "service": name,
                "instances": instances,
                "healthy": healthy,
                "meshed": meshed,
                "tcpConnectionsOpen": open,
            });
            merge(&mut v, sum.json(seconds));
            v
        })
        .collect();
    // Edges: the callee's view where it reported one (it saw the caller's identity),
    // else the caller's.
    let mut inbound: BTreeMap<(&str, &str), Sum> = BTreeMap::new();
    let mut outbound: BTreeMap<(&str, &str), Sum> = BTreeMap::new();
    for x in proxies {
        for e in &x.edges {
            let side = if e.direction == "inbound" {
                &mut inbound
            } else {
                &mut outbound
            };
            side.entry((e.source.as_str(), e.destination.as_str()))
                .or_default()
                .add(e);
        }
    }
    let mut edges = Vec::new();
    let keys: std::collections::BTreeSet<(&str, &str)> =
        inbound.keys().chain(outbound.keys()).copied().collect();
    for (src, dst) in keys {
        if only.is_some_and(|o| o != src && o != dst) || from.is_some_and(|f| f != src) {
            continue;
        }
        let (sum, seen_by, mtls) = match inbound.get(&(src, dst)) {
            Some(s) => (s, "destination", json!(src != crate::live::UNKNOWN_SOURCE)),
            None => (&outbound[&(src, dst)], "source", Value::Null),
        };
        let mut v = json!({
            "source": src,
            "destination": dst,
            "sourceIdentity": if seen_by == "destination" { identity(src) } else { Value::Null },
            "destinationIdentity": identity(dst),
            "mtls": mtls,
            "seenBy": seen_by,
        });
        merge(&mut v, sum.json(seconds));
        edges.push(v);
    }
    // Routes: by the service whose proxies served them, the route and its backend.
    let mut routes: BTreeMap<(&str, &str, &str, &str), Sum> = BTreeMap::new();
    for x in proxies
        .iter()
        .filter(|x| only.is_none_or(|o| o == x.service))
    {
        for r in &x.routes {
            routes
                .entry((
                    x.service.as_str(),
                    r.listener.as_str(),
                    r.route.as_str(),
                    r.service.as_str(),
                ))
                .or_default()
                .add(r);
        }
    }
    let routes: Vec<Value> = routes
        .iter()
        .map(|((svc, listener, route, backend), sum)| {
            let mut v =
                json!({"service": svc, "listener": listener, "route": route, "backend": backend});
            merge(&mut v, sum.json(seconds));
            v
        })
        .collect();
    json!({"services": services, "edges": edges, "routes": routes})
}

async fn stats(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    p: Params,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let (name, seconds) = window(&p)?;
    let local = p.local.unwrap_or(false);
    let g = gather(&api, &name, seconds, &headers, local).await?;
    let catalog = api.state.read().services();
    let mut out = summarise(
        &g.proxies,
        g.seconds,
        p.service.as_deref(),
        p.from.as_deref(),
        &catalog,
    );
    out["window"] = json!(name);
    out["seconds"] = json!(g.seconds);
    out["unanswered"] = json!(g.unanswered);
    out["unreachable"] = json!(g.unreachable);
    if local {
        out["proxies"] = json!(g.proxies);
    }
    Ok(Json(out).into_response())
}

/// What the proxies answered for one window, through this replica and (unless `local`)
/// its peers.
pub(super) struct Gathered {
    pub(super) proxies: Vec<RawProxy>,
    /// The window the answers cover (the longest any proxy had).
    pub(super) seconds: f64,
    /// Proxies that did not answer in time.
    pub(super) unanswered: Vec<String>,
    /// Replicas that could not be asked: `{server, error}`.
    pub(super) unreachable: Vec<Value>,
}

/// Asks this replica's proxies, and every peer replica for its own (with the caller's
/// token), for their `seconds` windows.
pub(super) async fn gather(
    api: &Api,
    name: &str,
    seconds: u32,
    headers: &HeaderMap,
    local: bool,
) -> Result<Gathered, ApiError> {
    let gathered = api.live.stats(seconds, None).await;
    let mut proxies: Vec<RawProxy> = gathered.answered.iter().map(RawProxy::of).collect();
    let mut unanswered = gathered.unanswered;
    let mut unreachable = Vec::new();
    if !local {
        let (peers, tls) = api.peer_replicas().await?;
        let path = format!("/v1/stats?local=true&window={name}");
        let asks: Vec<_> = peers
            .iter()
            .map(|peer| {
                let token = crate::authn::secret_of(headers).map(str::to_string);
                tokio::spawn(peers::get_json(
                    peer.clone(),
                    path.clone(),
                    token,
                    tls.clone(),
                ))
            })
            .collect();
        for (peer, ask) in peers.iter().zip(asks) {
            match ask.await {
                Ok(Ok(v)) => {
                    let theirs: Vec<RawProxy> =
                        serde_json::from_value(v["proxies"].clone()).unwrap_or_default();
                    proxies.extend(theirs);
                    if let Some(u) = v["unanswered"].as_array() {
                        unanswered.extend(u.iter().filter_map(|x| x.as_str().map(str::to_string)));
                    }
                }
                Ok(Err(e)) => unreachable.push(json!({"server": peer, "error": e})),
                Err(e) => unreachable.push(json!({"server": peer, "error": e.to_string()})),
            }
        }
        // A proxy that just moved may answer through two replicas: keep one answer.
        proxies.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        proxies.dedup_by(|a, b| a.proxy_id == b.proxy_id);
    }
    let covered = proxies.iter().map(|x| x.seconds).fold(0.0, f64::max);
    Ok(Gathered {
        proxies,
        seconds: covered,
        unanswered,
        unreachable,
    })
}

/// Opens a tap and streams its events as server-sent events (`event: tap`, and
/// `joined`/`left` as the service's proxies start tapping and go, `refused` for a proxy
/// that will not tap; a comment line every few seconds keeps idle connections open;
/// `dropped` counts events this server lost because the client did not keep up).
async fn tap(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(service): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    p: Params,
) -> ApiResult {
    caller.require(&Need::Tap(service.clone()))?;
    if !crate::config::valid_name(&service) {
        return Err(ApiError::bad_request(
            "invalid-service",
            format!("`{service}` is not a service name"),
        ));
    }
    let redact: Vec<String> = p
        .redact
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if redact.len() > MAX_REDACT
        || redact
            .iter()
            .any(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            format!("redact: at most {MAX_REDACT} comma-separated header names"),
        ));
    }
    let body = p.body.unwrap_or(0);
    if body > MAX_TAP_BODY {
        return Err(ApiError::bad_request(
            "invalid-query",
            format!("body: at most {MAX_TAP_BODY} bytes per event"),
        ));
    }
    let max_rps = p.max_rps.unwrap_or(0);
    if max_rps > 10_000 {
        return Err(ApiError::bad_request(
            "invalid-query",
            "maxRps: at most 10000",
        ));
    }
    let ask = TapAsk {
        path_prefix: p.path.clone().unwrap_or_default(),
        method: p.method.clone().unwrap_or_default().to_ascii_uppercase(),
        authority: p.authority.clone().unwrap_or_default(),
        to: p.to.clone().unwrap_or_default(),
        from: p.from.clone().unwrap_or_default(),
        max_rps,
        redact,
        body_bytes: body,
    };
    let (handle, mut rx) = api.live.tap(&service, ask).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-taps",
            e.to_string(),
        )
    })?;
    // Every other replica taps the proxies it holds; their events join this stream.
    let mut peers_of = Vec::new();
    if !p.local.unwrap_or(false) {
        let (peers, tls) = api.peer_replicas().await?;
        let path = format!(
            "{}?{}&local=true",
            uri.path(),
            uri.query().unwrap_or_default()
        );
        let token = crate::authn::secret_of(&headers).map(str::to_string);
        for peer in peers {
            peers_of.push((peer, path.clone(), token.clone(), tls.clone()));
        }
    }
    Ok(event_stream(16, move |tx| async move {
        let _open = handle; // dropped when the client goes: the proxies stop tapping
        let _peers = Aborting(
            peers_of
                .into_iter()
                .map(|(peer, path, token, tls)| {
                    tokio::spawn(relay_peer(peer, path, token, tls, tx.clone()))
                })
                .collect(),
        );
        let mut reported = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            let chunk = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => sse(&m),
                    None => return,
                },
                _ = tick.tick() => {
                    let dropped = _open.dropped();
                    if dropped != reported {
                        reported = dropped;
                        format!("event: dropped\ndata: {}\n\n", json!({"server": dropped}))
                    } else {
                        ": keep-alive\n\n".to_string()
                    }
                }
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }))
}

/// Tasks aborted when this is dropped.
struct Aborting(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Aborting {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Passes a peer replica's tap events on (its proxies' share of the tap), or says why it
/// cannot.
async fn relay_peer(
    peer: String,
    path: String,
    token: Option<String>,
    tls: peers::PeerTls,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    use http_body_util::BodyExt;
    let opened = tokio::time::timeout(
        peers::PEER_TIMEOUT,
        peers::open(&peer, &path, token.as_deref(), tls),
    )
    .await;
    let mut body = match opened {
        Ok(Ok(resp)) if resp.status().is_success() => resp.into_body(),
        Ok(Ok(resp)) => {
            return unreachable(&tx, &peer, &format!("answered {}", resp.status())).await
        }
        Ok(Err(e)) => return unreachable(&tx, &peer, &e).await,
        Err(_) => return unreachable(&tx, &peer, "no answer in time").await,
    };
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            if block.starts_with(b":") {
                continue; // its keep-alive: this stream has its own
            }
            if tx
                .send(String::from_utf8_lossy(&block).into_owned())
                .await
                .is_err()
            {
                return;
            }
        }
    }
    unreachable(&tx, &peer, "its tap stream ended").await;
}

async fn unreachable(tx: &tokio::sync::mpsc::Sender<String>, peer: &str, error: &str) {
    let data = json!({"server": peer, "error": error});
    let _ = tx
        .send(format!("event: unreachable\ndata: {data}\n\n"))
        .await;
}

/// A server-sent-event response fed by a task: `f` gets the sender (`queue` chunks may
/// wait unsent); the stream ends when the task does, and the task sees its sends fail
/// once the client has gone.
pub(super) fn event_stream<F, Fut>(queue: usize, f: F) -> Response
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(queue);
    tokio::spawn(f(tx));
    let stream =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |s| {
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(s))
        });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// One message as a server-sent event.
fn sse(m: &TapMessage) -> String {
    let (kind, data) = match m {
        TapMessage::Event { proxy_id, event } => ("tap", event_json(proxy_id, event)),
        TapMessage::Joined { proxy_id } => ("joined", json!({"proxyId": proxy_id})),
        TapMessage::Left { proxy_id } => ("left", json!({"proxyId": proxy_id})),
        TapMessage::Refused { proxy_id, reason } => {
            ("refused", json!({"proxyId": proxy_id, "reason": reason}))
        }
    };
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A tap event as the API shows it.
fn event_json(proxy_id: &str, e: &TapEvent) -> Value {
    let headers = |h: &[weft_api::discovery::Header]| -> Vec<Value> {
        h.iter().map(|h| json!([h.name, h.value])).collect()
    };
    let or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    let mut v = json!({
        "proxyId": proxy_id,
        "direction": e.direction,
        "method": e.method,
        "authority": e.authority,
        "path": e.path,
        "route": or_null(&e.route),
        "status": e.status,
        "grpcStatus": if e.grpc_status >= 0 { json!(e.grpc_status) } else { Value::Null },
        "error": or_null(&e.error),
        "startedMs": e.started_ms,
        "latencyMs": e.latency_us as f64 / 1000.0,
        "requestBytes": e.request_bytes,
        "responseBytes": e.response_bytes,
        "source": e.source,
        "destination": e.destination,
        "sourceIdentity": or_null(&e.source_identity),
        "destinationIdentity": or_null(&e.destination_identity),
        "traceId": or_null(&e.trace_id),
        "requestHeaders": headers(&e.request_headers),
        "responseHeaders": headers(&e.response_headers),
        "dropped": e.dropped,
    });
    if !e.request_body.is_empty() || e.request_body_truncated {
        v["requestBody"] = json!(String::from_utf8_lossy(&e.request_body));
        v["requestBodyTruncated"] = json!(e.request_body_truncated);
    }
    if !e.response_body.is_empty() || e.response_body_truncated {
        v["responseBody"] = json!(String::from_utf8_lossy(&e.response_body));
        v["responseBodyTruncated"] = json!(e.response_body_truncated);
    }
    v
}
