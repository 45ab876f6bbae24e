//! End to end: 100 configuration reloads under continuous load — routes added and removed,
//! weights changed, endpoints rotated — cause zero failed requests and zero dropped
//! connections: keep-alive HTTP/1.1 clients, fresh connections, an HTTP/2 client, an open
//! WebSocket and a long-running gRPC bidirectional stream all go on through every reload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_testkit::{echo, eventually, metric_value, python, Echo, Proc, Proxy};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script)
}

fn peer(script: &str, args: &[&str]) -> Proc {
    let mut c = std::process::Command::new(python());
    c.arg(support(script)).args(args);
    Proc::spawn(c)
}

/// Configuration number `i`: the pool's endpoints rotate over three backends, weights
/// change, and a route comes and goes, so every version differs from the one before.
fn config(i: usize, echoes: &[Echo; 3], grpc: &str, ws: &str) -> String {
    let pick = [(0, 1), (1, 2), (0, 2)][i % 3];
    let (x, y) = (echoes[pick.0].addr, echoes[pick.1].addr);
    let extra_route = if i % 2 == 0 {
        format!(
            "kind: HTTPRoute\nmetadata: {{name: extra-{i}}}\nspec:\n  rules:\n  - matches: [{{path: {{value: /extra-{i}}}}}]\n    backendRefs: [{{name: other}}]\n---\n"
        )
    } else {
        String::new()
    };
    format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: load}}\nspec:\n  rules:\n\
         \x20 - backendRefs: [{{name: pool, weight: {w1}}}, {{name: other, weight: {w2}}}]\n\
         \x20 - matches: [{{path: {{value: /weft.test.Echo/}}}}]\n    backendRefs: [{{name: grpc}}]\n\
         \x20 - matches: [{{path: {{value: /ws}}}}]\n    backendRefs: [{{name: ws}}]\n---\n\
         {extra_route}\
         kind: Service\nmetadata: {{name: pool}}\nspec:\n  endpoints: [{{address: \"{x}\", weight: {ew}}}, {{address: \"{y}\"}}]\n---\n\
         kind: Service\nmetadata: {{name: other}}\nspec:\n  endpoints: [{{address: \"{z}\"}}]\n---\n\
         kind: Service\nmetadata: {{name: grpc}}\nspec:\n  protocol: grpc\n  endpoints: [{{address: \"{grpc}\"}}]\n---\n\
         kind: Service\nmetadata: {{name: ws}}\nspec:\n  endpoints: [{{address: \"{ws}\"}}]\n",
        w1 = 1 + i % 5,
        w2 = 1 + (i / 5) % 3,
        ew = 1 + i % 7,
        z = echoes[(i + 2) % 3].addr,
    )
}

/// Outcome counters shared by the load threads.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// One request on `s`: Ok(status) when a whole response arrived.
fn request(s: &mut BufReader<TcpStream>, close: bool) -> std::io::Result<u16> {
    let conn = if close { "close" } else { "keep-alive" };
    s.get_mut().write_all(
        format!("GET /load HTTP/1.1\r\nHost: load.test\r\nConnection: {conn}\r\n\r\n").as_bytes(),
    )?;
    let mut line = String::new();
    s.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        s.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    Ok(status)
}

/// Keeps one connection for as long as the test runs (`keep_alive`) or opens a new one
/// per request; every error on an established connection counts as a drop.
fn load(addr: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let connect = || {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok::<_, std::io::Error>(BufReader::new(s))
    };
    let mut conn = connect().ok();
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = conn.as_mut() else {
            tally.dropped.fetch_add(1, Ordering::Relaxed);
            conn = connect().ok();
            continue;
        };
        match request(s, !keep_alive) {
            Ok(200) => tally.ok.fetch_add(1, Ordering::Relaxed),
            Ok(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                tally.dropped.fetch_add(1, Ordering::Relaxed);
                conn = None;
                continue;
            }
        };
        if !keep_alive {
            conn = connect().ok();
        }
    }
}

/// Sends `msg` through a holding peer and returns its JSON answer.
fn exchange(p: &mut Proc, msg: &str) -> serde_json::Value {
    let stdin = p.child.stdin.as_mut().expect("peer stdin");
    writeln!(stdin, "{msg}").expect("write to peer");
    let line = p
        .lines
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no answer to {msg}; stderr:\n{}", p.stderr()));
    serde_json::from_str(&line).expect("peer JSON")
}

