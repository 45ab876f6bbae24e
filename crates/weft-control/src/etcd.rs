//! The etcd store: [`Store`] over an etcd cluster (v3 API, `etcd-client`), so several
//! `weft server` replicas share one source of truth.
//!
//! The contract maps one to one: ranges, transactions with `mod_revision` guards (a
//! missing key's is 0 in etcd too), watches from a revision (etcd says when the history
//! was compacted), and leases. etcd expires leases itself, once, by its own Raft leader:
//! lease expiry needs no weft leader. Every replica follows the store's watch and serves
//! the API and discovery streams; they are interchangeable.
//!
//! Built only with the `etcd` cargo feature: `etcd-client` compiles etcd's protobuf files
//! with `protoc` at build time (Debian: `protobuf-compiler`), and the default build must
//! need nothing beyond the Rust toolchain.

use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    Txn as EtcdTxn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use crate::store::{
    prefix_end, Event, KeyValue, LeaseId, Op, RangeResult, Revision, Store, StoreError,
    StoreFuture, Txn, TxnResult, WatchEvent,
};

/// Changes a watcher may have queued before the etcd stream is made to wait.
const WATCH_QUEUE: usize = 1024;

/// The etcd store (cheap to clone: one gRPC channel balanced over the endpoints).
#[derive(Clone)]
pub struct Etcd {
    client: Client,
}

/// Whether the request never reached etcd (a connection to a dead member was refused):
/// safe to send again, and the balanced channel may pick a live member next time.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error")
        || text.contains("Connection refused")
        || text.contains("connection error")
}

/// Whether the cluster is between leaders: a read (or another operation that may be
/// repeated without changing its outcome) is worth sending again shortly.
fn between_leaders(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("leader changed") || text.contains("no leader")
}

/// Whether an operation may be sent twice with the same outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads, watches, keep-alives, revokes.
    Safe,
    /// Writes: only when the first attempt surely never reached etcd.
    OnlyIfNeverSent,
}

/// Runs `op` on a client, again (for up to ~2 s, the time of an etcd leader election)
/// while it fails in a way `repeat` allows.
async fn retrying<T, Fut>(
    client: &Client,
    repeat: Repeat,
    mut op: impl FnMut(Client) -> Fut,
) -> Result<T, etcd_client::Error>
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut attempt: u32 = 0;
    loop {
        match op(client.clone()).await {
            Err(e)
                if attempt < 12
                    && (never_sent(&e) || (repeat == Repeat::Safe && between_leaders(&e))) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis((25 * u64::from(attempt)).min(200))).await;
            }
            other => return other,
        }
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn lease_error(id: LeaseId, e: etcd_client::Error) -> StoreError {
    if e.to_string().contains("lease not found") {
        StoreError::LeaseNotFound(id)
    } else {
        unavailable(e)
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as Revision)
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision().max(0) as Revision,
        mod_revision: kv.mod_revision().max(0) as Revision,
        lease: (kv.lease() > 0).then_some(kv.lease() as LeaseId),
    }
}

impl Etcd {
    /// Connects to the cluster (`http://host:port`, several for failover).
    pub async fn connect(endpoints: &[String]) -> Result<Etcd, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(Etcd { client })
    }
}

impl Store for Etcd {
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        from: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, RangeResult> {
        Box::pin(async move {
            let from = if from < prefix { prefix } else { from };
            let mut options = GetOptions::new().with_range(prefix_end(prefix));
            if limit != 0 {
                options = options.with_limit(limit as i64);
            }
            let resp = retrying(&self.client, Repeat::Safe, |mut c| {
                let (from, options) = (from.to_string(), options.clone());
                async move { c.get(from, Some(options)).await }
            })
            .await
            .map_err(unavailable)?;
            Ok(RangeResult {
                kvs: resp.kvs().iter().map(key_value).collect(),
                revision: revision(resp.header()),
                more: resp.more(),
            })
        })
    }

