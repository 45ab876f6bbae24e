use std::time::Duration;

use super::Embedded;
use crate::store::{self, Compare, Event, Op, Store, StoreError, Txn, WatchEvent};

fn put_op(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a watch event within 10 s")
        .expect("watch open")
}

#[tokio::test]
async fn revisions_ranges_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Embedded::open(dir.path()).unwrap();
    assert_eq!(
        store::put(&s, "/a/1", b"x".to_vec(), None).await.unwrap(),
        1
    );
    assert_eq!(
        store::put(&s, "/a/2", b"y".to_vec(), None).await.unwrap(),
        2
    );
    assert_eq!(
        store::put(&s, "/b/1", b"z".to_vec(), None).await.unwrap(),
        3
    );
    assert_eq!(
        store::put(&s, "/a/1", b"x2".to_vec(), None).await.unwrap(),
        4
    );
    let (kv, rev) = store::get(&s, "/a/1").await.unwrap();
    let kv = kv.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, rev), (1, 4, 4));
    assert_eq!(kv.value, b"x2");
    let page = s.range("/a/", "/a/", 1).await.unwrap();
    assert_eq!(page.kvs.len(), 1);
    assert!(page.more);
    let page = s.range("/a/", "/a/1\0", 1).await.unwrap();
    assert_eq!(page.kvs[0].key, "/a/2");
    assert!(!page.more);
    assert_eq!(store::list_all(&s, "/").await.unwrap().kvs.len(), 3);
    // A delete of an absent key changes nothing and takes no revision.
    let r = s
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete {
                key: "/nope".into(),
            }],
        })
        .await
        .unwrap();
    assert_eq!(r.revision, 4);
}

#[tokio::test]
async fn compare_and_swap_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Embedded::open(dir.path()).unwrap();
    let rev = store::put(&s, "/k", b"1".to_vec(), None).await.unwrap();
    // A stale guard: nothing of the transaction is applied.
    let r = s
        .txn(Txn {
            compares: vec![Compare {
                key: "/k".into(),
                mod_revision: rev + 7,
            }],
            ops: vec![put_op("/k", "2"), put_op("/other", "3")],
        })
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(store::get(&s, "/k").await.unwrap().0.unwrap().value, b"1");
    assert!(store::get(&s, "/other").await.unwrap().0.is_none());
    // "Must not exist" guard fails on an existing key, succeeds on a new one.
    let create = |key: &str| Txn {
        compares: vec![Compare {
            key: key.into(),
            mod_revision: 0,
        }],
        ops: vec![put_op(key, "new")],
    };
    assert!(!s.txn(create("/k")).await.unwrap().succeeded);
    assert!(s.txn(create("/fresh")).await.unwrap().succeeded);
    // The right guard wins.
    let r = s
        .txn(Txn {
            compares: vec![Compare {
                key: "/k".into(),
                mod_revision: rev,
            }],
            ops: vec![put_op("/k", "2")],
        })
        .await
        .unwrap();
    assert!(r.succeeded);
    // Oversized values are refused whole.
    let err = store::put(&s, "/big", vec![0; store::MAX_VALUE_BYTES + 1], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn watch_replays_history_then_follows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Embedded::open(dir.path()).unwrap();
    store::put(&s, "/w/a", b"1".to_vec(), None).await.unwrap();
    store::put(&s, "/other", b"1".to_vec(), None).await.unwrap();
    store::put(&s, "/w/b", b"2".to_vec(), None).await.unwrap();
    let mut rx = s.watch("/w/", 0).await.unwrap();
    match next(&mut rx).await {
        WatchEvent::Changes { revision, events } => {
            assert_eq!(revision, 1);
            assert_eq!(events[0].key(), "/w/a");
        }
        other => panic!("{other:?}"),
    }
    match next(&mut rx).await {
        WatchEvent::Changes { revision, .. } => assert_eq!(revision, 3),
        other => panic!("{other:?}"),
    }
    s.txn(Txn {
        compares: vec![],
        ops: vec![Op::Delete { key: "/w/a".into() }],
    })
    .await
    .unwrap();
    match next(&mut rx).await {
        WatchEvent::Changes { revision, events } => {
            assert_eq!(revision, 4);
            assert_eq!(
                events,
                vec![Event::Delete {
                    key: "/w/a".into(),
                    revision: 4
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    // Watching from the current revision sees only what comes next.
    let mut rx = s.watch("/w/", 4).await.unwrap();
    store::put(&s, "/w/c", b"3".to_vec(), None).await.unwrap();
    match next(&mut rx).await {
        WatchEvent::Changes { revision, .. } => assert_eq!(revision, 5),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn data_survives_reopen_and_old_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Embedded::open(dir.path()).unwrap();
        store::put(&s, "/p", b"kept".to_vec(), None).await.unwrap();
        store::put(&s, "/q", b"kept".to_vec(), None).await.unwrap();
    }
    let s = Embedded::open(dir.path()).unwrap();
    let (kv, rev) = store::get(&s, "/p").await.unwrap();
    assert_eq!(kv.unwrap().value, b"kept");
    assert_eq!(rev, 2);
    let mut rx = s.watch("/", 0).await.unwrap();
    assert_eq!(next(&mut rx).await, WatchEvent::Compacted);
    // The revision goes on from where it was.
    assert_eq!(store::put(&s, "/r", b"1".to_vec(), None).await.unwrap(), 3);
}

#[tokio::test]
async fn a_lapsed_lease_deletes_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Embedded::open(dir.path()).unwrap();
    let short = s.grant(Duration::from_millis(300)).await.unwrap();
    let kept = s.grant(Duration::from_millis(300)).await.unwrap();
    store::put(&s, "/l/short", b"1".to_vec(), Some(short))
        .await
        .unwrap();
    let rev = store::put(&s, "/l/kept", b"1".to_vec(), Some(kept))
        .await
        .unwrap();
    let mut rx = s.watch("/l/", rev).await.unwrap();
    // Keep one lease alive while the other lapses.
    let keeper = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                s.keep_alive(kept).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    match next(&mut rx).await {
        WatchEvent::Changes { events, .. } => {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].key(), "/l/short");
            assert!(matches!(events[0], Event::Delete { .. }));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.keep_alive(short).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store::put(&s, "/l/late", b"1".to_vec(), Some(short)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(store::get(&s, "/l/kept").await.unwrap().0.is_some());
    keeper.abort();
    s.revoke(kept).await.unwrap();
    assert!(store::get(&s, "/l/kept").await.unwrap().0.is_none());
}

#[tokio::test]
async fn leases_and_their_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let lease;
    {
        let s = Embedded::open(dir.path()).unwrap();
        lease = s.grant(Duration::from_secs(30)).await.unwrap();
        store::put(&s, "/held", b"1".to_vec(), Some(lease))
            .await
            .unwrap();
    }
    let s = Embedded::open(dir.path()).unwrap();
    s.keep_alive(lease).await.unwrap();
    s.revoke(lease).await.unwrap();
    assert!(store::get(&s, "/held").await.unwrap().0.is_none());
}

#[tokio::test]
async fn the_store_is_private_to_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _store = Embedded::open(&data).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("weft.redb")), 0o600);
    // A store made by an older version with looser modes is restricted on open.
    drop(_store);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("weft.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let _store = Embedded::open(&data).unwrap();
    assert_eq!((mode(&data), mode(&data.join("weft.redb"))), (0o700, 0o600));
}
