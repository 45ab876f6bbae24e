//! The HTTP API: JSON over HTTP for configuration, catalog, key/value and proxy status,
//! described by `openapi.json` (served at `/v1/openapi.json`).
//!
//! Conventions (docs/api.md): errors are `{"error": {"code", "message", "details"?}}`;
//! lists take `limit` (default 100, at most 1000) and `after`, and answer
//! `{"items": [...], "next": TOKEN?}`; every answer carries `X-Weft-Index`, the store
//! revision it reflects; a read with `index=N` waits (up to `wait`, default 30 s, at most
//! 5 min) until something it covers changes after revision N (long-poll).
//!
//! Every handler takes the raw body and parses it itself, so a malformed request gets
//! the same JSON error shape as any other failure.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State as AxState},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    acl::{self, Access, Caller, Need},
    config,
    discovery::Sessions,
    error::ApiError,
    kv, peers,
    state::State,
    store::{Revision, Store, WatchEvent},
};

/// Everything a handler needs.
#[derive(Clone)]
pub struct Api {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The in-memory view.
    pub state: Arc<State>,
    /// Connected proxies.
    pub sessions: Arc<Sessions>,
    /// This server's API address as its peers reach it.
    pub advertise: String,
    /// The mesh CA.
    pub ca: Arc<crate::ca::Ca>,
    /// Who a request's token belongs to (ACLs on or off).
    pub auth: Arc<acl::Authenticator>,
    /// `/metrics` answers without a token (`weft server --metrics public`).
    pub metrics_public: bool,
    /// Registered instances one service may have (`--max-instances-per-service`).
    pub instances_per_service: usize,
    /// Whether the API is served over TLS (peers are reached the same way).
    pub tls: bool,
    /// The replicas' election.
    pub leadership: crate::leader::Leadership,
}

const OPENAPI: &str = include_str!("openapi.json");
const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// What a handler answers.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// The API's routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/config", get(config_list).post(config_apply))
        .route("/v1/config/{kind}", get(config_list_kind))
        .route(
            "/v1/config/{kind}/{name}",
            get(config_get).delete(config_delete),
        )
        .route("/v1/kv", get(kv_list))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/proxies", get(proxies))
        .merge(crate::api_catalog::routes())
        .merge(crate::api_acl::routes())
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such API endpoint (see /v1/openapi.json)") })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            crate::api_request::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            crate::api_request::finish,
        ))
        .with_state(api)
}

/// A page of a list: `{"items": [...], "next": TOKEN}`, `next` absent on the last page.
fn page(items: impl serde::Serialize, next: Option<String>) -> Value {
    let mut v = json!({ "items": items });
    if let Some(n) = next {
        v["next"] = json!(n);
    }
    v
}

pub(crate) fn with_index(revision: Revision, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
        r.headers_mut().insert("x-weft-index", v);
    }
    r
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Params {
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    pub(crate) index: Option<Revision>,
    #[serde(default)]
    wait: Option<String>,
    #[serde(default)]
    cas: Option<Revision>,
    #[serde(default)]
    recurse: Option<bool>,
    #[serde(default)]
    raw: Option<bool>,
    #[serde(default)]
    revision: Option<Revision>,
    #[serde(default)]
    local: Option<bool>,
    #[serde(default)]
    pub(crate) service: Option<String>,
}

pub(crate) type Q = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

pub(crate) fn params(q: Q) -> Result<Params, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))
}

fn limit(p: &Params) -> Result<usize, ApiError> {
    match p.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid-query",
            format!("limit must be 1-{MAX_LIMIT}"),
        )),
    }
}

pub(crate) fn wait(p: &Params) -> Result<Duration, ApiError> {
    match &p.wait {
        None => Ok(Duration::from_secs(30)),
        Some(w) => weft_model::duration::parse(w)
            .map_err(|e| ApiError::bad_request("invalid-query", format!("wait: {e}")))
            .map(|d| d.min(MAX_WAIT)),
    }
}

/// Waits until a change under `prefix` after `index`, or `max`.
pub(crate) async fn wait_for_change(
    store: &dyn Store,
    prefix: &str,
    index: Revision,
    max: Duration,
) -> Result<(), ApiError> {
    wait_for(store, prefix, index, max, |_| true).await
}

