//! The mesh end to end: `weft server`, sidecars beside `weft echo` apps, the CLI.
//! Real binaries, real sockets, loopback only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_testkit::mesh::{
    allow_all, api_get, assert_kv_kept, echo_name as who, http, server, server_at, sidecar,
    weft_cli, Instance, LoadLoop, Server,
};
use weft_testkit::{eventually, temp_dir};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let k = who(addr).unwrap_or_else(|e| format!("error: {e}"));
        *out.entry(k).or_default() += 1;
    }
    out
}

fn apply(server: &Server, yaml: &str, extra: &[&str]) -> (bool, String, String) {
    let path = temp_dir().join("mesh.yaml");
    std::fs::write(&path, yaml).expect("write the file");
    let path = path.display().to_string();
    let mut args = vec!["apply", "-f", &path, "--server"];
    let url = server.url();
    args.push(&url);
    args.extend_from_slice(extra);
    weft_cli(&weft(), &args)
}

fn instance(server: &Server, service: &str, id: &str, extra: &[&str]) -> Instance {
    weft_testkit::mesh::instance(&weft(), server, service, id, extra)
}

#[test]
fn register_discover_route_and_follow_changes() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    let _b1 = instance(&s, "b", "b-1", &["--health", "http:/"]);
    let mut b2 = instance(&s, "b", "b-2", &["--health", "http:/"]);
    let a = instance(&s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let out = a.sidecar.listener("out-b");

    // A's calls reach both instances of B.
    eventually("both b instances answer", Duration::from_secs(10), || {
        let t = tally(out, 20);
        (t.contains_key("b-1") && t.contains_key("b-2") && t.len() == 2).then_some(())
    });

    // A new instance receives traffic once registered.
    let b3 = instance(&s, "b", "b-3", &["--health", "http:/"]);
    eventually("b-3 receives traffic", Duration::from_secs(10), || {
        tally(out, 30).contains_key("b-3").then_some(())
    });

    // kill -9 a sidecar: its instance leaves when the lease (2 s) lapses; retries on
    // connect failure keep callers whole meanwhile.
    b2.sidecar.proc.child.kill().unwrap();
    b2.sidecar.proc.child.wait().unwrap();
    eventually("b-2 leaves the catalog", Duration::from_secs(10), || {
        let v = api_get(s.addr, "/v1/catalog/services/b");
        let ids: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        (!ids.contains(&"b-2".to_string())).then_some(())
    });
    // Only live instances answer, and no call fails (the balancer may favour either).
    let t = tally(out, 30);
    assert!(t.keys().all(|k| k == "b-1" || k == "b-3"), "{t:?}");

    // A failed health check takes an instance out while its sidecar lives on.
    drop(b3.app);
    eventually("b-3 reported critical", Duration::from_secs(10), || {
        let v = api_get(s.addr, "/v1/catalog/services/b");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == "b-3" && i["health"] == "critical")
            .then_some(())
    });
    eventually("only b-1 answers", Duration::from_secs(10), || {
        let t = tally(out, 20);
        (t.len() == 1 && t.contains_key("b-1")).then_some(())
    });
    drop(b2);

    // A mesh route moves traffic by weight; --wait returns once every proxy applied it.
    let _v2 = instance(&s, "b-v2", "b-v2-1", &[]);
    let (ok, stdout, stderr) = apply(
        &s,
        "kind: Service\nmetadata: {name: b}\nspec: {}\n---\nkind: Service\nmetadata: {name: b-v2}\nspec: {}\n---\n\
         kind: HTTPRoute\nmetadata: {name: b-split}\nspec:\n  parentRefs: [{kind: Service, name: b}]\n  rules:\n    - backendRefs: [{name: b, weight: 0}, {name: b-v2, weight: 1}]\n",
        &["--wait", "--timeout", "10s"],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("applied by all"), "{stdout}");
    let t = tally(out, 20);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["b-v2-1"], "{t:?}");

    // `weft status` lists every proxy as current.
    let (ok, stdout, _) = weft_cli(&weft(), &["status", "--server", &s.url()]);
    assert!(ok);
    for id in ["a-1", "b-1", "b-3", "b-v2-1"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(id) && l.contains("current")),
            "{id}: {stdout}"
        );
    }
    drop(a);
}

