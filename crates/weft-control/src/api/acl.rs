//! The ACL endpoints: bootstrap once, then create, list and revoke tokens.

use axum::{
    body::Body,
    extract::{Path, State as AxState},
    http::HeaderMap,
    response::IntoResponse,
    routing::{delete, get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use super::context::{Api, ApiResult};
use super::request::{read_json, SMALL_BODY};
use crate::{
    acl::{self, Access, Caller, Need, Rule, Token},
    error::ApiError,
    store::{self, Compare, Op, Txn},
};

/// The ACL routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/acl/bootstrap", post(bootstrap))
        .route("/v1/acl/tokens", get(list).post(create))
        .route("/v1/acl/tokens/{accessor}", delete(revoke))
        .route("/v1/acl/token/self", get(whoami))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new token with `rules`: stored by the hash of its secret; the answer is the only
/// place the secret ever appears.
pub(super) fn mint(description: String, rules: Vec<String>) -> Result<(Token, String), ApiError> {
    let secret = acl::random_id()?;
    let token = Token {
        accessor_id: acl::random_id()?,
        secret_hash: acl::hash(&secret),
        description,
        rules,
        created: now(),
    };
    Ok((token, secret))
}

fn answer(token: &Token, secret: &str) -> ApiResult {
    let mut v = token.public();
    v["secretId"] = json!(secret);
    Ok(Json(v).into_response())
}

pub(super) fn put_token(token: &Token) -> Result<Op, ApiError> {
    Ok(Op::Put {
        key: format!("{}{}", acl::TOKENS, token.secret_hash),
        value: serde_json::to_vec(token).map_err(|e| ApiError::internal(e.to_string()))?,
        lease: None,
    })
}

async fn bootstrap(AxState(api): AxState<Api>) -> ApiResult {
    if !api.auth.enabled() {
        return Err(ApiError::bad_request(
            "acl-disabled",
            "this server runs without ACLs (--acl off)",
        ));
    }
    let (token, secret) = mint(
        "bootstrap management token".into(),
        vec!["operator:write".into()],
    )?;
    let done = api
        .store
        .txn(Txn {
            compares: vec![Compare {
                key: acl::BOOTSTRAPPED.into(),
                mod_revision: 0,
            }],
            ops: vec![
                Op::Put {
                    key: acl::BOOTSTRAPPED.into(),
                    value: token.accessor_id.clone().into_bytes(),
                    lease: None,
                },
                put_token(&token)?,
            ],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "acl-bootstrapped",
            "ACLs are already bootstrapped: ask the holder of a management token for a token",
        ));
    }
    tracing::info!(accessor = %token.accessor_id, "ACL bootstrap: management token created");
    answer(&token, &secret)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    description: String,
    /// Rules, e.g. `kv:app/:read`.
    #[serde(default)]
    rules: Vec<String>,
    /// Shorthand for a sidecar's token: `service:NAME:write` and `service:*:read`.
    #[serde(default)]
    service: Option<String>,
}

async fn create(
    AxState(api): AxState<Api>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Write))?;
    let req: CreateBody = read_json(body, &headers, SMALL_BODY).await?;
    let mut rules = req.rules;
    if let Some(s) = &req.service {
        rules.push(format!("service:{s}:write"));
        rules.push("service:*:read".into());
    }
    if rules.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-rule",
            "a token needs at least one rule (or `service`)",
        ));
    }
    let problems: Vec<String> = rules.iter().filter_map(|r| Rule::parse(r).err()).collect();
    if !problems.is_empty() {
        return Err(ApiError::bad_request("invalid-rule", problems.join("; ")));
    }
    if req.description.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid-body",
            "a description is at most 256 bytes",
        ));
    }
    let (token, secret) = mint(req.description, rules)?;
    api.store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![put_token(&token)?],
        })
        .await?;
    tracing::info!(accessor = %token.accessor_id, rules = ?token.rules, "ACL token created");
    answer(&token, &secret)
}

async fn all_tokens(api: &Api) -> Result<Vec<Token>, ApiError> {
    let page = store::list_all(&*api.store, acl::TOKENS).await?;
    Ok(page
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

async fn list(AxState(api): AxState<Api>, caller: Caller) -> ApiResult {
    caller.require(&Need::Operator(Access::Write))?;
    let items: Vec<_> = all_tokens(&api).await?.iter().map(Token::public).collect();
    Ok(Json(json!({"items": items})).into_response())
}

async fn revoke(
    AxState(api): AxState<Api>,
    caller: Caller,
    Path(accessor): Path<String>,
) -> ApiResult {
    caller.require(&Need::Operator(Access::Write))?;
    let token = all_tokens(&api)
        .await?
        .into_iter()
        .find(|t| t.accessor_id == accessor)
        .ok_or_else(|| ApiError::not_found(format!("no token with accessor {accessor}")))?;
    api.store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Delete {
                key: format!("{}{}", acl::TOKENS, token.secret_hash),
            }],
        })
        .await?;
    tracing::info!(accessor = %accessor, "ACL token revoked");
    Ok(Json(json!({"revoked": accessor})).into_response())
}

async fn whoami(caller: Caller) -> ApiResult {
    match caller.clone() {
        Caller::Token(t) => Ok(Json(t.public()).into_response()),
        Caller::Anyone => Ok(Json(json!({"acl": "off"})).into_response()),
        other => other
            .require(&Need::Operator(Access::Read))
            .map(|()| Json(json!({})).into_response()),
    }
}
