//! The server's own endpoints: its status, its metrics, and the OpenAPI document.

use axum::{
    extract::State as AxState,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use super::context::{Api, ApiResult};
use super::request::with_index;
use crate::acl::{Access, Caller, Need};

/// The API's own description (`/v1/openapi.json`).
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// The status, metrics and OpenAPI routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
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