/// Waits until `key` itself changes after `index` (a prefix watch filtered to the key:
/// `a/b` must not wake for `a/bc`), or `max`.
async fn wait_for_key(
    store: &dyn Store,
    key: &str,
    index: Revision,
    max: Duration,
) -> Result<(), ApiError> {
    wait_for(store, key, index, max, |k| k == key).await
}

async fn wait_for(
    store: &dyn Store,
    prefix: &str,
    index: Revision,
    max: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), ApiError> {
    let mut rx = store.watch(prefix, index).await?;
    let _ = tokio::time::timeout(max, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                WatchEvent::Changes { events, .. } if events.iter().any(|e| wanted(e.key())) => {
                    return
                }
                WatchEvent::Changes { .. } => {}
                WatchEvent::Compacted => return,
            }
        }
    })
    .await;
    Ok(())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The control plane's metrics: `operator:read`, unless the server made them public
/// (the middleware lets a tokenless scrape through only then).
async fn metrics(AxState(api): AxState<Api>, caller: Caller) -> ApiResult {
    if !api.metrics_public {
        caller.require(&Need::Operator(Access::Read))?;
    }
    let revision = api.state.read().revision;
    let text = api.sessions.metrics.encode(
        api.sessions.list().len(),
        revision,
        api.leadership.is_leader(),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn status(AxState(api): AxState<Api>, caller: Caller) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let revision = api.state.read().revision;
    Ok(with_index(
        revision,
        Json(json!({
            "store": api.store.kind(),
            "revision": revision,
            "proxies": api.sessions.list().len(),
            "build": env!("CARGO_PKG_VERSION"),
            "server": api.advertise,
            "leader": api.leadership.leader(),
        })),
    ))
}

async fn config_apply(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    q: Q,
    body: Body,
) -> ApiResult {
    let p = params(q)?;
    let body = crate::api_request::read_body(body, &headers, config::MAX_APPLY_BYTES).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid-body", "configuration must be UTF-8 text"))?;
    caller.require(&config_need(&kinds_of(text), Access::Write))?;
    let file = p.file.as_deref().unwrap_or("(request)");
    let registered = api.state.read().services().into_keys().collect();
    let outcome = config::apply(
        &*api.store,
        file,
        text,
        p.dry_run.unwrap_or(false),
        &registered,
    )
    .await?;
    Ok(with_index(outcome.revision, Json(outcome)))
}

async fn config_list(AxState(api): AxState<Api>, caller: Caller, q: Q) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let p = params(q)?;
    list_config(&api, None, &p).await
}

async fn config_list_kind(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(kind): Path<String>,
    q: Q,
) -> ApiResult {
    let p = params(q)?;
    let kind = config::canonical_kind(&kind)?;
    caller.require(&config_need(&[kind], Access::Read))?;
    list_config(&api, Some(kind), &p).await
}

async fn list_config(api: &Api, kind: Option<&str>, p: &Params) -> ApiResult {
    let (items, next, revision) =
        config::list(&*api.store, kind, p.after.as_deref(), limit(p)?).await?;
    Ok(with_index(revision, Json(page(items, next))))
}

async fn config_get(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
) -> ApiResult {
    let kind = config::canonical_kind(&kind)?;
    caller.require(&config_need(&[kind], Access::Read))?;
    let value = config::get(&*api.store, kind, &name).await?;
    Ok(Json(value).into_response())
}

async fn config_delete(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
    q: Q,
) -> ApiResult {
    let p = params(q)?;
    let kind = config::canonical_kind(&kind)?;
    caller.require(&config_need(&[kind], Access::Write))?;
    let registered = api.state.read().services().into_keys().collect();
    let outcome = config::delete(
        &*api.store,
        kind,
        &name,
        p.dry_run.unwrap_or(false),
        &registered,
    )
    .await?;
    Ok(with_index(outcome.revision, Json(outcome)))
}

async fn kv_list(AxState(api): AxState<Api>, caller: Caller, q: Q) -> ApiResult {
    let p = params(q)?;
    let prefix = p.prefix.clone().unwrap_or_default();
    caller.require(&Need::Kv(prefix.clone(), Access::Read))?;
    if let Some(index) = p.index {
        let (_, _, revision) = kv::list(&*api.store, &prefix, None, 1).await?;
        if revision <= index {
            wait_for_change(
                &*api.store,
                &format!("{}{prefix}", kv::PREFIX),
                index,
                wait(&p)?,
            )
            .await?;
        }
    }
    let (items, next, revision) =
        kv::list(&*api.store, &prefix, p.after.as_deref(), limit(&p)?).await?;
    Ok(with_index(revision, Json(page(items, next))))
}

