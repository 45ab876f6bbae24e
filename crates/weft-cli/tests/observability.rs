//! Distributed tracing and per-edge metrics end to end: real sidecars, an edge gateway,
//! `weft echo` apps that pass trace headers on, a real OTLP/gRPC receiver (grpcio +
//! opentelemetry-proto, `tests/support/otlp_receiver.py`) and a real Prometheus.
//! Loopback only.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_testkit::mesh::{server, sidecar, weft_cli, Server, Sidecar};
use weft_testkit::{curl, eventually, metric_value, require, temp_dir, venv_tool, Proc};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// The OTLP receiver: spans as JSON lines.
struct Receiver {
    proc: Proc,
    addr: SocketAddr,
    spans: Vec<Value>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
        let mut cmd = Command::new(venv_tool("python"));
        cmd.arg(script).args(["--port", &port.to_string()]);
        let proc = Proc::spawn(cmd);
        let addr = proc.ready["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("addr");
        Receiver {
            proc,
            addr,
            spans: Vec::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Reads what arrived until `done` holds for the spans so far, or `limit` passes.
    fn wait(&mut self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.spans) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: spans so far: {:#?}", self.spans);
            if let Ok(line) = self
                .proc
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.spans
                    .push(serde_json::from_str(&line).expect("a span as JSON"));
            }
        }
    }

