//! End to end: each load-balancing policy does what it says, through real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_testkit::{curl_many, echo, eventually, one_service_config, proxy, Echo};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn config(lb: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{address: \"{a}\", weight: {w}}}"))
        .collect();
    one_service_config(
        "s",
        &format!("  loadBalancer: {lb}\n  endpoints: [{}]\n", eps.join(", ")),
    )
}

fn tally(results: &[(u16, String)]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (status, name) in results {
        assert_eq!(*status, 200, "{results:?}");
        *m.entry(name.clone()).or_default() += 1;
    }
    m
}

fn backends(specs: &[(&str, &[&str])]) -> Vec<Echo> {
    specs
        .iter()
        .map(|(name, extra)| echo(&weft(), name, extra))
        .collect()
}

#[test]
fn round_robin_follows_weights_exactly() {
    let b = backends(&[("a", &[]), ("b", &[]), ("c", &[])]);
    let p = proxy(
        &weft(),
        &config(
            "{policy: RoundRobin}",
            &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 2)],
        ),
        &[],
    );
    let t = tally(&curl_many(
        &format!("{}/", p.url("gw/web")),
        400,
        "x-echo-name",
        &[],
    ));
    assert_eq!((t["a"], t["b"], t["c"]), (100, 100, 200), "{t:?}");
}

#[test]
fn p2c_peak_ewma_moves_traffic_away_from_a_slow_endpoint() {
    // Same workload against round robin (the control) and the default policy.
    let b = backends(&[
        ("fast1", &[]),
        ("fast2", &[]),
        ("slow", &["--delay", "60ms"]),
    ]);
    let eps = [(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)];
    let parallel = ["--parallel", "--parallel-max", "6"];

    let rr = proxy(&weft(), &config("{policy: RoundRobin}", &eps), &[]);
    let t = tally(&curl_many(
        &format!("{}/", rr.url("gw/web")),
        300,
        "x-echo-name",
        &parallel,
    ));
    assert_eq!(
        t["slow"], 100,
        "control: round robin gives the slow endpoint its third: {t:?}"
    );

    let p2c = proxy(&weft(), &config("{}", &eps), &[]);
    let t = tally(&curl_many(
        &format!("{}/", p2c.url("gw/web")),
        300,
        "x-echo-name",
        &parallel,
    ));
    let slow = t.get("slow").copied().unwrap_or(0);
    assert!(
        slow <= 30,
        "P2C peak-EWMA should send well under 10% to the slow endpoint, sent {slow}/300: {t:?}"
    );
}

#[test]
fn least_request_avoids_the_endpoint_with_outstanding_requests() {
    let b = backends(&[("fast", &[]), ("slow", &["--delay", "200ms"])]);
    let p = proxy(
        &weft(),
        &config("{policy: LeastRequest}", &[(b[0].addr, 1), (b[1].addr, 1)]),
        &[],
    );
    let t = tally(&curl_many(
        &format!("{}/", p.url("gw/web")),
        200,
        "x-echo-name",
        &["--parallel", "--parallel-max", "8"],
    ));
    let slow = t.get("slow").copied().unwrap_or(0);
    // Round robin would send 100; least request sends a new request to the slow endpoint
    // only when it has no more outstanding requests than the fast one.
    assert!(
        slow <= 40,
        "least request sent {slow}/200 to the slow endpoint: {t:?}"
    );
}

#[test]
fn ring_hash_keeps_keys_and_moves_about_one_nth_when_an_endpoint_joins() {
    let b = backends(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])]);
    let lb = "{policy: RingHash, hashOn: {header: x-user}}";
    let three = proxy(
        &weft(),
        &config(lb, &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)]),
        &[],
    );
    let four = proxy(
        &weft(),
        &config(
            lb,
            &[
                (b[0].addr, 1),
                (b[1].addr, 1),
                (b[2].addr, 1),
                (b[3].addr, 1),
            ],
        ),
        &[],
    );
    let owner = |p: &weft_testkit::Proxy, user: usize| {
        let r = weft_testkit::curl(&[
            "-H",
            &format!("x-user: user-{user}"),
            &format!("{}/", p.url("gw/web")),
        ]);
        r.header("x-echo-name").expect("x-echo-name").to_string()
    };
    let users = 120;
    let before: Vec<String> = (0..users).map(|u| owner(&three, u)).collect();
    // Sticky: the same key lands on the same endpoint every time.
    for (u, first) in before.iter().enumerate().take(20) {
        assert_eq!(
            &owner(&three, u),
            first,
            "user-{u} moved without any change"
        );
    }
    let spread: std::collections::HashSet<&String> = before.iter().collect();
    assert_eq!(
        spread.len(),
        3,
        "keys should spread over all endpoints: {before:?}"
    );
    let moved = (0..users)
        .filter(|u| owner(&four, *u) != before[*u])
        .count();
    // Ideal 1/4 = 30 of 120; a full reshuffle would move ~90.
    assert!(
        (10..=50).contains(&moved),
        "{moved}/{users} keys moved when one endpoint joined three"
    );
    // Keys that moved went to the new endpoint only.
    for (u, first) in before.iter().enumerate() {
        let now = owner(&four, u);
        assert!(
            &now == first || now == "d",
            "user-{u} moved from {first} to {now}, not to the new endpoint"
        );
    }
}

