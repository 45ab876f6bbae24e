//! Canary rollouts end to end: `weft server` (its controller on the leader), payments'
//! v1 and v2 instances behind real sidecars, frontend's sidecar calling payments under
//! steady load from the test, and the rollout read back with `weft canary status` as an
//! operator would. Loopback only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weft_testkit::mesh::{
    allow_all, echo_name as who, server, sidecar, weft_cli, Instance, Server, Sidecar,
};
use weft_testkit::{echo, eventually, temp_dir};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn apply(s: &Server, yaml: &str) -> (bool, String, String) {
    let path = temp_dir().join("canary.yaml");
    std::fs::write(&path, yaml).expect("write the file");
    let (path, url) = (path.display().to_string(), s.url());
    weft_cli(&weft(), &["apply", "-f", &path, "--server", &url])
}

fn status(s: &Server, name: &str) -> Value {
    let url = s.url();
    let (ok, out, err) = weft_cli(
        &weft(),
        &["canary", "status", name, "-o", "json", "--server", &url],
    );
    assert!(ok, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let k = who(addr).unwrap_or_else(|e| format!("error: {e}"));
        *out.entry(k).or_default() += 1;
    }
    out
}

/// payments-1 (v1, healthy) and payments-2 (v2, answering 503 to `v2_fail_rate` of its
/// requests), the Service naming them as subsets, and frontend's sidecar calling them.
struct Mesh {
    server: Server,
    _instances: Vec<Instance>,
    _frontend: (weft_testkit::Echo, Sidecar),
    out: SocketAddr,
}

impl Mesh {
    fn start(v2_fail_rate: &str) -> Mesh {
        let server = server(&weft());
        allow_all(&weft(), &server);
        let url = server.url();
        let mut instances = Vec::new();
        for (id, version, fail) in [
            ("payments-1", "v1", "0"),
            ("payments-2", "v2", v2_fail_rate),
        ] {
            let app = echo(&weft(), id, &["--fail-rate", fail]);
            let sc = sidecar(
                &weft(),
                &url,
                "payments",
                id,
                app.addr,
                &["--metadata", &format!("version={version}")],
            );
            sc.wait_synced();
            instances.push(Instance { app, sidecar: sc });
        }
        let (ok, out, err) = apply(
            &server,
            "kind: Service\nmetadata: {name: payments}\nspec:\n  subsets: {stable: {version: v1}, canary: {version: v2}}\n",
        );
        assert!(ok, "{out}{err}");
        let fe_app = echo(&weft(), "frontend-1", &[]);
        let fe = sidecar(
            &weft(),
            &url,
            "frontend",
            "frontend-1",
            fe_app.addr,
            &["--upstream", "payments=127.0.0.1:0"],
        );
        fe.wait_synced();
        let out = fe.listener("out-payments");
        eventually("payments answers", Duration::from_secs(15), || {
            who(out)
                .ok()
                .filter(|n| n.starts_with("payments"))
                .map(|_| ())
        });
        Mesh {
            server,
            _instances: instances,
            _frontend: (fe_app, fe),
            out,
        }
    }

    /// Requests through frontend's sidecar, 50 a second, until dropped or finished.
    fn load(&self) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (out, s) = (self.out, stop.clone());
        let t = std::thread::spawn(move || {
            let (mut n, mut failed) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) && n < 100_000 {
                if let Err(e) = who(out) {
                    failed.push(e);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, failed)
        });
        Load(stop, Some(t))
    }
}

struct Load(
    Arc<AtomicBool>,
    Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
);