async fn kv_get(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(key): Path<String>,
    q: Q,
) -> ApiResult {
    let p = params(q)?;
    kv::check_key(&key)?;
    caller.require(&Need::Kv(key.clone(), Access::Read))?;
    if let Some(index) = p.index {
        let current = match kv::get(&*api.store, &key).await {
            Ok((kv, _)) => kv.mod_revision,
            Err(e) if e.status == StatusCode::NOT_FOUND => 0,
            Err(e) => return Err(e),
        };
        if current <= index {
            wait_for_key(
                &*api.store,
                &format!("{}{key}", kv::PREFIX),
                index,
                wait(&p)?,
            )
            .await?;
        }
    }
    let (entry, revision) = kv::get(&*api.store, &key).await?;
    if p.raw.unwrap_or(false) {
        return Ok(with_index(
            revision,
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                entry.value,
            ),
        ));
    }
    Ok(with_index(revision, Json(kv::Entry::from_kv(&entry))))
}

async fn kv_put(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    Path(key): Path<String>,
    q: Q,
    body: Body,
) -> ApiResult {
    let p = params(q)?;
    caller.require(&Need::Kv(key.clone(), Access::Write))?;
    let body = crate::api_request::read_body(body, &headers, kv::MAX_VALUE_BYTES).await?;
    let revision = kv::put(&*api.store, &key, body.to_vec(), p.cas).await?;
    Ok(with_index(
        revision,
        Json(json!({"key": key, "modRevision": revision})),
    ))
}

async fn kv_delete(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(key): Path<String>,
    q: Q,
) -> ApiResult {
    let p = params(q)?;
    caller.require(&Need::Kv(key.clone(), Access::Write))?;
    let (revision, deleted) =
        kv::delete(&*api.store, &key, p.recurse.unwrap_or(false), p.cas).await?;
    Ok(with_index(
        revision,
        Json(json!({"deleted": deleted, "revision": revision})),
    ))
}

/// The kinds of the documents of a configuration text (unparsable text: none).
fn kinds_of(text: &str) -> Vec<&'static str> {
    weft_model::yaml::parse_documents(text)
        .map(|docs| {
            docs.iter()
                .filter_map(|d| d.value.get("kind").and_then(Value::as_str))
                .map(|k| config::canonical_kind(k).unwrap_or("Gateway"))
                .collect()
        })
        .unwrap_or_default()
}

/// What touching resources of `kinds` needs: intentions alone need `intentions:`,
/// anything else `operator:`.
fn config_need(kinds: &[&str], access: Access) -> Need {
    if !kinds.is_empty() && kinds.iter().all(|k| *k == "Intention") {
        Need::Intentions(access)
    } else {
        Need::Operator(access)
    }
}

/// Parses a JSON body (Content-Type must be JSON when given).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "invalid-body",
            "expected Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid-body", format!("invalid JSON body: {e}")))
}

