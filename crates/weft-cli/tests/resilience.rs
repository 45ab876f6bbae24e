//! End to end: retries hide a flaky backend, the retry budget bounds the extra load a
//! failing backend sees, timeouts answer 504 and honour the caller's gRPC deadline, a
//! per-try timeout moves a request off a slow endpoint, and the circuit breaker fails
//! fast. Every test bounds its own load in count.

use std::path::PathBuf;
use std::time::Instant;

use weft_testkit::{curl, curl_many, echo, metric_value, Echo, Proxy};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Listener `gw/web`, a catch-all route `r` (with `rule_extra` lines in its rule) to
/// service `s` over `backends`, `service_extra` lines in the service spec.
fn config(backends: &[&Echo], service_extra: &str, rule_extra: &str) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|e| format!("{{address: \"{}\"}}", e.addr))
        .collect();
    format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n  - backendRefs: [{{name: s}}]\n{rule_extra}---\n\
         kind: Service\nmetadata: {{name: s}}\nspec:\n  loadBalancer: {{policy: RoundRobin}}\n  endpoints: [{}]\n{service_extra}",
        eps.join(", ")
    )
}

fn start(config: &str) -> Proxy {
    weft_testkit::proxy(&weft(), config, &[])
}

fn served(e: &Echo) -> u64 {
    let r = curl(&[&format!("http://{}/_echo/stats", e.addr)]);
    r.json()["requests"].as_u64().expect("echo stats")
}