/// A canary by version inside one service: instances registered with `version` metadata,
/// a Service naming subsets by it, a route weighting the subsets; `--wait` returns once
/// every sidecar sends by the new weights.
#[test]
fn a_route_splits_one_service_by_its_instances_versions() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    let _v1 = instance(&s, "b", "b-1", &["--metadata", "version=v1"]);
    let _v2 = instance(&s, "b", "b-2", &["--metadata", "version=v2"]);
    let a = instance(&s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let out = a.sidecar.listener("out-b");
    eventually("both b instances answer", Duration::from_secs(10), || {
        let t = tally(out, 20);
        (t.len() == 2).then_some(())
    });
    let split = |stable: u32, canary: u32| {
        format!(
            "kind: Service\nmetadata: {{name: b}}\nspec:\n  subsets: {{stable: {{version: v1}}, canary: {{version: v2}}}}\n---\n\
             kind: HTTPRoute\nmetadata: {{name: b-canary}}\nspec:\n  parentRefs: [{{kind: Service, name: b}}]\n  rules:\n    - backendRefs: [{{name: b, subset: stable, weight: {stable}}}, {{name: b, subset: canary, weight: {canary}}}]\n"
        )
    };
    for (stable, canary, only) in [(0, 1, "b-2"), (1, 0, "b-1")] {
        let (ok, stdout, stderr) =
            apply(&s, &split(stable, canary), &["--wait", "--timeout", "10s"]);
        assert!(ok, "{stdout}\n{stderr}");
        let t = tally(out, 20);
        assert_eq!(t.keys().cloned().collect::<Vec<_>>(), [only], "{t:?}");
    }
    // A subset the Service does not define is refused whole, with where and why.
    let bad = split(1, 0).replace("subset: canary", "subset: v3");
    let (ok, stdout, stderr) = apply(&s, &bad, &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("spec.rules[0].backendRefs[1].subset: Service `b` has no subset `v3` (it has: canary, stable)"),
        "{stderr}"
    );
    assert_eq!(tally(out, 10).keys().cloned().collect::<Vec<_>>(), ["b-1"]);
}

#[test]
fn a_refused_update_keeps_the_last_good_configuration_and_is_reported() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    let _b = instance(&s, "b", "b-1", &[]);
    let a = instance(&s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let out = a.sidecar.listener("out-b");
    eventually("b answers", Duration::from_secs(10), || {
        (who(out).ok()? == "b-1").then_some(())
    });

    // Valid for the server (the model), refused by the calling sidecar (origination TLS
    // to a mesh service, whose calls use the mesh's mutual TLS).
    let (ok, stdout, stderr) = apply(
        &s,
        "kind: Service\nmetadata: {name: b}\nspec:\n  tls: {caFile: /nonexistent/ca.pem}\n",
        &["--wait", "--timeout", "3s"],
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("a-1") && stderr.contains("use the mesh's mutual TLS"),
        "{stderr}"
    );
    // The sidecar keeps routing with its last good version.
    for _ in 0..10 {
        assert_eq!(who(out).unwrap(), "b-1");
    }
    let (_, status, _) = weft_cli(&weft(), &["status", "--server", &s.url()]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("a-1") && l.contains("NACK")),
        "{status}"
    );

    // The server counts it.
    let (_, metrics) = http(s.addr, "GET", "/metrics", b"").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(
        weft_testkit::metric_value(&metrics, "weft_control_proxies "),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        weft_testkit::metric_value(&metrics, "weft_control_updates_total{result=\"nacked\"}")
            >= Some(1.0),
        "{metrics}"
    );
    assert!(
        weft_testkit::metric_value(&metrics, "weft_control_updates_total{result=\"acked\"}")
            >= Some(2.0),
        "{metrics}"
    );

    // Deleting the refused resource puts the proxy back where it was: current again.
    let (ok, _, stderr) = weft_cli(&weft(), &["delete", "service", "b", "--server", &s.url()]);
    assert!(ok, "{stderr}");
    eventually(
        "a-1 current after the delete",
        Duration::from_secs(10),
        || {
            let v = api_get(s.addr, "/v1/proxies");
            let a1 = v["items"]
                .as_array()?
                .iter()
                .find(|p| p["proxyId"] == "a-1")?
                .clone();
            (a1["current"] == true && a1.get("nack").is_none()).then_some(())
        },
    );

    // Fixing the resource is applied and acknowledged.
    let (ok, stdout, stderr) = apply(
        &s,
        "kind: Service\nmetadata: {name: b}\nspec: {}\n",
        &["--wait", "--timeout", "10s"],
    );
    assert!(ok, "{stdout}\n{stderr}");
}