async fn proxies(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    q: Q,
) -> ApiResult {
    let p = params(q)?;
    caller.require(&Need::Operator(Access::Read))?;
    let server_revision = api.state.read().revision;
    let at = p.revision.unwrap_or(server_revision);
    let mut items: Vec<Value> = api
        .sessions
        .list()
        .into_iter()
        .map(|s| {
            let current = s.current(at);
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            v["current"] = json!(current);
            v["server"] = json!(api.advertise);
            v
        })
        .collect();
    // Every replica knows only its own streams: ask the others (announced in the store).
    let mut unreachable = Vec::new();
    if !p.local.unwrap_or(false) {
        let peers: Vec<String> = peers::list(&*api.store)
            .await?
            .into_iter()
            .filter(|a| *a != api.advertise)
            .collect();
        let tls = match api.tls {
            false => None,
            true => Some(api.ca.peer_tls().await?),
        };
        let asks: Vec<_> = peers
            .iter()
            .map(|peer| {
                let token = acl::secret_of(&headers).map(str::to_string);
                tokio::spawn(peers::proxies_of(peer.clone(), at, token, tls.clone()))
            })
            .collect();
        for (peer, ask) in peers.iter().zip(asks) {
            match ask.await {
                Ok(Ok(list)) => items.extend(list),
                Ok(Err(e)) => unreachable.push(json!({"server": peer, "error": e})),
                Err(e) => unreachable.push(json!({"server": peer, "error": e.to_string()})),
            }
        }
        // A proxy that just moved may be listed by two replicas: keep the newer stream.
        items.sort_by(|a, b| {
            a["proxyId"]
                .as_str()
                .cmp(&b["proxyId"].as_str())
                .then(b["connectedAt"].as_u64().cmp(&a["connectedAt"].as_u64()))
        });
        items.dedup_by(|later, first| later["proxyId"] == first["proxyId"]);
    }
    Ok(with_index(
        server_revision,
        Json(json!({"revision": at, "items": items, "unreachable": unreachable})),
    ))
}

#[cfg(test)]
mod tests {
    /// The router files, read as source: their `.route(PATH, METHODS)` calls are what the
    /// server serves.
    const ROUTER_FILES: &[(&str, &str)] = &[
        ("api.rs", include_str!("api.rs")),
        ("api_catalog.rs", include_str!("api_catalog.rs")),
        ("api_acl.rs", include_str!("api_acl.rs")),
    ];

    /// `(path as OpenAPI spells it, method)` for every `.route(...)` call in `src` (before
    /// its tests).
    fn routed(src: &str) -> Vec<(String, String)> {
        let code = src.split("#[cfg(test)]").next().unwrap_or_default();
        let mut out = Vec::new();
        for (at, _) in code.match_indices(".route(") {
            let rest = &code[at + ".route(".len()..];
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            let path = call.split('"').nth(1).expect("a route path literal");
            let spelled = path.replace("{*key}", "{key}");
            for method in ["get", "post", "put", "delete", "patch"] {
                let calls = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                });
                if calls {
                    out.push((spelled.clone(), method.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_with_their_path_parameters() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let resolve = |p: &serde_json::Value| -> serde_json::Value {
            match p.get("$ref").and_then(|r| r.as_str()) {
                Some(r) => doc
                    .pointer(r.trim_start_matches('#'))
                    .cloned()
                    .unwrap_or_default(),
                None => p.clone(),
            }
        };
        let mut served = std::collections::BTreeSet::new();
        for (file, src) in ROUTER_FILES {
            let routes = routed(src);
            assert!(!routes.is_empty(), "{file}: no routes found");
            for (path, method) in routes {
                let op = doc["paths"][&path][&method].clone();
                assert!(
                    op.is_object(),
                    "{method} {path} ({file}) is not in openapi.json"
                );
                let declared: Vec<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(resolve)
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap_or_default().to_string())
                    .collect();
                let wanted: Vec<String> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_string)
                    .collect();
                assert_eq!(declared, wanted, "{method} {path}: path parameters");
                assert!(
                    op["responses"]
                        .as_object()
                        .is_some_and(|r| r.contains_key("400")),
                    "{method} {path}: the 400 every operation can answer"
                );
                served.insert((path, method));
            }
        }
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                assert!(
                    served.contains(&(path.clone(), method.clone())),
                    "openapi.json documents {method} {path}, which nobody serves"
                );
            }
        }
        // Every query parameter the document names is one the server parses.
        let params_struct = include_str!("api.rs")
            .split("pub(crate) struct Params {")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .unwrap_or_default()
            .to_string();
        for ops in doc["paths"].as_object().unwrap().values() {
            for op in ops.as_object().unwrap().values() {
                for p in op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(resolve)
                {
                    if p["in"] == "query" {
                        let name = p["name"].as_str().unwrap_or_default();
                        let field = name
                            .chars()
                            .flat_map(|c| {
                                if c.is_ascii_uppercase() {
                                    vec!['_', c.to_ascii_lowercase()]
                                } else {
                                    vec![c]
                                }
                            })
                            .collect::<String>();
                        assert!(
                            params_struct.contains(&format!(" {field}:")),
                            "query parameter {name} is not parsed by the server"
                        );
                    }
                }
            }
        }
    }
}