fn retries(p: &Proxy, result: &str) -> f64 {
    metric_value(
        &p.admin_get("/metrics"),
        &format!("weft_retries_total{{service=\"s\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn retries_hide_a_backend_failing_thirty_percent() {
    let good1 = echo(&weft(), "good1", &[]);
    let good2 = echo(&weft(), "good2", &[]);
    let flaky = echo(&weft(), "flaky", &["--fail-rate", "0.3"]);
    let backends = [&good1, &good2, &flaky];

    // 503 retried (on another endpoint); the rest of the policy is the default.
    let p = start(&config(&backends, "  retry: {on: [unavailable]}\n", ""));
    let n = 3000;
    let results = curl_many(&format!("{}/", p.url("gw/web")), n, "x-echo-name", &[]);
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(results.len(), n);
    assert!(
        ok * 1000 >= n * 999,
        "success rate {ok}/{n} is below 99.9% with retries"
    );
    assert!(
        retries(&p, "attempted") >= 200.0,
        "the flaky backend was not retried"
    );
    assert!(served(&flaky) >= 900, "the flaky backend took its share");

    // The same without retries: the failures show, so the figure above is the retries' doing.
    let p = start(&config(&backends, "  retry: {attempts: 0}\n", ""));
    let results = curl_many(&format!("{}/", p.url("gw/web")), n, "x-echo-name", &[]);
    let failed = results.iter().filter(|(s, _)| *s == 503).count();
    assert!(failed >= n / 20, "only {failed} failures without retries");
    eprintln!("with retries: {ok}/{n} ok; without: {failed}/{n} failed");
}

#[test]
fn the_retry_budget_bounds_the_load_on_a_backend_during_a_10s_outage() {
    // A backend that answers 503 for its first 10 s and then recovers, under steady load,
    // with and without the budget. Three retries per request are allowed in both runs.
    let mut extra = Vec::new();
    for budget in ["", ", budget: {unlimited: true}"] {
        let down = echo(&weft(), "down", &["--fail-for", "10s"]);
        let p = start(&config(
            &[&down],
            &format!("  retry: {{attempts: 3, on: [unavailable], backoff: {{base: 1ms, max: 2ms}}{budget}}}\n"),
            "",
        ));
        let url = format!("{}/", p.url("gw/web"));
        let t = Instant::now();
        let mut client_failed = 0usize;
        for _ in 0..2000 {
            let batch = curl_many(&url, 50, "x-echo-name", &[]);
            let failed = batch.iter().filter(|(s, _)| *s == 503).count();
            client_failed += failed;
            if failed < batch.len() {
                break; // the backend is back
            }
        }
        let windows = (t.elapsed().as_secs_f64() / 10.0).ceil().max(1.0);
        let stats = curl(&[&format!("http://{}/_echo/stats", down.addr)]).json();
        let backend_failed = stats["failed"].as_u64().expect("failed count") as usize;
        // After the outage everything is served again.
        let after = curl_many(&url, 50, "x-echo-name", &[]);
        assert!(after.iter().all(|(s, _)| *s == 200), "{after:?}");
        if budget.is_empty() {
            assert!(retries(&p, "budget-exhausted") > 0.0);
        }
        let ratio = backend_failed.saturating_sub(client_failed) as f64 / client_failed as f64;
        extra.push((ratio, windows, client_failed));
    }
    // The default budget: retries ≤ 20% of requests + 10/s over a sliding 10 s window, so
    // at most 0.2 × requests + 100 per 10 s of outage. The extra load is bounded by the
    // ratio, not by `attempts`.
    let (with, windows, n) = extra[0];
    let bound = 0.2 + 100.0 * windows / n as f64 + 0.01;
    assert!(
        with <= bound,
        "with the budget the backend saw {with:.2}x extra load during the outage (bound {bound:.2})"
    );
    let (without, _, _) = extra[1];
    assert!(
        without >= 2.9,
        "without the budget every failed request is retried 3 times: {without:.2}x"
    );
    eprintln!(
        "10 s outage ({n} failed requests with the budget): extra load {with:.2}x with the default budget, {without:.2}x without"
    );
}

#[test]
fn timeouts_answer_504_and_honour_the_callers_deadline() {
    let e = echo(&weft(), "e", &[]);
    let p = start(&config(
        &[&e],
        "  timeouts: {request: 300ms}\n  retry: {attempts: 0}\n",
        "  - matches: [{headers: [{name: x-patient, value: \"yes\"}]}]\n    backendRefs: [{name: s}]\n    timeouts: {request: 5s}\n",
    ));
    let url = p.url("gw/web");
    let r = curl(&[&format!("{url}/delay/3000")]);
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("x-weft-error"), Some("request-timeout"));
    // The rule's own timeout wins over the service's.
    let r = curl(&["-H", "x-patient: yes", &format!("{url}/delay/500")]);
    assert_eq!(r.status, 200, "{r:?}");

    // A caller that will wait 100 ms (grpc-timeout) is answered when it gives up, not later.
    let r = curl(&[
        "-H",
        "x-patient: yes",
        "-H",
        "grpc-timeout: 100m",
        &format!("{url}/delay/3000"),
    ]);
    assert_eq!(r.status, 504, "{r:?}");
    // And the upstream is told how long is left.
    let r = curl(&[
        "-H",
        "x-patient: yes",
        "-H",
        "grpc-timeout: 4S",
        &format!("{url}/headers"),
    ]);
    let left = r.json()["headers"]["grpc-timeout"]
        .as_str()
        .expect("grpc-timeout forwarded")
        .to_string();
    let ms: u64 = left.trim_end_matches('m').parse().expect("milliseconds");
    assert!(ms <= 4000 && ms > 0, "{left}");
}

#[test]
fn a_per_try_timeout_moves_requests_off_a_slow_endpoint() {
    let slow = echo(&weft(), "slow", &["--delay", "3s"]);
    let fast = echo(&weft(), "fast", &[]);
    let p = start(&config(
        &[&slow, &fast],
        "  timeouts: {perTry: 200ms}\n  retry: {on: [per-try-timeout]}\n",
        "",
    ));
    let results = curl_many(&format!("{}/", p.url("gw/web")), 20, "x-echo-name", &[]);
    assert!(
        results.iter().all(|(s, n)| *s == 200 && n == "fast"),
        "{results:?}"
    );
    assert!(retries(&p, "attempted") >= 5.0);
}

#[test]
fn the_circuit_breaker_fails_fast_instead_of_queueing() {
    let e = echo(&weft(), "e", &[]);
    let p = start(&config(&[&e], "  circuitBreaker: {maxRequests: 2}\n", ""));
    let url = format!("{}/delay/1500", p.url("gw/web"));
    let started = Instant::now();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl(&[&url]))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("curl"))
        .collect();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let overloaded: Vec<_> = results
        .iter()
        .filter(|r| r.status == 503 && r.header("x-weft-error") == Some("overloaded"))
        .collect();
    assert_eq!(ok + overloaded.len(), 10, "{results:?}");
    assert!((1..=4).contains(&ok), "{ok} served with maxRequests 2");
    assert!(overloaded.len() >= 6);
    eprintln!(
        "10 concurrent: {ok} served, {} failed fast ({:?} for all)",
        overloaded.len(),
        started.elapsed()
    );
}

