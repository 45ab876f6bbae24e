//! `/v1/catalog`: instances (register, renew, health, deregister, list). Every handler
//! checks the caller's ACL token first ([`crate::acl`]).

use axum::{
    body::Body,
    extract::{Path, State as AxState},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{delete, get, post, put},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::context::{Api, ApiResult};
use super::query::{wait, wait_for_change, Params};
use super::request::{read_json, with_index, SMALL_BODY};
use crate::{
    acl::{Access, Caller, Need},
    catalog,
    error::ApiError,
    store,
};

/// The catalog routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/catalog/services", get(services))
        .route("/v1/catalog/services/{service}", get(service_instances))
        .route("/v1/catalog/addresses/{ip}", get(instances_at))
        .route("/v1/catalog/register", post(register))
        .route("/v1/catalog/leases/{lease}/renew", put(renew))
        .route(
            "/v1/catalog/services/{service}/instances/{id}/health",
            put(set_health),
        )
        .route(
            "/v1/catalog/services/{service}/instances/{id}",
            delete(deregister),
        )
}

async fn services(AxState(api): AxState<Api>, caller: Caller) -> ApiResult {
    caller.require(&Need::Service("*".into(), Access::Read))?;
    let view = api.state.read();
    let items: Vec<Value> = view
        .services()
        .into_iter()
        .map(|(name, (instances, healthy))| json!({"name": name, "instances": instances, "healthy": healthy}))
        .collect();
    Ok(with_index(view.revision, Json(json!({"items": items}))))
}

/// The instances registered at an IP address, of every service, and the service whose
/// virtual IP it is (a transparent sidecar asks which mesh service an intercepted
/// destination belongs to).
async fn instances_at(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(ip): Path<String>,
) -> ApiResult {
    caller.require(&Need::Service("*".into(), Access::Read))?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| {
        ApiError::bad_request("invalid-address", format!("`{ip}` is not an IP address"))
    })?;
    let view = api.state.read();
    let items: Vec<Value> = view
        .instances_at(ip)
        .map(|i| json!({"service": i.service, "id": i.id, "port": i.port, "protocol": i.protocol, "health": i.health}))
        .collect();
    let mut answer = json!({"items": items});
    if let Some(service) = match ip {
        std::net::IpAddr::V4(v4) => view.vip_owner(v4),
        std::net::IpAddr::V6(_) => None,
    } {
        answer["virtual"] = json!(service);
    }
    Ok(with_index(view.revision, Json(answer)))
}

async fn service_instances(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(service): Path<String>,
    p: Params,
) -> ApiResult {
    caller.require(&Need::Service(service.clone(), Access::Read))?;
    if let Some(index) = p.index {
        if api.state.read().revision <= index {
            let prefix = format!("{}{service}/", catalog::PREFIX);
            wait_for_change(&*api.store, &prefix, index, wait(&p)?).await?;
        }
    }
    let (items, revision) = catalog::instances(&*api.store, Some(&service)).await?;
    Ok(with_index(revision, Json(json!({"items": items}))))
}

async fn register(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let reg: catalog::Registration = read_json(body, &headers, SMALL_BODY).await?;
    caller.require(&Need::Service(reg.instance.service.clone(), Access::Write))?;
    let (count, known) = api
        .state
        .read()
        .instance_count(&reg.instance.service, &reg.instance.id);
    if !known && count >= api.instances_per_service {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "limit-reached",
            format!(
                "service {} has {count} instances, the limit (weft server --max-instances-per-service {})",
                reg.instance.service, api.instances_per_service
            ),
        ));
    }
    let (lease, revision) = catalog::register(&*api.store, reg).await?;
    Ok(with_index(
        revision,
        Json(json!({"lease": lease, "revision": revision})),
    ))
}

async fn renew(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(lease): Path<String>,
    p: Params,
) -> ApiResult {
    let lease: u64 = lease
        .parse()
        .map_err(|_| ApiError::bad_request("invalid-lease", "a lease is a number"))?;
    let caller = caller.clone();
    if !matches!(caller, Caller::Anyone) {
        // With ACLs, the lease must hold an instance of a service the token may write: a
        // token for A cannot keep B's instances alive. `?service=` names it; without it,
        // it is the service of the instance the lease holds.
        let service = match p.service {
            Some(s) => s,
            None => match api.state.read().lease_service(lease) {
                Some(s) => s,
                None => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "lease-not-found",
                        format!("lease {lease} holds no instance"),
                    ))
                }
            },
        };
        caller.require(&Need::Service(service.clone(), Access::Write))?;
        let page = store::list_all(&*api.store, &format!("{}{service}/", catalog::PREFIX)).await?;
        if !page.kvs.iter().any(|kv| kv.lease == Some(lease)) {
            return Err(ApiError::forbidden(format!(
                "lease {lease} holds no instance of {service}"
            )));
        }
    }
    api.store.keep_alive(lease).await?;
    Ok(Json(json!({"lease": lease})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthBody {
    status: catalog::Health,
}

async fn set_health(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let h: HealthBody = read_json(body, &headers, SMALL_BODY).await?;
    caller.require(&Need::Service(service.clone(), Access::Write))?;
    let revision = catalog::set_health(&*api.store, &service, &id, h.status).await?;
    Ok(with_index(revision, Json(json!({"revision": revision}))))
}

async fn deregister(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
) -> ApiResult {
    caller.require(&Need::Service(service.clone(), Access::Write))?;
    let revision = catalog::deregister(&*api.store, &service, &id).await?;
    Ok(with_index(revision, Json(json!({"revision": revision}))))
}
