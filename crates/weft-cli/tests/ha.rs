//! High availability: two `weft server` replicas over a three-member etcd cluster.
//! Needs `etcd` (Debian's etcd-server) and a weft built with `--features etcd`
//! (scripts/test does both); without them this test fails and says so.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_testkit::mesh::{api_get, etcd_cluster, http, server_etcd, sidecar, Sidecar};
use weft_testkit::{echo, eventually, Echo};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn who(addr: std::net::SocketAddr) -> Result<String, String> {
    match http(addr, "GET", "/hello", b"") {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok(v["name"].as_str().unwrap_or("?").to_string())
        }
        Ok((status, body)) => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn losing_a_server_replica_and_an_etcd_member_under_load_loses_nothing() {
    let mut etcd = etcd_cluster(3);
    let mut a = server_etcd(&weft(), &etcd.client_urls);
    let b = server_etcd(&weft(), &etcd.client_urls);
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
    let failed = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failed, served) = (stop.clone(), failed.clone(), served.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match who(out) {
                    Ok(_) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e);
                    }
                }
            }
            errors
        })
    };
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
                    acked.push(key);
                    i += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // kill -9 replica A and one etcd member.
    a.proc.child.kill().unwrap();
    a.proc.child.wait().unwrap();
    etcd.members[0].kill().unwrap();
    etcd.members[0].wait().unwrap();

    // Every sidecar reconnects to B and is current there.
    eventually("all proxies current on B", Duration::from_secs(30), || {
        let v = api_get(b.addr, "/v1/proxies?local=true");
        let items = v["items"].as_array()?;
        (items.len() == 3 && items.iter().all(|p| p["current"] == true)).then_some(())
    });
    // The control plane still works through B: a write reaches the sidecars.
    let instances = api_get(b.addr, "/v1/catalog/services/b");
    assert_eq!(
        instances["items"].as_array().unwrap().len(),
        2,
        "{instances}"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().unwrap();
    let acked = writer.join().unwrap();

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(served.load(Ordering::Relaxed) > 100);
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    let mut lost = Vec::new();
    for key in &acked {
        match http(b.addr, "GET", &format!("/v1/kv/{key}?raw=true"), b"") {
            Ok((200, body)) if body == key.as_bytes() => {}
            other => lost.push(format!("{key}: {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "{} requests between sidecars and {} acknowledged writes across the failures: 0 failed, 0 lost",
        served.load(Ordering::Relaxed),
        acked.len()
    );
}
