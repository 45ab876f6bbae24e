//! The embedded store: [`Store`] over one redb file, for a single `weft server`.
//!
//! Durability: every write transaction commits with redb's immediate durability (fsync)
//! before it is acknowledged, so an acknowledged write survives `kill -9`.
//!
//! Writes are serialized by one mutex (redb has one writer anyway); the revision counter
//! lives in the same redb transaction as the keys, so it never runs ahead of the data.
//! Watch history is kept in memory (the last [`HISTORY`] revisions): after a restart, a
//! watcher asking for older history is told [`WatchEvent::Compacted`] and lists again.
//! Leases live in memory with their TTL persisted; at start every persisted lease gets a
//! full TTL again (as etcd does after a leader change), so a restart never expires a
//! healthy holder's keys.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use crate::store::{
    prefix_end, Event, KeyValue, LeaseId, RangeResult, Revision, Store, StoreError, StoreFuture,
    Txn, TxnResult, WatchEvent,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");

/// Revisions of change history kept for watchers.
pub const HISTORY: usize = 10_000;
/// Changes a watcher may have queued before it is told to list again.
const WATCH_QUEUE: usize = 1024;
/// How often lapsed leases are looked for.
const LEASE_TICK: Duration = Duration::from_millis(200);

/// The embedded store (cheap to clone).
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Held for the whole of a write transaction, and while publishing its events.
    writer: Mutex<()>,
    history: Mutex<VecDeque<Arc<Committed>>>,
    events: broadcast::Sender<Arc<Committed>>,
    leases: Mutex<HashMap<LeaseId, LeaseState>>,
}