#[test]
fn non_idempotent_requests_are_sent_once_unless_the_route_allows_more() {
    let down = echo(&weft(), "down", &["--fail-rate", "1"]);
    let p = start(&config(
        &[&down],
        "  retry: {on: [unavailable], backoff: {base: 1ms, max: 2ms}}\n",
        "  - matches: [{headers: [{name: x-resend, value: \"yes\"}]}]\n    backendRefs: [{name: s}]\n    retry: {nonIdempotent: true, on: [unavailable], backoff: {base: 1ms, max: 2ms}}\n",
    ));
    let url = format!("{}/", p.url("gw/web"));
    // POST with a body: reached the upstream, so not resent by default.
    let r = curl(&["--data-binary", "order=1", &url]);
    assert_eq!(r.status, 503);
    assert_eq!(served(&down), 1);
    // GET is idempotent: the first attempt and two retries.
    assert_eq!(curl(&[&url]).status, 503);
    assert_eq!(served(&down), 4);
    // A rule that says so resends POST too, body included.
    let r = curl(&["-H", "x-resend: yes", "--data-binary", "order=2", &url]);
    assert_eq!(r.status, 503);
    assert_eq!(served(&down), 7);

    // The replayed body is the whole body: a backend failing every other request answers
    // the retry, and echoes what it received.
    let alternate = echo(&weft(), "alternate", &["--fail-rate", "0.5"]);
    let p = start(&config(
        &[&alternate],
        "",
        "  - matches: [{headers: [{name: x-resend, value: \"yes\"}]}]\n    backendRefs: [{name: s}]\n    retry: {nonIdempotent: true, on: [unavailable]}\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /again}}}]\n",
    ));
    let url = format!("{}/", p.url("gw/web"));
    assert_eq!(curl(&[&url]).status, 200); // request 0 succeeds, request 1 will fail
    let r = curl(&["-H", "x-resend: yes", "--data-binary", "order=3", &url]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_bytes"], 7);
    assert_eq!(
        r.json()["path"],
        "/again",
        "the retry keeps the rewritten path"
    );
    assert_eq!(served(&alternate), 3);
}

#[test]
fn connect_failures_are_retried_by_default_even_for_streamed_posts() {
    let alive = echo(&weft(), "alive", &[]);
    let dead = {
        // A port that refuses connections: bound, then closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let eps = format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n  - backendRefs: [{{name: s}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /rewritten}}}}}}]\n---\n\
         kind: Service\nmetadata: {{name: s}}\nspec:\n  loadBalancer: {{policy: RoundRobin}}\n  endpoints: [{{address: \"{dead}\"}}, {{address: \"{}\"}}]\n",
        alive.addr
    );
    let p = start(&eps);
    let url = format!("{}/x", p.url("gw/web"));
    for i in 0..6 {
        // Chunked: no Content-Length, so the body is streamed, never copied. A refused
        // connection hands it back unsent, and the retry carries it whole.
        let body = format!("payload-{i}");
        let r = curl(&[
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &body,
            &url,
        ]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["body_bytes"], body.len());
        assert_eq!(r.json()["path"], "/rewritten");
    }
    assert!(retries(&p, "attempted") >= 3.0);
}

#[test]
fn a_killed_backend_is_ejected_within_a_few_requests_and_readmitted_when_back() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let c = echo(&weft(), "c", &[]);
    let c_addr = c.addr.to_string();
    let p = start(&config(
        &[&a, &b, &c],
        "  outlierDetection: {baseEjectionTime: 1s}\n",
        "",
    ));
    let url = format!("{}/", p.url("gw/web"));
    let metric = |name: &str| metric_value(&p.admin_get("/metrics"), name).unwrap_or(0.0);
    let ejected = || {
        metric("weft_outlier_ejections_total{service=\"s\",reason=\"consecutive-local-failures\",result=\"ejected\"}")
    };
    let refused =
        || metric("weft_upstream_connect_errors_total{service=\"s\",reason=\"connect-refused\"}");
    assert!(curl_many(&url, 300, "x-echo-name", &[])
        .iter()
        .all(|(s, _)| *s == 200));

    // Kill c mid-run. Connect failures are retried on another endpoint, and after five in
    // a row c is ejected: the next requests do not try it at all.
    drop(c);
    let mut statuses = Vec::new();
    while ejected() < 1.0 && statuses.len() < 100 {
        statuses.push(curl(&[&url]).status);
    }
    assert_eq!(
        ejected(),
        1.0,
        "not ejected after {} requests",
        statuses.len()
    );
    // Five local failures in a row: refused connects (or a reset on a connection pooled
    // before the kill).
    assert!(
        (1.0..=5.0).contains(&refused()),
        "ejected after consecutiveLocalFailures attempts, not {}",
        refused()
    );
    let results = curl_many(&url, 600, "x-echo-name", &[]);
    statuses.extend(results.iter().map(|(s, _)| *s));
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        ok * 1000 >= statuses.len() * 995,
        "{ok}/{} succeeded after the kill",
        statuses.len()
    );
    assert!(results.iter().all(|(_, n)| n != "c"));

    // Back on its port: readmitted when its ejection time is over (growing with repeated
    // ejections), and it takes traffic again.
    let c = weft_testkit::echo_at(&weft(), "c", &c_addr, &[]);
    weft_testkit::eventually(
        "c to be readmitted",
        std::time::Duration::from_secs(30),
        || {
            let r = curl(&[&url]);
            (r.header("x-echo-name") == Some("c")).then_some(())
        },
    );
    assert!(served(&c) >= 1);
    eprintln!(
        "killed backend: ejected after {} requests; {ok}/{} requests succeeded; readmitted after restart",
        statuses.len() - results.len(),
        statuses.len()
    );
}

#[test]
fn rate_limits_answer_429_with_retry_after_per_key() {
    let e = echo(&weft(), "e", &[]);
    let p = start(&config(
        &[&e],
        "  rateLimit: {requestsPerSecond: 0.1, burst: 12}\n",
        "    rateLimit: {requestsPerSecond: 0.5, burst: 5, key: {header: x-api-key}}\n",
    ));
    let url = format!("{}/", p.url("gw/web"));
    let run = |key: &str| {
        (0..8)
            .map(|_| curl(&["-H", &format!("x-api-key: {key}"), &url]))
            .collect::<Vec<_>>()
    };
    let alice = run("alice");
    let ok = alice.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 5, "the burst");
    let limited = alice.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(limited.header("x-weft-error"), Some("rate-limited"));
    let after: u64 = limited
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&after), "retry-after {after}");
    // Another key has its own bucket...
    let bob = run("bob");
    assert_eq!(bob.iter().filter(|r| r.status == 200).count(), 5);
    // ...but the service-wide limit (12 at once) caps them all together: carol gets the
    // two left, dave none.
    let carol = run("carol");
    let dave = run("dave");
    let served = 10
        + [carol, dave]
            .iter()
            .flatten()
            .filter(|r| r.status == 200)
            .count();
    assert_eq!(served, 12, "service-wide burst");
}