#[test]
fn with_the_control_plane_down_for_30_s_no_request_fails() {
    let weft = weft();
    let s = server(&weft);
    allow_all(&weft, &s);
    let _b1 = instance(&s, "b", "b-1", &[]);
    let _b2 = instance(&s, "b", "b-2", &[]);
    let a = instance(
        &s,
        "a",
        "a-1",
        &["--upstream", "b=127.0.0.1:0", "--admin", "127.0.0.1:0"],
    );
    let out = a.sidecar.listener("out-b");
    eventually("both b instances answer", Duration::from_secs(10), || {
        (tally(out, 20).len() == 2).then_some(())
    });
    let admin: SocketAddr = a.sidecar.proc.ready["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let discovery_connected = || {
        let (_, m) = http(admin, "GET", "/metrics", b"").ok()?;
        weft_testkit::metric_value(&String::from_utf8_lossy(&m), "weft_discovery_connected ")
    };
    assert_eq!(discovery_connected(), Some(1.0));

    let load = LoadLoop::start(out);
    // kill -9 the server, stay down 30 s, come back on the same address and store.
    let (addr, data) = (s.addr, s.data_dir.clone());
    let mut s = s;
    s.proc.child.kill().unwrap();
    s.proc.child.wait().unwrap();
    let before = load.served();
    // The sidecar says it lost the control plane (and keeps serving).
    eventually(
        "sidecar reports the stream lost",
        Duration::from_secs(10),
        || (discovery_connected()? == 0.0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(30));
    let during = load.served() - before;
    let s = server_at(&weft, &addr.to_string(), &data);
    // Every sidecar reconnects and is current again; the instances kept their places.
    eventually(
        "all three proxies current again",
        Duration::from_secs(20),
        || {
            let v = api_get(s.addr, "/v1/proxies");
            let items = v["items"].as_array()?;
            (items.len() == 3 && items.iter().all(|p| p["current"] == true)).then_some(())
        },
    );
    let v = api_get(s.addr, "/v1/catalog/services/b");
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(discovery_connected(), Some(1.0));
    std::thread::sleep(Duration::from_secs(1));
    let (served, errors) = load.finish();
    assert!(
        during > 100,
        "load kept running while the server was down: {during} requests"
    );
    assert!(
        errors.is_empty(),
        "{} failed requests: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    eprintln!("{served} requests, {during} while the control plane was down, 0 failed");
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let weft = weft();
    let s = server(&weft);
    allow_all(&weft, &s);
    let addr = s.addr;
    // Writers stream puts; each key acknowledged (200) is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("crash/w{w}/k{i:06}");
                    let value = format!("value-{w}-{i}");
                    match http(addr, "PUT", &format!("/v1/kv/{key}"), value.as_bytes()) {
                        Ok((200, _)) => acked.push((key, value)),
                        _ => break, // the server is gone: this write was not acknowledged
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut s = s;
    s.proc.child.kill().unwrap(); // SIGKILL mid-stream
    s.proc.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, String)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acked.len() > 20,
        "only {} writes acknowledged before the kill",
        acked.len()
    );

    let s = server_at(&weft, "127.0.0.1:0", &s.data_dir);
    assert_kv_kept(s.addr, &acked);
    eprintln!(
        "{} acknowledged writes, all present after kill -9 and restart",
        acked.len()
    );
}

#[test]
fn bad_input_is_refused_whole_and_changes_nothing() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    let good = "kind: Service\nmetadata: {name: api}\nspec: {retry: {attempts: 3}}\n";
    let (ok, _, stderr) = apply(&s, good, &[]);
    assert!(ok, "{stderr}");
    let before = api_get(s.addr, "/v1/config");

    let cases: &[(&str, &str)] = &[
        ("kind: Service\nmetadata: {name: api\n", "YAML syntax"),
        ("kind: Frobnicator\nmetadata: {name: x}\nspec: {}\n", "unknown kind `Frobnicator`"),
        // The second document is bad: the first must not be applied either.
        ("kind: Service\nmetadata: {name: web}\nspec: {}\n---\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: web}]\n  rules: [{backendRefs: [{name: missing}]}]\n", "unknown Service `missing`"),
        ("kind: Service\nmetadata: {name: api}\nspec: {retry: {attempts: lots}}\n", "mesh.yaml:3"),
        ("kind: Service\nmetadata: {name: Bad_Name}\nspec: {}\n", "a name is"),
        ("kind: Service\nmetadata: {name: x}\nspec: {}\n---\nkind: Service\nmetadata: {name: x}\nspec: {}\n", "appears twice"),
    ];
    for (yaml, expect) in cases {
        let (ok, stdout, stderr) = apply(&s, yaml, &[]);
        assert!(!ok, "accepted:\n{yaml}\n{stdout}");
        assert!(stderr.contains(expect), "expected `{expect}` in:\n{stderr}");
        assert!(
            stderr.contains("nothing was changed") || stderr.contains("YAML"),
            "{stderr}"
        );
        assert_eq!(
            api_get(s.addr, "/v1/config")["items"],
            before["items"],
            "state changed after:\n{yaml}"
        );
    }

    // Deleting a service a route still uses is refused, naming the route.
    let (ok, _, stderr) = apply(&s, "kind: HTTPRoute\nmetadata: {name: to-api}\nspec:\n  parentRefs: [{kind: Service, name: api}]\n  rules: [{backendRefs: [{name: api}]}]\n", &[]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft_cli(&weft(), &["delete", "service", "api", "--server", &s.url()]);
    assert!(!ok);
    assert!(stderr.contains("HTTPRoute/to-api"), "{stderr}");

    // Dry run shows the diff and writes nothing.
    let (ok, stdout, _) = apply(
        &s,
        "kind: Service\nmetadata: {name: api}\nspec: {retry: {attempts: 5}}\n",
        &["--dry-run"],
    );
    assert!(ok);
    assert!(
        stdout.contains("Service/api configured (dry run)")
            && stdout.contains("+")
            && stdout.contains("5"),
        "{stdout}"
    );
    assert_eq!(
        api_get(s.addr, "/v1/config/service/api")["spec"]["retry"]["attempts"],
        3
    );

    // KV: oversized value, bad key, failed CAS, malformed API bodies — JSON errors.
    let big = vec![b'x'; 600 * 1024];
    let (status, body) = http(s.addr, "PUT", "/v1/kv/app/big", &big).unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("\"too-large\""));
    let (status, _) = http(s.addr, "PUT", "/v1/kv/a/../b", b"1").unwrap();
    assert_eq!(status, 400);
    let (status, _) = http(s.addr, "PUT", "/v1/kv/flag?cas=0", b"on").unwrap();
    assert_eq!(status, 200);
    let (status, body) = http(s.addr, "PUT", "/v1/kv/flag?cas=0", b"off").unwrap();
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("\"cas-failed\""));
    assert_eq!(api_get(s.addr, "/v1/kv/flag")["value"], "on");
    let (status, body) = http(s.addr, "POST", "/v1/catalog/register", b"{\"service\": 7").unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("\"invalid-body\""));
    let (status, _) = http(
        s.addr,
        "POST",
        "/v1/catalog/register",
        br#"{"service":"x","id":"1","address":"not-an-ip","port":80}"#,
    )
    .unwrap();
    assert_eq!(status, 400);
}