impl Load {
    /// Stops it: requests sent, and what each failed one said.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.0.store(true, Ordering::Relaxed);
        self.1
            .take()
            .map(|t| t.join().expect("the load thread"))
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// A Canary of payments: 20%, 40%, 60%, checked every `interval`.
fn canary(interval: &str, threshold: u32, no_data: &str) -> String {
    format!(
        "kind: Canary\nmetadata: {{name: payments}}\nspec:\n  service: payments\n  stable: stable\n  canary: canary\n  stepWeight: 20\n  maxWeight: 60\n  analysis:\n    interval: {interval}\n    threshold: {threshold}\n    successRate: 0.95\n    p99: 2s\n    minRequests: 5\n    noData: {no_data}\n"
    )
}

fn phase_is(s: &Server, want: &str, within: Duration) -> Value {
    eventually(&format!("the canary is {want}"), within, || {
        let v = status(s, "payments");
        (v["phase"] == want).then_some(v)
    })
}

fn verdicts(v: &Value) -> Vec<(u64, String)> {
    v["measurements"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["weight"].as_u64().unwrap_or(0),
                m["verdict"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A canary that fails 20% of its requests under steady load is rolled back after
/// `threshold` failed checks (2 × 10 s, plus a convergence), and then gets nothing.
#[test]
fn a_failing_canary_is_rolled_back_and_then_gets_no_request() {
    let m = Mesh::start("0.2");
    let _load = m.load();
    let started = std::time::Instant::now();
    let (ok, out, err) = apply(&m.server, &canary("10s", 2, "wait"));
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "rolled-back", Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(v["weight"], 0, "{v:#}");
    assert_eq!(v["failedChecks"], 2, "{v:#}");
    let fails: Vec<&Value> = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] == "fail")
        .collect();
    assert_eq!(fails.len(), 2, "{v:#}");
    // (A check that found too few requests waits: it is not a failure.)
    assert!(
        verdicts(&v)
            .iter()
            .all(|(w, verdict)| *w == 20 && verdict != "pass"),
        "{v:#}"
    );
    for f in &fails {
        let rate = f["successRate"].as_f64().expect("a rate");
        assert!((0.6..0.95).contains(&rate), "about 80% succeeded: {f}");
        assert!(f["requests"].as_u64().unwrap() >= 5, "{f}");
        assert!(f["why"].as_str().unwrap().contains("success rate"), "{f}");
    }
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .starts_with("2 failed checks (threshold 2)"),
        "{v:#}"
    );
    // Rolled back within interval × threshold plus convergence and the leader's ticks (a
    // check that waited for traffic adds one interval).
    let waited = verdicts(&v)
        .iter()
        .filter(|(_, verdict)| verdict == "wait")
        .count() as u64;
    assert!(
        took < Duration::from_secs(20 + 10 * waited + 5),
        "took {took:?} with {waited} waits"
    );
    // After the rollback no request reaches the canary.
    std::thread::sleep(Duration::from_millis(500));
    let t = tally(m.out, 60);
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        ["payments-1"],
        "{t:?}"
    );
    // Events as metrics.
    let (code, body) = weft_testkit::mesh::http(m.server.addr, "GET", "/metrics", b"").unwrap();
    let metrics = String::from_utf8_lossy(&body);
    assert_eq!(code, 200);
    for line in [
        "weft_control_canary_rollouts_total{canary=\"payments\",phase=\"rolled-back\"} 1",
        "weft_control_canary_checks_total{canary=\"payments\",verdict=\"fail\"} 2",
        "weft_control_canary_weight{canary=\"payments\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    // The table an operator reads.
    let url = m.server.url();
    let (ok, table, err) = weft_cli(&weft(), &["canary", "status", "payments", "--server", &url]);
    assert!(ok, "{err}");
    println!("{table}");
    assert!(
        table.contains("phase rolled-back, canary weight 0%"),
        "{table}"
    );
    assert!(table.contains(" fail "), "{table}");
}

/// A healthy canary goes through 20%, 40%, 60%, each checked, then takes all traffic.
#[test]
fn a_healthy_canary_is_promoted_through_every_step() {
    let m = Mesh::start("0");
    let _load = m.load();
    let (ok, out, err) = apply(&m.server, &canary("10s", 2, "wait"));
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "promoted", Duration::from_secs(90));
    assert_eq!(v["weight"], 100, "{v:#}");
    let passed: Vec<(u64, String)> = verdicts(&v)
        .into_iter()
        .filter(|(_, verdict)| verdict == "pass")
        .collect();
    assert_eq!(
        passed,
        [
            (20, "pass".into()),
            (40, "pass".into()),
            (60, "pass".into())
        ],
        "{v:#}"
    );
    assert_eq!(v["failedChecks"], 0, "{v:#}");
    std::thread::sleep(Duration::from_millis(500));
    let t = tally(m.out, 40);
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        ["payments-2"],
        "{t:?}"
    );
}