#[test]
fn ring_hash_on_cookie_and_client_address() {
    let b = backends(&[("a", &[]), ("b", &[]), ("c", &[])]);
    let eps = [(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)];
    let by_ip = proxy(
        &weft(),
        &config("{policy: RingHash, hashOn: {clientAddress: true}}", &eps),
        &[],
    );
    let t = tally(&curl_many(
        &format!("{}/", by_ip.url("gw/web")),
        60,
        "x-echo-name",
        &[],
    ));
    assert_eq!(t.len(), 1, "one client address, one endpoint: {t:?}");

    let by_cookie = proxy(
        &weft(),
        &config("{policy: RingHash, hashOn: {cookie: session}}", &eps),
        &[],
    );
    let url = format!("{}/", by_cookie.url("gw/web"));
    for s in 0..10 {
        let cookie = format!("session=s{s}; theme=dark");
        let t = tally(&curl_many(
            &url,
            10,
            "x-echo-name",
            &["-H", &format!("cookie: {cookie}")],
        ));
        assert_eq!(t.len(), 1, "session s{s} was spread: {t:?}");
    }
}

#[test]
fn p2c_shares_sequential_traffic_among_equals_and_tries_a_new_endpoint_at_once() {
    let b = backends(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])]);
    let three = [(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)];
    let p = proxy(
        &weft(),
        &config("{}", &three),
        &["--watch-interval", "50ms"],
    );
    let url = format!("{}/", p.url("gw/web"));
    // 300 sequential requests (one connection, one at a time), three times over.
    for round in 0..3 {
        let t = tally(&curl_many(&url, 300, "x-echo-name", &[]));
        for name in ["a", "b", "c"] {
            let n = t.get(name).copied().unwrap_or(0);
            assert!(
                (60..=141).contains(&n),
                "round {round}: {name} got {n}/300 (20%-47% expected): {t:?}"
            );
        }
    }
    // A fourth endpoint joins: it is tried within its first requests.
    let four = [three[0], three[1], three[2], (b[3].addr, 1)];
    weft_testkit::replace_file(&p.config, &config("{}", &four));
    eventually(
        "the fourth endpoint in the configuration",
        Duration::from_secs(10),
        || {
            p.admin_get("/config")
                .contains(&b[3].addr.to_string())
                .then_some(())
        },
    );
    // Drawn into about half the pairs and winning most of them, it gets roughly a third
    // of the requests from the start: none of 40 would happen once in a million runs.
    let t = tally(&curl_many(&url, 40, "x-echo-name", &[]));
    assert!(
        t.contains_key("d"),
        "the new endpoint got none of 40: {t:?}"
    );
}

#[test]
fn p2c_sends_under_5_percent_to_an_endpoint_500ms_slower() {
    let b = backends(&[
        ("fast1", &[]),
        ("fast2", &[]),
        ("slow", &["--delay", "500ms"]),
    ]);
    let eps = [(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)];
    let p = proxy(&weft(), &config("{}", &eps), &[]);
    let url = format!("{}/", p.url("gw/web"));
    // Warm-up: every endpoint is tried (new ones first) and measured.
    let _ = curl_many(&url, 20, "x-echo-name", &[]);
    let t = tally(&curl_many(&url, 200, "x-echo-name", &[]));
    let slow = t.get("slow").copied().unwrap_or(0);
    assert!(slow < 10, "the slow endpoint got {slow}/200: {t:?}");
}

/// A Service with `subsets` by endpoint labels, and a route whose backends name them:
/// `stable` (version v1: two endpoints) weight `stable`, `canary` (version v2: one)
/// weight `canary`, and `empty` (a version no endpoint has) weight `empty`.
fn subset_config(b: &[Echo], stable: u32, canary: u32, empty: u32) -> String {
    format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [\
         {{name: s, subset: stable, weight: {stable}}}, {{name: s, subset: canary, weight: {canary}}}, \
         {{name: s, subset: empty, weight: {empty}}}]}}]\n---\n\
         kind: Service\nmetadata: {{name: s}}\nspec:\n  subsets:\n    stable: {{version: v1}}\n    canary: {{version: v2}}\n    empty: {{version: v9}}\n  endpoints:\n\
         \x20   - {{address: \"{}\", metadata: {{version: v1}}}}\n\
         \x20   - {{address: \"{}\", metadata: {{version: v1, zone: b}}}}\n\
         \x20   - {{address: \"{}\", metadata: {{version: v2}}}}\n",
        b[0].addr, b[1].addr, b[2].addr
    )
}

#[test]
fn a_backend_naming_a_subset_reaches_only_the_endpoints_it_selects() {
    let b = backends(&[("v1-a", &[]), ("v1-b", &[]), ("v2-a", &[])]);
    // All to the canary subset: only the v2 endpoint answers.
    let p = proxy(&weft(), &subset_config(&b, 0, 1, 0), &[]);
    let t = tally(&curl_many(
        &format!("{}/", p.url("gw/web")),
        60,
        "x-echo-name",
        &[],
    ));
    assert_eq!(t, HashMap::from([("v2-a".to_string(), 60)]));
    drop(p);
    // 3:1 stable:canary: both v1 endpoints share the stable part, v2 gets about a quarter.
    let p = proxy(&weft(), &subset_config(&b, 3, 1, 0), &[]);
    let t = tally(&curl_many(
        &format!("{}/", p.url("gw/web")),
        400,
        "x-echo-name",
        &[],
    ));
    let canary = t.get("v2-a").copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&canary),
        "canary got {canary}/400: {t:?}"
    );
    assert!(
        t.get("v1-a").is_some_and(|n| *n > 50) && t.get("v1-b").is_some_and(|n| *n > 50),
        "both stable endpoints serve: {t:?}"
    );
    assert_eq!(t.len(), 3, "{t:?}");
    drop(p);
    // A subset no endpoint is in: a precise 503, not some other endpoint.
    let p = proxy(&weft(), &subset_config(&b, 0, 0, 1), &[]);
    let r = weft_testkit::curl(&["-si", &format!("{}/", p.url("gw/web"))]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.header("x-weft-error"),
        Some("no-healthy-endpoints"),
        "{r:?}"
    );
}
