//! The query conventions every endpoint shares: the parameters (one extractor: a
//! malformed query is a 400 `invalid-query` before the handler runs), pages of lists
//! (`limit`, `after`, `next`), and long-polls (`index`, `wait`).

use std::time::Duration;

use axum::{
    extract::{FromRequestParts, Query},
    http::request::Parts,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    store::{Revision, Store, WatchEvent},
};

const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Every query parameter the API reads (each endpoint uses some).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Params {
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
    #[serde(default)]
    pub(crate) file: Option<String>,
    #[serde(default)]
    pub(crate) limit: Option<usize>,
    #[serde(default)]
    pub(crate) after: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) index: Option<Revision>,
    #[serde(default)]
    pub(crate) wait: Option<String>,
    #[serde(default)]
    pub(crate) cas: Option<Revision>,
    #[serde(default)]
    pub(crate) recurse: Option<bool>,
    #[serde(default)]
    pub(crate) raw: Option<bool>,
    #[serde(default)]
    pub(crate) revision: Option<Revision>,
    #[serde(default)]
    pub(crate) local: Option<bool>,
    #[serde(default)]
    pub(crate) service: Option<String>,
    #[serde(default)]
    pub(crate) window: Option<String>,
    #[serde(default)]
    pub(crate) from: Option<String>,
    #[serde(default)]
    pub(crate) to: Option<String>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) method: Option<String>,
    #[serde(default)]
    pub(crate) authority: Option<String>,
    #[serde(default)]
    pub(crate) max_rps: Option<u32>,
    #[serde(default)]
    pub(crate) body: Option<u32>,
    #[serde(default)]
    pub(crate) redact: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Params, ApiError> {
        Query::<Params>::from_request_parts(parts, state)
            .await
            .map(|Query(p)| p)
            .map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))
    }
}

/// A page of a list: `{"items": [...], "next": TOKEN}`, `next` absent on the last page.
pub(crate) fn page(items: impl serde::Serialize, next: Option<String>) -> Value {
    let mut v = json!({ "items": items });
    if let Some(n) = next {
        v["next"] = json!(n);
    }
    v
}

pub(crate) fn limit(p: &Params) -> Result<usize, ApiError> {
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
pub(crate) async fn wait_for_key(
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