/// Without traffic, `noData: wait` holds the first step and records why at each check.
#[test]
fn without_traffic_no_data_wait_holds_the_first_step() {
    let m = Mesh::start("0");
    let (ok, out, err) = apply(&m.server, &canary("10s", 2, "wait"));
    assert!(ok, "{out}{err}");
    let v = eventually("two waits", Duration::from_secs(40), || {
        let v = status(&m.server, "payments");
        (verdicts(&v).len() >= 2).then_some(v)
    });
    assert_eq!(v["phase"], "progressing", "{v:#}");
    assert_eq!(
        (v["step"].as_u64(), v["weight"].as_u64()),
        (Some(0), Some(20))
    );
    assert!(
        verdicts(&v)
            .iter()
            .all(|(w, verdict)| *w == 20 && verdict == "wait"),
        "{v:#}"
    );
    assert!(
        v["measurements"][0]["why"]
            .as_str()
            .unwrap()
            .contains("fewer than minRequests 5: noData wait"),
        "{v:#}"
    );
    // A changed spec starts the rollout over: `fail` counts each empty check as failed.
    let (ok, out, err) = apply(&m.server, &canary("10s", 2, "fail"));
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "rolled-back", Duration::from_secs(40));
    assert_eq!(
        verdicts(&v),
        [(20, "fail".into()), (20, "fail".into())],
        "{v:#}"
    );
}

/// Without traffic, `noData: pass` promotes through every step.
#[test]
fn without_traffic_no_data_pass_promotes() {
    let m = Mesh::start("0");
    let (ok, out, err) = apply(&m.server, &canary("10s", 2, "pass"));
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "promoted", Duration::from_secs(60));
    assert_eq!(
        verdicts(&v),
        [
            (20, "pass".into()),
            (40, "pass".into()),
            (60, "pass".into())
        ],
        "{v:#}"
    );
}

/// Operators' commands: pause holds the weight, resume carries on, abort sends all
/// traffic back to stable at once.
#[test]
fn pause_resume_and_abort() {
    let m = Mesh::start("0");
    let (ok, out, err) = apply(&m.server, &canary("10s", 2, "wait"));
    assert!(ok, "{out}{err}");
    phase_is(&m.server, "progressing", Duration::from_secs(10));
    let url = m.server.url();
    let cli = |args: &[&str]| {
        let mut all = vec!["canary"];
        all.extend_from_slice(args);
        all.extend(["--server", &url]);
        weft_cli(&weft(), &all)
    };
    let (ok, out, err) = cli(&["pause", "payments"]);
    assert!(ok && out.contains("pause requested"), "{out}{err}");
    phase_is(&m.server, "paused", Duration::from_secs(10));
    let (ok, _, err) = cli(&["pause", "payments"]);
    assert!(!ok && err.contains("cannot pause"), "{err}");
    cli(&["resume", "payments"]);
    phase_is(&m.server, "progressing", Duration::from_secs(10));
    cli(&["abort", "payments"]);
    let v = phase_is(&m.server, "aborted", Duration::from_secs(10));
    assert_eq!(v["weight"], 0);
    assert_eq!(v["reason"], "aborted by an operator");
    let t = tally(m.out, 30);
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        ["payments-1"],
        "{t:?}"
    );
}

/// Bad canaries are refused whole with file, line and field; nothing is applied.
#[test]
fn bad_canaries_are_refused_with_file_line_and_field() {
    let s = server(&weft());
    let (ok, out, err) = apply(
        &s,
        "kind: Service\nmetadata: {name: payments}\nspec:\n  subsets: {stable: {version: v1}, canary: {version: v2}}\n",
    );
    assert!(ok, "{out}{err}");
    let good = canary("10s", 2, "wait");
    for (from, to, says) in [
        ("maxWeight: 60", "maxWeight: 50", "spec.maxWeight: 50 is not a multiple of stepWeight 20: the steps 20, 40 never reach it"),
        ("canary: canary\n", "canary: v3\n", "spec.canary: Service `payments` has no subset `v3` (it has: canary, stable)"),
        ("interval: 10s", "interval: 0s", "spec.analysis.interval: must be 10s to 10m in whole 10s"),
        ("  analysis:", "  header: {name: \"x y\", value: a}\n  analysis:", "spec.header.name: `x y` is not a valid header name"),
        ("  analysis:", "  blueGreen: {checks: 2}\n  analysis:", "spec.blueGreen: blue/green switches at once: no stepWeight, maxWeight or weights"),
    ] {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good, "{from}");
        let (ok, out, err) = apply(&s, &bad);
        assert!(!ok, "{from}: {out}");
        assert!(err.contains("canary.yaml:") && err.contains(says), "{from}: {err}");
    }
    let url = s.url();
    let (ok, _, err) = weft_cli(&weft(), &["get", "canary", "payments", "--server", &url]);
    assert!(
        !ok && err.contains("no Canary named `payments`"),
        "nothing applied: {err}"
    );
}

