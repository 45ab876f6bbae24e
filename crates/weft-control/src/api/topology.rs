//! The mesh as a graph, for the web UI (docs/ui.md) and anyone else who wants it:
//!
//! - `GET /v1/topology` — every service (instances, health, inbound traffic) and every
//!   caller → callee edge seen in the window (rate, success rate, latency), each edge
//!   with what the intentions decide for it; `service=NAME` adds that service's routes.
//! - `GET /v1/topology/stream` — the same, pushed as server-sent events every
//!   [`EVERY`] until the client goes (or its token stops granting it).
//! - `GET /v1/intentions/matrix` — the decision for every caller → callee pair.
//! - `POST /v1/intentions/check` — one call judged as its destination's sidecar would.
//!
//! Watchers share the work: a topology is built at most once per [`FRESH`] per window
//! and service, whoever asks, so ten browsers watching cost about what one does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{
    body::Body,
    extract::State as AxState,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use weft_model::{decide, Action, Config};

use super::context::{Api, ApiResult};
use super::live::{event_stream, gather, summarise, window};
use super::query::Params;
use super::request::{read_json, SMALL_BODY};
use crate::{
    acl::{Access, Caller, Need},
    error::ApiError,
    judge::CheckAsk,
};

/// The topology and intention routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/topology", get(topology))
        .route("/v1/topology/stream", get(stream))
        .route("/v1/intentions/matrix", get(matrix))
        .route("/v1/intentions/check", post(check))
}

/// How often a stream pushes the topology.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long a built topology is handed to other askers instead of asking the proxies
/// again.
const FRESH: Duration = Duration::from_millis(1500);
/// Services in the intention matrix (the first ones by name; the answer says when
/// there were more).
const MATRIX_SERVICES: usize = 100;

/// What a topology is built for: the window and the service whose routes it adds.
type Key = (String, Option<String>);

/// Topology streams open on one server at most (`503 too-many-watchers` beyond).
pub const MAX_WATCHERS: usize = 256;

/// Recently built topologies, by window and service (see the module docs): when each was
/// built, and its JSON; and the streams open.
#[derive(Default)]
pub struct TopologyCache {
    recent: tokio::sync::Mutex<HashMap<Key, (Instant, Arc<str>)>>,
    watchers: Arc<std::sync::atomic::AtomicUsize>,
}

/// One open topology stream, counted while it lives.
struct Watching(Arc<std::sync::atomic::AtomicUsize>);

impl Watching {
    fn new(cache: &TopologyCache) -> Result<Watching, ApiError> {
        use std::sync::atomic::Ordering;
        let n = cache.watchers.fetch_add(1, Ordering::Relaxed);
        let w = Watching(cache.watchers.clone());
        if n >= MAX_WATCHERS {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too-many-watchers",
                format!("{MAX_WATCHERS} topology streams are open on this server; try another replica or later"),
            ));
        }
        Ok(w)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for TopologyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopologyCache")
    }
}

/// The policy that decides calls, parsed once per topology.
struct Policy(Option<Config>);

impl Policy {
    fn of(api: &Api) -> Policy {
        let text = api.state.read().policy_text();
        Policy(
            weft_model::parse("control-plane", &text)
                .map_err(|e| tracing::warn!(error = %e, "stored policy does not parse"))
                .ok(),
        )
    }

    /// `allow`, `deny` or `request` (L7: it depends on the request), and why.
    fn decide(&self, source: &str, destination: &str) -> (&'static str, String) {
        let Some(config) = &self.0 else {
            return ("unknown", "the stored policy does not parse".into());
        };
        let intentions: Vec<_> = config
            .intentions
            .iter()
            .filter(|i| i.spec.destination == "*" || i.spec.destination == destination)
            .collect();
        let source = (source != crate::live::UNKNOWN_SOURCE).then_some(source);
        match decide(
            &intentions,
            config.mesh().default_action,
            source,
            destination,
            None,
        ) {
            None => (
                "request",
                "L7 intentions: it depends on the request (method, path, headers)".into(),
            ),
            Some(v) if v.action == Action::Allow => ("allow", v.reason.to_string()),
            Some(v) => ("deny", v.reason.to_string()),
        }
    }
}

