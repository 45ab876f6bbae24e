//! High availability: two `weft server` replicas over a three-member etcd cluster.
//! Needs `etcd` (Debian's etcd-server) and a weft built with `--features etcd`
//! (scripts/test does both); without them this test fails and says so.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_testkit::mesh::{
    allow_all, api_get, api_try, assert_kv_kept, echo_name as who, etcd_cluster, http, server_etcd,
    server_etcd_with, sidecar, token_for, weft_cli, LoadLoop, Server, Sidecar,
};
use weft_testkit::{curl, echo, eventually, Echo};

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

/// `GET path` on a TLS server with its management token, as JSON (None while it fails).
fn api_tls(s: &Server, path: &str) -> Option<serde_json::Value> {
    let ca = s
        .ca_file
        .as_ref()
        .expect("a TLS server")
        .display()
        .to_string();
    let token = format!("x-weft-token: {}", token_for(&s.url()).expect("token"));
    let r = curl(&["--cacert", &ca, "-H", &token, &format!("{}{path}", s.url())]);
    (r.status == 200).then(|| serde_json::from_str(&r.body).ok())?
}

fn advertise(s: &Server) -> String {
    s.proc.ready["advertise"]
        .as_str()
        .expect("advertise")
        .to_string()
}

#[test]
fn replicas_over_tls_elect_one_leader_see_each_others_proxies_and_follow_a_root_rotation() {
    let etcd = etcd_cluster(1);
    // TLS and ACLs on, as they are by default.
    let tls = ["--tls", "on"];
    let mut a = server_etcd_with(&weft(), &etcd.client_urls, &tls);
    let mut b = server_etcd_with(&weft(), &etcd.client_urls, &tls);
    allow_all(&weft(), &a);
    let (app1, app2) = (echo(&weft(), "b-1", &[]), echo(&weft(), "b-2", &[]));
    let on_a = format!("{},{}", a.url(), b.url());
    let on_b = format!("{},{}", b.url(), a.url());
    // The sidecars' CA file is a copy, as on another machine: nothing rewrites it.
    let copy = weft_testkit::temp_dir().join("ca.pem");
    std::fs::copy(a.ca_file.as_ref().expect("ca file"), &copy).expect("copy ca.pem");
    let copy = copy.display().to_string();
    let extra = ["--ca-file", copy.as_str()];
    let s1 = sidecar(&weft(), &on_a, "b", "b-1", app1.addr, &extra);
    let s2 = sidecar(&weft(), &on_b, "b", "b-2", app2.addr, &extra);
    s1.wait_synced();
    s2.wait_synced();

    // One leader, the same for both replicas.
    let leader = eventually(
        "both replicas name one leader",
        Duration::from_secs(20),
        || {
            let (la, lb) = (api_tls(&a, "/v1/status")?, api_tls(&b, "/v1/status")?);
            let l = la["leader"].as_str()?.to_string();
            (lb["leader"].as_str() == Some(l.as_str())).then_some(l)
        },
    );
    assert!(
        leader == advertise(&a) || leader == advertise(&b),
        "{leader}"
    );
    let metric = |s: &Server| {
        let ca = s.ca_file.as_ref().expect("tls").display().to_string();
        let token = format!("x-weft-token: {}", token_for(&s.url()).expect("token"));
        let r = curl(&[
            "--cacert",
            &ca,
            "-H",
            &token,
            &format!("{}/metrics", s.url()),
        ]);
        weft_testkit::metric_value(&r.body, "weft_control_leader")
    };
    let (a_leads, b_leads) = (metric(&a), metric(&b));
    assert_eq!(
        (a_leads, b_leads),
        if leader == advertise(&a) {
            (Some(1.0), Some(0.0))
        } else {
            (Some(0.0), Some(1.0))
        }
    );

    // Each replica lists the other's proxies, asking it over TLS.
    for s in [&a, &b] {
        let (ok, out, err) = weft_cli(&weft(), &["status", "--server", &s.url()]);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains("b-1") && out.contains("b-2") && !out.contains("unreachable"),
            "{out}"
        );
        assert!(out.contains("leader: "), "{out}");
    }

    // A root rotation: each replica's ca.pem gains the new root, the replicas' API
    // certificates move to it, and the sidecars, whose CA file knows only the old root,
    // trust the bundle the discovery stream sent: they keep renewing their 2 s leases
    // (new connections, new handshakes) and stay registered.
    let (ok, out, err) = weft_cli(&weft(), &["ca", "rotate", "--server", &a.url()]);
    assert!(ok, "{out}{err}");
    for s in [&a, &b] {
        let file = s.ca_file.clone().expect("ca file");
        eventually("ca.pem holds both roots", Duration::from_secs(15), || {
            let pem = std::fs::read_to_string(&file).ok()?;
            (pem.matches("BEGIN CERTIFICATE").count() == 2).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(8));
    for s in [&a, &b] {
        let v = api_tls(s, "/v1/catalog/services/b").expect("catalog");
        let healthy = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["health"] == "passing")
            .count();
        assert_eq!(healthy, 2, "{v}");
    }
    for sc in [&s1, &s2] {
        assert!(
            !sc.proc.stderr().contains("certificate verify failed")
                && !sc.proc.stderr().contains("UnknownIssuer"),
            "{}",
            sc.proc.stderr()
        );
    }

    // kill -9 the leader: the other replica takes over once the lease lapses.
    let (dead, survivor) = if leader == advertise(&a) {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    dead.proc.child.kill().expect("kill");
    dead.proc.child.wait().expect("wait");
    let me = advertise(survivor);
    eventually("the survivor leads", Duration::from_secs(30), || {
        (api_tls(survivor, "/v1/status")?["leader"].as_str()? == me).then_some(())
    });
    assert_eq!(metric(survivor), Some(1.0));
    let (ok, out, err) = weft_cli(&weft(), &["status", "--server", &survivor.url()]);
    assert!(ok && out.contains("leader: this server"), "{out}{err}");
    // The sidecars that used the dead replica connect to the survivor: new handshakes
    // with a certificate from the new root, which their CA file does not hold. Both
    // instances stay registered (2 s leases renewed through the survivor).
    let passing = || {
        let v = api_tls(survivor, "/v1/catalog/services/b")?;
        let n = v["items"]
            .as_array()?
            .iter()
            .filter(|i| i["health"] == "passing")
            .count();
        Some(n)
    };
    eventually("both instances registered", Duration::from_secs(15), || {
        (passing()? == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(passing(), Some(2));
    let (ok, out, err) = weft_cli(&weft(), &["status", "--server", &survivor.url()]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" current ")).count(),
        2,
        "both proxies follow the survivor: {out}"
    );
}

/// Live views across replicas: payments' and frontend's sidecars hold streams to replica
/// B only; `weft stat` and `weft tap` through replica A see them (A asks B for its share).
#[test]
fn live_views_through_one_replica_reach_the_proxies_of_another() {
    let etcd = etcd_cluster(1);
    let a = server_etcd(&weft(), &etcd.client_urls);
    let b = server_etcd(&weft(), &etcd.client_urls);
    allow_all(&weft(), &b);
    let app = echo(&weft(), "payments-1", &[]);
    let pay = sidecar(&weft(), &b.url(), "payments", "payments-1", app.addr, &[]);
    pay.wait_synced();
    let fe_app = echo(&weft(), "frontend-1", &[]);
    let fe = sidecar(
        &weft(),
        &b.url(),
        "frontend",
        "frontend-1",
        fe_app.addr,
        &["--upstream", "payments=127.0.0.1:0"],
    );
    fe.wait_synced();
    let out = fe.listener("out-payments");
    eventually("payments answers", Duration::from_secs(15), || {
        matches!(http(out, "GET", "/", b""), Ok((200, _))).then_some(())
    });
    let token = token_for(&a.url())
        .or_else(|| token_for(&b.url()))
        .expect("a token");
    let mut tap = std::process::Command::new(weft())
        .args([
            "tap", "payments", "--path", "/via-a", "--count", "3", "-o", "json",
        ])
        .args(["--server", &a.url()])
        .env("WEFT_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft tap");
    let err = std::io::BufReader::new(tap.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(err).map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(15));
    if line
        .as_ref()
        .map_or(true, |l| !l.contains("tapping proxy payments-1"))
    {
        let _ = tap.kill();
        panic!("replica A did not reach B's proxy: {line:?}");
    }
    // "Tapping proxy" is said once the proxy taps (it answered the ask, through B): the
    // three requests sent now are the tap's three.
    for _ in 0..3 {
        assert_eq!(http(out, "GET", "/via-a", b"").expect("request").0, 200);
    }
    let ended = (0..750).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        tap.try_wait().expect("tap").is_some()
    });
    if !ended {
        let _ = tap.kill();
        panic!("the tap did not get the three requests sent after 'tapping proxy'");
    }
    let done = tap.wait_with_output().expect("tap ends after --count");
    assert!(done.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&done.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON event"))
        .collect();
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| e["path"] == "/via-a" && e["proxyId"] == "payments-1"));
    // Stats through A count B's proxies.
    let (ok, stdout, stderr) = weft_cli(
        &weft(),
        &["stat", "payments", "-o", "json", "--server", &a.url()],
    );
    assert!(ok, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let p = &v["services"][0];
    assert_eq!(p["service"], "payments");
    assert_eq!(p["meshed"], 1, "{v:#}");
    assert!(p["requests"].as_u64().is_some_and(|n| n >= 4), "{v:#}");
    // The UI's topology through A too: B's edge, with what the intentions decide.
    let t = api_get(a.addr, "/v1/topology?window=1m");
    let edge = t["edges"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["source"] == "frontend" && e["destination"] == "payments")
        })
        .unwrap_or_else(|| panic!("no frontend → payments edge through A: {t:#}"));
    assert_eq!(edge["intention"], "allow", "{t:#}");
    assert!(edge["requests"].as_u64().is_some_and(|n| n >= 4), "{t:#}");
}