/// Header-first: requests with `x-canary: always` reach the canary from the start while
/// every other request stays on stable (a first step at weight 0, judged on that traffic);
/// then the weights move.
#[test]
fn header_first_sends_only_the_header_s_requests_to_the_canary_at_first() {
    let m = Mesh::start("0");
    let _load = m.load();
    let url = format!("http://{}/", m.out);
    let stop = Arc::new(AtomicBool::new(false));
    let flagged = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ =
                    weft_testkit::curl(&["-s", "-o", "/dev/null", "-H", "x-canary: always", &url]);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let yaml = canary("10s", 2, "wait").replace(
        "  stepWeight: 20\n  maxWeight: 60\n",
        "  weights: [50]\n  header: {name: x-canary, value: always}\n",
    );
    let (ok, out, err) = apply(&m.server, &yaml);
    assert!(ok, "{out}{err}");
    eventually("the header step in place", Duration::from_secs(20), || {
        let v = status(&m.server, "payments");
        (v["step"] == 0 && v["weight"] == 0 && !v["convergedMs"].is_null()).then_some(())
    });
    let with = |header: bool| -> BTreeMap<String, usize> {
        let mut t = BTreeMap::new();
        for _ in 0..15 {
            let mut args = vec!["-s", "-i"];
            if header {
                args.extend(["-H", "x-canary: always"]);
            }
            args.push(&url);
            let r = weft_testkit::curl(&args);
            *t.entry(r.header("x-echo-name").unwrap_or("none").to_string())
                .or_default() += 1;
        }
        t
    };
    assert_eq!(
        with(true).keys().cloned().collect::<Vec<_>>(),
        ["payments-2"]
    );
    assert_eq!(
        with(false).keys().cloned().collect::<Vec<_>>(),
        ["payments-1"]
    );
    let v = phase_is(&m.server, "promoted", Duration::from_secs(60));
    let checked: Vec<(u64, String)> = verdicts(&v)
        .into_iter()
        .filter(|(_, verdict)| verdict != "wait")
        .collect();
    assert_eq!(checked, [(0, "pass".into()), (50, "pass".into())], "{v:#}");
    stop.store(true, Ordering::Relaxed);
    let _ = flagged.join();
}

/// A webhook receiver on loopback: records every JSON body, answers `status`.
struct Hooks {
    addr: SocketAddr,
    status: Arc<std::sync::atomic::AtomicU16>,
    seen: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Hooks {
    fn start() -> Hooks {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, sn) = (status.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    sn.lock().expect("hook log").push(v);
                }
                let code = st.load(Ordering::Relaxed);
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Hooks { addr, status, seen }
    }
}

/// Webhooks gate the rollout: asked before the start, before each step and before
/// promotion, in that order; a refusing one counts as a failed check, and at the
/// threshold the rollout is rolled back, saying which webhook said what.
#[test]
fn webhooks_gate_the_start_every_step_and_the_promotion() {
    let m = Mesh::start("0");
    let _load = m.load();
    let hooks = Hooks::start();
    let url = format!("http://{}/gate", hooks.addr);
    let yaml = |weights: &str| {
        canary("10s", 2, "wait")
            .replace("  stepWeight: 20\n  maxWeight: 60\n", &format!("  weights: {weights}\n"))
            .replace(
                "    noData: wait\n",
                &format!(
                    "    noData: wait\n    webhooks:\n      - {{name: start, url: \"{url}\", when: before-start}}\n      - {{name: step, url: \"{url}\"}}\n      - {{name: promote, url: \"{url}\", when: before-promotion}}\n"
                ),
            )
    };
    let (ok, out, err) = apply(&m.server, &yaml("[50]"));
    assert!(ok, "{out}{err}");
    phase_is(&m.server, "promoted", Duration::from_secs(60));
    let asked: Vec<(String, u64)> = hooks
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["hook"].as_str().unwrap().to_string(),
                v["nextWeight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("before-start".to_string(), 50),
            ("before-step".to_string(), 50),
            ("before-promotion".to_string(), 100)
        ]
    );
    // Now the gate says no: a new rollout (the spec changed) never starts.
    hooks.status.store(503, Ordering::Relaxed);
    let (ok, out, err) = apply(&m.server, &yaml("[40]"));
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "rolled-back", Duration::from_secs(60));
    assert_eq!(
        verdicts(&v),
        [(0, "fail".into()), (0, "fail".into())],
        "two refusals, no step: {v:#}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("webhook start (before-start): answered 503"),
        "{v:#}"
    );
}