struct Committed {
    revision: Revision,
    events: Vec<Event>,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// Creates the store's directory (0700) and file (0600) with those modes from the start —
/// the file holds the mesh CA's key and the ACL token hashes, and is never readable by
/// others, not even for an instant — and restricts ones made by an older version.
fn create_private(dir: &Path, file: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |what: &Path, e: std::io::Error| {
        unavailable(format!("cannot create {}: {e}", what.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(dir, e))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .map_err(|e| fail(file, e))?;
    for (p, mode) in [(dir, 0o700), (file, 0o600)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| unavailable(format!("cannot restrict {}: {e}", p.display())))?;
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no invariant
    // spans a panic point), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The record stored per key: create revision, mod revision, lease (0 = none), value.
fn encode(create: Revision, modified: Revision, lease: Option<LeaseId>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    let word = |i: usize| -> Result<u64, StoreError> {
        raw.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| unavailable(format!("corrupt record for key {key}")))
    };
    let lease = word(2)?;
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: word(0)?,
        mod_revision: word(1)?,
        lease: (lease != 0).then_some(lease),
        value: raw[24..].to_vec(),
    })
}

impl Embedded {
    /// Opens (or creates) the store in `dir` (file `weft.redb`) and starts lease expiry.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        let path = dir.join("weft.redb");
        create_private(dir, &path)?;
        let db = Database::create(&path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        // Create the tables, and find the leases and the keys they hold.
        let mut leases = HashMap::new();
        {
            let w = db.begin_write().map_err(unavailable)?;
            {
                w.open_table(KV).map_err(unavailable)?;
                w.open_table(META).map_err(unavailable)?;
                let table = w.open_table(LEASES).map_err(unavailable)?;
                for row in table.iter().map_err(unavailable)? {
                    let (id, ttl) = row.map_err(unavailable)?;
                    let ttl = Duration::from_millis(ttl.value());
                    leases.insert(
                        id.value(),
                        LeaseState {
                            ttl,
                            deadline: Instant::now() + ttl,
                            keys: BTreeSet::new(),
                        },
                    );
                }
            }
            w.commit().map_err(unavailable)?;
        }
        {
            let r = db.begin_read().map_err(unavailable)?;
            let kv = r.open_table(KV).map_err(unavailable)?;
            for row in kv.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                let rec = decode(k.value(), v.value())?;
                if let Some(l) = rec.lease.and_then(|id| leases.get_mut(&id)) {
                    l.keys.insert(rec.key);
                }
            }
        }
        let (events, _) = broadcast::channel(WATCH_QUEUE);
        let store = Embedded {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(()),
                history: Mutex::new(VecDeque::new()),
                events,
                leases: Mutex::new(leases),
            }),
        };
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_TICK);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Embedded { inner };
                let now = Instant::now();
                let lapsed: Vec<LeaseId> = lock(&store.inner.leases)
                    .iter()
                    .filter(|(_, l)| l.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in lapsed {
                    tracing::debug!(lease = id, "lease lapsed");
                    if let Err(e) = store.revoke(id).await {
                        tracing::warn!(lease = id, error = %e, "could not expire lease");
                    }
                }
            }
        });
        Ok(store)
    }

    fn current_revision(&self) -> Result<Revision, StoreError> {
        let r = self.inner.db.begin_read().map_err(unavailable)?;
        let meta = r.open_table(META).map_err(unavailable)?;
        Ok(meta
            .get("revision")
            .map_err(unavailable)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    fn range_blocking(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let r = self.inner.db.begin_read().map_err(unavailable)?;
        let meta = r.open_table(META).map_err(unavailable)?;
        let revision = meta
            .get("revision")
            .map_err(unavailable)?
            .map(|g| g.value())
            .unwrap_or(0);
        let kv = r.open_table(KV).map_err(unavailable)?;
        let end = prefix_end(prefix);
        let from = if from < prefix { prefix } else { from };
        let mut kvs = Vec::new();
        let mut more = false;
        for row in kv.range(from..end.as_str()).map_err(unavailable)? {
            let (k, v) = row.map_err(unavailable)?;
            if limit != 0 && kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(decode(k.value(), v.value())?);
        }
        Ok(RangeResult {
            kvs,
            revision,
            more,
        })
    }

    /// Applies `txn` (blocking: fsyncs). Also used to delete a lapsed lease's keys.
    fn txn_blocking(&self, txn: Txn, end_lease: Option<LeaseId>) -> Result<TxnResult, StoreError> {
        use crate::store::Op;
        let _writer = lock(&self.inner.writer);
        let mut txn = txn;
        if let Some(id) = end_lease {
            // Read the lease's keys under the writer lock, so no put can attach a key
            // to it between this read and the commit.
            match lock(&self.inner.leases).get(&id) {
                Some(l) => txn.ops.extend(
                    l.keys
                        .iter()
                        .map(|key| crate::store::Op::Delete { key: key.clone() }),
                ),
                None => return Err(StoreError::LeaseNotFound(id)),
            }
        }
        let w = self.inner.db.begin_write().map_err(unavailable)?;
        let mut events = Vec::new();
        let revision;
        // Lease bookkeeping, applied only once the transaction has committed.
        let mut attach: Vec<(LeaseId, String)> = Vec::new();
        let mut detach: Vec<(LeaseId, String)> = Vec::new();
        {
            let mut kv = w.open_table(KV).map_err(unavailable)?;
            let mut meta = w.open_table(META).map_err(unavailable)?;
            let current = meta
                .get("revision")
                .map_err(unavailable)?
                .map(|g| g.value())
                .unwrap_or(0);
            for c in &txn.compares {
                let found = match kv.get(c.key.as_str()).map_err(unavailable)? {
                    Some(raw) => decode(&c.key, raw.value())?.mod_revision,
                    None => 0,
                };
                if found != c.mod_revision {
                    return Ok(TxnResult {
                        succeeded: false,
                        revision: current,
                    });
                }
            }
            let next = current + 1;
            for op in txn.ops {
                match op {
                    Op::Put { key, value, lease } => {
                        crate::store::check_value(&value)?;
                        if let Some(id) = lease {
                            if !lock(&self.inner.leases).contains_key(&id) {
                                return Err(StoreError::LeaseNotFound(id));
                            }
                        }
                        let previous = match kv.get(key.as_str()).map_err(unavailable)? {
                            Some(raw) => Some(decode(&key, raw.value())?),
                            None => None,
                        };
                        let create = previous.as_ref().map_or(next, |p| p.create_revision);
                        if let Some(old) = previous.as_ref().and_then(|p| p.lease) {
                            detach.push((old, key.clone()));
                        }
                        if let Some(id) = lease {
                            attach.push((id, key.clone()));
                        }
                        kv.insert(key.as_str(), encode(create, next, lease, &value).as_slice())
                            .map_err(unavailable)?;
                        events.push(Event::Put(KeyValue {
                            key,
                            value,
                            create_revision: create,
                            mod_revision: next,
                            lease,
                        }));
                    }
                    Op::Delete { key } => {
                        let removed = kv.remove(key.as_str()).map_err(unavailable)?;
                        if let Some(raw) = removed {
                            if let Some(old) = decode(&key, raw.value())?.lease {
                                detach.push((old, key.clone()));
                            }
                            events.push(Event::Delete {
                                key,
                                revision: next,
                            });
                        }
                    }
                }
            }
            revision = if events.is_empty() { current } else { next };
            meta.insert("revision", revision).map_err(unavailable)?;
            if let Some(id) = end_lease {
                w.open_table(LEASES)
                    .map_err(unavailable)?
                    .remove(id)
                    .map_err(unavailable)?;
            }
        }
        w.commit().map_err(unavailable)?;
        {
            let mut leases = lock(&self.inner.leases);
            for (id, key) in detach {
                if let Some(l) = leases.get_mut(&id) {
                    l.keys.remove(&key);
                }
            }
            for (id, key) in attach {
                if let Some(l) = leases.get_mut(&id) {
                    l.keys.insert(key);
                }
            }
            if let Some(id) = end_lease {
                leases.remove(&id);
            }
        }
        if !events.is_empty() {
            let committed = Arc::new(Committed { revision, events });
            let mut history = lock(&self.inner.history);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(committed.clone());
            // No receiver is fine: nobody watches.
            let _ = self.inner.events.send(committed);
        }
        Ok(TxnResult {
            succeeded: true,
            revision,
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Embedded) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(this))
                .await
                .map_err(|e| unavailable(format!("store task failed: {e}")))?
        })
    }
}