/// A rollout survives its leader: the replica that leads is killed while the canary is
/// at its second step, the other takes the lead and carries on from the stored state —
/// every step checked exactly once, none repeated or skipped — to promotion.
#[test]
fn a_canary_resumes_at_the_same_step_after_its_leader_is_killed() {
    let etcd = etcd_cluster(1);
    let a = server_etcd(&weft(), &etcd.client_urls);
    let b = server_etcd(&weft(), &etcd.client_urls);
    allow_all(&weft(), &b);
    let servers = format!("{},{}", a.url(), b.url());
    let start = |service: &str, id: &str, extra: &[&str]| -> (Echo, Sidecar) {
        let app = echo(&weft(), id, &[]);
        let sc = sidecar(&weft(), &servers, service, id, app.addr, extra);
        sc.wait_synced();
        (app, sc)
    };
    let _v1 = start("payments", "payments-1", &["--metadata", "version=v1"]);
    let _v2 = start("payments", "payments-2", &["--metadata", "version=v2"]);
    let caller = start(
        "frontend",
        "frontend-1",
        &["--upstream", "payments=127.0.0.1:0"],
    );
    let out = caller.1.listener("out-payments");
    eventually("payments answers", Duration::from_secs(15), || {
        who(out).ok().map(|_| ())
    });
    weft_testkit::mesh::apply_file(
        &weft(),
        &b,
        "kind: Service\nmetadata: {name: payments}\nspec:\n  subsets: {stable: {version: v1}, canary: {version: v2}}\n---\n\
         kind: Canary\nmetadata: {name: payments}\nspec:\n  service: payments\n  stable: stable\n  canary: canary\n  weights: [20, 40, 60]\n  analysis: {interval: 10s, threshold: 2, successRate: 0.9, minRequests: 5}\n",
        &[],
    );
    let load = LoadLoop::start(out);
    let status = |s: &Server| -> Option<serde_json::Value> {
        let (ok, stdout, _) = weft_cli(
            &weft(),
            &[
                "canary",
                "status",
                "payments",
                "-o",
                "json",
                "--server",
                &s.url(),
            ],
        );
        ok.then(|| serde_json::from_str(&stdout).ok()).flatten()
    };
    // Until the first step passed and the second runs.
    eventually(
        "the canary at its second step",
        Duration::from_secs(60),
        || {
            let v = status(&b)?;
            (v["step"] == 1 && v["weight"] == 40).then_some(())
        },
    );
    let leader = api_get(b.addr, "/v1/status")["leader"]
        .as_str()
        .expect("a leader")
        .to_string();
    let (mut dead, survivor) = if leader == a.addr.to_string() {
        (a, b)
    } else {
        (b, a)
    };
    dead.proc.child.kill().unwrap();
    dead.proc.child.wait().unwrap();
    let v = eventually(
        "promoted by the other replica",
        Duration::from_secs(90),
        || {
            let v = status(&survivor)?;
            (v["phase"] == "promoted").then_some(v)
        },
    );
    let checked: Vec<(u64, String)> = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] != "wait")
        .map(|m| {
            (
                m["weight"].as_u64().unwrap(),
                m["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        checked,
        [
            (20, "pass".into()),
            (40, "pass".into()),
            (60, "pass".into())
        ],
        "each step checked once: {v:#}"
    );
    assert_eq!(
        api_get(survivor.addr, "/v1/status")["leader"],
        survivor.addr.to_string(),
        "the survivor leads"
    );
    let (served, errors) = load.finish();
    assert!(served > 0, "the load ran");
    assert!(
        errors.is_empty(),
        "no request failed through the rollout and the fail-over: {errors:?}"
    );
}