/// Blue/green: users see only blue while green gets a copy of every request, judged on
/// what it received; after the checks, all traffic switches to green at once, and no
/// request fails through the switch.
#[test]
fn blue_green_mirrors_to_green_then_switches_at_once_losing_nothing() {
    let m = Mesh::start("0");
    let load = m.load();
    let yaml = canary("10s", 2, "wait").replace(
        "  stepWeight: 20\n  maxWeight: 60\n",
        "  blueGreen: {checks: 2}\n",
    );
    let (ok, out, err) = apply(&m.server, &yaml);
    assert!(ok, "{out}{err}");
    let v = eventually(
        "green judged on its copies",
        Duration::from_secs(40),
        || {
            let v = status(&m.server, "payments");
            let judged = v["measurements"]
                .as_array()?
                .iter()
                .any(|m| m["verdict"] == "pass" && m["requests"].as_u64() > Some(5));
            judged.then_some(v)
        },
    );
    assert_eq!(v["phase"], "progressing", "{v:#}");
    assert_eq!(v["weight"], 0, "users stay on blue: {v:#}");
    let t = tally(m.out, 30);
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        ["payments-1"],
        "{t:?}"
    );
    let v = phase_is(&m.server, "promoted", Duration::from_secs(40));
    let checked: Vec<(u64, String)> = verdicts(&v)
        .into_iter()
        .filter(|(_, verdict)| verdict != "wait")
        .collect();
    assert_eq!(checked, [(0, "pass".into()), (0, "pass".into())], "{v:#}");
    std::thread::sleep(Duration::from_millis(500));
    let t = tally(m.out, 30);
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        ["payments-2"],
        "{t:?}"
    );
    let (sent, failed) = load.finish();
    assert!(sent > 100, "the load ran: {sent}");
    assert!(
        failed.is_empty(),
        "no request failed through the switch: {failed:?}"
    );
}

/// A real Prometheus (Debian's), with no targets: instant queries of constants are all a
/// check needs to show that the value it returns is what decides.
struct Prometheus(std::process::Child, String);

impl Prometheus {
    fn start() -> Prometheus {
        let dir = temp_dir();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global: {scrape_interval: 15s}\n").expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(weft_testkit::require("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus");
        let url = format!("http://127.0.0.1:{port}");
        let p = Prometheus(child, url.clone());
        eventually("prometheus is ready", Duration::from_secs(30), || {
            (weft_testkit::curl(&[&format!("{url}/-/ready")]).status == 200).then_some(())
        });
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A team's own measure from Prometheus: a value over its bound is a failed check (and
/// rolls back at the threshold); within it, the rollout goes on. `{{backend}}` and the
/// other placeholders are filled in before the query is sent.
#[test]
fn a_prometheus_query_decides_with_the_value_it_returns() {
    let prom = Prometheus::start();
    let m = Mesh::start("0");
    let _load = m.load();
    let yaml = |query: &str| {
        canary("10s", 2, "wait")
            .replace("  stepWeight: 20\n  maxWeight: 60\n", "  weights: [50]\n")
            .replace("    successRate: 0.95\n    p99: 2s\n", "")
            .replace(
                "    noData: wait\n",
                &format!(
                    "    noData: wait\n    prometheus:\n      - {{name: errors, url: \"{}\", query: '{query}', max: 0.4}}\n",
                    prom.1
                ),
            )
    };
    let (ok, out, err) = apply(&m.server, &yaml("vector(0.5)"));
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "rolled-back", Duration::from_secs(60));
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .ends_with("last: errors 0.5 (max 0.4)"),
        "{v:#}"
    );
    let (ok, out, err) = apply(
        &m.server,
        &yaml(r#"label_replace(vector(0.1), "upstream", "{{backend}}", "", "")"#),
    );
    assert!(ok, "{out}{err}");
    let v = phase_is(&m.server, "promoted", Duration::from_secs(60));
    let passes: Vec<&Value> = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] == "pass")
        .collect();
    assert_eq!(passes.len(), 1, "{v:#}");
    assert_eq!(passes[0]["why"], "errors 0.1 (max 0.4)", "{v:#}");
}