#[test]
fn faults_abort_and_delay_a_share_of_requests() {
    let e = echo(&weft(), "e", &[]);
    let p = start(&config(
        &[&e],
        "",
        "  - matches: [{path: {value: /abort}}]\n    backendRefs: [{name: s}]\n    fault: {abort: {status: 503, percent: 50}}\n\
         \x20 - matches: [{path: {value: /slow}}]\n    backendRefs: [{name: s}]\n    fault: {delay: {fixed: 10ms, percent: 100}}\n",
    ));
    let n = 400;
    let results = curl_many(
        &format!("{}/abort", p.url("gw/web")),
        n,
        "x-weft-error",
        &[],
    );
    let aborted = results
        .iter()
        .filter(|(s, e)| *s == 503 && e == "fault-injected")
        .count();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(aborted + ok, n);
    assert!(
        (n * 35 / 100..=n * 65 / 100).contains(&aborted),
        "{aborted} of {n} aborted at 50%"
    );
    assert_eq!(
        served(&e) as usize,
        ok,
        "aborted requests never reach the backend"
    );

    let results = curl_many(&format!("{}/slow", p.url("gw/web")), 20, "x-echo-name", &[]);
    assert!(results.iter().all(|(s, _)| *s == 200));
    let m = p.admin_get("/metrics");
    assert_eq!(
        metric_value(&m, "weft_faults_injected_total{route=\"r\",kind=\"delay\"}"),
        Some(20.0),
        "{m}"
    );
}

