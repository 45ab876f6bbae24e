//! The store: a small contract with etcd's semantics, so the embedded store (one machine)
//! and etcd (several `weft server` replicas) are interchangeable.
//!
//! * Keys are UTF-8 paths; values are bytes. Every write transaction gets the next
//!   **revision**; each key remembers the revision that created and last modified it.
//! * A [`Txn`] is a set of guards (compare a key's `mod_revision`; `0` means "absent")
//!   and operations applied all together, or not at all when a guard fails: this is
//!   compare-and-swap, and how a multi-document `apply` stays all-or-nothing.
//! * A **watch** streams every change under a prefix from a revision; when the store no
//!   longer holds that history it says [`WatchEvent::Compacted`] and the watcher lists
//!   again (as with etcd).
//! * A **lease** has a TTL and is kept alive by its holder; when it lapses, every key
//!   written with it is deleted (one revision, watchers see the deletes).

use std::{future::Future, pin::Pin, time::Duration};

use tokio::sync::mpsc;

/// The future every store operation returns (boxed so the store is a trait object).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store revision: increases by one per committed write transaction.
pub type Revision = u64;

/// A lease id (never 0).
pub type LeaseId = u64;

/// One key with its value and history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease holding the key, if any.
    pub lease: Option<LeaseId>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (by a write, or because its lease lapsed) at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes committed at `revision` (one write transaction).
    Changes {
        /// The revision of the transaction.
        revision: Revision,
        /// Its changes under the watched prefix.
        events: Vec<Event>,
    },
    /// The history asked for is gone (or the watcher fell too far behind): list again
    /// and watch from the listed revision.
    Compacted,
}

/// A guard of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// Its expected `mod_revision`; `0` means the key must not exist.
    pub mod_revision: Revision,
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a key, held by a lease if given.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach (must exist).
        lease: Option<LeaseId>,
    },
    /// Delete a key (no error when absent).
    Delete {
        /// The key.
        key: String,
    },
}

/// Guards and operations applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for the operations to run.
    pub compares: Vec<Compare>,
    /// Applied in order, in one revision.
    pub ops: Vec<Op>,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every guard held (and so the operations were applied).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
}

/// A page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// Keys in order.
    pub kvs: Vec<KeyValue>,
    /// The store revision the page was read at.
    pub revision: Revision,
    /// Whether keys beyond `limit` remain.
    pub more: bool,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The backend failed (disk, network); the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request is not acceptable to the store (e.g. too large).
    #[error("{0}")]
    Invalid(String),
}

/// Largest value the store accepts (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The store contract (see the module docs).
pub trait Store: Send + Sync + 'static {
    /// Keys in `[from, prefix_end(prefix))` in order, at most `limit` (0 = no limit),
    /// starting at `from` (which must start with `prefix`; pass `prefix` for the start).
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        from: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, RangeResult>;

    /// Applies a transaction.
    fn txn(&self, txn: Txn) -> StoreFuture<'_, TxnResult>;

    /// Streams changes under `prefix` after revision `after` (the current revision from
    /// a `range` gives "everything from now on"). Bounded: a watcher that falls too far
    /// behind gets [`WatchEvent::Compacted`].
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> StoreFuture<'a, mpsc::Receiver<WatchEvent>>;

    /// Creates a lease.
    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId>;

    /// Renews a lease for its TTL.
    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, ()>;

    /// Ends a lease now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()>;

    /// A short name for logs and `weft status` (`embedded`, `etcd`).
    fn kind(&self) -> &'static str;
}

/// Refuses a value over [`MAX_VALUE_BYTES`] (every implementation applies the same limit).
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::Invalid(format!(
            "value of {} bytes is over the limit of {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// The guard "`key` is at `mod_revision`" when a compare-and-swap revision is given.
pub fn guard(key: &str, cas: Option<Revision>) -> Vec<Compare> {
    cas.map(|mod_revision| Compare {
        key: key.to_string(),
        mod_revision,
    })
    .into_iter()
    .collect()
}

/// The first key after every key starting with `prefix` (etcd's "range end").
pub fn prefix_end(prefix: &str) -> String {
    // Keys are UTF-8 paths built by weft; U+10FFFF sorts after every character used.
    format!("{prefix}\u{10FFFF}")
}

/// Reads one key.
pub async fn get(store: &dyn Store, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
    let page = store.range(key, key, 0).await?;
    let revision = page.revision;
    Ok((page.kvs.into_iter().find(|kv| kv.key == key), revision))
}

/// Read-decide-write rounds a compare-and-swap gets before it gives up.
pub const CAS_ATTEMPTS: usize = 5;

/// Runs `round` — read, decide, then a write guarded on what was read — until a round's
/// write wins (`Some`), at most [`CAS_ATTEMPTS`] times. `Ok(None)`: every round lost a
/// race with another writer; the caller answers 409 with its own words.
pub async fn compare_and_swap<T, E, F, Fut>(mut round: F) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    for _ in 0..CAS_ATTEMPTS {
        if let Some(done) = round().await? {
            return Ok(Some(done));
        }
    }
    Ok(None)
}

/// Reads every key under `prefix`, page by page.
pub async fn list_all(store: &dyn Store, prefix: &str) -> Result<RangeResult, StoreError> {
    const PAGE: usize = 1000;
    let mut out = RangeResult {
        kvs: Vec::new(),
        revision: 0,
        more: false,
    };
    let mut from = prefix.to_string();
    loop {
        let page = store.range(prefix, &from, PAGE).await?;
        if out.revision == 0 {
            out.revision = page.revision;
        }
        let more = page.more;
        if let Some(last) = page.kvs.last() {
            from = format!("{}\0", last.key);
        }
        out.kvs.extend(page.kvs);
        if !more {
            return Ok(out);
        }
    }
}

/// Writes one key (no guard).
pub async fn put(
    store: &dyn Store,
    key: &str,
    value: Vec<u8>,
    lease: Option<LeaseId>,
) -> Result<Revision, StoreError> {
    let r = store
        .txn(Txn {
            compares: Vec::new(),
            ops: vec![Op::Put {
                key: key.to_string(),
                value,
                lease,
            }],
        })
        .await?;
    Ok(r.revision)
}
