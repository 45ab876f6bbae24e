//! Live traffic end to end (`weft stat`, `edges`, `tap`, `top`): real sidecars in front
//! of `weft echo` apps, known traffic sent through the caller's sidecar, and the answers
//! read through the control plane exactly as an operator would. Loopback only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use weft_testkit::mesh::{allow_all, http, server, sidecar, token_for, weft_cli, Server, Sidecar};
use weft_testkit::{curl, echo, eventually, require, Echo};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// payments (an app that takes 20 ms) and inventory, each with its sidecar, and
/// frontend's sidecar calling both; the test plays frontend's app.
struct Mesh {
    server: Server,
    _apps: Vec<Echo>,
    payments: Sidecar,
    _inventory: Sidecar,
    frontend: Sidecar,
    /// Successful warm-up requests each callee saw (they count in the windows too).
    warm: [u64; 2],
}

impl Mesh {
    fn start() -> Mesh {
        let server = server(&weft());
        allow_all(&weft(), &server);
        let pay_app = echo(&weft(), "payments-1", &["--delay", "20ms"]);
        let inv_app = echo(&weft(), "inventory-1", &[]);
        let url = server.url();
        let payments = sidecar(&weft(), &url, "payments", "payments-1", pay_app.addr, &[]);
        let inventory = sidecar(&weft(), &url, "inventory", "inventory-1", inv_app.addr, &[]);
        let fe_app = echo(&weft(), "frontend-1", &[]);
        let frontend = sidecar(
            &weft(),
            &url,
            "frontend",
            "frontend-1",
            fe_app.addr,
            &[
                "--upstream",
                "payments=127.0.0.1:0",
                "--upstream",
                "inventory=127.0.0.1:0",
            ],
        );
        for s in [&payments, &inventory, &frontend] {
            s.wait_synced();
        }
        let mut mesh = Mesh {
            server,
            _apps: vec![pay_app, inv_app, fe_app],
            payments,
            _inventory: inventory,
            frontend,
            warm: [0, 0],
        };
        // Until each callee answers through the mesh; only the answered requests reach
        // the callee's sidecar and its windows.
        for (i, svc) in ["payments", "inventory"].into_iter().enumerate() {
            let out = mesh.out(svc);
            eventually(&format!("{svc} answers"), Duration::from_secs(20), || {
                let ok = matches!(http(out, "GET", "/warm", b""), Ok((200, _)));
                if ok {
                    mesh.warm[i] += 1;
                }
                ok.then_some(())
            });
        }
        mesh
    }

    fn out(&self, service: &str) -> SocketAddr {
        self.frontend.listener(&format!("out-{service}"))
    }

