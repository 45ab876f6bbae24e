//! The whole HTTP exchange in memory: a configuration compiled as the proxy compiles it,
//! requests handed to [`handle`] as the listener hands them, and upstreams that are hyper
//! servers on the far end of in-memory pipes ([`Network::Memory`]). Time is paused, so a
//! 10 s upstream delay or a 30 s timeout costs nothing: each test runs in milliseconds.
//!
//! What only real sockets prove (TLS, HTTP/2 framing, upgrades, limits on slow clients,
//! reloads) stays in the end-to-end tests of `crates/weft-cli/tests`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{handle, Client, Context, Routes};
use crate::config::{Runtime, Snapshot};
use crate::error::ERROR_HEADER;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::{Exporter, Kind, Span, Value};
use crate::upstream::body::Source;
use crate::upstream::transport::Network;

/// What an upstream does with each request: wait, then answer with a status. Its body is
/// the upstream's name, and it says who answered in `x-upstream`.
#[derive(Clone, Copy)]
struct Behaviour {
    status: u16,
    delay: Duration,
}

const OK: Behaviour = Behaviour {
    status: 200,
    delay: Duration::ZERO,
};

fn status(status: u16) -> Behaviour {
    Behaviour {
        status,
        delay: Duration::ZERO,
    }
}

fn slow(delay: Duration) -> Behaviour {
    Behaviour { status: 200, delay }
}

/// A request as an upstream received it.
#[derive(Debug)]
struct Seen {
    upstream: &'static str,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A response as the client received it.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// Who answered (the upstream's name), or the proxy's `x-weft-error`.
    fn from(&self) -> &str {
        let by = |h| self.headers.get(h).and_then(|v| v.to_str().ok());
        by("x-upstream").or_else(|| by(ERROR_HEADER)).unwrap_or("")
    }
}

/// One proxy listener over an in-memory network.
struct Harness {
    ctx: Arc<Context>,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Spans the exchange exported.
    spans: mpsc::Receiver<Span>,
    /// Keeps the compiled services alive for the test's length.
    _snapshot: Snapshot,
}

/// The listener every configuration below declares.
const GATEWAY: &str = "kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, address: \"127.0.0.1:8080\"}]
";

