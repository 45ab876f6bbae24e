//! `/v1/kv`: the key/value store (list, get with long-poll, put with compare-and-swap,
//! delete).

use axum::{
    body::Body,
    extract::{Path, State as AxState},
    http::{header, HeaderMap, StatusCode},
    routing::get,
    Json, Router,
};
use serde_json::json;

use super::context::{Api, ApiResult};
use super::query::{limit, page, wait, wait_for_change, wait_for_key, Params};
use super::request::{read_body, with_index};
use crate::{
    acl::{Access, Caller, Need},
    kv,
};

/// The key/value routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/kv", get(kv_list))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
}

async fn kv_list(AxState(api): AxState<Api>, caller: Caller, p: Params) -> ApiResult {
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
    p: Params,
) -> ApiResult {
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
    p: Params,
    body: Body,
) -> ApiResult {
    caller.require(&Need::Kv(key.clone(), Access::Write))?;
    let body = read_body(body, &headers, kv::MAX_VALUE_BYTES).await?;
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
    p: Params,
) -> ApiResult {
    caller.require(&Need::Kv(key.clone(), Access::Write))?;
    let (revision, deleted) =
        kv::delete(&*api.store, &key, p.recurse.unwrap_or(false), p.cas).await?;
    Ok(with_index(
        revision,
        Json(json!({"deleted": deleted, "revision": revision})),
    ))
}