    fn cli(&self, args: &[&str]) -> String {
        let url = self.server.url();
        let mut all = args.to_vec();
        all.extend(["--server", &url]);
        let (ok, out, err) = weft_cli(&weft(), &all);
        assert!(ok, "weft {args:?}: {out}{err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

fn row<'a>(v: &'a Value, list: &str, f: impl Fn(&Value) -> bool) -> &'a Value {
    v[list]
        .as_array()
        .and_then(|a| a.iter().find(|r| f(r)))
        .unwrap_or_else(|| panic!("no such row in {list}: {v:#}"))
}

/// 300 requests frontend→payments of which 30 answer 500, 100 frontend→inventory: `weft
/// stat` and `weft edges` show exactly those counts and rates, seen by the callee with
/// the caller's verified identity, and payments' p50 is the app's 20 ms within the
/// sketch's 1/16 (plus the hop).
#[test]
fn stat_and_edges_count_known_traffic_exactly() {
    let m = Mesh::start();
    let (pay, inv) = (m.out("payments"), m.out("inventory"));
    for i in 0..300 {
        let path = if i % 10 == 0 { "/status/500" } else { "/order" };
        let (status, _) = http(pay, "GET", path, b"").expect("request");
        assert_eq!(status, if i % 10 == 0 { 500 } else { 200 });
    }
    for _ in 0..100 {
        assert_eq!(http(inv, "GET", "/items", b"").expect("request").0, 200);
    }
    let [wp, wi] = m.warm;
    let v = m.json(&["stat", "--all", "-o", "json"]);
    let p = row(&v, "services", |r| r["service"] == "payments");
    assert_eq!(p["requests"], 300 + wp, "{p:#}");
    assert_eq!(p["successes"], 270 + wp, "{p:#}");
    let rate = p["successRate"].as_f64().expect("rate");
    assert!(
        (rate - (270 + wp) as f64 / (300 + wp) as f64).abs() < 1e-9,
        "{rate}"
    );
    assert_eq!(
        (p["meshed"].as_u64(), p["instances"].as_u64()),
        (Some(1), Some(1))
    );
    let p50 = p["p50Ms"].as_f64().expect("p50");
    assert!(
        (20.0 * 15.0 / 16.0..=35.0 * 17.0 / 16.0).contains(&p50),
        "p50 {p50}"
    );
    let p99 = p["p99Ms"].as_f64().expect("p99");
    assert!(p99 >= p50, "p99 {p99} < p50 {p50}");
    assert!(p["rps"].as_f64().expect("rps") > 0.0);
    let i = row(&v, "services", |r| r["service"] == "inventory");
    assert_eq!(
        (i["requests"].as_u64(), i["successes"].as_u64()),
        (Some(100 + wi), Some(100 + wi))
    );
    // Nobody called frontend.
    let f = row(&v, "services", |r| r["service"] == "frontend");
    assert_eq!(
        (f["requests"].as_u64(), f["meshed"].as_u64()),
        (Some(0), Some(1))
    );

    // Edges: the callee's view, with the caller's SPIFFE identity.
    let e = m.json(&["edges", "frontend", "-o", "json"]);
    let fp = row(&e, "edges", |r| {
        r["source"] == "frontend" && r["destination"] == "payments"
    });
    assert_eq!(
        (fp["requests"].as_u64(), fp["successes"].as_u64()),
        (Some(300 + wp), Some(270 + wp))
    );
    assert_eq!(fp["mtls"], true);
    assert_eq!(fp["seenBy"], "destination");
    assert!(
        fp["sourceIdentity"]
            .as_str()
            .is_some_and(|s| s.starts_with("spiffe://") && s.ends_with("/svc/frontend")),
        "{fp:#}"
    );
    let fi = row(&e, "edges", |r| {
        r["source"] == "frontend" && r["destination"] == "inventory"
    });
    assert_eq!(fi["requests"], 100 + wi);
    assert_eq!(
        e["edges"].as_array().map(Vec::len),
        Some(2),
        "only frontend's edges: {e:#}"
    );

    // --from: only that caller's traffic.
    let only = m.json(&["stat", "payments", "--from", "frontend", "-o", "json"]);
    assert_eq!(
        row(&only, "services", |r| r["service"] == "payments")["requests"],
        300 + wp
    );
    let none = m.json(&["stat", "payments", "--from", "nobody", "-o", "json"]);
    assert_eq!(
        row(&none, "services", |r| r["service"] == "payments")["requests"],
        0
    );

    // The tables a person reads.
    let table = m.cli(&["stat", "payments", "inventory"]);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("payments ") && l.contains("1/1")),
        "{table}"
    );
    let edges = m.cli(&["edges", "payments", "-o", "wide"]);
    assert!(
        edges.lines().any(|l| l.starts_with("frontend ")
            && l.contains("yes")
            && l.contains("/svc/frontend")),
        "{edges}"
    );
    // Bad input: a window the proxies do not keep; no service named.
    let url = m.server.url();
    let (ok, _, err) = weft_cli(
        &weft(),
        &["stat", "--all", "--window", "5m", "--server", &url],
    );
    assert!(
        !ok && err.contains("expected 10s, 1m, 10m, or 1s to 600s"),
        "{err}"
    );
    let (ok, _, err) = weft_cli(&weft(), &["stat", "--server", &url]);
    assert!(!ok && err.contains("--all"), "{err}");
}