    fn command(&mut self, cmd: &str) {
        let stdin = self.proc.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("command");
        stdin.flush().expect("flush");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

fn apply(server: &Server, yaml: &str) {
    let path = temp_dir().join("mesh.yaml");
    std::fs::write(&path, yaml).expect("write");
    let path = path.display().to_string();
    let (ok, out, err) = weft_cli(
        &weft(),
        &["apply", "-f", &path, "--server", &server.url(), "--wait"],
    );
    assert!(ok, "apply: {out}{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An app that calls `target` for every request (passing trace headers on), beside its
/// sidecar whose outbound listener for `upstream` is that target.
struct Caller {
    _app: weft_testkit::Echo,
    sidecar: Sidecar,
}

fn caller(s: &Server, service: &str, upstream: &str, extra: &[&str]) -> Caller {
    let port = free_port();
    let app = weft_testkit::echo(
        &weft(),
        &format!("{service}-1"),
        &["--call", &format!("http://127.0.0.1:{port}/next")],
    );
    let upstream = format!("{upstream}=127.0.0.1:{port}");
    let mut args = vec!["--upstream", &upstream];
    args.extend_from_slice(extra);
    let sidecar = sidecar(
        &weft(),
        &s.url(),
        service,
        &format!("{service}-1"),
        app.addr,
        &args,
    );
    sidecar.wait_synced();
    Caller { _app: app, sidecar }
}

/// An edge gateway (`weft sidecar --gateway`) routing everything to `service`.
fn edge_gateway(s: &Server, service: &str, extra: &[&str]) -> (Sidecar, SocketAddr) {
    let file = temp_dir().join("edge.yaml");
    std::fs::write(
        &file,
        format!(
            "kind: Gateway\nmetadata: {{name: edge}}\nspec:\n  listeners: [{{name: web, address: 127.0.0.1:0}}]\n\
             ---\nkind: HTTPRoute\nmetadata: {{name: shop}}\nspec:\n  rules: [{{backendRefs: [{{name: {service}}}]}}]\n"
        ),
    )
    .expect("write");
    weft_testkit::mesh::edge_gateway(&weft(), &s.url(), &file, extra)
}

const MESH: &str = "kind: Mesh
metadata: {name: mesh}
spec: {tracing: {samplingPercent: 100}}
---
kind: Intention
metadata: {name: edge-frontend}
spec: {source: edge, destination: frontend, action: allow}
---
kind: Intention
metadata: {name: frontend-payments}
spec: {source: frontend, destination: payments, action: allow}
---
kind: Service
metadata: {name: ghost}
spec: {endpoints: [{address: \"127.0.0.1:GHOST\"}], retry: {attempts: 0}}
";

fn text<'a>(span: &'a Value, attr: &str) -> &'a str {
    span["attributes"][attr].as_str().unwrap_or_default()
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const ERROR: i64 = 2;

#[test]
fn one_trace_from_the_edge_through_two_sidecars_whatever_format_arrives() {
    let s = server(&weft());
    let mut rx = Receiver::start(0);
    let otlp = rx.endpoint();
    let ghost = free_port(); // nothing listens there
    apply(&s, &MESH.replace("GHOST", &ghost.to_string()));
    let tracing = ["--otlp-endpoint", otlp.as_str()];
    let _payments = weft_testkit::mesh::instance(&weft(), &s, "payments", "payments-1", &tracing);
    let frontend = caller(&s, "frontend", "payments", &tracing);
    let (_edge, web) = edge_gateway(&s, "frontend", &tracing);
    eventually(
        "edge → frontend → payments",
        Duration::from_secs(15),
        || {
            let r = curl(&[&format!("http://{web}/")]);
            (r.status == 200 && r.header("x-echo-called") == Some("payments-1")).then_some(())
        },
    );

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let formats: [(&str, Vec<String>); 4] = [
        (
            "w3c",
            vec![format!("traceparent: 00-{trace}-{client_span}-01")],
        ),
        (
            "b3 multi",
            vec![
                format!("x-b3-traceid: {trace}"),
                format!("x-b3-spanid: {client_span}"),
                "x-b3-sampled: 1".into(),
            ],
        ),
        ("b3 single", vec![format!("b3: {trace}-{client_span}-1")]),
        ("none", vec![]),
    ];
    for (format, headers) in formats {
        let id = format!("trace-test-{}", format.replace(' ', "-"));
        let mut args = vec![
            format!("http://{web}/"),
            "-H".into(),
            format!("x-request-id: {id}"),
        ];
        for h in &headers {
            args.extend(["-H".to_string(), h.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&args).status, 200, "{format}");
        let ours = |spans: &[Value]| -> Vec<Value> {
            spans
                .iter()
                .filter(|s| text(s, "weft.request_id") == id)
                .cloned()
                .collect()
        };
        rx.wait(
            &format!("{format}: four spans"),
            Duration::from_secs(20),
            |s| ours(s).len() >= 4,
        );
        let spans = ours(&rx.spans);
        assert_eq!(spans.len(), 4, "{format}: {spans:#?}");
        let find = |service: &str, kind: i64| {
            spans
                .iter()
                .find(|s| s["service"] == service && s["kind"] == kind)
                .unwrap_or_else(|| panic!("{format}: no {service} span of kind {kind}: {spans:#?}"))
        };
        let edge = find("edge", SERVER);
        let front_in = find("frontend", SERVER);
        let front_out = find("frontend", CLIENT);
        let pay_in = find("payments", SERVER);
        let trace_id = edge["trace_id"].as_str().expect("trace id");
        for s in &spans {
            assert_eq!(s["trace_id"], trace_id, "{format}: one trace");
            assert_eq!(s["status"]["code"], 0, "{format}: no error: {s}");
        }
        if format == "none" {
            assert_eq!(edge["parent_span_id"], "", "a trace starts at the edge");
        } else {
            assert_eq!(trace_id, trace, "{format}: the caller's trace continues");
            assert_eq!(edge["parent_span_id"], client_span, "{format}");
        }
        // Every span's parent is the span before it.
        assert_eq!(front_in["parent_span_id"], edge["span_id"], "{format}");
        assert_eq!(front_out["parent_span_id"], front_in["span_id"], "{format}");
        assert_eq!(pay_in["parent_span_id"], front_out["span_id"], "{format}");
        // Who called whom, as proven by mutual TLS.
        assert_eq!(
            text(front_in, "weft.source.identity"),
            "spiffe://weft.local/svc/edge"
        );
        assert_eq!(
            text(pay_in, "weft.source.identity"),
            "spiffe://weft.local/svc/frontend"
        );
        assert_eq!(
            text(front_out, "weft.destination.identity"),
            "spiffe://weft.local/svc/payments"
        );
        assert_eq!(
            text(edge, "weft.destination.identity"),
            "spiffe://weft.local/svc/frontend"
        );
        assert_eq!(
            text(pay_in, "weft.intention"),
            "intention frontend-payments",
            "{pay_in}"
        );
        assert_eq!(text(edge, "http.route"), "shop");
        assert_eq!(edge["name"], "GET shop");
        assert_eq!(pay_in["attributes"]["http.response.status_code"], 200);
    }

    // A call the intentions deny, and one to a service nobody answers: error spans that
    // name the cause.
    let intruder = caller(&s, "intruder", "payments", &tracing);
    let out = intruder.sidecar.listener("out-payments");
    let r = curl(&[&format!("http://{out}/"), "-H", "x-request-id: denied-call"]);
    assert_eq!(r.status, 403);
    let lost = caller(&s, "lost", "ghost", &tracing);
    let r = curl(&[
        &format!("http://{}/", lost.sidecar.listener("out-ghost")),
        "-H",
        "x-request-id: ghost-call",
    ]);
    assert_eq!(r.status, 503);
    let by_id = |spans: &[Value], id: &str, service: &str| -> Option<Value> {
        spans
            .iter()
            .find(|s| text(s, "weft.request_id") == id && s["service"] == service)
            .cloned()
    };
    rx.wait("error spans", Duration::from_secs(20), |s| {
        by_id(s, "denied-call", "payments").is_some()
            && by_id(s, "denied-call", "intruder").is_some()
            && by_id(s, "ghost-call", "lost").is_some()
    });
    let denied = by_id(&rx.spans, "denied-call", "payments").expect("span");
    assert_eq!(denied["status"]["code"], ERROR);
    assert_eq!(denied["status"]["message"], "denied-by-intention");
    assert_eq!(
        text(&denied, "weft.source.identity"),
        "spiffe://weft.local/svc/intruder"
    );
    let caller_side = by_id(&rx.spans, "denied-call", "intruder").expect("span");
    assert_eq!(
        (
            caller_side["kind"].as_i64(),
            caller_side["status"]["code"].as_i64()
        ),
        (Some(CLIENT), Some(ERROR))
    );
    assert_eq!(caller_side["attributes"]["http.response.status_code"], 403);
    let ghost = by_id(&rx.spans, "ghost-call", "lost").expect("span");
    assert_eq!(ghost["status"]["code"], ERROR);
    assert_eq!(ghost["status"]["message"], "connect-refused", "{ghost}");
    let _ = frontend;
}

#[test]
fn a_dead_or_slow_collector_never_fails_a_request() {
    let backend = weft_testkit::echo(&weft(), "app", &[]);
    let port = free_port();
    let mut rx = Receiver::start(port);
    let config = format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n  tracing: {{samplingPercent: 100}}\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: app}}]}}]\n---\n\
         kind: Service\nmetadata: {{name: app}}\nspec:\n  endpoints: [{{address: \"{}\"}}]\n",
        backend.addr
    );
    let p = weft_testkit::proxy(&weft(), &config, &["--otlp-endpoint", &rx.endpoint()]);
    let web = p.listener("gw/web");
    let load = |n: usize| -> usize {
        (0..n)
            .filter(|_| matches!(weft_testkit::mesh::http(web, "GET", "/", b""), Ok((200, _))))
            .count()
    };
    let dropped = |p: &weft_testkit::Proxy| {
        metric_value(&p.admin_get("/metrics"), "weft_trace_spans_dropped_total").unwrap_or(0.0)
    };
    assert_eq!(load(50), 50);
    rx.wait("spans arrive", Duration::from_secs(10), |s| s.len() >= 50);

    // Slowed to a crawl: every export waits 10 s (past the 5 s export deadline).
    rx.command("delay 10");
    assert_eq!(load(3000), 3000, "a slow collector fails no request");
    eventually("spans dropped while slow", Duration::from_secs(20), || {
        (dropped(&p) > 0.0).then_some(())
    });

    // Gone: the receiver is killed.
    drop(rx);
    let before = dropped(&p);
    assert_eq!(load(3000), 3000, "a dead collector fails no request");
    eventually("spans dropped while dead", Duration::from_secs(20), || {
        (dropped(&p) > before).then_some(())
    });

    // Back on the same port: export resumes.
    let mut rx = Receiver::start(port);
    eventually("export resumes", Duration::from_secs(30), || {
        load(20);
        rx.wait("any span", Duration::from_secs(3), |s| !s.is_empty());
        Some(())
    });
    // (The receiver prints spans before it answers: the count follows a moment later.)
    eventually("exported again", Duration::from_secs(10), || {
        let m = metric_value(&p.admin_get("/metrics"), "weft_trace_spans_exported_total")?;
        (m > 50.0).then_some(())
    });
}

#[test]
fn prometheus_sees_every_edge_and_the_denied_one_apart() {
    let s = server(&weft());
    apply(&s, &MESH.replace("GHOST", &free_port().to_string()));
    let admin = ["--admin", "127.0.0.1:0"];
    let payments = weft_testkit::mesh::instance(&weft(), &s, "payments", "payments-1", &admin);
    let frontend = caller(&s, "frontend", "payments", &admin);
    let intruder = caller(&s, "intruder", "payments", &admin);
    let admin_of = |sc: &Sidecar| sc.proc.ready["admin"].as_str().expect("admin").to_string();

    // The recording rules the docs offer: valid for promtool, then loaded (evaluated every
    // second here instead of 30 s) and queried below.
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/observability/recording-rules.yml");
    let check = Command::new(require("promtool"))
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(check.status.success(), "promtool: {check:?}");
    let dir = temp_dir();
    let text = std::fs::read_to_string(&rules).expect("rules");
    assert!(text.contains("interval: 30s"), "the rules' interval moved");
    std::fs::write(
        dir.join("rules.yml"),
        text.replace("interval: 30s", "interval: 1s"),
    )
    .expect("rules");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: weft\n    static_configs:\n      - targets: ['{}', '{}', '{}']\n",
            admin_of(&frontend.sidecar),
            admin_of(&payments.sidecar),
            admin_of(&intruder.sidecar),
        ),
    )
    .expect("config");
    let port = free_port();
    let mut prom = Command::new(require("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus");
    let query = |q: &str| -> Option<f64> {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let r = curl(&["-G", &url, "--data-urlencode", &format!("query={q}")]);
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };

    let n = 37;
    let front = frontend.sidecar.listener("out-payments");
    for _ in 0..n {
        assert_eq!(curl(&[&format!("http://{front}/")]).status, 200);
    }
    let m = 5;
    let bad = intruder.sidecar.listener("out-payments");
    for _ in 0..m {
        assert_eq!(curl(&[&format!("http://{bad}/")]).status, 403);
    }
    let edge = |dir: &str, src: &str, class: &str| {
        format!(
            "sum(weft_edge_requests_total{{direction=\"{dir}\",source=\"{src}\",destination=\"payments\",status_class=\"{class}\"}})"
        )
    };
    let mut seen = BTreeMap::new();
    let done = eventually("Prometheus has every edge", Duration::from_secs(30), || {
        for (key, q) in [
            (
                "frontend→payments, caller's side",
                edge("outbound", "frontend", "2xx"),
            ),
            (
                "frontend→payments, callee's side",
                edge("inbound", "frontend", "2xx"),
            ),
            (
                "intruder→payments denied, callee's side",
                edge("inbound", "intruder", "4xx"),
            ),
            (
                "intruder→payments denied, caller's side",
                edge("outbound", "intruder", "4xx"),
            ),
        ] {
            seen.insert(key, query(&q));
        }
        seen.values().all(Option::is_some).then(|| seen.clone())
    });
    // The recording rules see the same edges while traffic goes on.
    let recorded = eventually(
        "the recording rules evaluate",
        Duration::from_secs(30),
        || {
            assert_eq!(curl(&[&format!("http://{front}/")]).status, 200);
            assert_eq!(curl(&[&format!("http://{bad}/")]).status, 403);
            let success =
                query("weft:edge_success:ratio1m{source=\"frontend\",destination=\"payments\"}")?;
            let denied = query(
                "weft:edge_client_errors:rate1m{source=\"intruder\",destination=\"payments\"}",
            )?;
            let p99 = query(
                "weft:edge_latency_seconds:p99_1m{source=\"frontend\",destination=\"payments\"}",
            )?;
            (denied > 0.0 && p99 > 0.0).then_some((success, denied, p99))
        },
    );
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(
        recorded.0, 1.0,
        "frontend→payments never failed: {recorded:?}"
    );
    assert_eq!(
        done["frontend→payments, caller's side"],
        Some(n as f64),
        "{done:?}"
    );
    assert_eq!(
        done["frontend→payments, callee's side"],
        Some(n as f64),
        "{done:?}"
    );
    assert_eq!(
        done["intruder→payments denied, callee's side"],
        Some(m as f64),
        "{done:?}"
    );
    assert_eq!(
        done["intruder→payments denied, caller's side"],
        Some(m as f64),
        "{done:?}"
    );
}

#[test]
fn malformed_trace_headers_never_fail_a_request() {
    let backend = weft_testkit::echo(&weft(), "app", &[]);
    let config = weft_testkit::one_service_config(
        "app",
        &format!("  endpoints: [{{address: \"{}\"}}]\n", backend.addr),
    );
    let p = weft_testkit::proxy(&weft(), &config, &[]);
    let url = format!("{}/headers", p.url("gw/web"));
    let long_state = format!("tracestate: {}", vec!["k=v"; 400].join(","));
    let bad: [&[&str]; 9] = [
        &["traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        &["traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"],
        &["traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01"],
        &["traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"],
        &["traceparent: 00-4bf92f3577b34da6-00f067aa0ba902b7-01"],
        &[
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &long_state,
        ],
        &[
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "b3: 11111111111111111111111111111111-2222222222222222-1",
        ],
        &["b3: garbage"],
        &["x-b3-traceid: zz", "x-b3-spanid: 1", "x-b3-sampled: maybe"],
    ];
    for headers in bad {
        let mut args = vec![url.as_str()];
        for h in headers {
            args.extend(["-H", h]);
        }
        let r = curl(&args);
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
        let seen = &r.json()["headers"];
        let tp = seen["traceparent"]
            .as_str()
            .expect("a traceparent always goes on");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            (parts.len(), parts[0].len(), parts[1].len()),
            (4, 2, 32),
            "{tp}"
        );
        assert!(
            tp.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{tp}"
        );
        if let Some(state) = seen["tracestate"].as_str() {
            assert!(state.len() <= 512, "tracestate cut to 512: {}", state.len());
        }
        if let Some(b3) = seen["b3"].as_str() {
            assert!(!b3.contains("1111111111111111"), "no stale B3 ids: {b3}");
        }
    }
}

/// `weft demo --otlp-endpoint`: every request is sampled (its Mesh and its gateway say
/// 100%), the sidecars export to the collector the demo was given, and a trace the user
/// starts is continued hop by hop.
#[test]
fn the_demo_traces_every_request_to_the_collector_it_is_given() {
    let mut rx = Receiver::start(0);
    let mut cmd = Command::new(weft());
    cmd.args([
        "demo",
        "--port",
        "0",
        "--tls-port",
        "0",
        "--server-port",
        "0",
    ])
    .args(["--otlp-endpoint", &rx.endpoint()])
    .env("OTEL_SERVICE_NAME", "one-name-for-all"); // the sidecars name their own
    let mut demo = Proc::spawn(cmd);
    let web = demo.ready["listeners"]["demo/web"]
        .as_str()
        .expect("web")
        .to_string();
    let payments = demo.ready["mesh"]["upstreams"]["payments"]
        .as_str()
        .expect("payments")
        .to_string();

    // The edge: three requests with no trace context, three spans (at the default 1% the
    // chance of that is one in a million).
    for i in 0..3 {
        let r = curl(&[
            "-H",
            &format!("x-request-id: demo-edge-{i}"),
            &format!("http://{web}/hello"),
        ]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    rx.wait("three edge spans", Duration::from_secs(20), |spans| {
        spans
            .iter()
            .filter(|s| text(s, "weft.request_id").starts_with("demo-edge-"))
            .count()
            == 3
    });

    // The mesh: a trace the caller started, continued by frontend's sidecar (client span)
    // and payments' (server span), each under its own service name.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    eventually("payments answers", Duration::from_secs(15), || {
        let r = curl(&[
            "-H",
            &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
            &format!("http://{payments}/order"),
        ]);
        (r.status == 200).then_some(())
    });
    rx.wait(
        "the user's trace through two sidecars",
        Duration::from_secs(20),
        |spans| {
            let ours: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace).collect();
            ours.iter().any(|c| {
                c["service"] == "frontend"
                    && c["kind"] == CLIENT
                    && c["parent_span_id"] == "00f067aa0ba902b7"
                    && ours.iter().any(|s| {
                        s["service"] == "payments"
                            && s["kind"] == SERVER
                            && s["parent_span_id"] == c["span_id"]
                    })
            })
        },
    );
    // And the demo's own calls, which bring no trace context, are sampled too: frontend's
    // sidecar starts their traces.
    rx.wait(
        "the demo's own calls traced",
        Duration::from_secs(20),
        |spans| {
            spans.iter().any(|s| {
                s["service"] == "frontend" && s["trace_id"] != trace && s["parent_span_id"] == ""
            })
        },
    );
    assert!(
        !rx.spans.iter().any(|s| s["service"] == "one-name-for-all"
            && text(s, "weft.listener").starts_with("sidecar/")),
        "sidecars name spans after their service"
    );
    demo.signal("INT");
    demo.wait_exit(Duration::from_secs(20)).expect("demo exits");
}

/// The rolling windows on the admin port (`GET /stats`): the caller's and the callee's
/// sidecars count the same edge exactly, the success rate is the app's, and the p50 is
/// the app's delay within the sketch's stated error (1/16) plus the hop.
#[test]
fn stats_windows_show_each_edge_exactly() {
    let s = server(&weft());
    apply(&s, &MESH.replace("GHOST", &free_port().to_string()));
    let admin = ["--admin", "127.0.0.1:0"];
    let app = weft_testkit::echo(&weft(), "payments-1", &["--delay", "40ms"]);
    let payments = sidecar(
        &weft(),
        &s.url(),
        "payments",
        "payments-1",
        app.addr,
        &admin,
    );
    payments.wait_synced();
    let frontend = caller(&s, "frontend", "payments", &admin);
    let admin_of = |sc: &Sidecar| sc.proc.ready["admin"].as_str().expect("admin").to_string();
    let out = frontend.sidecar.listener("out-payments");
    eventually("payments answers", Duration::from_secs(15), || {
        (curl(&[&format!("http://{out}/")]).status == 200).then_some(())
    });
    let edge = |admin: &str, direction: &str| -> Value {
        let r = curl(&[&format!("http://{admin}/stats?window=1m")]);
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        v["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| {
                e["direction"] == direction
                    && e["source"] == "frontend"
                    && e["destination"] == "payments"
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {direction} edge frontend→payments: {v:#}"))
    };
    let sides = [
        (admin_of(&frontend.sidecar), "outbound"),
        (admin_of(&payments), "inbound"),
    ];
    // What the warm-up left (it may have taken more than one request).
    let before: Vec<(u64, u64)> = sides
        .iter()
        .map(|(a, d)| {
            let e = edge(a, d);
            (
                e["requests"].as_u64().expect("requests"),
                e["successes"].as_u64().expect("successes"),
            )
        })
        .collect();
    let (ok, failing) = (27u64, 3u64);
    for _ in 0..ok {
        assert_eq!(curl(&[&format!("http://{out}/")]).status, 200);
    }
    for _ in 0..failing {
        assert_eq!(curl(&[&format!("http://{out}/status/500")]).status, 500);
    }
    for ((admin, direction), (requests, successes)) in sides.iter().zip(before.iter().copied()) {
        let e = edge(admin, direction);
        assert_eq!(e["requests"], requests + ok + failing, "{direction}: {e:#}");
        assert_eq!(e["successes"], successes + ok, "{direction}: {e:#}");
        let p50 = e["p50_ms"].as_f64().expect("p50");
        // At least the app's 40 ms (less the sketch's 1/16), at most that plus a hop.
        assert!(p50 >= 40.0 * (1.0 - 1.0 / 16.0), "{direction}: p50 {p50}");
        assert!(p50 <= 60.0 * (1.0 + 1.0 / 16.0), "{direction}: p50 {p50}");
        assert!(e["rps"].as_f64().expect("rps") > 0.0);
    }
    // The route windows too: the caller's outbound route to payments.
    let r = curl(&[&format!(
        "http://{}/stats?window=10m",
        admin_of(&frontend.sidecar)
    )])
    .json();
    let route_requests: u64 = r["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|x| x["service"] == "payments")
        .map(|x| x["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(route_requests, before[0].0 + ok + failing, "{r:#}");
    // A window it does not keep is refused with the ones it does.
    let bad = curl(&[&format!("http://{}/stats?window=5m", admin_of(&payments))]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("10s, 1m or 10m"), "{}", bad.body);
}