    fn txn(&self, txn: Txn) -> StoreFuture<'_, TxnResult> {
        Box::pin(async move {
            let mut ops = Vec::with_capacity(txn.ops.len());
            let mut lease_used = None;
            for op in txn.ops {
                match op {
                    Op::Put { key, value, lease } => {
                        crate::store::check_value(&value)?;
                        let options = lease.map(|l| {
                            lease_used = Some(l);
                            PutOptions::new().with_lease(l as i64)
                        });
                        ops.push(TxnOp::put(key, value, options));
                    }
                    Op::Delete { key } => ops.push(TxnOp::delete(key, None)),
                }
            }
            let compares: Vec<EtcdCompare> = txn
                .compares
                .into_iter()
                .map(|c| EtcdCompare::mod_revision(c.key, CompareOp::Equal, c.mod_revision as i64))
                .collect();
            let txn = EtcdTxn::new().when(compares).and_then(ops);
            let resp = retrying(&self.client, Repeat::OnlyIfNeverSent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| match lease_used {
                Some(l) => lease_error(l, e),
                None => unavailable(e),
            })?;
            Ok(TxnResult {
                succeeded: resp.succeeded(),
                revision: revision(resp.header()),
            })
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> StoreFuture<'a, mpsc::Receiver<WatchEvent>> {
        Box::pin(async move {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(after as i64 + 1);
            let mut stream = retrying(&self.client, Repeat::Safe, |mut c| {
                let options = options.clone();
                async move { c.watch(prefix, Some(options)).await }
            })
            .await
            .map_err(unavailable)?;
            let (tx, rx) = mpsc::channel(WATCH_QUEUE);
            tokio::spawn(async move {
                loop {
                    let resp = match stream.message().await {
                        Ok(Some(r)) => r,
                        // The stream ended or failed: the watcher lists again.
                        Ok(None) | Err(_) => {
                            let _ = tx.send(WatchEvent::Compacted).await;
                            return;
                        }
                    };
                    if resp.compact_revision() > 0 || resp.canceled() {
                        let _ = tx.send(WatchEvent::Compacted).await;
                        return;
                    }
                    // One response may span several revisions: deliver one batch each.
                    let mut batch: Vec<Event> = Vec::new();
                    let mut at: Revision = 0;
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        let rev = kv.mod_revision().max(0) as Revision;
                        if rev != at && !batch.is_empty() {
                            let events = std::mem::take(&mut batch);
                            if tx
                                .send(WatchEvent::Changes {
                                    revision: at,
                                    events,
                                })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        at = rev;
                        batch.push(match e.event_type() {
                            EventType::Put => Event::Put(key_value(kv)),
                            EventType::Delete => Event::Delete {
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                revision: rev,
                            },
                        });
                    }
                    if !batch.is_empty()
                        && tx
                            .send(WatchEvent::Changes {
                                revision: at,
                                events: batch,
                            })
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId> {
        Box::pin(async move {
            // etcd leases are whole seconds.
            let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
            let resp = retrying(&self.client, Repeat::OnlyIfNeverSent, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await
            .map_err(unavailable)?;
            Ok(resp.id() as LeaseId)
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (mut keeper, mut answers) =
                retrying(&self.client, Repeat::Safe, |mut c| async move {
                    c.lease_keep_alive(lease as i64).await
                })
                .await
                .map_err(|e| lease_error(lease, e))?;
            keeper
                .keep_alive()
                .await
                .map_err(|e| lease_error(lease, e))?;
            match answers.message().await.map_err(|e| lease_error(lease, e))? {
                Some(r) if r.ttl() > 0 => Ok(()),
                _ => Err(StoreError::LeaseNotFound(lease)),
            }
        })
    }

    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            retrying(&self.client, Repeat::Safe, |mut c| async move {
                c.lease_revoke(lease as i64).await
            })
            .await
            .map_err(|e| lease_error(lease, e))?;
            Ok(())
        })
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}