/// A running `weft tap` with its output lines.
struct Tap {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn tap(m: &Mesh, token: &str, args: &[&str]) -> Tap {
    let mut child = Command::new(weft())
        .arg("tap")
        .args(args)
        .args(["--server", &m.server.url()])
        .env("WEFT_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft tap");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    let errors = lines_of(child.stderr.take().expect("stderr"));
    Tap {
        child,
        lines,
        errors,
    }
}

impl Tap {
    /// Waits for `n` joined proxies (the tap is open on them).
    fn joined(&self, n: usize) {
        for _ in 0..n {
            let line = self
                .errors
                .recv_timeout(Duration::from_secs(15))
                .expect("a proxy joins the tap");
            assert!(line.contains("tapping proxy"), "{line}");
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weft acl create ARGS` with the management token: (accessor, secret).
fn create_token(s: &Server, args: &[&str]) -> (String, String) {
    let url = s.url();
    let mut all = vec!["acl", "create", "--server", &url];
    all.extend(args);
    let (ok, out, err) = weft_cli(&weft(), &all);
    assert!(ok, "{out}{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    (field("accessor:"), field("secret:"))
}

/// The secret of a new token with `rules`.
fn token(m: &Mesh, rules: &[&str]) -> String {
    let args: Vec<&str> = rules.iter().flat_map(|r| ["--rule", *r]).collect();
    create_token(&m.server, &args).1
}

/// `weft tap payments --path /order` shows exactly the matching requests, with
/// credentials redacted; a token without `tap:payments:read` is refused; the tap
/// follows a restarted sidecar; a tap client that stops reading fails no request.
#[test]
fn tap_shows_exactly_the_matching_requests_redacted() {
    let mut m = Mesh::start();
    let admin = token_for(&m.server.url()).expect("the management token");
    let pay = m.out("payments");
    let t = tap(
        &m,
        &admin,
        &[
            "payments",
            "--path",
            "/order",
            "--redact",
            "x-api-key",
            "-o",
            "json",
            "--count",
            "5",
        ],
    );
    t.joined(1);
    let send = |path: &str| {
        let r = curl(&[
            "-H",
            "authorization: Bearer s3cret",
            "-H",
            "cookie: session=abc",
            "-H",
            "x-api-key: k3y",
            "-H",
            "x-visible: yes",
            &format!("http://{pay}{path}"),
        ]);
        assert_eq!(r.status, 200, "{r:?}");
    };
    for path in [
        "/health",
        "/order/1",
        "/other",
        "/order/2",
        "/order/3",
        "/health",
        "/order/4",
        "/orders-not",
        "/order/5",
    ] {
        send(path);
    }
    let events: Vec<Value> = (0..5)
        .map(|_| {
            let line = t
                .lines
                .recv_timeout(Duration::from_secs(15))
                .expect("a tap event");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .collect();
    let paths: Vec<&str> = events
        .iter()
        .map(|e| e["path"].as_str().unwrap_or(""))
        .collect();
    // `/orders-not` starts with `/order` too: a prefix is a prefix.
    assert_eq!(
        paths,
        [
            "/order/1",
            "/order/2",
            "/order/3",
            "/order/4",
            "/orders-not"
        ]
    );
    for e in &events {
        assert_eq!(e["direction"], "inbound", "{e:#}");
        assert_eq!(
            (e["source"].as_str(), e["destination"].as_str()),
            (Some("frontend"), Some("payments"))
        );
        assert!(
            e["sourceIdentity"]
                .as_str()
                .is_some_and(|s| s.ends_with("/svc/frontend")),
            "{e:#}"
        );
        assert_eq!(e["status"], 200);
        assert!(
            e["latencyMs"]
                .as_f64()
                .is_some_and(|l| l >= 20.0 * 15.0 / 16.0),
            "{e:#}"
        );
        assert_eq!(e["traceId"].as_str().map(str::len), Some(32), "{e:#}");
        let header = |n: &str| {
            e["requestHeaders"]
                .as_array()
                .and_then(|h| h.iter().find(|p| p[0] == n))
                .map(|p| p[1].as_str().unwrap_or("").to_string())
                .unwrap_or_else(|| panic!("no header {n}: {e:#}"))
        };
        for secret in ["authorization", "cookie", "x-api-key"] {
            assert_eq!(header(secret), "[redacted]", "{secret}");
        }
        assert_eq!(header("x-visible"), "yes");
        assert!(e["responseBytes"].as_u64().is_some_and(|b| b > 0), "{e:#}");
    }
    let mut t = t;
    let status = t.child.wait().expect("tap exits after --count");
    assert!(status.success());

    // Without the tap rule: refused, with the rule named. Stats need only operator:read.
    let ro = token(&m, &["operator:read"]);
    let mut refused = tap(&m, &ro, &["payments"]);
    let status = refused.child.wait().expect("exit");
    let err: Vec<String> = refused.errors.iter().collect(); // until its stderr closes
    assert!(
        !status.success() && err.join("\n").contains("tap:payments:read"),
        "{err:?}"
    );
    let (ok, out, err) = {
        let mut cmd = Command::new(weft());
        cmd.args(["stat", "--all", "-o", "json", "--server", &m.server.url()])
            .env("WEFT_TOKEN", &ro);
        let o = cmd.output().expect("stat");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(ok, "{out}{err}");
    let scoped = token(&m, &["tap:pay*:read"]);
    let allowed = tap(&m, &scoped, &["payments"]);
    allowed.joined(1);
    drop(allowed);

    // The tap follows payments' sidecar across a restart.
    let t = tap(&m, &admin, &["payments", "--path", "/again", "-o", "json"]);
    t.joined(1);
    let app = m._apps[0].addr;
    let _ = m.payments.proc.child.kill();
    let _ = m.payments.proc.child.wait();
    m.payments = sidecar(&weft(), &m.server.url(), "payments", "payments-1", app, &[]);
    m.payments.wait_synced();
    // Joined again: the restarted sidecar is tapped (its old stream may leave first).
    eventually(
        "the restarted sidecar joins the tap",
        Duration::from_secs(20),
        || {
            t.errors
                .try_iter()
                .any(|l| l.contains("tapping proxy"))
                .then_some(())
        },
    );
    let pay = m.out("payments");
    eventually(
        "an event from the restarted sidecar",
        Duration::from_secs(20),
        || {
            let _ = http(pay, "GET", "/again", b"");
            t.lines.recv_timeout(Duration::from_millis(300)).ok()
        },
    );
    drop(t);

    // Bodies, when asked for: the request's and the response's first bytes, marked
    // truncated when longer; the request's byte count is what went upstream.
    let t = tap(
        &m,
        &admin,
        &[
            "payments", "--path", "/body", "--body", "8", "-o", "json", "--count", "1",
        ],
    );
    t.joined(1);
    let r = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "order=42&qty=7",
        &format!("http://{pay}/body"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let line = t
        .lines
        .recv_timeout(Duration::from_secs(15))
        .expect("the POST's event");
    let e: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(e["method"], "POST");
    assert_eq!(
        (
            e["requestBody"].as_str(),
            e["requestBodyTruncated"].as_bool()
        ),
        (Some("order=42"), Some(true)),
        "{e:#}"
    );
    assert_eq!(e["requestBytes"], 14, "order=42&qty=7");
    assert_eq!(e["responseBody"].as_str().map(str::len), Some(8), "{e:#}");
    assert_eq!(e["responseBodyTruncated"], true);
    drop(t);

    // A tap client that never reads: every request still succeeds.
    let stalled = stalled_tap(&m, &admin);
    for _ in 0..1500 {
        assert_eq!(http(pay, "GET", "/order/x", b"").expect("request").0, 200);
    }
    drop(stalled);
    // And the proxies' live streams are still healthy.
    let v = m.json(&["stat", "payments", "-o", "json"]);
    assert_eq!(v["unanswered"].as_array().map(Vec::len), Some(0), "{v:#}");
}

/// A tap opened over a raw connection whose answer is never read.
fn stalled_tap(m: &Mesh, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(m.server.addr).expect("connect");
    write!(
        s,
        "GET /v1/tap/payments?maxRps=10000&body=4096 HTTP/1.1\r\nhost: x\r\nx-weft-token: {token}\r\n\r\n"
    )
    .expect("write");
    s
}

/// `weft top` in a real terminal (tmux): it renders the busiest paths and quits on `q`.
#[test]
fn top_renders_rows_in_a_terminal_and_quits_on_q() {
    let m = Mesh::start();
    let admin = token_for(&m.server.url()).expect("the management token");
    let top = Terminal::run(&format!(
        "WEFT_TOKEN={admin} {} top payments --server {}",
        weft().display(),
        m.server.url()
    ));
    let pay = m.out("payments");
    let screen = eventually("top shows /order/top", Duration::from_secs(30), || {
        for _ in 0..5 {
            let _ = http(pay, "GET", "/order/top", b"");
        }
        let text = top.screen()?;
        text.lines()
            .any(|l| {
                l.contains("frontend")
                    && l.contains("payments")
                    && l.contains("GET")
                    && l.contains("/order/top")
            })
            .then_some(text)
    });
    assert!(
        screen.contains("COUNT") && screen.contains("SUCCESS"),
        "{screen}"
    );
    assert!(screen.contains("1 proxy tapping"), "{screen}");
    top.keys("q");
    eventually("top quits on q", Duration::from_secs(10), || {
        (!top.alive()).then_some(())
    });
}

/// A command in a tmux session of its own (a real terminal), killed when dropped.
struct Terminal {
    tmux: PathBuf,
    session: String,
}

impl Terminal {
    fn run(command: &str) -> Terminal {
        let tmux = require("tmux");
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("weft-live-{}-{n}", std::process::id());
        let ok = Command::new(&tmux)
            .args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "50"])
            .arg(command)
            .status()
            .expect("tmux");
        assert!(ok.success());
        Terminal { tmux, session }
    }

    /// What the terminal shows now.
    fn screen(&self) -> Option<String> {
        let out = Command::new(&self.tmux)
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn keys(&self, keys: &str) {
        Command::new(&self.tmux)
            .args(["send-keys", "-t", &self.session, keys])
            .status()
            .expect("send-keys");
    }

    fn alive(&self) -> bool {
        Command::new(&self.tmux)
            .args(["has-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new(&self.tmux)
            .args(["kill-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status();
    }
}

/// A proxy's live stream ends when its token is revoked (as its discovery stream does):
/// the proxy is no longer asked, nor counted as meshed.
#[test]
fn a_revoked_token_ends_the_proxys_live_stream() {
    let s = server(&weft());
    allow_all(&weft(), &s);
    let url = s.url();
    let (accessor, secret) = create_token(&s, &["--service", "payments"]);
    let app = echo(&weft(), "payments-1", &[]);
    let sc = sidecar(
        &weft(),
        &url,
        "payments",
        "payments-1",
        app.addr,
        &["--token", &secret],
    );
    sc.wait_synced();
    let meshed = || -> Option<u64> {
        let (ok, out, _) = weft_cli(
            &weft(),
            &["stat", "payments", "-o", "json", "--server", &url],
        );
        let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        v["services"]
            .as_array()?
            .iter()
            .find(|r| r["service"] == "payments")?["meshed"]
            .as_u64()
    };
    eventually("payments' proxy answers", Duration::from_secs(15), || {
        (meshed()? == 1).then_some(())
    });
    let (ok, out, err) = weft_cli(&weft(), &["acl", "revoke", &accessor, "--server", &url]);
    assert!(ok, "{out}{err}");
    eventually("its live stream ends", Duration::from_secs(15), || {
        (meshed()? == 0).then_some(())
    });
    drop(sc);
}

/// Opens a tap over a raw connection (never read after this) and returns once the
/// server says payments' proxy taps.
fn held_tap(m: &Mesh, token: &str) -> std::net::TcpStream {
    use std::io::Read;
    let mut s = stalled_tap(m, token);
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&seen);
        if text.contains("event: joined") {
            return s;
        }
        assert!(
            !text.contains("event: refused") && std::time::Instant::now() < deadline,
            "{text}"
        );
        if let Ok(n) = s.read(&mut buf) {
            assert!(n > 0, "{text}");
            seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// A proxy serving its most taps (16) refuses the next, and the tap says so (it had
/// said "tapping proxy" and then waited forever). Once one of the 16 ends, a tap is
/// served again; and "tapping proxy" means the proxy taps: the one request sent right
/// after it is shown (it could arrive before the proxy tapped).
#[test]
fn a_tap_is_joined_when_the_proxy_taps_and_a_refusal_is_reported() {
    let m = Mesh::start();
    let admin = token_for(&m.server.url()).expect("the management token");
    let mut held: Vec<_> = (0..16).map(|_| held_tap(&m, &admin)).collect();
    let extra = tap(&m, &admin, &["payments"]);
    let line = extra
        .errors
        .recv_timeout(Duration::from_secs(15))
        .expect("the proxy's answer");
    assert!(
        line.contains("proxy payments-1 refused the tap") && line.contains("16 taps open"),
        "{line}"
    );
    drop(extra);
    // `weft top` says so too, above its (empty) table.
    let top = Terminal::run(&format!(
        "WEFT_TOKEN={admin} {} top payments --server {}",
        weft().display(),
        m.server.url()
    ));
    let screen = eventually("top shows the refusal", Duration::from_secs(20), || {
        top.screen()
            .filter(|t| t.contains("proxy payments-1 refused the tap"))
    });
    assert!(screen.contains("0 proxies tapping"), "{screen}");
    drop(top);

    drop(held.pop());
    let pay = m.out("payments");
    let t = eventually("a tap is served again", Duration::from_secs(30), || {
        let t = tap(&m, &admin, &["payments", "-o", "json", "--count", "1"]);
        let line = t.errors.recv_timeout(Duration::from_secs(15)).ok()?;
        line.contains("tapping proxy payments-1").then_some(t)
    });
    assert_eq!(http(pay, "GET", "/first", b"").expect("request").0, 200);
    let line = t
        .lines
        .recv_timeout(Duration::from_secs(15))
        .expect("the request sent right after 'tapping proxy' is tapped");
    let e: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(e["path"], "/first", "{e:#}");
}