#[test]
fn health_checks_take_a_dead_endpoint_out_before_traffic_finds_it() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let b_addr = b.addr.to_string();
    let p = start(&config(
        &[&a, &b],
        "  healthCheck: {http: {path: /status/204}, interval: 50ms, unhealthyThreshold: 2, healthyThreshold: 1}\n",
        "",
    ));
    let url = format!("{}/", p.url("gw/web"));
    let metric = |name: &str| metric_value(&p.admin_get("/metrics"), name).unwrap_or(0.0);
    weft_testkit::eventually("probes", std::time::Duration::from_secs(10), || {
        (metric("weft_health_checks_total{service=\"s\",result=\"success\"}") >= 4.0).then_some(())
    });

    // b dies while no request is flowing: the probes notice, not the traffic.
    drop(b);
    weft_testkit::eventually("b marked down", std::time::Duration::from_secs(10), || {
        (metric("weft_health_transitions_total{service=\"s\",result=\"down\"}") >= 1.0)
            .then_some(())
    });
    let results = curl_many(&url, 50, "x-echo-name", &[]);
    assert!(
        results.iter().all(|(s, n)| *s == 200 && n == "a"),
        "{results:?}"
    );
    assert_eq!(
        metric("weft_upstream_connect_errors_total{service=\"s\",reason=\"connect-refused\"}"),
        0.0,
        "no request was sent to the dead endpoint"
    );

    // Back: marked up by the next successful probe, and served again.
    let _b = weft_testkit::echo_at(&weft(), "b", &b_addr, &[]);
    weft_testkit::eventually("b marked up", std::time::Duration::from_secs(10), || {
        (metric("weft_health_transitions_total{service=\"s\",result=\"up\"}") >= 1.0).then_some(())
    });
    let results = curl_many(&url, 10, "x-echo-name", &[]);
    assert!(results.iter().any(|(_, n)| n == "b"), "{results:?}");
}