/// Builds the topology (or takes one built less than [`FRESH`] ago).
async fn build(
    api: &Api,
    name: &str,
    seconds: u32,
    service: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<str>, ApiError> {
    let key = (name.to_string(), service.map(str::to_string));
    let mut recent = api.topology.recent.lock().await;
    if let Some((at, text)) = recent.get(&key) {
        if at.elapsed() < FRESH {
            return Ok(text.clone());
        }
    }
    let g = gather(api, name, seconds, headers, false).await?;
    let (catalog, revision) = {
        let view = api.state.read();
        (view.services(), view.revision)
    };
    let mut out = summarise(&g.proxies, g.seconds, None, None, &catalog);
    let policy = Policy::of(api);
    // What a picture needs of each (a 5,000-edge mesh is then ~1 MB, not 2.5).
    slim(&mut out["services"], SERVICE_FIELDS);
    slim(&mut out["edges"], EDGE_FIELDS);
    if let Some(edges) = out["edges"].as_array_mut() {
        for e in edges {
            let (decision, reason) = policy.decide(
                e["source"].as_str().unwrap_or_default(),
                e["destination"].as_str().unwrap_or_default(),
            );
            e["intention"] = json!(decision);
            e["intentionReason"] = json!(reason);
        }
    }
    match service {
        Some(s) => {
            if let Some(routes) = out["routes"].as_array_mut() {
                routes.retain(|r| r["service"] == s);
            }
        }
        None => {
            if let Some(o) = out.as_object_mut() {
                o.remove("routes");
            }
        }
    }
    out["window"] = json!(name);
    out["seconds"] = json!(g.seconds);
    out["revision"] = json!(revision);
    out["unanswered"] = json!(g.unanswered.len());
    out["unreachable"] = json!(g.unreachable);
    let text: Arc<str> = out.to_string().into();
    recent.retain(|_, (at, _)| at.elapsed() < FRESH);
    recent.insert(key, (Instant::now(), text.clone()));
    Ok(text)
}

/// The fields of a service and of an edge a topology keeps (`/v1/stats` has them all).
const SERVICE_FIELDS: &[&str] = &[
    "service",
    "instances",
    "healthy",
    "meshed",
    "requests",
    "rps",
    "successRate",
    "p99Ms",
];
const EDGE_FIELDS: &[&str] = &[
    "source",
    "destination",
    "requests",
    "rps",
    "successRate",
    "p99Ms",
    "mtls",
];

/// Keeps `fields` of each object of `list`, rates rounded to what a person reads.
fn slim(list: &mut serde_json::Value, fields: &[&str]) {
    let Some(items) = list.as_array_mut() else {
        return;
    };
    for item in items {
        if let Some(o) = item.as_object_mut() {
            o.retain(|k, _| fields.contains(&k.as_str()));
            for (k, digits) in [("rps", 1e3), ("successRate", 1e5)] {
                if let Some(x) = o.get(k).and_then(|v| v.as_f64()) {
                    o.insert(k.to_string(), json!((x * digits).round() / digits));
                }
            }
        }
    }
}

fn service_param(p: &Params) -> Result<Option<&str>, ApiError> {
    match p.service.as_deref() {
        Some(s) if !crate::config::valid_name(s) => Err(ApiError::bad_request(
            "invalid-query",
            format!("service `{s}` is not a service name"),
        )),
        s => Ok(s),
    }
}

async fn topology(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    p: Params,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let (name, seconds) = window(&p)?;
    let text = build(&api, &name, seconds, service_param(&p)?, &headers).await?;
    let mut resp = Response::new(Body::from(text.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Pushes the topology every [`EVERY`] (`event: topology`); the token is checked again
/// before each push, so a revoked token's stream ends (`event: denied`).
async fn stream(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    p: Params,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let (name, seconds) = window(&p)?;
    let service = service_param(&p)?.map(str::to_string);
    let watching = Watching::new(&api.topology)?;
    // One topology waits at most (they are ~1 MB at 5,000 edges): a client that does not
    // read holds two, not a backlog.
    Ok(event_stream(1, move |tx| async move {
        let _watching = watching;
        let secret = crate::authn::secret_of(&headers).map(str::to_string);
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let still = api.auth.caller(secret.as_deref()).await;
            let chunk = match still.require(&Need::Operator(Access::Read)) {
                Err(e) => {
                    let data = json!({"message": e.message});
                    let _ = tx.send(format!("event: denied\ndata: {data}\n\n")).await;
                    return;
                }
                Ok(()) => match build(&api, &name, seconds, service.as_deref(), &headers).await {
                    Ok(text) => format!("event: topology\ndata: {text}\n\n"),
                    Err(e) => {
                        let data = json!({"message": e.message});
                        format!("event: problem\ndata: {data}\n\n")
                    }
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }))
}

/// Every caller → callee decision among the services (registered or named by an
/// intention), at the connection: `allow`, `deny`, or `request` when L7 permissions
/// decide per request.
async fn matrix(AxState(api): AxState<Api>, caller: Caller) -> ApiResult {
    caller.require(&Need::Intentions(Access::Read))?;
    let policy = Policy::of(&api);
    let mut names: BTreeSet<String> = api.state.read().services().into_keys().collect();
    if let Some(config) = &policy.0 {
        for i in &config.intentions {
            names.extend(
                [&i.spec.source, &i.spec.destination]
                    .into_iter()
                    .filter(|n| *n != "*")
                    .cloned(),
            );
        }
    }
    let total = names.len();
    let names: Vec<String> = names.into_iter().take(MATRIX_SERVICES).collect();
    let mut cells = Vec::with_capacity(names.len() * names.len());
    for src in &names {
        for dst in &names {
            let (decision, reason) = policy.decide(src, dst);
            cells.push(
                json!({"source": src, "destination": dst, "decision": decision, "reason": reason}),
            );
        }
    }
    Ok(Json(json!({
        "services": names,
        "total": total,
        "truncated": total > MATRIX_SERVICES,
        "defaultAction": policy.0.as_ref().map(|c| c.mesh().default_action.as_str()),
        "cells": cells,
    }))
    .into_response())
}

/// One call judged as the destination's sidecar would judge it.
async fn check(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    caller.require(&Need::Intentions(Access::Read))?;
    let ask: CheckAsk = read_json(body, &headers, SMALL_BODY).await?;
    let bad = |m: String| ApiError::bad_request("invalid-body", m);
    if !crate::config::valid_name(&ask.destination) {
        return Err(bad(format!(
            "destination `{}` is not a service name",
            ask.destination
        )));
    }
    if let Some(s) = ask.source.as_deref().filter(|s| !s.is_empty()) {
        if !crate::config::valid_name(s) {
            return Err(bad(format!("source `{s}` is not a service name")));
        }
    }
    let Some(judge) = &api.judge else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "no-judge",
            "this server was built without the sidecar's intention code",
        ));
    };
    let policy = api.state.read().policy_text();
    let answer = judge.check(&policy, &ask).map_err(bad)?;
    Ok(Json(answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::Policy;

    fn policy(text: &str) -> Policy {
        Policy(Some(
            weft_model::parse("test.yaml", text).expect("policy parses"),
        ))
    }

    #[test]
    fn each_edge_gets_what_the_intentions_decide_for_a_connection() {
        let p = policy(
            "kind: Intention\nmetadata: {name: fe-pay}\nspec: {source: frontend, destination: payments, action: allow}\n\
             ---\nkind: Intention\nmetadata: {name: fe-inv}\nspec: {source: frontend, destination: inventory, permissions: [{action: allow, http: {methods: [GET]}}]}\n\
             ---\nkind: Intention\nmetadata: {name: no-admin}\nspec: {source: '*', destination: admin, action: deny}\n",
        );
        assert_eq!(
            p.decide("frontend", "payments"),
            ("allow", "intention fe-pay".into())
        );
        assert_eq!(p.decide("frontend", "inventory").0, "request");
        assert_eq!(
            p.decide("frontend", "admin"),
            ("deny", "intention no-admin".into())
        );
        // No intention: the mesh default (deny); a caller without an identity likewise.
        let (d, why) = p.decide("payments", "frontend");
        assert_eq!(d, "deny");
        assert!(why.contains("no intention applies"), "{why}");
        assert_eq!(p.decide(crate::live::UNKNOWN_SOURCE, "payments").0, "deny");
        assert_eq!(Policy(None).decide("a", "b").0, "unknown");
    }

    #[test]
    fn watchers_are_counted_while_they_live_and_refused_past_the_bound() {
        let cache = super::TopologyCache::default();
        let open: Vec<_> = (0..super::MAX_WATCHERS)
            .map(|_| super::Watching::new(&cache).expect("under the bound"))
            .collect();
        let refused = super::Watching::new(&cache).err().expect("past the bound");
        assert_eq!(refused.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        drop(open);
        assert!(
            super::Watching::new(&cache).is_ok(),
            "closed streams free their places"
        );
    }
}