impl Store for Embedded {
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        from: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, RangeResult> {
        let (prefix, from) = (prefix.to_string(), from.to_string());
        self.blocking(move |s| s.range_blocking(&prefix, &from, limit))
    }

    fn txn(&self, txn: Txn) -> StoreFuture<'_, TxnResult> {
        self.blocking(move |s| s.txn_blocking(txn, None))
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> StoreFuture<'a, mpsc::Receiver<WatchEvent>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let current = self.current_revision()?;
            let (tx, rx) = mpsc::channel(WATCH_QUEUE);
            let (backlog, mut live, compacted) = {
                let history = lock(&self.inner.history);
                let live = self.inner.events.subscribe();
                let first = history.front().map_or(current + 1, |c| c.revision);
                let compacted = after < current && after + 1 < first;
                let backlog: Vec<Arc<Committed>> = history
                    .iter()
                    .filter(|c| c.revision > after)
                    .cloned()
                    .collect();
                (backlog, live, compacted)
            };
            tokio::spawn(async move {
                let matching = |c: &Committed| -> Option<WatchEvent> {
                    let events: Vec<Event> = c
                        .events
                        .iter()
                        .filter(|e| e.key().starts_with(&prefix))
                        .cloned()
                        .collect();
                    (!events.is_empty()).then_some(WatchEvent::Changes {
                        revision: c.revision,
                        events,
                    })
                };
                if compacted {
                    let _ = tx.send(WatchEvent::Compacted).await;
                    return;
                }
                let mut seen = after;
                for c in backlog {
                    seen = c.revision;
                    if let Some(ev) = matching(&c) {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                loop {
                    match live.recv().await {
                        Ok(c) if c.revision <= seen => {}
                        Ok(c) => {
                            seen = c.revision;
                            if let Some(ev) = matching(&c) {
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(WatchEvent::Compacted).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(rx)
        })
    }

    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId> {
        self.blocking(move |s| {
            let id = fastrand::u64(1..u64::MAX >> 11); // fits a JSON number exactly
            let w = s.inner.db.begin_write().map_err(unavailable)?;
            w.open_table(LEASES)
                .map_err(unavailable)?
                .insert(id, ttl.as_millis() as u64)
                .map_err(unavailable)?;
            w.commit().map_err(unavailable)?;
            lock(&s.inner.leases).insert(
                id,
                LeaseState {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            Ok(id)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            match lock(&self.inner.leases).get_mut(&lease) {
                Some(l) => {
                    l.deadline = Instant::now() + l.ttl;
                    Ok(())
                }
                None => Err(StoreError::LeaseNotFound(lease)),
            }
        })
    }

    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        self.blocking(move |s| {
            s.txn_blocking(Txn::default(), Some(lease))?;
            Ok(())
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
