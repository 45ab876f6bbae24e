//! One leader among the server replicas, elected through the store, for work that must
//! run on one replica at a time (today: pruning retired CA roots; lease expiry needs none,
//! the store does it).
//!
//! The election is etcd's usual one, on the [`Store`] contract so it runs the same on the
//! embedded store (one replica: it leads at once) and on etcd: a replica creates
//! [`KEY`] (only if absent) holding its advertised address, under a lease it keeps alive.
//! The holder leads until its lease lapses (kill -9: at most [`TTL`]) or is revoked (a
//! clean stop: at once); the others watch the key and try again when it is deleted.
//! A replica whose keep-alive fails stops leading before its lease can have lapsed
//! (it renews every [`RENEW`], well inside the TTL), so two leaders overlap only if a
//! replica's clock or scheduler stalls for most of a TTL; work done by the leader must
//! stay safe to repeat (the CA's pruning is a compare-and-swap).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::watch;

use crate::store::{self, Compare, Event, Op, Store, StoreError, Txn, WatchEvent};

/// The key held by the leader; its value is the leader's advertised address.
pub const KEY: &str = "/weft/leader";
/// Lifetime of the leader's lease without renewal.
pub const TTL: Duration = Duration::from_secs(10);
/// How often the lease is renewed.
const RENEW: Duration = Duration::from_secs(3);
/// Pause after a failed attempt (store unreachable).
const RETRY: Duration = Duration::from_secs(1);

/// The key's holder as last seen: its address, and whether it holds the key with this
/// replica's own lease (a restarted replica with the same address does not lead until
/// its predecessor's lease has lapsed).
type Holder = Option<(String, bool)>;

/// This replica's view of the election.
#[derive(Clone)]
pub struct Leadership {
    holder: watch::Receiver<Holder>,
    lease: Arc<AtomicU64>,
}

impl Leadership {
    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.holder.borrow().as_ref().is_some_and(|(_, ours)| *ours)
    }

    /// The leader's advertised address, if one is known.
    pub fn leader(&self) -> Option<String> {
        self.holder.borrow().as_ref().map(|(a, _)| a.clone())
    }

    /// Gives up leadership (and candidacy) at once: the lease is revoked, so another
    /// replica takes over without waiting for it to lapse.
    pub async fn resign(&self, store: &dyn Store) {
        let lease = self.lease.swap(0, Ordering::Relaxed);
        if lease != 0 {
            if let Err(e) = store.revoke(lease).await {
                tracing::warn!(error = %e, "could not resign leadership; it lapses with its lease");
            }
        }
    }
}

/// Starts campaigning as `me` (this replica's advertised address). The task runs until
/// aborted.
pub fn campaign(store: Arc<dyn Store>, me: String) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let lease = Arc::new(AtomicU64::new(0));
    let leadership = Leadership {
        holder: rx,
        lease: lease.clone(),
    };
    let task = tokio::spawn(async move {
        loop {
            if let Err(e) = stand(&*store, &me, &tx, &lease).await {
                tracing::warn!(error = %e, "leader election: store unreachable; retrying");
            }
            if tx.send_replace(None).is_some_and(|(_, ours)| ours) {
                tracing::warn!("no longer the leader");
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    (leadership, task)
}

/// One candidacy, on one lease: take the key when it is free, watch it otherwise; ends
/// with the store's error (the lease may be gone).
async fn stand(
    store: &dyn Store,
    me: &str,
    holder: &watch::Sender<Holder>,
    lease_slot: &AtomicU64,
) -> Result<(), StoreError> {
    let lease = store.grant(TTL).await?;
    lease_slot.store(lease, Ordering::Relaxed);
    loop {
        store
            .txn(Txn {
                compares: vec![Compare {
                    key: KEY.to_string(),
                    mod_revision: 0,
                }],
                ops: vec![Op::Put {
                    key: KEY.to_string(),
                    value: me.as_bytes().to_vec(),
                    lease: Some(lease),
                }],
            })
            .await?;
        let (current, revision) = store::get(store, KEY).await?;
        let now = current.map(|kv| {
            let ours = kv.lease == Some(lease);
            (String::from_utf8_lossy(&kv.value).into_owned(), ours)
        });
        let before = holder.send_replace(now.clone());
        if before != now {
            match &now {
                Some((_, true)) => tracing::info!(server = me, "this server is the leader"),
                Some((l, false)) => tracing::info!(leader = %l, "following the leader"),
                None => {}
            }
        }
        // Hold (or wait for) the key: renew the lease, and try again once it is deleted.
        let mut changes = store.watch(KEY, revision).await?;
        let mut renew = tokio::time::interval(RENEW);
        renew.tick().await;
        loop {
            tokio::select! {
                _ = renew.tick() => store.keep_alive(lease).await?,
                change = changes.recv() => match change {
                    Some(WatchEvent::Changes { events, .. })
                        if !events.iter().any(|e| matches!(e, Event::Delete { key, .. } if key == KEY)) => {}
                    // Deleted, or the watch was lost: look again.
                    _ => break,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_replica_leads_and_another_takes_over_when_it_resigns() {
        let dir = std::env::temp_dir().join(format!("weft-leader-{}", std::process::id()));
        let store: Arc<dyn Store> = Arc::new(crate::embedded::Embedded::open(&dir).expect("store"));
        let (a, a_task) = campaign(store.clone(), "a:1".into());
        let until = |l: Leadership, want: &'static str| async move {
            let mut holder = l.holder.clone();
            holder
                .wait_for(|h| h.as_ref().is_some_and(|(a, _)| a == want))
                .await
                .expect("campaign running");
        };
        until(a.clone(), "a:1").await;
        assert!(a.is_leader());
        let (b, b_task) = campaign(store.clone(), "b:1".into());
        until(b.clone(), "a:1").await;
        assert!(!b.is_leader(), "two leaders");
        a_task.abort();
        a.resign(&*store).await;
        until(b.clone(), "b:1").await;
        assert!(b.is_leader());
        b_task.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
