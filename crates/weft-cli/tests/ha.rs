//! High availability: two `weft server` replicas over a three-member etcd cluster.
//! Needs `etcd` (Debian's etcd-server) and a weft built with `--features etcd`
//! (scripts/test does both); without them this test fails and says so.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_testkit::mesh::{
    allow_all, api_get, api_try, assert_kv_kept, echo_name as who, etcd_cluster, http, server_etcd,
    sidecar, LoadLoop, Sidecar,
};
use weft_testkit::{echo, eventually, Echo};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

#[test]
fn losing_a_server_replica_and_an_etcd_member_under_load_loses_nothing() {
    let mut etcd = etcd_cluster(3);
    let mut a = server_etcd(&weft(), &etcd.client_urls);
    let b = server_etcd(&weft(), &etcd.client_urls);
    allow_all(&weft(), &b);
    // Every sidecar prefers server A, so killing A moves all of them.
    let servers = format!("{},{}", a.url(), b.url());
    let start = |service: &str, id: &str, extra: &[&str]| -> (Echo, Sidecar) {
        let app = echo(&weft(), id, &[]);
        let sc = sidecar(&weft(), &servers, service, id, app.addr, extra);
        sc.wait_synced();
        (app, sc)
    };
    let _b1 = start("b", "b-1", &[]);
    let _b2 = start("b", "b-2", &[]);
    let caller = start("a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let out = caller.1.listener("out-b");
    eventually("both b instances answer", Duration::from_secs(15), || {
        let names: std::collections::BTreeSet<String> =
            (0..20).filter_map(|_| who(out).ok()).collect();
        (names.len() == 2).then_some(())
    });
    // Replica B sees the proxies connected to A (replicas announce themselves in etcd).
    eventually("B lists all three proxies", Duration::from_secs(10), || {
        let v = api_get(b.addr, "/v1/proxies");
        (v["items"].as_array()?.len() == 3).then_some(())
    });

    let stop = Arc::new(AtomicBool::new(false));
    // Load between sidecars.
    let load = LoadLoop::start(out);
    // Writes through whichever replica answers; each acknowledged one is recorded.
    let writer = {
        let stop = stop.clone();
        let targets = [a.addr, b.addr];
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("ha/k{i:05}");
                let mut done = false;
                for t in targets {
                    if let Ok((200, _)) = http(t, "PUT", &format!("/v1/kv/{key}"), key.as_bytes()) {
                        done = true;
                        break;
                    }
                }
                if done {
                    acked.push((key.clone(), key));
                    i += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // kill -9 replica A and the etcd leader.
    a.proc.child.kill().unwrap();
    a.proc.child.wait().unwrap();
    // The etcd member killed is the leader: the hardest case (an election follows).
    let leader = etcd.leader();
    etcd.members[leader].kill().unwrap();
    etcd.members[leader].wait().unwrap();

    // Every sidecar reconnects to B and is current there.
    eventually("all proxies current on B", Duration::from_secs(30), || {
        let v = api_try(b.addr, "/v1/proxies?local=true")?;
        let items = v["items"].as_array()?;
        (items.len() == 3 && items.iter().all(|p| p["current"] == true)).then_some(())
    });
    // The control plane still answers through B.
    eventually("B lists both b instances", Duration::from_secs(10), || {
        let v = api_try(b.addr, "/v1/catalog/services/b")?;
        (v["items"].as_array()?.len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (served, errors) = load.finish();
    let acked = writer.join().unwrap();

    assert!(
        errors.is_empty(),
        "{} failed requests: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(served > 100, "only {served} requests");
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    assert_kv_kept(b.addr, &acked);
    eprintln!(
        "{} requests between sidecars and {} acknowledged writes across the failures: 0 failed, 0 lost",
        served,
        acked.len()
    );
}
