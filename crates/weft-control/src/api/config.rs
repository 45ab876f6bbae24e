//! `/v1/config`: apply, list, read and delete configuration resources.

use axum::{
    body::Body,
    extract::{Path, State as AxState},
    http::HeaderMap,
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde_json::Value;

use super::context::{Api, ApiResult};
use super::query::{limit, page, Params};
use super::request::{read_body, with_index};
use crate::{
    acl::{Access, Caller, Need},
    config,
    error::ApiError,
};

/// The configuration routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/config", get(config_list).post(config_apply))
        .route("/v1/config/{kind}", get(config_list_kind))
        .route(
            "/v1/config/{kind}/{name}",
            get(config_get).delete(config_delete),
        )
}

async fn config_apply(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    p: Params,
    body: Body,
) -> ApiResult {
    let body = read_body(body, &headers, config::MAX_APPLY_BYTES).await?;
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

async fn config_list(AxState(api): AxState<Api>, caller: Caller, p: Params) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    list_config(&api, None, &p).await
}

async fn config_list_kind(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(kind): Path<String>,
    p: Params,
) -> ApiResult {
    let kind = config::canonical_kind(&kind)?;
    caller.require(&config_need(&[kind], Access::Read))?;
    list_config(&api, Some(kind), &p).await
}

async fn list_config(api: &Api, kind: Option<&str>, p: &Params) -> ApiResult {
    let (listed, next, revision) =
        config::list(&*api.store, kind, p.after.as_deref(), limit(p)?).await?;
    // Each resource's version: the store revision of its last change, by `Kind/name`.
    let revisions: serde_json::Map<String, Value> = listed
        .iter()
        .map(|(v, rev)| {
            let key = format!(
                "{}/{}",
                v["kind"].as_str().unwrap_or_default(),
                v["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, Value::from(*rev))
        })
        .collect();
    let items: Vec<Value> = listed.into_iter().map(|(v, _)| v).collect();
    let mut out = page(items, next);
    out["revisions"] = Value::Object(revisions);
    Ok(with_index(revision, Json(out)))
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
    p: Params,
) -> ApiResult {
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
