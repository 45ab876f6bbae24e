//! `/v1/proxies`: the proxies connected to this replica and, unless `local`, to its peers.

use axum::{extract::State as AxState, http::HeaderMap, routing::get, Json, Router};
use serde_json::{json, Value};

use super::context::{Api, ApiResult};
use super::query::Params;
use super::request::with_index;
use crate::{
    acl::{Access, Caller, Need},
    error::ApiError,
    peers,
};

/// The proxies route.
pub fn routes() -> Router<Api> {
    Router::new().route("/v1/proxies", get(proxies))
}

async fn proxies(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    p: Params,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Read))?;
    let server_revision = api.state.read().revision;
    let at = p.revision.unwrap_or(server_revision);
    let token = crate::authn::secret_of(&headers).map(str::to_string);
    let (items, unreachable) = every_proxy(&api, at, token, p.local.unwrap_or(false)).await?;
    Ok(with_index(
        server_revision,
        Json(json!({"revision": at, "items": items, "unreachable": unreachable})),
    ))
}

/// Every proxy connected to this replica and (unless `local`) to the others, each with
/// `current` at revision `at`; and the replicas that could not be asked (peers are asked
/// with `token`).
pub(super) async fn every_proxy(
    api: &Api,
    at: u64,
    token: Option<String>,
    local: bool,
) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
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
    if !local {
        let (peers, tls) = api.peer_replicas().await?;
        let asks: Vec<_> = peers
            .iter()
            .map(|peer| {
                tokio::spawn(peers::proxies_of(
                    peer.clone(),
                    at,
                    token.clone(),
                    tls.clone(),
                ))
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
    Ok((items, unreachable))
}