#[test]
fn one_hundred_reloads_under_load_fail_nothing_and_drop_nothing() {
    let echoes = [
        echo(&weft(), "a", &[]),
        echo(&weft(), "b", &[]),
        echo(&weft(), "c", &[]),
    ];
    let grpc_server = peer("grpc_peer.py", &["server"]);
    let ws_server = peer("ws_peer.py", &["server"]);
    let grpc_addr = grpc_server.ready["address"].as_str().expect("grpc address");
    let ws_addr = ws_server.ready["address"].as_str().expect("ws address");
    let p: Proxy = weft_testkit::proxy(
        &weft(),
        &config(0, &echoes, grpc_addr, ws_addr),
        &["--watch-interval", "20ms"],
    );
    let addr = p.listener("gw/web");

    // The long-lived streams, opened before the first reload.
    let mut ws = peer("ws_peer.py", &["hold", &format!("ws://{addr}/ws")]);
    let mut grpc = peer("grpc_peer.py", &["hold", &addr.to_string()]);
    assert_eq!(exchange(&mut ws, "before")["echo"], "before");
    assert_eq!(exchange(&mut grpc, "before")["reply"], "BEFORE");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut threads: Vec<_> = [true, true, true, false]
        .into_iter()
        .map(|keep_alive| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || load(addr, keep_alive, stop, tally))
        })
        .collect();
    // HTTP/2: h2load, four concurrent streams on one connection, 2 s per connection.
    let h2 = {
        let (stop, url) = (stop.clone(), format!("http://{addr}/load"));
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                runs.push(h2load(&url));
            }
            runs
        })
    };

    let loads = |p: &Proxy, result: &str| {
        metric_value(
            &p.admin_get("/metrics"),
            &format!("weft_config_loads_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    for i in 1..=100 {
        weft_testkit::replace_file(&p.config, &config(i, &echoes, grpc_addr, ws_addr));
        eventually(
            &format!("reload {i} applied"),
            Duration::from_secs(20),
            || (loads(&p, "success") >= (i + 1) as f64).then_some(()),
        );
        if i % 25 == 0 {
            let msg = format!("during-{i}");
            assert_eq!(exchange(&mut ws, &msg)["echo"], msg.as_str());
            assert_eq!(
                exchange(&mut grpc, &msg)["reply"],
                msg.to_uppercase().as_str()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads.drain(..) {
        t.join().expect("load thread");
    }
    let h2_results = h2.join().expect("h2 thread");

    assert_eq!(loads(&p, "success"), 101.0);
    assert_eq!(loads(&p, "failure"), 0.0);
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let dropped = tally.dropped.load(Ordering::Relaxed);
    assert_eq!(
        (failed, dropped),
        (0, 0),
        "{ok} ok, {failed} failed, {dropped} dropped"
    );
    assert!(
        ok >= 500,
        "the load must overlap the reloads: only {ok} requests"
    );
    let h2_ok: u64 = h2_results.iter().map(|r| r.succeeded).sum();
    let h2_bad: Vec<_> = h2_results.iter().filter(|r| !r.clean()).collect();
    assert!(h2_bad.is_empty(), "HTTP/2 failures: {h2_bad:#?}");
    assert!(h2_ok > 0, "no HTTP/2 request succeeded");

    // The WebSocket and the gRPC stream lived through all 100 reloads.
    assert_eq!(exchange(&mut ws, "after")["echo"], "after");
    assert_eq!(exchange(&mut grpc, "after")["reply"], "AFTER");
    eprintln!("100 reloads: {ok} HTTP/1.1 and {h2_ok} HTTP/2 requests, 0 failed, 0 dropped");
}

/// One h2load run's outcome.
#[derive(Debug)]
struct H2Run {
    succeeded: u64,
    failed: u64,
    errored: u64,
    non_2xx: bool,
}

impl H2Run {
    fn clean(&self) -> bool {
        self.failed == 0 && self.errored == 0 && !self.non_2xx && self.succeeded > 0
    }
}

fn h2load(url: &str) -> H2Run {
    let out = std::process::Command::new(weft_testkit::require("h2load"))
        .args(["-D", "2", "-c", "1", "-m", "4", url])
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default();
    let count = |what: &str| {
        line.split(',')
            .find(|p| p.trim_end().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default();
    H2Run {
        succeeded: count("succeeded"),
        failed: count("failed"),
        errored: count("errored"),
        non_2xx: !codes.contains(" 0 3xx, 0 4xx, 0 5xx"),
    }
}