#[test]
fn mirrored_copies_reach_the_mirror_and_never_affect_the_response() {
    let main = echo(&weft(), "main", &[]);
    let shadow = echo(&weft(), "shadow", &[]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let p = start(&format!(
        "{}---\nkind: Service\nmetadata: {{name: shadow}}\nspec:\n  endpoints: [{{address: \"{}\"}}]\n---\n\
         kind: Service\nmetadata: {{name: dead}}\nspec:\n  retry: {{attempts: 0}}\n  endpoints: [{{address: \"{dead}\"}}]\n",
        config(
            &[&main],
            "",
            "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}, percent: 100}}]\n\
             \x20 - matches: [{path: {value: /half}}]\n    backendRefs: [{name: s}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}, percent: 50}}]\n\
             \x20 - matches: [{path: {value: /to-dead}}]\n    backendRefs: [{name: s}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: dead}}}]\n",
        ),
        shadow.addr
    ));
    let url = p.url("gw/web");
    let metric = |name: &str| metric_value(&p.admin_get("/metrics"), name).unwrap_or(0.0);

    let results = curl_many(&format!("{url}/"), 40, "x-echo-name", &[]);
    assert!(
        results.iter().all(|(s, n)| *s == 200 && n == "main"),
        "{results:?}"
    );
    weft_testkit::eventually("40 copies", std::time::Duration::from_secs(10), || {
        (served(&shadow) == 40).then_some(())
    });

    let results = curl_many(&format!("{url}/half"), 200, "x-echo-name", &[]);
    assert!(results.iter().all(|(s, _)| *s == 200));
    weft_testkit::eventually(
        "half of 200 copied",
        std::time::Duration::from_secs(10),
        || {
            let copies = metric(
                "weft_mirrored_requests_total{route=\"r\",service=\"shadow\",result=\"sent\"}",
            ) - 40.0;
            (60.0..=140.0).contains(&copies).then_some(())
        },
    );

    // A mirror that is down changes nothing for the client.
    let results = curl_many(&format!("{url}/to-dead"), 20, "x-echo-name", &[]);
    assert!(
        results.iter().all(|(s, n)| *s == 200 && n == "main"),
        "{results:?}"
    );
    weft_testkit::eventually(
        "failed copies counted",
        std::time::Duration::from_secs(10),
        || {
            (metric("weft_mirrored_requests_total{route=\"r\",service=\"dead\",result=\"failed\"}")
                == 20.0)
                .then_some(())
        },
    );
}

/// How many requests an arriving one found waiting at the backend, on average.
fn mean_waiting(e: &Echo) -> f64 {
    let r = curl(&[&format!("http://{}/_echo/stats", e.addr)]);
    r.json()["mean_waiting"].as_f64().expect("echo stats")
}

#[test]
fn adaptive_concurrency_keeps_a_saturated_backend_from_queueing() {
    // A backend that serves 4 at a time, 20 ms each: beyond 4 in flight, requests queue.
    let run = |adaptive: bool| {
        let e = echo(&weft(), "e", &["--max-concurrency", "4", "--delay", "20ms"]);
        let extra = if adaptive {
            "  adaptiveConcurrency: {initialLimit: 64, sampleCount: 10}\n"
        } else {
            ""
        };
        let p = start(&config(&[&e], extra, ""));
        // A first round lets the limit find its level; the second is the one compared.
        weft_testkit::h1_load(&format!("{}/", p.url("gw/web")), 800, 32);
        curl(&[&format!("http://{}/_echo/reset", e.addr)]);
        let (ok, failed) = weft_testkit::h1_load(&format!("{}/", p.url("gw/web")), 800, 32);
        let limit = metric_value(
            &p.admin_get("/metrics"),
            "weft_adaptive_concurrency_limit{service=\"s\"}",
        );
        (ok, failed, mean_waiting(&e), limit)
    };
    let (ok_plain, failed_plain, queued_plain, _) = run(false);
    let (ok, failed, queued, limit) = run(true);
    eprintln!(
        "without: {ok_plain} ok, {failed_plain} failed, mean backend queue {queued_plain:.1}; \
         with: {ok} ok, {failed} failed fast, mean backend queue {queued:.1}, limit {limit:?}"
    );
    assert_eq!(failed_plain, 0);
    assert!(
        queued_plain >= 10.0,
        "32 clients on 4 slots queue: {queued_plain}"
    );
    let limit = limit.expect("the limit is published");
    assert!(limit < 64.0, "the limit came down from 64: {limit}");
    assert!(failed > 0, "excess requests failed fast");
    assert!(ok > 0);
    // The backend queues less on average (not by a fixed amount, and not at every moment:
    // the limit still moves, see docs/resilience.md).
    assert!(
        queued < queued_plain * 0.75,
        "the backend queued less under the adaptive limit: {queued} vs {queued_plain}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_concurrency_limit_keeps_memory_bounded_under_a_slow_backend() {
    // 400 clients at once against a backend that takes 2 s per request: with a limit of 10
    // in flight the rest fail fast, and the proxy holds 10 exchanges instead of 400.
    let run = |limit: &str| {
        let e = echo(&weft(), "slow", &["--delay", "2s"]);
        let p = start(&config(&[&e], limit, ""));
        let pid = p.proc.child.id();
        let before = rss_kib(pid);
        let url = format!("{}/", p.url("gw/web"));
        let (ok, failed) = weft_testkit::h1_load(&url, 400, 400);
        let after = rss_kib(pid);
        (ok, failed, after.saturating_sub(before))
    };
    let (ok_limited, failed_limited, grown_limited) = run("  circuitBreaker: {maxRequests: 10}\n");
    let (ok_open, _, grown_open) = run("");
    eprintln!(
        "400 concurrent on a 2 s backend: limited {ok_limited} ok / {failed_limited} failed fast, \
         RSS +{grown_limited} KiB; unlimited {ok_open} ok, RSS +{grown_open} KiB"
    );
    assert!(
        ok_limited <= 20 && failed_limited >= 380,
        "{ok_limited} / {failed_limited}"
    );
    assert_eq!(ok_open, 400);
    assert!(
        grown_limited < grown_open,
        "limited growth {grown_limited} KiB vs {grown_open} KiB"
    );
}

#[test]
fn a_mirrored_post_is_still_sent_once() {
    // Mirroring keeps a copy of the request; that copy must not make a POST retriable.
    let down = echo(&weft(), "down", &["--fail-rate", "1"]);
    let shadow = echo(&weft(), "shadow", &[]);
    let p = start(&format!(
        "{}---\nkind: Service\nmetadata: {{name: shadow}}\nspec:\n  endpoints: [{{address: \"{}\"}}]\n",
        config(
            &[&down],
            "  retry: {on: [unavailable], backoff: {base: 1ms, max: 2ms}}\n",
            "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]\n",
        ),
        shadow.addr
    ));
    let r = curl(&["--data-binary", "order=1", &format!("{}/", p.url("gw/web"))]);
    assert_eq!(r.status, 503);
    assert_eq!(served(&down), 1, "the POST was resent");
    weft_testkit::eventually("the copy", std::time::Duration::from_secs(10), || {
        (served(&shadow) == 1).then_some(())
    });
}

/// Reads one request head (a GET, no body) from `conn`; false at end of stream.
fn next_head(conn: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

#[test]
fn the_retry_budget_is_spread_over_time_and_never_exceeds_its_per_second_bound() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    // A backend in a full outage: every request answered 503, each arrival timed.
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let backend = weft_testkit::tcp_server(move |mut conn| {
        while next_head(&mut conn) {
            seen.lock().expect("arrivals").push(Instant::now());
            if conn
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    });
    let config = format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n  - backendRefs: [{{name: s}}]\n---\n\
         kind: Service\nmetadata: {{name: s}}\nspec:\n  endpoints: [{{address: \"{backend}\"}}]\n  \
         outlierDetection: {{consecutive5xx: 0}}\n  \
         retry: {{attempts: 3, on: [unavailable], backoff: {{base: 1ms, max: 2ms}}, budget: {{ratio: 0.2, minPerSecond: 10}}}}\n"
    );
    let p = start(&config);
    let web = p.listener("gw/web");
    // 300 requests a second for 12 s (past one slide of the 10 s window), from 4 paced
    // clients on keep-alive connections.
    let (rate, seconds, clients) = (300u32, 12u32, 4u32);
    let t0 = Instant::now() + Duration::from_millis(200);
    let sent: Vec<Instant> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|k| {
                scope.spawn(move || {
                    let mut conn = std::net::TcpStream::connect(web).expect("connect");
                    conn.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let mut times = Vec::new();
                    let mut i = 0u32;
                    loop {
                        let at = t0
                            + Duration::from_secs_f64(f64::from(i * clients + k) / f64::from(rate));
                        if at >= t0 + Duration::from_secs(u64::from(seconds)) {
                            return times;
                        }
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        times.push(Instant::now());
                        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                            .expect("send");
                        // The 503 (weft's answer after the retries, or the backend's).
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            conn.read_exact(&mut byte).expect("answer");
                            head.push(byte[0]);
                        }
                        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        conn.read_exact(&mut body).expect("body");
                        i += 1;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let arrivals = arrivals.lock().expect("arrivals").clone();
    let per_second = |times: &[Instant]| {
        let mut counts = vec![0u32; seconds as usize];
        for t in times {
            if let Some(d) = t.checked_duration_since(t0) {
                if let Some(c) = counts.get_mut(d.as_secs() as usize) {
                    *c += 1;
                }
            }
        }
        counts
    };
    let (requests, received) = (per_second(&sent), per_second(&arrivals));
    // Every second: at most the requests plus 20% of them plus 10 per second of the
    // proxy's budget; the test's seconds straddle two of the proxy's, whose 10 each may
    // both fall in one of ours (and 5 for the clocks' edges).
    for s in 0..seconds as usize {
        let bound = f64::from(requests[s]) * 1.2 + 2.0 * 10.0 + 5.0;
        assert!(
            f64::from(received[s]) <= bound,
            "second {s}: the backend received {} for {} requests (bound {bound:.0})\nrequests {requests:?}\nreceived {received:?}",
            received[s],
            requests[s]
        );
    }
    let (total_sent, total_received): (u32, u32) = (requests.iter().sum(), received.iter().sum());
    let extra = f64::from(total_received - total_sent.min(total_received)) / f64::from(total_sent);
    assert!(extra > 0.1, "the budget was not used: {extra:.3}");
    eprintln!("retry budget: {total_sent} requests, {total_received} reached the backend (+{:.1}%); per second {received:?}", extra * 100.0);
    assert!(retries(&p, "budget-exhausted") > 0.0);
}
