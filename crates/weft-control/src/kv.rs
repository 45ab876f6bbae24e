//! The application key/value store: hierarchical keys under `/weft/kv/`, with
//! compare-and-swap on a key's modify revision and watches by key or prefix.

use serde::Serialize;

use crate::{
    error::ApiError,
    store::{self, KeyValue, Op, Revision, Store, Txn},
};

/// Prefix of application keys in the store.
pub const PREFIX: &str = "/weft/kv/";
/// Largest value (the store's own limit is a little higher).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Longest key.
pub const MAX_KEY_BYTES: usize = 512;

/// One entry as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The key (without the store prefix).
    pub key: String,
    /// The value, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's length in bytes (fetch `?raw` for non-text values).
    pub size: usize,
    /// Revision that created the key.
    pub create_revision: Revision,
    /// Revision of the last change: the `cas` token.
    pub mod_revision: Revision,
}

impl Entry {
    /// The API view of a stored key.
    pub fn from_kv(kv: &KeyValue) -> Entry {
        Entry {
            key: kv.key.strip_prefix(PREFIX).unwrap_or(&kv.key).to_string(),
            value: std::str::from_utf8(&kv.value).ok().map(str::to_string),
            size: kv.value.len(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }
}

/// Checks a user key: `a/b/c`, no empty segment, no control characters.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.starts_with('/')
        && !key.split('/').any(|s| s == "." || s == "..")
        && !key.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-key",
            format!("a key is 1-{MAX_KEY_BYTES} bytes, not starting with `/`, without `.`/`..` segments or control characters"),
        ))
    }
}

/// Writes `key`; with `cas`, only if its modify revision is that (0: only if absent).
pub async fn put(
    store: &dyn Store,
    key: &str,
    value: Vec<u8>,
    cas: Option<Revision>,
) -> Result<Revision, ApiError> {
    check_key(key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "value of {} bytes is over the limit of {MAX_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    let full = format!("{PREFIX}{key}");
    let compares = store::guard(&full, cas);
    let r = store
        .txn(Txn {
            compares,
            ops: vec![Op::Put {
                key: full,
                value,
                lease: None,
            }],
        })
        .await?;
    if r.succeeded {
        Ok(r.revision)
    } else {
        Err(cas_failed(store, key).await)
    }
}

async fn cas_failed(store: &dyn Store, key: &str) -> ApiError {
    let current = store::get(store, &format!("{PREFIX}{key}"))
        .await
        .ok()
        .and_then(|(kv, _)| kv)
        .map_or(0, |kv| kv.mod_revision);
    let mut e = ApiError::conflict(format!(
        "compare-and-swap failed: `{key}` is at modRevision {current}"
    ));
    e.code = "cas-failed";
    e
}

/// Reads one key.
pub async fn get(store: &dyn Store, key: &str) -> Result<(KeyValue, Revision), ApiError> {
    check_key(key)?;
    match store::get(store, &format!("{PREFIX}{key}")).await? {
        (Some(kv), rev) => Ok((kv, rev)),
        (None, _) => Err(ApiError::not_found(format!("no key `{key}`"))),
    }
}

/// Deletes one key (with `cas`, only at that modify revision), or every key under it
/// with `recurse`. Returns the revision and how many keys went.
pub async fn delete(
    store: &dyn Store,
    key: &str,
    recurse: bool,
    cas: Option<Revision>,
) -> Result<(Revision, usize), ApiError> {
    check_key(key)?;
    let full = format!("{PREFIX}{key}");
    let keys: Vec<String> = if recurse {
        store::list_all(store, &full)
            .await?
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    } else {
        vec![full.clone()]
    };
    let compares = store::guard(&full, cas);
    let r = store
        .txn(Txn {
            compares,
            ops: keys.iter().map(|k| Op::Delete { key: k.clone() }).collect(),
        })
        .await?;
    if !r.succeeded {
        return Err(cas_failed(store, key).await);
    }
    Ok((r.revision, keys.len()))
}

/// Keys under `prefix` (user form, may be empty), after `after`, at most `limit`.
pub async fn list(
    store: &dyn Store,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Entry>, Option<String>, Revision), ApiError> {
    let full = format!("{PREFIX}{prefix}");
    let from = match after {
        Some(a) => format!("{PREFIX}{a}\0"),
        None => full.clone(),
    };
    let page = store.range(&full, &from, limit).await?;
    let entries: Vec<Entry> = page.kvs.iter().map(Entry::from_kv).collect();
    let next = page
        .more
        .then(|| entries.last().map(|e| e.key.clone()))
        .flatten();
    Ok((entries, next, page.revision))
}
