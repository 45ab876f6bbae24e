//! End to end: the real `weft` binary between curl and `weft echo`, on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use weft_testkit::{curl, curl_many, echo, eventually, metric_value, proxy, require, Proc};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn gateway() -> &'static str {
    "kind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners: [{name: web, address: \"127.0.0.1:0\"}]\n"
}

fn service(name: &str, extra: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        "---\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  endpoints: [{}]\n{extra}",
        eps.join(", ")
    )
}

#[test]
fn routes_filters_and_forwarding_headers() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let config = format!(
        r#"{gw}---
kind: HTTPRoute
metadata: {{name: r}}
spec:
  hostnames: ["api.example.com", "*.example.org"]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
      filters:
        - type: URLRewrite
          urlRewrite: {{hostname: internal.local, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /api}}}}
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{{name: x-set, value: "1"}}]
            add: [{{name: x-added, value: "2"}}]
            remove: [x-drop]
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: x-resp, value: yes}}], remove: [x-echo-name]}}
      backendRefs: [{{name: a}}]
    - matches: [{{path: {{type: Exact, value: /full}}}}]
      filters:
        - type: URLRewrite
          urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /replaced}}}}
      backendRefs: [{{name: a}}]
    - matches: [{{method: POST, headers: [{{name: x-env, value: canary}}]}}]
      backendRefs: [{{name: b}}]
    - matches: [{{queryParams: [{{name: v, value: "2"}}]}}]
      backendRefs: [{{name: b}}]
    - matches: [{{path: {{type: RegularExpression, value: "/users/[0-9]+"}}}}]
      backendRefs: [{{name: b}}]
    - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {{scheme: https, hostname: new.example.com, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 308}}
    - backendRefs: [{{name: a}}]
{sa}{sb}"#,
        gw = gateway(),
        sa = service("a", "", &[a.addr]),
        sb = service("b", "", &[b.addr]),
    );
    let p = proxy(&weft(), &config, &[]);
    let url = p.url("gw/web");
    let host = |h: &str| format!("host: {h}");

    // Prefix rewrite, host rewrite, request and response header modifiers.
    let r = curl(&[
        "-H",
        &host("api.example.com"),
        "-H",
        "x-drop: 1",
        "-H",
        "x-added: 1",
        &format!("{url}/v1/items?x=1"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["name"], "a");
    assert_eq!(j["path"], "/api/items");
    assert_eq!(j["query"], "x=1");
    assert_eq!(j["headers"]["host"], "internal.local");
    assert_eq!(j["headers"]["x-set"], "1");
    assert_eq!(j["headers"]["x-added"], "1, 2");
    assert!(j["headers"].get("x-drop").is_none());
    assert_eq!(r.header("x-resp"), Some("yes"));
    assert_eq!(r.header("x-echo-name"), None);

    // Full path rewrite; wildcard host.
    let j = curl(&["-H", &host("a.example.org"), &format!("{url}/full")]).json();
    assert_eq!(j["path"], "/replaced");

    // Method + header, query, regex matches.
    assert_eq!(
        curl(&[
            "-X",
            "POST",
            "-H",
            &host("api.example.com"),
            "-H",
            "x-env: canary",
            &format!("{url}/x")
        ])
        .json()["name"],
        "b"
    );
    assert_eq!(
        curl(&[
            "-H",
            &host("api.example.com"),
            "-H",
            "x-env: canary",
            &format!("{url}/x")
        ])
        .json()["name"],
        "a"
    );
    assert_eq!(
        curl(&["-H", &host("api.example.com"), &format!("{url}/x?v=2")]).json()["name"],
        "b"
    );
    assert_eq!(
        curl(&["-H", &host("api.example.com"), &format!("{url}/users/42")]).json()["name"],
        "b"
    );
    assert_eq!(
        curl(&["-H", &host("api.example.com"), &format!("{url}/users/42/x")]).json()["name"],
        "a"
    );

    // Redirect keeps the query.
    let r = curl(&[
        "-H",
        &host("api.example.com"),
        &format!("{url}/old/page?q=1"),
    ]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://new.example.com/new/page?q=1")
    );

    // Unknown host: no route, and the reply says so.
    let r = curl(&["-H", &host("nope.example.net"), &format!("{url}/")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-weft-error"), Some("no-route"));

    // Forwarding headers: x-forwarded-for appended, x-request-id generated or kept, hop-by-hop removed.
    let j = curl(&[
        "-H",
        &host("api.example.com"),
        "-H",
        "x-forwarded-for: 10.1.2.3",
        "-H",
        "connection: keep-alive, x-hop",
        "-H",
        "x-hop: secret",
        &format!("{url}/"),
    ])
    .json();
    assert_eq!(j["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert!(
        j["headers"].get("x-hop").is_none(),
        "header named by Connection must not be forwarded: {j}"
    );
    let id = j["headers"]["x-request-id"]
        .as_str()
        .expect("request id")
        .to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let j = curl(&[
        "-H",
        &host("api.example.com"),
        "-H",
        "x-request-id: my-id-1",
        &format!("{url}/"),
    ])
    .json();
    assert_eq!(j["headers"]["x-request-id"], "my-id-1");

    // Dot segments cannot escape a prefix route.
    let j = curl(&[
        "--path-as-is",
        "-H",
        &host("api.example.com"),
        &format!("{url}/v1/../users/7"),
    ])
    .json();
    assert_eq!(j["name"], "b", "normalized to /users/7: {j}");
}

#[test]
fn weighted_backends_split_traffic() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let config = format!(
        "{}---\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n    - backendRefs: [{{name: a, weight: 3}}, {{name: b, weight: 1}}]\n{}{}",
        gateway(),
        service("a", "", &[a.addr]),
        service("b", "", &[b.addr])
    );
    let p = proxy(&weft(), &config, &[]);
    let results = curl_many(&format!("{}/", p.url("gw/web")), 800, "x-echo-name", &[]);
    assert_eq!(results.len(), 800);
    let to_a = results
        .iter()
        .filter(|(s, n)| *s == 200 && n == "a")
        .count();
    let to_b = results
        .iter()
        .filter(|(s, n)| *s == 200 && n == "b")
        .count();
    assert_eq!(to_a + to_b, 800);
    // 75% expected; 4.5 standard deviations either side (sd ≈ 12).
    assert!((545..=655).contains(&to_a), "a got {to_a} of 800");
}

#[test]
fn every_failure_names_its_cause() {
    // A port with nothing listening, a backend that closes without answering, a listener
    // whose accept queue is full (connect times out), and a service with no endpoints.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let rude = TcpListener::bind("127.0.0.1:0").unwrap();
    let rude_addr = rude.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in rude.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            drop(s); // close without a response
        }
    });
    let py = weft_testkit::python();
    let blackhole = Proc::spawn({
        let mut c = Command::new(py);
        c.arg(support("blackhole.py"));
        c
    });
    let full: SocketAddr = blackhole.ready["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let config = format!(
        r#"{gw}---
kind: HTTPRoute
metadata: {{name: r}}
spec:
  rules:
    - matches: [{{path: {{value: /refused}}}}]
      backendRefs: [{{name: refused}}]
    - matches: [{{path: {{value: /reset}}}}]
      backendRefs: [{{name: reset}}]
    - matches: [{{path: {{value: /timeout}}}}]
      backendRefs: [{{name: timeout}}]
    - matches: [{{path: {{value: /empty}}}}]
      backendRefs: [{{name: empty}}]
{s1}{s2}{s3}---
kind: Service
metadata: {{name: empty}}
spec: {{}}
"#,
        gw = gateway(),
        s1 = service("refused", "", &[closed]),
        s2 = service("reset", "", &[rude_addr]),
        s3 = service("timeout", "  connectTimeout: 300ms\n", &[full]),
    );
    let p = proxy(&weft(), &config, &[]);
    let url = p.url("gw/web");
    for (path, status, code) in [
        ("/refused", 503, "connect-refused"),
        ("/reset", 502, "upstream-reset"),
        ("/timeout", 503, "connect-timeout"),
        ("/empty", 503, "no-healthy-endpoints"),
    ] {
        let r = curl(&[&format!("{url}{path}")]);
        assert_eq!(
            (r.status, r.header("x-weft-error")),
            (status, Some(code)),
            "{path}: {r:?}"
        );
    }
    let m = p.admin_get("/metrics");
    assert_eq!(
        metric_value(
            &m,
            "weft_local_replies_total{listener=\"gw/web\",reason=\"connect-refused\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // Every connect attempt counts: the first and the two default connect-failure retries.
    assert_eq!(
        metric_value(
            &m,
            "weft_upstream_connect_errors_total{service=\"timeout\",reason=\"connect-timeout\"}"
        ),
        Some(3.0),
        "{m}"
    );
}

/// Everything to one echo backend, service `e`.
fn echo_config(e: &weft_testkit::Echo) -> String {
    weft_testkit::one_service_config(
        "e",
        &format!("  endpoints: [{{address: \"{}\"}}]\n", e.addr),
    )
}

fn support(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
}

#[test]
fn http2_and_http1_in_every_combination() {
    let e = echo(&weft(), "e", &[]);
    let config = format!(
        "{}---\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n    - matches: [{{path: {{value: /h2}}}}]\n      backendRefs: [{{name: up2}}]\n    - backendRefs: [{{name: up1}}]\n{}{}",
        gateway(),
        service("up1", "", &[e.addr]),
        service("up2", "  protocol: http2\n", &[e.addr])
    );
    let p = proxy(&weft(), &config, &[]);
    let url = p.url("gw/web");
    for (client_flag, path, want_down, want_up) in [
        ("--http1.1", "/x", "HTTP/1.1", "HTTP/1.1"),
        ("--http1.1", "/h2", "HTTP/1.1", "HTTP/2.0"),
        ("--http2-prior-knowledge", "/x", "HTTP/2", "HTTP/1.1"),
        ("--http2-prior-knowledge", "/h2", "HTTP/2", "HTTP/2.0"),
    ] {
        let out = Command::new(require("curl"))
            .args([
                "-s",
                client_flag,
                "-w",
                "\n%{http_version}",
                &format!("{url}{path}"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, version) = text.rsplit_once('\n').unwrap();
        let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}"));
        assert_eq!(j["version"], want_up, "{client_flag} {path}");
        assert_eq!(format!("HTTP/{version}"), want_down, "{client_flag} {path}");
        assert_eq!(
            j["authority"],
            p.listener("gw/web").to_string(),
            "the client's host reaches the upstream as Host or :authority: {j}"
        );
        if want_up == "HTTP/2.0" {
            // RFC 9113 §8.3.1: `:authority` alone, not a `Host` beside it.
            assert!(j["headers"].get("host").is_none(), "{client_flag}: {j}");
        }
    }
}

#[test]
fn an_http2_upstream_ending_connections_with_goaway_loses_no_request() {
    // nginx ends each HTTP/2 connection with a GOAWAY after 10 requests here (after
    // 1,000 by default: `keepalive_requests`), then closes it once its streams are done;
    // it ignores streams opened after its GOAWAY. With 4 clients at once, requests keep
    // meeting draining connections: each goes on a new connection (the GOAWAY was
    // heard), or, sent before it was heard and so not processed, is sent again (and
    // refused twice, retried by the default policy). Before, such requests failed (502)
    // when the connection closed: ~25% of them.
    let dir = weft_testkit::temp_dir();
    let (_nginx, port) = weft_testkit::nginx(
        &dir,
        "    listen 127.0.0.1:{port} http2;\n    keepalive_requests 10;\n    location / { return 200 \"ok\\n\"; }",
    );
    let nginx: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let config = format!(
        "{}---\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n    - backendRefs: [{{name: ng}}]\n{}",
        gateway(),
        service("ng", "  protocol: http2\n", &[nginx])
    );
    let p = proxy(&weft(), &config, &[]);
    let (ok, failed) = weft_testkit::h1_load(&format!("{}/", p.url("gw/web")), 1200, 4);
    assert_eq!((ok, failed), (1200, 0), "2xx and 5xx of 1,200 requests");
}

#[test]
fn chunked_bodies_and_pipelining() {
    let e = echo(&weft(), "e", &[]);
    let config = echo_config(&e);
    let p = proxy(&weft(), &config, &[]);
    let addr = p.listener("gw/web");

    // A chunked upload of 100 KB arrives whole.
    let dir = weft_testkit::temp_dir();
    let file = dir.join("body");
    std::fs::write(&file, vec![b'z'; 100_000]).unwrap();
    let r = curl(&[
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{addr}/up"),
    ]);
    assert_eq!(r.json()["body_bytes"], 100_000);

    // Two requests in one write on one connection: two responses, in order.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let text = weft_testkit::read_all(&mut s);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let first = text.find("\"path\":\"/first\"").expect("first answered");
    let second = text.find("\"path\":\"/second\"").expect("second answered");
    assert!(first < second, "responses out of order: {text}");

    // A large response streams through.
    let out = Command::new(require("curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("http://{addr}/bytes/5000000"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5000000");
}

#[test]
fn upstream_connections_are_pooled_and_expire() {
    let e = echo(&weft(), "e", &[]);
    let config = format!(
        "{}---\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n    - matches: [{{path: {{value: /h2}}}}]\n      backendRefs: [{{name: e2}}]\n    - backendRefs: [{{name: e}}]\n{}{}",
        gateway(),
        service("e", "  connectionPool: {idleTimeout: 500ms}\n", &[e.addr]),
        service("e2", "  protocol: http2\n", &[e.addr])
    );
    let p = proxy(&weft(), &config, &[]);
    let url = p.url("gw/web");
    // Sequential requests from separate client connections reuse one upstream connection.
    let ports: Vec<String> = (0..5)
        .map(|_| {
            curl(&[&format!("{url}/")]).json()["client"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        ports.iter().all(|p| p == &ports[0]),
        "HTTP/1.1 keep-alive not reused: {ports:?}"
    );
    // HTTP/2 upstream: concurrent requests share one connection.
    let out = Command::new(require("curl"))
        .args(["-s", "--parallel", "--parallel-max", "10"])
        .args((0..10).map(|_| format!("{url}/h2")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let clients: std::collections::HashSet<&str> = text
        .split("\"client\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert_eq!(
        clients.len(),
        1,
        "HTTP/2 requests were not multiplexed on one connection: {clients:?}"
    );
    // After the idle timeout the pooled HTTP/1 connection is closed; the next request opens another.
    // (This one waits on a timer by nature: the behaviour under test is a timeout.)
    std::thread::sleep(Duration::from_millis(1500));
    let after = curl(&[&format!("{url}/")]).json()["client"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        after, ports[0],
        "idle connection was not closed after idleTimeout"
    );
}

#[test]
fn an_abandoned_response_never_leaves_its_connection_in_the_pool() {
    let e = echo(&weft(), "e", &[]);
    let p = proxy(&weft(), &echo_config(&e), &[]);
    let addr = p.listener("gw/web");
    for _ in 0..3 {
        // Read the start of a 20 MB body, then hang up: the upstream connection still has
        // unread bytes and must be closed, not reused.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /bytes/20000000 HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        drop(s);
    }
    // Every later request gets a clean, complete answer.
    let results = curl_many(&format!("http://{addr}/after"), 20, "x-echo-name", &[]);
    assert_eq!(results.len(), 20);
    assert!(
        results.iter().all(|(s, n)| *s == 200 && n == "e"),
        "{results:?}"
    );
}

#[test]
fn invalid_config_is_refused_with_file_line_and_field() {
    let dir = weft_testkit::temp_dir();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        format!("{}---\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n    - backendRefs: [{{name: ghost, weight: 2}}]\n", gateway()),
    )
    .unwrap();
    for args in [
        vec!["validate".to_string(), path.display().to_string()],
        vec![
            "proxy".into(),
            "--config".into(),
            path.display().to_string(),
            "--admin".into(),
            "off".into(),
        ],
    ] {
        let out = Command::new(weft()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!(
            "{}:10: HTTPRoute/r: spec.rules[0].backendRefs[0].name: unknown Service `ghost`",
            path.display()
        );
        assert!(err.contains(&want), "{args:?}: {err}");
    }
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let e = echo(&weft(), "e", &[]);
    let config = echo_config(&e);
    let mut p = proxy(&weft(), &config, &["--drain-timeout", "20s"]);
    let url = p.url("gw/web");
    let slow = std::thread::spawn({
        let url = url.clone();
        move || curl(&[&format!("{url}/delay/1500")])
    });
    // Wait until the proxy holds the request (an open downstream connection), then SIGTERM.
    eventually(
        "the slow request to reach the proxy",
        Duration::from_secs(10),
        || {
            let m = p.admin_get("/metrics");
            (metric_value(&m, "weft_downstream_connections_open{listener=\"gw/web\"}") == Some(1.0))
                .then_some(())
        },
    );
    p.proc.signal("TERM");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "in-flight request was cut: {r:?}");
    let status = p
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("proxy exited after drain");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        p.proc.stderr()
    );
    assert!(
        TcpStream::connect(p.listener("gw/web")).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn metrics_pass_promtool_and_access_log_is_json() {
    let e = echo(&weft(), "e", &[]);
    let config = echo_config(&e);
    let dir = weft_testkit::temp_dir();
    let log = dir.join("access.log");
    let p = proxy(&weft(), &config, &["--access-log", log.to_str().unwrap()]);
    let url = p.url("gw/web");
    assert_eq!(
        curl(&[
            "-H",
            "x-request-id: rid-42",
            "-H",
            "user-agent: tester",
            &format!("{url}/status/418?a=b")
        ])
        .status,
        418
    );
    assert_eq!(curl(&["-d", "hello", &format!("{url}/post")]).status, 200);

    let m = p.admin_get("/metrics");
    assert_eq!(metric_value(&m, "weft_requests_total{listener=\"gw/web\",route=\"r\",service=\"e\",status_class=\"4xx\"}"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "weft_request_duration_seconds_count{listener=\"gw/web\",route=\"r\",service=\"e\",status_class=\"2xx\"}"), Some(1.0), "{m}");
    assert!(
        metric_value(
            &m,
            "weft_downstream_received_bytes_total{listener=\"gw/web\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );
    assert!(
        metric_value(&m, "weft_downstream_connections_total{listener=\"gw/web\"}").unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
    assert!(m.contains("weft_config_info{version="), "{m}");
    let promtool = require("promtool");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let line = eventually("the access log line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .and_then(|t| t.lines().find(|l| l.contains("rid-42")).map(str::to_string))
    });
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["status"], 418);
    assert_eq!(j["path"], "/status/418?a=b");
    assert_eq!(j["route"], "r");
    assert_eq!(j["service"], "e");
    assert_eq!(j["upstream"], e.addr.to_string());
    assert_eq!(j["user_agent"], "tester");
    assert_eq!(j["method"], "GET");
    assert!(j["duration_ms"].as_f64().unwrap() > 0.0);

    // A reply weft makes itself is logged with its cause and the client's request id.
    let r = curl(&[
        "-H",
        "x-request-id: rid-404",
        "-H",
        "host: [::1",
        &format!("{url}/"),
    ]);
    assert_eq!(r.status, 400, "{r:?}");
    let line = eventually(
        "the access log line of the local reply",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log).ok().and_then(|t| {
                t.lines()
                    .find(|l| l.contains("rid-404"))
                    .map(str::to_string)
            })
        },
    );
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["error"], "invalid-host");
    assert_eq!(j["status"], 400);

    // Admin endpoints.
    assert_eq!(p.admin_get("/ready"), "ready\n");
    assert_eq!(p.admin_get("/live"), "live\n");
    let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).unwrap();
    assert_eq!(cfg["config"]["services"][0]["metadata"]["name"], "e");
    assert_eq!(
        cfg["listeners"][0]["address"],
        p.listener("gw/web").to_string()
    );
    assert_eq!(cfg["version"].as_str().unwrap().len(), 16);
}

#[test]
fn a_taken_address_is_a_clear_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = weft_testkit::temp_dir();
    let path = dir.join("taken.yaml");
    std::fs::write(
        &path,
        format!(
            "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"{addr}\"}}]\n"
        ),
    )
    .unwrap();
    let out = Command::new(weft())
        .args(["proxy", "--admin", "off", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} (gw/web)")),
        "{err}"
    );
}

#[test]
fn malformed_requests_get_a_precise_400() {
    let e = echo(&weft(), "e", &[]);
    let config = echo_config(&e);
    let p = proxy(&weft(), &config, &[]);
    let addr = p.listener("gw/web");
    let send = |raw: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        weft_testkit::read_all(&mut s)
    };
    // A Host that is not a host name.
    let r = send(b"GET / HTTP/1.1\r\nhost: bad host!\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("x-weft-error: invalid-host"), "{r}");
    // No Host at all.
    let r = send(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Ambiguous framing (request smuggling shape): Transfer-Encoding wins, Content-Length is
    // dropped, the body is re-framed upstream, and the connection is closed after one
    // response, so the request hidden in the body is never served.
    let r = send(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n");
    assert_eq!(
        r.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled request must not be served: {r}"
    );
    assert!(r.contains("connection: close"), "{r}");
    assert!(!r.contains("/smuggled"), "{r}");
    assert!(
        !r.contains("\"content-length\""),
        "stale Content-Length forwarded upstream: {r}"
    );
    // Duplicate Content-Length and non-HTTP bytes: rejected by the parser with 400.
    for raw in [
        &b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
        b"HELLO THERE\r\n\r\n",
    ] {
        let r = send(raw);
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }
    // An h2c upgrade is not tunnelled: served as plain HTTP/1.1, Upgrade headers dropped.
    let r = send(b"GET /plain HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("\"path\":\"/plain\"")
            && !r.contains("\"upgrade\"")
            && !r.contains("http2-settings"),
        "{r}"
    );
    // And the proxy keeps serving.
    assert_eq!(curl(&[&format!("http://{addr}/")]).status, 200);
}

/// `weft proxy` with one catch-all route to `backend`.
fn proxy_to(backend: SocketAddr) -> weft_testkit::Proxy {
    proxy(
        &weft(),
        &format!(
            "{}---\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec: {{rules: [{{backendRefs: [{{name: b}}]}}]}}\n{}",
            gateway(),
            service("b", "", &[backend])
        ),
        &[],
    )
}

/// Sends `request` (which asks for `connection: close`) to the proxy's listener and reads
/// the whole answer, lower-cased.
fn ask_once(p: &weft_testkit::Proxy, request: &str) -> String {
    let mut c = TcpStream::connect(p.listener("gw/web")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// Reads one HTTP/1.1 request head from `conn` (enough for a test backend).
fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn http1_trailers_reach_a_client_that_asks_for_them() {
    // A backend that answers chunked with a trailer, telling whether it was asked for one.
    let backend = weft_testkit::tcp_server(|mut conn| {
        let head = read_head(&mut conn).to_ascii_lowercase();
        let asked = head.contains("te: trailers");
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\nx-asked: {asked}\r\nconnection: close\r\n\r\n\
                 5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n"
            )
            .as_bytes(),
        );
    });
    let p = proxy_to(backend);
    let get = |te: &str| {
        ask_once(
            &p,
            &format!("GET / HTTP/1.1\r\nhost: x\r\n{te}connection: close\r\n\r\n"),
        )
    };
    let with = get("te: trailers\r\n");
    assert!(
        with.contains("x-asked: true"),
        "te: trailers is forwarded: {with}"
    );
    assert!(with.contains("trailer: x-checksum"), "{with}");
    assert!(
        with.contains("0\r\nx-checksum: abc123\r\n\r\n"),
        "the trailer arrives: {with}"
    );
    let without = get("");
    assert!(
        without.contains("hello") && !without.contains("x-checksum"),
        "{without}"
    );
}

#[test]
fn an_upstream_that_refuses_an_upload_early_is_heard() {
    // The backend answers 413 as soon as it has the head and closes with the upload
    // unread (its kernel resets the connection): weft's writes fail while the answer waits
    // in its socket. The client must get the 413, not a 502.
    let backend = weft_testkit::tcp_server(|mut conn| {
        let _ = read_head(&mut conn);
        let _ = conn.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large",
        );
    });
    let p = proxy_to(backend);
    let upload = weft_testkit::temp_dir().join("upload.bin");
    std::fs::write(&upload, vec![0u8; 20 * 1024 * 1024]).expect("write upload");
    let data = format!("@{}", upload.display());
    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            curl(&[
                "-H",
                "Expect:",
                "--data-binary",
                &data,
                &format!("{}/upload", p.url("gw/web")),
            ])
            .status
        })
        .collect();
    assert!(statuses.iter().all(|&s| s == 413), "{statuses:?}");
}

#[test]
fn a_connection_whose_upload_was_answered_early_is_not_reused_while_it_sends() {
    // The backend answers as soon as it has a head and never reads again. Client A starts
    // an upload, gets its answer, and sends no more of its body. Its upstream connection
    // must not go back to the pool still waiting for that body: the next upload (B) would
    // wait on it until its request timed out (504). With the answer complete, A's body is
    // cut: its upstream connection closes, and so does A's own (its request is unfinished).
    let backend = weft_testkit::tcp_server(|mut conn| {
        let _ = read_head(&mut conn);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_secs(30)); // holds the connection, reads nothing
    });
    let p = proxy_to(backend);
    let mut a = TcpStream::connect(p.listener("gw/web")).expect("connect");
    a.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    a.write_all(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n0123456789")
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        match a.read(&mut buf) {
            Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!(
                "no answer for A: {other:?} {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let b = curl(&[
        "--max-time",
        "30",
        "-H",
        "Expect:",
        "--data-binary",
        "b",
        &format!("{}/b", p.url("gw/web")),
    ]);
    assert_eq!(b.status, 200, "B waited on A's connection: {:?}", b.headers);
    assert_eq!(b.body, "ok");
    // A's request can never finish now: weft closes A's connection.
    assert!(
        matches!(a.read(&mut buf), Ok(0)),
        "A's connection is closed after its answer"
    );
}

#[test]
fn an_http2_upload_answered_early_is_told_to_stop_and_its_connection_serves_on() {
    // The same backend (answers at once, never reads); the client speaks HTTP/2 and sends
    // 16 KiB of a 1 MB upload. Once the answer is complete, weft tells it to stop sending
    // (RST_STREAM NO_ERROR, RFC 9113 §8.1) instead of waiting for a body nobody wants
    // while its data holds the connection's window; the connection serves on.
    let backend = weft_testkit::tcp_server(|mut conn| {
        let _ = read_head(&mut conn);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_secs(30));
    });
    let p = proxy_to(backend);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/h2_abuse.py");
    let mut cmd = Command::new(weft_testkit::python());
    cmd.arg(script)
        .arg(p.listener("gw/web").to_string())
        .arg("early-answer");
    let r = Proc::spawn(cmd).ready.clone();
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["reset"], "NO_ERROR", "{r}");
    assert_eq!(r["next"], 200, "{r}");
}

#[test]
fn answers_are_read_by_rfc_9112_and_only_clean_connections_reused() {
    // Bodiless requests go out on weft's own HTTP/1.1 client (upstream/h1.rs). A raw
    // backend numbers its connections (x-conn) and answers by path; on a connection's
    // second request, /drop-second closes without answering, as a server that let an idle
    // connection go at the moment the request arrived.
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    let backend = weft_testkit::tcp_server(move |mut conn| {
        let id = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        for n in 1.. {
            let head = read_head(&mut conn);
            let Some(path) = head.split(' ').nth(1) else {
                return;
            };
            let reply = match path {
                "/drop-second" if n == 2 => return,
                "/interim" => format!(
                    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
                     HTTP/1.1 200 OK\r\nx-conn: {id}\r\ncontent-length: 2\r\n\r\nok"
                ),
                "/both" => format!(
                    "HTTP/1.1 200 OK\r\nx-conn: {id}\r\ncontent-length: 100\r\n\
                     transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                ),
                "/differ" => {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc".into()
                }
                "/until-close" => {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
                    return;
                }
                _ => {
                    let body = if head.starts_with("HEAD") {
                        ""
                    } else {
                        "hello"
                    };
                    format!("HTTP/1.1 200 OK\r\nx-conn: {id}\r\ncontent-length: 5\r\n\r\n{body}")
                }
            };
            if conn.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    let p = proxy_to(backend);
    let ask = |method: &str, path: &str| {
        ask_once(
            &p,
            &format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        )
    };
    let conn_of = |answer: &str| {
        answer
            .split("x-conn: ")
            .nth(1)
            .and_then(|s| s.split("\r\n").next())
            .unwrap_or_else(|| panic!("no x-conn: {answer}"))
            .to_string()
    };
    // Interim 1xx answers are skipped; the final one arrives whole.
    let a = ask("GET", "/interim");
    assert!(
        a.starts_with("http/1.1 200") && a.ends_with("\r\n\r\nok"),
        "{a}"
    );
    assert!(!a.contains("103") && !a.contains("link:"), "{a}");
    // HEAD: the length is kept for the client, no body is read, the connection is reused.
    let h = ask("HEAD", "/len");
    assert!(
        h.contains("content-length: 5") && h.ends_with("\r\n\r\n"),
        "{h}"
    );
    assert_eq!(
        conn_of(&ask("GET", "/len")),
        conn_of(&h),
        "reused after HEAD"
    );
    // Chunked with a Content-Length: chunked wins, the length is dropped, and that
    // connection is not trusted again.
    let both = ask("GET", "/both");
    assert!(
        both.contains("abc") && !both.contains("content-length: 100"),
        "{both}"
    );
    assert_ne!(
        conn_of(&ask("GET", "/len")),
        conn_of(&both),
        "reused after both"
    );
    // Differing Content-Length values: 502, named.
    let differ = ask("GET", "/differ");
    assert!(
        differ.starts_with("http/1.1 502") && differ.contains("upstream-protocol-error"),
        "{differ}"
    );
    // Until close.
    let close = ask("GET", "/until-close");
    assert!(
        close.starts_with("http/1.1 200") && close.contains("until close"),
        "{close}"
    );
    // A pooled connection closed as the request arrived: GET goes again on a new one...
    let first = ask("GET", "/drop-second");
    let again = ask("GET", "/drop-second");
    assert!(again.starts_with("http/1.1 200"), "{again}");
    assert_ne!(conn_of(&again), conn_of(&first));
    // ...a POST (not idempotent: the server may have acted on it) fails instead.
    let post = ask("POST", "/drop-second");
    assert!(
        post.starts_with("http/1.1 502") && post.contains("upstream-reset"),
        "{post}"
    );
}
