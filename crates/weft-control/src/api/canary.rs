//! `/v1/canaries`: the rollouts the leader runs (rollout.rs) and operators' commands.

use axum::{
    extract::{Path, State as AxState},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};

use super::context::{Api, ApiResult};
use super::rollout::{self as canary, Rollout};
use crate::{
    acl::{Access, Caller, Need},
    error::ApiError,
};

/// The canary routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/canaries", get(list))
        .route("/v1/canaries/{name}", get(one))
        .route("/v1/canaries/{name}/{action}", post(act))
}

/// A canary as the API shows it: its spec's essentials and its rollout (phase `pending`
/// until the leader first looks at it).
fn status(name: &str, spec: &weft_model::CanarySpec, r: Option<&Rollout>) -> Value {
    let steps = spec.steps();
    let mut v = json!({
        "name": name,
        "service": spec.service,
        "stable": spec.stable,
        "canary": spec.canary,
        "steps": steps,
        "threshold": spec.analysis.threshold,
        "interval": spec.analysis.interval.to_string(),
        "route": spec.route_name(name),
    });
    match r {
        None => v["phase"] = json!("pending"),
        Some(r) => {
            let o = v.as_object_mut().expect("an object");
            if let Ok(Value::Object(extra)) = serde_json::to_value(r) {
                o.extend(extra);
            }
            o.remove("specVersion");
        }
    }
    v
}

async fn list(AxState(api): AxState<Api>, caller: Caller) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let mut all: Vec<_> = canary::statuses(&api, None).await?.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let items: Vec<Value> = all
        .iter()
        .map(|(name, (spec, r))| {
            let mut v = status(name, spec, r.as_ref());
            if let Some(o) = v.as_object_mut() {
                o.remove("measurements");
            }
            v
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn one(AxState(api): AxState<Api>, caller: Caller, Path(name): Path<String>) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let all = canary::statuses(&api, Some(&name)).await?;
    let (spec, r) = all
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no Canary named `{name}`")))?;
    Ok(Json(status(&name, spec, r.as_ref())).into_response())
}

/// Records an operator's command for the leader to carry out (within a second).
async fn act(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Write))?;
    if !["promote", "pause", "resume", "abort"].contains(&action.as_str()) {
        return Err(ApiError::bad_request(
            "invalid-action",
            format!("`{action}`: expected promote, pause, resume or abort"),
        ));
    }
    if !canary::statuses(&api, Some(&name))
        .await?
        .contains_key(&name)
    {
        return Err(ApiError::not_found(format!("no Canary named `{name}`")));
    }
    let done = crate::store::compare_and_swap(|| async {
        let (r, seen) = canary::load(&api, &name).await?;
        let Some(mut r) = r else {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "not-started",
                format!(
                    "canary `{name}` has not started yet (the leader starts it within a second)"
                ),
            ));
        };
        let allowed = match (action.as_str(), r.phase) {
            (_, canary::Phase::Promoted | canary::Phase::RolledBack | canary::Phase::Aborted) => {
                false
            }
            ("pause", p) => p == canary::Phase::Progressing,
            ("resume", p) => p == canary::Phase::Paused,
            _ => true,
        };
        if !allowed {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "wrong-phase",
                format!("canary `{name}` is {:?}: cannot {action} it", r.phase).to_lowercase(),
            ));
        }
        r.command = Some(action.clone());
        Ok(canary::save(&api, &name, &r, seen).await?.then_some(()))
    })
    .await?;
    if done.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            "the rollout kept changing; try again",
        ));
    }
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({"name": name, "requested": action})),
    )
        .into_response())
}