impl Harness {
    /// Compiles `GATEWAY` + `yaml`; each `(address, name, behaviour)` is an upstream on the
    /// in-memory network. Any other address refuses connections.
    fn new(yaml: &str, upstreams: &[(&str, &'static str, Behaviour)]) -> Harness {
        Harness::with_gateway(GATEWAY, yaml, upstreams)
    }

    /// As [`Harness::new`], with another `Gateway` (its listener must be `edge/http`).
    fn with_gateway(
        gateway: &str,
        yaml: &str,
        upstreams: &[(&str, &'static str, Behaviour)],
    ) -> Harness {
        Harness::build(gateway, yaml, upstreams, |_| {})
    }

    /// As [`Harness::new`], on a sidecar's outbound listener: `caller`'s calls.
    fn calling_as(
        caller: &str,
        yaml: &str,
        upstreams: &[(&str, &'static str, Behaviour)],
    ) -> Harness {
        Harness::build(GATEWAY, yaml, upstreams, |c| {
            c.gateways[0].spec.listeners[0].caller = Some(weft_model::MeshCaller {
                service: caller.to_string(),
                outbound: true,
            });
        })
    }

    fn build(
        gateway: &str,
        yaml: &str,
        upstreams: &[(&str, &'static str, Behaviour)],
        edit: impl FnOnce(&mut weft_model::Config),
    ) -> Harness {
        let (tx, seen) = mpsc::unbounded_channel();
        let servers: HashMap<SocketAddr, (&'static str, Behaviour)> = upstreams
            .iter()
            .map(|(addr, name, b)| (addr.parse().expect("upstream address"), (*name, *b)))
            .collect();
        let dial = move |addr: SocketAddr| {
            let Some(&(name, behaviour)) = servers.get(&addr) else {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            };
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve(theirs, name, behaviour, tx.clone()));
            Ok(ours)
        };
        let mut runtime = Runtime::new(None).expect("runtime");
        runtime.network = Network::Memory(Arc::new(dial));
        let text = format!("{gateway}---\n{yaml}");
        let mut config = weft_model::parse("test.yaml", &text).expect("test configuration parses");
        edit(&mut config);
        let metrics = Arc::new(Metrics::new());
        let snapshot = Snapshot::build(Arc::new(config), &metrics, None, &runtime)
            .expect("test configuration compiles");
        let routes = snapshot
            .listener("edge/http")
            .expect("the listener")
            .http
            .clone();
        let (exporter, spans) = Exporter::channel(64, metrics.trace_spans_dropped.clone());
        let ctx = Arc::new(Context {
            name: "edge/http".into(),
            metrics: metrics.clone(),
            access_log: None,
            local: "127.0.0.1:8080".parse().expect("address"),
            exporter: Some(exporter),
            taps: Default::default(),
        });
        Harness {
            ctx,
            routes,
            metrics,
            seen,
            spans,
            _snapshot: snapshot,
        }
    }

    /// Sends `req` through the exchange as a client at 127.0.0.1:40000 would.
    async fn send(&self, req: Request<Source>) -> Answer {
        let client = Client::new("127.0.0.1:40000".parse().expect("address"), false);
        let resp = handle(self.ctx.clone(), self.routes.clone(), client, req)
            .await
            .expect("infallible");
        let (head, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Answer {
            status: head.status,
            headers: head.headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(
            request("GET", path)
                .body(Source::bytes(""))
                .expect("request"),
        )
        .await
    }

    /// The spans exported so far.
    fn spans(&mut self) -> Vec<Span> {
        std::iter::from_fn(|| self.spans.try_recv().ok()).collect()
    }

    /// The requests upstreams received so far.
    fn seen(&mut self) -> Vec<Seen> {
        std::iter::from_fn(|| self.seen.try_recv().ok()).collect()
    }

    /// A metric's value as `/metrics` shows it, 0 if absent.
    fn metric(&self, line_prefix: &str) -> f64 {
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.test")
}

/// One upstream connection: an HTTP/1.1 server answering by `behaviour`.
async fn serve(
    io: tokio::io::DuplexStream,
    name: &'static str,
    behaviour: Behaviour,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (head, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let _ = seen.send(Seen {
                upstream: name,
                uri: head.uri.to_string(),
                headers: head.headers,
                body,
            });
            tokio::time::sleep(behaviour.delay).await;
            let resp = Response::builder()
                .status(behaviour.status)
                .header("x-upstream", name)
                .body(Full::new(Bytes::from(name)))
                .expect("response");
            Ok::<_, hyper::Error>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

const ONE: &str = "127.0.0.1:9001";
const TWO: &str = "127.0.0.1:9002";
const THREE: &str = "127.0.0.1:9003";

/// A route to service `api`, whose spec is `spec` (indented under `spec:`).
fn api(rule: &str, spec: &str) -> String {
    format!(
        "kind: HTTPRoute
metadata: {{name: app}}
spec:
  rules:
    - {rule}
---
kind: Service
metadata: {{name: api}}
spec:
  {spec}
"
    )
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    // 9003 refuses; round robin would send every other request there.
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9003\"}, {address: \"127.0.0.1:9001\"}]
  loadBalancer: {policy: RoundRobin}",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    for _ in 0..4 {
        let a = h.get("/").await;
        assert_eq!((a.status, a.from()), (StatusCode::OK, "one"));
    }
    assert_eq!(h.seen().len(), 4, "each request reached `one` exactly once");
    assert!(h.metric("weft_retries_total{service=\"api\",result=\"attempted\"}") >= 1.0);
    assert!(
        h.metric("weft_upstream_connect_errors_total{service=\"api\",reason=\"connect-refused\"}")
            >= 1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_retriable_status_is_retried_on_another_endpoint_with_the_body_replayed() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}, {address: \"127.0.0.1:9002\"}]
  loadBalancer: {policy: RoundRobin}
  retry: {attempts: 1, on: [unavailable], nonIdempotent: true}",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", status(503)), (TWO, "two", OK)]);
    for _ in 0..2 {
        let req = request("POST", "/orders")
            .header("content-length", "5")
            .body(Source::bytes("hello"))
            .expect("request");
        let a = h.send(req).await;
        assert_eq!((a.status, a.from()), (StatusCode::OK, "two"));
    }
    // Round robin starts anywhere, and a retry's pick moves it on: `one` got one or
    // both requests, and each time the retry went to `two`.
    let seen = h.seen();
    assert!(seen.iter().all(|s| &s.body[..] == b"hello"), "{seen:?}");
    let failed = seen.iter().filter(|s| s.upstream == "one").count();
    assert!((1..=2).contains(&failed), "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.upstream == "two").count(), 2);
    assert_eq!(
        h.metric("weft_retries_total{service=\"api\",result=\"attempted\"}"),
        failed as f64
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_retry_budget_refuses_the_retry() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}, {address: \"127.0.0.1:9002\"}]
  retry: {attempts: 2, on: [unavailable], budget: {ratio: 0, minPerSecond: 0}}
  outlierDetection: {consecutive5xx: 0}",
    );
    let mut h = Harness::new(
        &config,
        &[(ONE, "one", status(503)), (TWO, "two", status(503))],
    );
    let a = h.get("/").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.seen().len(), 1, "no retry was sent");
    assert_eq!(
        h.metric("weft_retries_total{service=\"api\",result=\"budget-exhausted\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_and_the_retry_answers() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}, {address: \"127.0.0.1:9002\"}]
  loadBalancer: {policy: RoundRobin}
  timeouts: {request: 30s, perTry: 100ms}
  retry: {attempts: 1, on: [per-try-timeout]}",
    );
    let mut h = Harness::new(
        &config,
        &[
            (ONE, "one", slow(Duration::from_secs(10))),
            (TWO, "two", OK),
        ],
    );
    // Round robin starts anywhere: of two requests, at least one meets the slow endpoint.
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        let a = h.get("/").await;
        let took = started.elapsed();
        assert_eq!((a.status, a.from()), (StatusCode::OK, "two"));
        assert!(
            took < Duration::from_secs(1),
            "answered after {took:?}: a per-try timeout, not the slow upstream's 10 s"
        );
    }
    let slow_ones = h.seen().iter().filter(|s| s.upstream == "one").count();
    assert!(slow_ones >= 1);
    assert_eq!(
        h.metric("weft_retries_total{service=\"api\",result=\"attempted\"}"),
        slow_ones as f64
    );
}

#[tokio::test(start_paused = true)]
async fn the_request_timeout_answers_504() {
    let config = api(
        "backendRefs: [{name: api}]\n      timeouts: {request: 1s}\n      retry: {attempts: 0}",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let h = Harness::new(&config, &[(ONE, "one", slow(Duration::from_secs(60)))]);
    let started = tokio::time::Instant::now();
    let a = h.get("/").await;
    assert_eq!(
        (a.status, a.from()),
        (StatusCode::GATEWAY_TIMEOUT, "request-timeout")
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn over_max_requests_the_breaker_answers_overloaded() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]
  circuitBreaker: {maxRequests: 1}",
    );
    let h = Arc::new(Harness::new(
        &config,
        &[(ONE, "one", slow(Duration::from_secs(1)))],
    ));
    let first = tokio::spawn({
        let h = h.clone();
        async move { h.get("/").await }
    });
    // Let the first request reach the upstream and wait there.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = h.get("/").await;
    assert_eq!(
        (second.status, second.from()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    let first = first.await.expect("first request");
    assert_eq!((first.status, first.from()), (StatusCode::OK, "one"));
    // Once the first is answered, the breaker lets requests through again.
    assert_eq!(h.get("/").await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_an_endpoint() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}, {address: \"127.0.0.1:9002\"}]
  loadBalancer: {policy: RoundRobin}
  retry: {attempts: 0}
  outlierDetection: {consecutive5xx: 2, baseEjectionTime: 30s}",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", status(500)), (TWO, "two", OK)]);
    for _ in 0..4 {
        h.get("/").await;
    }
    assert_eq!(
        h.seen().iter().filter(|s| s.upstream == "one").count(),
        2,
        "round robin sent `one` every other request until its second 500"
    );
    assert_eq!(
        h.metric(
            "weft_outlier_ejections_total{service=\"api\",reason=\"consecutive-5xx\",result=\"ejected\"}"
        ),
        1.0
    );
    for _ in 0..10 {
        assert_eq!(h.get("/").await.from(), "two");
    }
}

#[tokio::test(start_paused = true)]
async fn no_matching_route_answers_404() {
    let config = api(
        "matches: [{path: {type: PathPrefix, value: /api}}]\n      backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    let a = h.get("/other").await;
    assert_eq!((a.status, a.from()), (StatusCode::NOT_FOUND, "no-route"));
    assert_eq!(h.get("/api/x").await.from(), "one");
    assert_eq!(h.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_path_is_judged_in_its_normal_form_or_refused() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    // An escaped slash would be a separator to some apps and not to others: refused.
    let a = h.get("/files/a%2F..%2F..%2Fetc").await;
    assert_eq!(
        (a.status, a.from()),
        (StatusCode::BAD_REQUEST, "invalid-path")
    );
    let why = String::from_utf8_lossy(&a.body);
    assert!(
        why.contains("%2F"),
        "the refusal names what it refused: {why}"
    );
    // Dot segments, escaped or not, are resolved; the app sees the normal form.
    assert_eq!(h.get("/a/./b/%2e%2e/c").await.status, StatusCode::OK);
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/a/c");
}

#[tokio::test(start_paused = true)]
async fn a_redirect_is_answered_without_an_upstream() {
    let config = api(
        "matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    let a = h.get("/old/page?x=1").await;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        a.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://app.test/new/page?x=1")
    );
    assert!(h.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_changes_the_host_and_path_sent_upstream() {
    let config = api(
        "matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - type: URLRewrite
          urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    assert_eq!(h.get("/api/users?page=2").await.status, StatusCode::OK);
    let seen = h.seen();
    assert_eq!(seen[0].uri, "/v2/users?page=2");
    assert_eq!(seen[0].headers["host"], "api.internal");
}

#[tokio::test(start_paused = true)]
async fn header_modifiers_edit_the_request_and_the_response() {
    let config = api(
        "filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: canary}]
            add: [{name: x-tag, value: b}]
            remove: [x-secret]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{name: x-upstream, value: hidden}]
            add: [{name: x-served-by, value: weft}]
      backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    let req = request("GET", "/")
        .header("x-route", "stable")
        .header("x-tag", "a")
        .header("x-secret", "s3cret")
        .body(Source::bytes(""))
        .expect("request");
    let a = h.send(req).await;
    assert_eq!(a.headers["x-upstream"], "hidden");
    assert_eq!(a.headers["x-served-by"], "weft");
    let seen = h.seen();
    let headers = &seen[0].headers;
    assert_eq!(headers["x-route"], "canary");
    let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["a", "b"]);
    assert!(!headers.contains_key("x-secret"));
    // The proxy's own forwarding headers are there too.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test(start_paused = true)]
async fn backends_share_requests_by_weight() {
    let config = "kind: HTTPRoute
metadata: {name: app}
spec:
  rules: [{backendRefs: [{name: stable, weight: 3}, {name: canary, weight: 1}, {name: off, weight: 0}]}]
---
kind: Service
metadata: {name: stable}
spec: {endpoints: [{address: \"127.0.0.1:9001\"}]}
---
kind: Service
metadata: {name: canary}
spec: {endpoints: [{address: \"127.0.0.1:9002\"}]}
---
kind: Service
metadata: {name: off}
spec: {endpoints: [{address: \"127.0.0.1:9003\"}]}
";
    let h = Harness::new(
        config,
        &[(ONE, "stable", OK), (TWO, "canary", OK), (THREE, "off", OK)],
    );
    let mut count: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        *count
            .entry(h.get("/").await.from().to_string())
            .or_default() += 1;
    }
    // 300 / 100 expected; the bounds are over five standard deviations wide.
    let (stable, canary) = (count["stable"], count.get("canary").copied().unwrap_or(0));
    assert_eq!(stable + canary, 400, "{count:?}");
    assert!((255..=345).contains(&stable), "{count:?}");
}

#[tokio::test(start_paused = true)]
async fn faults_abort_and_delay() {
    let config = "kind: HTTPRoute
metadata: {name: app}
spec:
  rules:
    - matches: [{path: {type: PathPrefix, value: /abort}}]
      fault: {abort: {status: 418, percent: 100}}
      backendRefs: [{name: api}]
    - fault: {delay: {fixed: 5s, percent: 100}}
      backendRefs: [{name: api}]
---
kind: Service
metadata: {name: api}
spec: {endpoints: [{address: \"127.0.0.1:9001\"}]}
";
    let mut h = Harness::new(config, &[(ONE, "one", OK)]);
    let a = h.get("/abort").await;
    assert_eq!((a.status.as_u16(), a.from()), (418, "fault-injected"));
    assert!(h.seen().is_empty(), "an aborted request is not forwarded");
    let started = tokio::time::Instant::now();
    assert_eq!(h.get("/slow").await.from(), "one");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(
        h.metric("weft_faults_injected_total{route=\"app\",kind=\"delay\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_mirror_gets_a_copy_and_its_answer_is_ignored() {
    let config = "kind: HTTPRoute
metadata: {name: app}
spec:
  rules:
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow}}
      backendRefs: [{name: api}]
---
kind: Service
metadata: {name: api}
spec: {endpoints: [{address: \"127.0.0.1:9001\"}]}
---
kind: Service
metadata: {name: shadow}
spec: {endpoints: [{address: \"127.0.0.1:9002\"}]}
";
    let mut h = Harness::new(config, &[(ONE, "one", OK), (TWO, "shadow", status(500))]);
    let req = request("POST", "/orders")
        .header("content-length", "5")
        .body(Source::bytes("hello"))
        .expect("request");
    let a = h.send(req).await;
    assert_eq!((a.status, a.from()), (StatusCode::OK, "one"));
    // The copy travels on its own task; wait for it to arrive.
    let mut seen = h.seen();
    while seen.len() < 2 {
        seen.push(h.seen.recv().await.expect("the mirror's copy"));
    }
    let copy = seen.iter().find(|s| s.upstream == "shadow").expect("copy");
    assert_eq!(&copy.body[..], b"hello");
    assert_eq!(copy.uri, "/orders");
    assert!(copy.headers.contains_key("x-weft-mirrored"));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_route_answers_429_once_the_burst_is_spent() {
    let config = api(
        "rateLimit: {requestsPerSecond: 1, burst: 2}\n      backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let h = Harness::new(&config, &[(ONE, "one", OK)]);
    assert_eq!(h.get("/").await.status, StatusCode::OK);
    assert_eq!(h.get("/").await.status, StatusCode::OK);
    let limited = h.get("/").await;
    assert_eq!(
        (limited.status, limited.from()),
        (StatusCode::TOO_MANY_REQUESTS, "rate-limited")
    );
    assert!(limited.headers.contains_key("retry-after"));
}

/// A gateway that records every trace (`samplingPercent: 100`) and sends B3 multi too.
const TRACED: &str = "kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, address: \"127.0.0.1:8080\"}]
  tracing: {samplingPercent: 100, propagation: [b3multi]}
";

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Str(s)) => s.clone(),
        Some(Value::Static(s)) => s.to_string(),
        Some(Value::Ip(a)) => a.to_string(),
        Some(Value::Addr(a)) => a.to_string(),
        _ => String::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_upstream_sees_this_hops_span_as_its_parent_and_the_span_is_exported() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::with_gateway(TRACED, &config, &[(ONE, "one", OK)]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let req = request("GET", "/orders?id=7")
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .header("tracestate", "vendor=opaque")
        .body(Source::bytes(""))
        .expect("request");
    assert_eq!(h.send(req).await.status, StatusCode::OK);
    let seen = h.seen();
    let tp = seen[0].headers["traceparent"].to_str().expect("text");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"));
    assert_ne!(parts[2], caller, "a new span for this hop");
    assert_eq!(seen[0].headers["tracestate"], "vendor=opaque");
    // Asked for by configuration: B3 multi carries the same ids.
    assert_eq!(seen[0].headers["x-b3-traceid"], trace);
    assert_eq!(seen[0].headers["x-b3-spanid"], parts[2]);
    assert_eq!(seen[0].headers["x-b3-parentspanid"], caller);

    let spans = h.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(format!("{:032x}", span.trace_id), trace);
    assert_eq!(format!("{:016x}", span.span_id), parts[2]);
    assert_eq!(
        span.parent_id.map(|p| format!("{p:016x}")).as_deref(),
        Some(caller)
    );
    assert_eq!((span.kind, span.name.as_str()), (Kind::Server, "GET app"));
    assert_eq!(span.tracestate, "vendor=opaque");
    assert_eq!(span.error, None);
    assert_eq!(text(attr(span, "http.request.method")), "GET");
    assert_eq!(text(attr(span, "url.path")), "/orders", "no query exported");
    assert_eq!(text(attr(span, "http.route")), "app");
    assert_eq!(text(attr(span, "server.address")), "app.test");
    assert_eq!(text(attr(span, "weft.service")), "api");
    assert_eq!(text(attr(span, "weft.upstream.address")), ONE);
    assert_eq!(
        attr(span, "http.response.status_code"),
        Some(&Value::Int(200))
    );
    assert_eq!(attr(span, "http.request.resend_count"), None);
}

#[tokio::test(start_paused = true)]
async fn b3_arriving_single_leaves_single_and_a_trace_starts_when_none_arrives() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::new(&config, &[(ONE, "one", OK)]);
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let caller = "e457b5a2e4d86bd1";
    let req = request("GET", "/")
        .header("b3", format!("{trace}-{caller}-1"))
        .body(Source::bytes(""))
        .expect("request");
    h.send(req).await;
    h.get("/").await;
    let seen = h.seen();
    let b3 = seen[0].headers["b3"].to_str().expect("text");
    assert!(
        b3.starts_with(&format!("{trace}-")) && b3.ends_with(&format!("-1-{caller}")),
        "{b3}"
    );
    let tp = seen[0].headers["traceparent"].to_str().expect("text");
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
    assert!(
        !seen[0].headers.contains_key("x-b3-traceid"),
        "not configured, not arrived"
    );
    // No context: a new trace, not sampled at the default 1% unless chance says so; its
    // ids go on all the same.
    let tp = seen[1].headers["traceparent"].to_str().expect("text");
    assert_eq!(tp.len(), 55);
    assert!(!seen[1].headers.contains_key("b3"));
    // The sampled one (the caller decided) was exported.
    assert!(h
        .spans()
        .iter()
        .any(|s| format!("{:032x}", s.trace_id) == trace));
}

#[tokio::test(start_paused = true)]
async fn an_unsampled_request_is_not_exported_but_carries_its_ids() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9001\"}]",
    );
    let mut h = Harness::with_gateway(TRACED, &config, &[(ONE, "one", OK)]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = request("GET", "/")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-00"))
        .body(Source::bytes(""))
        .expect("request");
    h.send(req).await;
    let tp = h.seen()[0].headers["traceparent"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(
        tp.starts_with(&format!("00-{trace}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    assert!(h.spans().is_empty(), "the caller said: not sampled");
}

#[tokio::test(start_paused = true)]
async fn a_reply_of_the_proxys_own_is_an_error_span_naming_its_cause() {
    let config = api(
        "matches: [{path: {type: PathPrefix, value: /api}}]\n      backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9003\"}]\n  retry: {attempts: 0}",
    );
    let mut h = Harness::with_gateway(TRACED, &config, &[]);
    h.get("/nowhere").await;
    h.get("/api").await; // 9003 refuses connections
    let spans = h.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].error.as_deref(), Some("no-route"));
    assert_eq!(spans[0].name, "GET", "no route: the method alone");
    assert_eq!(text(attr(&spans[0], "weft.error")), "no-route");
    assert_eq!(spans[1].error.as_deref(), Some("connect-refused"));
    assert_eq!(
        attr(&spans[1], "http.response.status_code"),
        Some(&Value::Int(503))
    );
}

#[tokio::test(start_paused = true)]
async fn retries_show_in_the_span() {
    let config = api(
        "backendRefs: [{name: api}]",
        "endpoints: [{address: \"127.0.0.1:9003\"}, {address: \"127.0.0.1:9001\"}]
  loadBalancer: {policy: RoundRobin}",
    );
    let mut h = Harness::with_gateway(TRACED, &config, &[(ONE, "one", OK)]);
    let mut resent = 0;
    for _ in 0..4 {
        h.get("/").await;
    }
    for span in h.spans() {
        if let Some(Value::Int(n)) = attr(&span, "http.request.resend_count") {
            resent += n;
            assert_eq!(text(attr(&span, "weft.upstream.address")), ONE);
        }
        assert_eq!(span.error, None);
    }
    assert_eq!(
        resent as f64,
        h.metric("weft_retries_total{service=\"api\",result=\"attempted\"}")
    );
    assert!(resent >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_sidecars_calls_are_counted_per_edge_and_traced_as_client_spans() {
    let config = "kind: HTTPRoute
metadata: {name: app}
spec:
  rules: [{backendRefs: [{name: payments, weight: 1}, {name: ledger, weight: 1}]}]
---
kind: Service
metadata: {name: payments}
spec: {endpoints: [{address: \"127.0.0.1:9001\"}]}
---
kind: Service
metadata: {name: ledger}
spec: {endpoints: [{address: \"127.0.0.1:9002\"}], retry: {attempts: 0}}
";
    let mut h = Harness::calling_as(
        "frontend",
        config,
        &[(ONE, "payments", OK), (TWO, "ledger", status(503))],
    );
    let mut sent: HashMap<String, u32> = HashMap::new();
    for _ in 0..50 {
        *sent.entry(h.get("/").await.from().to_string()).or_default() += 1;
    }
    let edge = |dst: &str, class: &str| {
        h.metric(&format!(
            "weft_edge_requests_total{{direction=\"outbound\",source=\"frontend\",\
             destination=\"{dst}\",status_class=\"{class}\"}}"
        ))
    };
    assert_eq!(
        edge("payments", "2xx"),
        f64::from(sent["payments"]),
        "{sent:?}"
    );
    assert_eq!(edge("ledger", "5xx"), f64::from(sent["ledger"]), "{sent:?}");
    assert_eq!(edge("ledger", "2xx"), 0.0);
    // A call made for the app is a client span.
    let req = request("GET", "/")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Source::bytes(""))
        .expect("request");
    h.send(req).await;
    let spans = h.spans();
    assert_eq!(spans.last().map(|s| s.kind), Some(Kind::Client));
}
