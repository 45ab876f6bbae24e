//! `/v1/ca`: the mesh CA's roots, certificate signing (a service's identity, for a token
//! that may write that service), and rotation.

use axum::{
    body::Body,
    extract::State as AxState,
    http::HeaderMap,
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;

use super::context::{Api, ApiResult};
use super::request::{read_body, read_json, SMALL_BODY};
use crate::{
    acl::{Access, Caller, Need},
    config,
    error::ApiError,
};

/// Largest body of a rotation to an operator's CA (PEM certificates and a key).
const ROTATE_BODY: usize = 1024 * 1024;

/// The CA routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/ca/roots", get(ca_roots))
        .route("/v1/ca/sign", post(ca_sign))
        .route("/v1/ca/rotate", post(ca_rotate))
}

async fn ca_roots(AxState(api): AxState<Api>) -> ApiResult {
    Ok(Json(api.ca.bundle().await?).into_response())
}

/// `POST /v1/ca/rotate`: an empty body generates the new root; `{certificate, key,
/// roots?}` rotates to the operator's root or intermediate.
async fn ca_rotate(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Write))?;
    let body = read_body(body, &headers, ROTATE_BODY).await?;
    let provided = match body.iter().all(u8::is_ascii_whitespace) {
        true => None,
        false => Some(
            serde_json::from_slice::<crate::ca::Provided>(&body).map_err(|e| {
                ApiError::bad_request(
                    "invalid-body",
                    format!("expected {{certificate, key, roots?}} (PEM strings): {e}"),
                )
            })?,
        ),
    };
    Ok(Json(api.ca.rotate(provided).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    /// The service whose identity is asked for.
    service: String,
    /// PKCS#10, PEM.
    csr: String,
}

async fn ca_sign(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: SignBody = read_json(body, &headers, SMALL_BODY).await?;
    if !config::valid_name(&req.service) {
        return Err(ApiError::bad_request(
            "invalid-name",
            format!("`{}` is not a service name", req.service),
        ));
    }
    // The identity a token entitles its holder to, and no other.
    caller.require(&Need::Service(req.service.clone(), Access::Write))?;
    let signed = api.ca.sign(&req.service, &req.csr).await?;
    tracing::info!(service = %req.service, spiffe_id = %signed.spiffe_id, "signed a certificate");
    Ok(Json(signed).into_response())
}
