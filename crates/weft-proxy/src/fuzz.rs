//! Entry points for fuzzing the parsing weft does itself, shared by the `cargo fuzz`
//! targets in `fuzz/` and by the seed-corpus test below (so every CI run replays the
//! corpus). Not an API: the functions panic only when an invariant breaks.

use std::sync::{Arc, OnceLock};

use http::{Method, Request};

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Routes with every kind of matcher, for the request fuzzer.
const ROUTES: &str = r#"
kind: Gateway
metadata: {name: gw}
spec: {listeners: [{name: web, address: "127.0.0.1:0"}]}
---
kind: HTTPRoute
metadata: {name: r}
spec:
  hostnames: ["a.example.com", "*.example.org"]
  rules:
    - matches:
        - path: {type: RegularExpression, value: "/v[0-9]+/.*"}
          headers: [{name: x-env, value: "canary|beta", type: RegularExpression}]
          queryParams: [{name: q, value: "a b"}]
          method: POST
      backendRefs: [{name: s}]
    - matches: [{path: {type: Exact, value: /exact}}, {path: {value: /prefix}}]
      backendRefs: [{name: s}]
---
kind: HTTPRoute
metadata: {name: any}
spec:
  rules: [{backendRefs: [{name: s}]}]
---
kind: Service
metadata: {name: s}
spec: {endpoints: [{address: "127.0.0.1:9"}]}
"#;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let config = weft_model::parse("fuzz.yaml", ROUTES).expect("fuzz routes parse");
        let tls = crate::snapshot::TlsContext::new(None).expect("tls context");
        Snapshot::build(Arc::new(config), &Metrics::new(), None, &tls).expect("fuzz routes compile")
    })
}

/// A request head as lines: method, request target, then `name: value` headers. Runs
/// everything the proxy parses itself before forwarding: host and authority checks, dot
/// segment removal, routing (regex, query percent-decoding, headers), hop-by-hop removal,
/// and the upstream target.
pub fn request_head(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(target);
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            builder = builder.header(n.trim(), v.trim());
        }
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    let path = crate::forward::normalize_path(req.uri().path()).into_owned();
    assert!(
        !path.split('/').any(|s| s == ".." || s == "."),
        "dot segment survived normalization: {path:?}"
    );
    if let Some(host) = crate::forward::request_host(&req) {
        let table = &snapshot().listeners[0].1.table;
        let _ = table.route(&host, req.method(), &path, req.uri().query(), req.headers());
    }
    crate::forward::strip_hop_by_hop(req.headers_mut(), true);
    assert!(!req.headers().contains_key(http::header::CONNECTION));
    let _ = crate::forward::upstream_uri(req.uri(), None, Some(path));
}

/// Bytes as the first flight of a TLS client, as TLS passthrough reads it.
pub fn client_hello(data: &[u8]) {
    let _ = weft_tls::peek_sni(data);
}

#[cfg(test)]
mod tests {
    /// Replays the checked-in fuzz corpora, so a crash found once stays fixed.
    #[test]
    fn seed_corpora_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
        let mut replayed = 0;
        for (dir, run) in [
            ("request_head", super::request_head as fn(&[u8])),
            ("client_hello", super::client_hello),
        ] {
            for entry in std::fs::read_dir(root.join(dir)).expect("seed directory") {
                let bytes = std::fs::read(entry.expect("entry").path()).expect("seed");
                run(&bytes);
                replayed += 1;
            }
        }
        assert!(replayed >= 4, "only {replayed} seeds");
    }
}