#[test]
fn kv_pages_and_watches() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    for i in 0..25 {
        let (status, _) = http(
            s.addr,
            "PUT",
            &format!("/v1/kv/cfg/k{i:02}"),
            format!("{i}").as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200);
    }
    // Pagination: 10 + 10 + 5, in order, with `next` tokens.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/v1/kv?prefix=cfg/&limit=10".to_string()
        } else {
            format!("/v1/kv?prefix=cfg/&limit=10&after={after}")
        };
        let page = api_get(s.addr, &path);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["key"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    // A long-poll on a key returns when it changes.
    let current = api_get(s.addr, "/v1/kv/cfg/k03")["modRevision"]
        .as_u64()
        .unwrap();
    let addr = s.addr;
    let waiter = std::thread::spawn(move || {
        http(
            addr,
            "GET",
            &format!("/v1/kv/cfg/k03?index={current}&wait=20s"),
            b"",
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    // A key that merely starts with the watched one must not end the wait.
    http(s.addr, "PUT", "/v1/kv/cfg/k03x", b"other key").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    http(s.addr, "PUT", "/v1/kv/cfg/k03", b"changed").unwrap();
    let (status, body) = waiter.join().unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["value"], "changed");

    // `weft kv watch` prints each change.
    let mut cmd = std::process::Command::new(weft());
    cmd.args(["kv", "watch", "cfg/k05", "--server", &s.url()]);
    if let Some(t) = weft_testkit::mesh::token_for(&s.url()) {
        cmd.env("WEFT_TOKEN", t);
    }
    let watch = weft_testkit::Proc::spawn(cmd); // first line: the current value
    assert_eq!(watch.ready["value"], "5");
    http(s.addr, "PUT", "/v1/kv/cfg/k05", b"five").unwrap();
    let line = watch
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a change line");
    assert!(line.contains("\"five\""), "{line}");

    // `weft kv watch PREFIX --prefix`: the entries, then one JSON line per change.
    for (k, v) in [("app/a", "1"), ("app/b", "2")] {
        http(s.addr, "PUT", &format!("/v1/kv/{k}"), v.as_bytes()).unwrap();
    }
    let mut cmd = std::process::Command::new(weft());
    cmd.args(["kv", "watch", "app/", "--prefix", "--server", &s.url()]);
    if let Some(t) = weft_testkit::mesh::token_for(&s.url()) {
        cmd.env("WEFT_TOKEN", t);
    }
    let watch = weft_testkit::Proc::spawn(cmd); // first line: the first entry
    assert_eq!(watch.ready["key"], "app/a");
    let next = || {
        let line = watch
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line");
        serde_json::from_str::<serde_json::Value>(&line).expect("one JSON object per line")
    };
    assert_eq!(next()["key"], "app/b");
    http(s.addr, "PUT", "/v1/kv/app/b", b"two").unwrap();
    let changed = next();
    assert_eq!(
        (changed["key"].as_str(), changed["value"].as_str()),
        (Some("app/b"), Some("two"))
    );
    http(s.addr, "DELETE", "/v1/kv/app/a", b"").unwrap();
    let deleted = next();
    assert_eq!(
        (deleted["key"].as_str(), deleted["deleted"].as_bool()),
        (Some("app/a"), Some(true))
    );
    http(s.addr, "PUT", "/v1/kv/other/x", b"elsewhere").unwrap();
    http(s.addr, "PUT", "/v1/kv/app/c", b"3").unwrap();
    assert_eq!(next()["key"], "app/c", "a change elsewhere prints nothing");

    // The OpenAPI document lists every route the server answers.
    let doc = api_get(s.addr, "/v1/openapi.json");
    for path in [
        "/v1/config",
        "/v1/kv/{key}",
        "/v1/catalog/register",
        "/v1/proxies",
        "/v1/status",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }
}

fn health_of(server: &Server, service: &str, id: &str) -> Option<String> {
    let v = api_get(server.addr, &format!("/v1/catalog/services/{service}"));
    v["items"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["health"].as_str().map(str::to_string))
}

#[test]
fn grpc_through_the_mesh_grpc_health_checks_and_deregistration_on_sigterm() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    let health_file = temp_dir().join("health");
    let support = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc_peer.py");
    let mut cmd = std::process::Command::new(weft_testkit::python());
    cmd.arg(&support)
        .arg("server")
        .env("HEALTH_FILE", &health_file);
    let app = weft_testkit::Proc::spawn(cmd);
    let app_addr: SocketAddr = app.ready["address"].as_str().unwrap().parse().unwrap();
    let mut g = sidecar(
        &weft(),
        &s.url(),
        "g",
        "g-1",
        app_addr,
        &["--app-protocol", "grpc", "--health", "grpc", "--ttl", "30s"],
    );
    g.wait_synced();
    let caller = instance(&s, "c", "c-1", &["--upstream", "g=127.0.0.1:0"]);
    eventually("g-1 registered passing", Duration::from_secs(10), || {
        (health_of(&s, "g", "g-1")? == "passing").then_some(())
    });

    // Every gRPC call kind, caller sidecar → (HTTP/2) → g's sidecar → app.
    let target = caller.sidecar.listener("out-g").to_string();
    let r = eventually("gRPC through the mesh", Duration::from_secs(10), || {
        let out = std::process::Command::new(weft_testkit::python())
            .arg(&support)
            .args(["client", &target])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    });
    assert_eq!(r["unary"], "echo:hi", "{r}");
    assert_eq!(r["trailer"], "t1", "{r}");
    assert_eq!(r["error_code"], "NOT_FOUND", "{r}");
    assert_eq!(r["bidi"], serde_json::json!(["A", "BC", "DEF"]), "{r}");

    // The gRPC health protocol drives the catalog both ways.
    std::fs::write(&health_file, "NOT_SERVING").unwrap();
    eventually("g-1 critical", Duration::from_secs(10), || {
        (health_of(&s, "g", "g-1")? == "critical").then_some(())
    });
    std::fs::write(&health_file, "SERVING").unwrap();
    eventually("g-1 passing again", Duration::from_secs(10), || {
        (health_of(&s, "g", "g-1")? == "passing").then_some(())
    });

    // SIGTERM: deregistered at once (the lease has 30 s left), then a clean exit.
    g.proc.signal("TERM");
    let status = g
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("sidecar exits");
    assert!(status.success(), "{status:?}\n{}", g.proc.stderr());
    assert_eq!(
        health_of(&s, "g", "g-1"),
        None,
        "still registered after SIGTERM"
    );
}

#[test]
fn the_api_drops_a_client_that_never_finishes_its_headers() {
    use std::io::{Read, Write};
    let s = server(&weft());
    allow_all(&weft(), &s);
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\nx-slow: 1")
        .unwrap();
    // Others are served meanwhile.
    assert_eq!(api_get(s.addr, "/v1/status")["store"], "embedded");
    // The slow one is answered 408 or closed once the header read timeout (10 s) passes;
    // the 60 s read limit only keeps a broken server from hanging the test.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    let ended = slow.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        ended.is_ok(),
        "the server kept the slow connection open: {ended:?}"
    );
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}
