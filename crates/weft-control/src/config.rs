//! Configuration resources in the store: `apply` (multi-document, all or nothing, with a
//! dry run that shows the diff), `get`, `list`, `delete`.
//!
//! Each resource is stored as the JSON of the document the user wrote, under
//! `/weft/config/<Kind>/<name>`. Validation always runs over the whole set that would
//! result (the stored resources with the change applied), using the same
//! `weft_model::parse` the file-configured proxy uses, so a route may not reach a service
//! that does not exist, and a service a route uses cannot be deleted.
//!
//! Concurrency: every config write also bumps `/weft/meta/config`, and the transaction is
//! guarded on that key's revision as read before validating; a write that raced another
//! is validated again from the new state.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::{
    error::ApiError,
    store::{self, Compare, Op, Revision, Store, Txn},
};

/// Prefix of stored resources.
pub const PREFIX: &str = "/weft/config/";
const GUARD: &str = "/weft/meta/config";
/// The kinds the control plane stores.
pub const KINDS: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "Service",
    "TCPRoute",
    "TLSRoute",
    "Mesh",
    "Intention",
    "Canary",
];
/// Largest configuration text accepted by one apply.
pub const MAX_APPLY_BYTES: usize = 4 * 1024 * 1024;

/// The store key of a resource.
pub fn key(kind: &str, name: &str) -> String {
    format!("{PREFIX}{kind}/{name}")
}

/// `Kind/name` of a store key under [`PREFIX`].
pub fn id_of(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(PREFIX)?.split_once('/')
}

/// What an apply did (or would do) to one resource.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The kind.
    pub kind: String,
    /// The name.
    pub name: String,
    /// `created`, `configured`, `unchanged` or `deleted`.
    pub action: &'static str,
    /// A line diff of the resource (pretty JSON), for created/configured/deleted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

/// The answer to an apply or delete.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Store revision after the write (the current one for a dry run or no-op).
    pub revision: Revision,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// One line per resource.
    pub changes: Vec<Change>,
}

struct Stored {
    docs: BTreeMap<(String, String), Value>,
    guard: Revision,
}

async fn load(store: &dyn Store) -> Result<Stored, ApiError> {
    let page = store::list_all(store, PREFIX).await?;
    let mut docs = BTreeMap::new();
    for kv in page.kvs {
        if let Some((kind, name)) = id_of(&kv.key) {
            let value: Value = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("stored {kind}/{name} unreadable: {e}")))?;
            docs.insert((kind.to_string(), name.to_string()), value);
        }
    }
    let (guard, _) = store::get(store, GUARD).await?;
    Ok(Stored {
        docs,
        guard: guard.map_or(0, |kv| kv.mod_revision),
    })
}

/// Validates `user_text` (named `file` in errors) together with `others` (stored
/// resources it does not replace). Errors inside `others` name the stored resource.
///
/// A service registered in the catalog (`registered`) may be named by a route without a
/// `Service` document of its own: it gets the defaults, as docs/mesh.md promises. So
/// each such service is validated as if it had an empty `Service` document.
fn validate(
    file: &str,
    user_text: &str,
    others: &[(&(String, String), &Value)],
    registered: &BTreeSet<String>,
) -> Result<(), ApiError> {
    let mut text = String::from(user_text);
    let user_lines = text.lines().count();
    for (_, value) in others {
        text.push_str("\n---\n");
        text.push_str(&value.to_string());
    }
    let defined: BTreeSet<&str> = others
        .iter()
        .filter(|((kind, _), _)| kind == "Service")
        .map(|((_, name), _)| name.as_str())
        .collect();
    let defined_here = |name: &str| {
        weft_model::yaml::parse_documents(user_text)
            .map(|docs| {
                docs.iter().any(|d| {
                    d.value.get("kind").and_then(Value::as_str) == Some("Service")
                        && d.value.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                })
            })
            .unwrap_or(false)
    };
    for name in registered {
        if !defined.contains(name.as_str()) && !defined_here(name) {
            text.push_str("\n---\n");
            text.push_str(
                &serde_json::json!({"kind": "Service", "metadata": {"name": name}, "spec": {}})
                    .to_string(),
            );
        }
    }
    match weft_model::parse(file, &text) {
        Ok(_) => Ok(()),
        Err(errors) => {
            let details = errors
                .0
                .into_iter()
                .map(|mut e| {
                    match e.line {
                        Some(line) if line > user_lines => {
                            // The message names the stored resource already.
                            e.file = "stored configuration".into();
                            e.line = None;
                        }
                        _ => {}
                    }
                    let text = e.to_string();
                    if text.contains("unknown Service") {
                        // In the mesh, registering an instance names a service too.
                        format!("{text} (no Service document and no registered instance)")
                    } else {
                        text
                    }
                })
                .collect::<Vec<_>>();
            Err(ApiError::invalid_config(details))
        }
    }
}

/// Applies every document of `text` at once (or, with `dry_run`, says what would change).
pub async fn apply(
    store: &dyn Store,
    file: &str,
    text: &str,
    dry_run: bool,
    registered: &BTreeSet<String>,
) -> Result<Outcome, ApiError> {
    if text.len() > MAX_APPLY_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "configuration of {} bytes is over the limit of {MAX_APPLY_BYTES}",
                text.len()
            ),
        ));
    }
    let docs = weft_model::yaml::parse_documents(text).map_err(|e| {
        ApiError::invalid_config(vec![format!(
            "{file}:{}: YAML syntax: {}",
            e.line, e.message
        )])
    })?;
    // Name every document first: validation needs to know which stored ones they replace.
    let mut incoming: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut problems = Vec::new();
    for doc in &docs {
        if doc.value.is_null() {
            continue;
        }
        let kind = doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = doc
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !KINDS.contains(&kind) || name.is_empty() {
            continue; // weft_model::parse names the problem with its line below
        }
        if !valid_name(name) {
            problems.push(format!(
                "{file}:{}: {kind} `{name}`: a name is 1-253 characters of a-z, 0-9, `-` and `.`",
                doc.start_line
            ));
        }
        if incoming
            .insert((kind.to_string(), name.to_string()), doc.value.clone())
            .is_some()
        {
            problems.push(format!(
                "{file}:{}: {kind} `{name}` appears twice",
                doc.start_line
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid_config(problems));
    }
    let incoming = &incoming;
    store::compare_and_swap(|| async move {
        let stored = load(store).await?;
        let others: Vec<_> = stored
            .docs
            .iter()
            .filter(|(id, _)| !incoming.contains_key(*id))
            .collect();
        validate(file, text, &others, registered)?;
        let mut changes = Vec::new();
        let mut ops = Vec::new();
        for (id, value) in incoming {
            let before = stored.docs.get(id);
            let action = match before {
                None => "created",
                Some(b) if b == value => "unchanged",
                Some(_) => "configured",
            };
            if action != "unchanged" {
                ops.push(Op::Put {
                    key: key(&id.0, &id.1),
                    value: value.to_string().into_bytes(),
                    lease: None,
                });
            }
            changes.push(Change {
                kind: id.0.clone(),
                name: id.1.clone(),
                action,
                diff: if action == "unchanged" {
                    String::new()
                } else {
                    crate::diff::lines(&pretty(before), &pretty(Some(value)))
                },
            });
        }
        // `None`: raced another config write; the next round validates again.
        let committed = commit(store, ops, stored.guard, dry_run).await?;
        Ok::<_, ApiError>(committed.map(|revision| Outcome {
            revision,
            dry_run,
            changes,
        }))
    })
    .await?
    .ok_or_else(|| ApiError::conflict("configuration kept changing during the apply; try again"))
}

/// Deletes `kind/name`, refused when what remains would not validate (e.g. a route
/// still sends traffic to the service).
pub async fn delete(
    store: &dyn Store,
    kind: &str,
    name: &str,
    dry_run: bool,
    registered: &BTreeSet<String>,
) -> Result<Outcome, ApiError> {
    store::compare_and_swap(|| async move {
        let stored = load(store).await?;
        let id = (kind.to_string(), name.to_string());
        let Some(before) = stored.docs.get(&id) else {
            return Err(ApiError::not_found(format!("no {kind} named `{name}`")));
        };
        let others: Vec<_> = stored.docs.iter().filter(|(i, _)| **i != id).collect();
        validate("(after delete)", "", &others, registered).map_err(|e| {
            e.with_message(format!(
                "cannot delete {kind}/{name}: the rest would not be valid"
            ))
        })?;
        let change = Change {
            kind: kind.to_string(),
            name: name.to_string(),
            action: "deleted",
            diff: crate::diff::lines(&pretty(Some(before)), ""),
        };
        let ops = vec![Op::Delete {
            key: key(kind, name),
        }];
        let committed = commit(store, ops, stored.guard, dry_run).await?;
        Ok::<_, ApiError>(committed.map(|revision| Outcome {
            revision,
            dry_run,
            changes: vec![change],
        }))
    })
    .await?
    .ok_or_else(|| ApiError::conflict("configuration kept changing during the delete; try again"))
}

/// Writes `ops` guarded on the config guard; `None` when another write came first.
async fn commit(
    store: &dyn Store,
    mut ops: Vec<Op>,
    guard: Revision,
    dry_run: bool,
) -> Result<Option<Revision>, ApiError> {
    if dry_run || ops.is_empty() {
        let (_, revision) = store::get(store, GUARD).await?;
        return Ok(Some(revision));
    }
    ops.push(Op::Put {
        key: GUARD.into(),
        value: Vec::new(),
        lease: None,
    });
    let r = store
        .txn(Txn {
            compares: vec![Compare {
                key: GUARD.into(),
                mod_revision: guard,
            }],
            ops,
        })
        .await?;
    Ok(r.succeeded.then_some(r.revision))
}

/// Stored resources of `kind` (all kinds when `None`), in name order, paginated.
pub async fn list(
    store: &dyn Store,
    kind: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<(Value, Revision)>, Option<String>, Revision), ApiError> {
    let prefix = match kind {
        Some(k) => format!("{PREFIX}{k}/"),
        None => PREFIX.to_string(),
    };
    let from = match after {
        Some(a) => format!("{prefix}{a}\0"),
        None => prefix.clone(),
    };
    let page = store.range(&prefix, &from, limit).await?;
    let next = if page.more {
        page.kvs
            .last()
            .and_then(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
    } else {
        None
    };
    let items = page
        .kvs
        .iter()
        .filter_map(|kv| {
            serde_json::from_slice(&kv.value)
                .ok()
                .map(|v| (v, kv.mod_revision))
        })
        .collect();
    Ok((items, next, page.revision))
}

/// One stored resource.
pub async fn get(store: &dyn Store, kind: &str, name: &str) -> Result<Value, ApiError> {
    match store::get(store, &key(kind, name)).await?.0 {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored {kind}/{name} unreadable: {e}"))),
        None => Err(ApiError::not_found(format!("no {kind} named `{name}`"))),
    }
}

/// Canonical kind spelling (`httproute` → `HTTPRoute`), or an error listing the kinds.
pub fn canonical_kind(kind: &str) -> Result<&'static str, ApiError> {
    KINDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(kind) || format!("{k}s").eq_ignore_ascii_case(kind))
        .copied()
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown-kind",
                format!(
                    "unknown kind `{kind}` (expected one of {})",
                    KINDS.join(", ")
                ),
            )
        })
}

/// DNS-label-like names (they appear in keys, URLs and metric labels).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn pretty(v: Option<&Value>) -> String {
    v.and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or_default()
}
