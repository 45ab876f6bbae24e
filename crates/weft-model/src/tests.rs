use super::*;

const GOOD: &str = r#"
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - {name: web, address: "127.0.0.1:0"}
---
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  hostnames: ["api.example.com", "*.example.org"]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /v1}
          headers: [{name: x-env, value: canary}]
          method: GET
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs: [{name: echo, weight: 9}, {name: echo2}]
    - filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, statusCode: 301}
---
kind: Service
metadata: {name: echo}
spec:
  endpoints: [{address: "127.0.0.1:9001"}, {address: "127.0.0.1:9002", weight: 3}]
  loadBalancer: {policy: RingHash, hashOn: {header: x-user}}
  connectTimeout: 500ms
---
kind: Service
metadata: {name: echo2}
spec:
  protocol: http2
  endpoints: [{address: "127.0.0.1:9003"}]
"#;

#[test]
fn good_config_parses() {
    let c = parse("good.yaml", GOOD).unwrap();
    assert_eq!(c.gateways.len(), 1);
    assert_eq!(c.routes[0].spec.rules[0].backend_refs[0].weight, 9);
    assert_eq!(c.routes[0].spec.rules[0].backend_refs[1].weight, 1);
    let echo = c.service("echo").unwrap();
    assert_eq!(echo.spec.connect_timeout.get().as_millis(), 500);
    assert_eq!(echo.spec.load_balancer.policy, LbPolicy::RingHash);
    assert_eq!(
        c.service("echo2").unwrap().spec.protocol,
        ServiceProtocol::Http2
    );
    assert_eq!(c.version.len(), 16);
    assert_eq!(parse("again.yaml", GOOD).unwrap().version, c.version);
}

fn errors_of(text: &str) -> Vec<String> {
    parse("f.yaml", text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn type_error_reports_line_and_field() {
    let bad = GOOD.replace("weight: 9", "weight: nine");
    let errs = errors_of(&bad);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("f.yaml:21: spec.rules[0].backendRefs[0].weight: "),
        "{errs:?}"
    );
}

#[test]
fn unknown_field_is_refused() {
    let bad = GOOD.replace("connectTimeout: 500ms", "conectTimeout: 500ms");
    let errs = errors_of(&bad);
    assert!(
        errs[0].contains("f.yaml:31: spec.conectTimeout: unknown field `conectTimeout`"),
        "{errs:?}"
    );
}

#[test]
fn semantic_errors_report_every_problem_with_lines() {
    let bad = GOOD
        .replace(
            "{name: echo, weight: 9}, {name: echo2}",
            "{name: echo, weight: 9}, {name: nope}",
        )
        .replace("value: /v1}", "value: v1}")
        .replace("statusCode: 301", "statusCode: 200")
        .replace("\"*.example.org\"", "\"ex*ample.org\"");
    let errs = errors_of(&bad);
    let want = [
        "f.yaml:12: HTTPRoute/api: spec.hostnames[1]: `ex*ample.org` is not a valid host name",
        "f.yaml:15: HTTPRoute/api: spec.rules[0].matches[0].path.value: `v1` must start with `/`",
        "f.yaml:24: HTTPRoute/api: spec.rules[1].filters[0].requestRedirect.statusCode: 200 is not a redirect status",
        "f.yaml:21: HTTPRoute/api: spec.rules[0].backendRefs[1].name: unknown Service `nope`",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn cross_reference_and_consistency_rules() {
    let cases = [
        (
            "{name: edge, sectionName: web}",
            "{name: edge, sectionName: api}",
            "has no listener `api`",
        ),
        (
            "value: canary}",
            "value: \"(\", type: RegularExpression}",
            "invalid regular expression",
        ),
        ("method: GET", "method: get", "is not an HTTP method"),
        (
            "type: PathPrefix, value: /v1",
            "type: Exact, value: /v1",
            "ReplacePrefixMatch needs every match",
        ),
        (
            "hashOn: {header: x-user}",
            "hashOn: {}",
            "set exactly one of",
        ),
        (
            "policy: RingHash, hashOn: {header: x-user}",
            "policy: RingHash",
            "RingHash needs `hashOn`",
        ),
        (
            "address: \"127.0.0.1:9003\"",
            "address: \"localhost:9003\"",
            "is not IP:PORT",
        ),
        (
            "kind: Service\nmetadata: {name: echo2}",
            "kind: Service\nmetadata: {name: echo}",
            "duplicate Service `echo`",
        ),
        ("kind: Gateway", "kind: Gateway2", "unknown kind `Gateway2`"),
        (
            "backendRefs: [{name: echo, weight: 9}, {name: echo2}]",
            "backendRefs: []",
            "needs at least one backend",
        ),
    ];
    for (from, to, want) in cases {
        let bad = GOOD.replacen(from, to, 1);
        assert_ne!(bad, GOOD, "replacement {from:?} did not apply");
        let errs = errors_of(&bad);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:#?}"
        );
    }
}

#[test]
fn syntax_error_is_refused_whole() {
    let errs = errors_of("kind: Gateway\nmetadata: {name: [\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("f.yaml:"), "{errs:?}");
    assert!(errs[0].contains("YAML syntax"), "{errs:?}");
}

#[test]
fn empty_documents_are_ignored() {
    let c = parse("f.yaml", &format!("---\n{GOOD}\n---\n")).unwrap();
    assert_eq!(c.services.len(), 2);
}

const EDGE: &str = r#"
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - name: https
      address: "127.0.0.1:0"
      protocol: HTTPS
      tls: {certificates: [{certFile: certs/a.crt, keyFile: certs/a.key}]}
      limits: {maxConnections: 100, maxRequestBodyBytes: 1048576, headerReadTimeout: 5s}
    - {name: raw, address: "127.0.0.1:0", protocol: TCP}
    - {name: pass, address: "127.0.0.1:0", protocol: TLS, tls: {mode: Passthrough}}
---
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: edge, sectionName: https}]
  rules: [{backendRefs: [{name: app}]}]
---
kind: TCPRoute
metadata: {name: db}
spec:
  parentRefs: [{name: edge, sectionName: raw}]
  rules: [{backendRefs: [{name: app}]}]
---
kind: TLSRoute
metadata: {name: sni}
spec:
  parentRefs: [{name: edge, sectionName: pass}]
  hostnames: ["*.example.com"]
  rules: [{backendRefs: [{name: app}]}]
---
kind: Service
metadata: {name: app}
spec:
  endpoints: [{address: "127.0.0.1:9001"}]
  tls: {caFile: /etc/ca.pem, serverName: app.internal}
"#;

#[test]
fn edge_config_parses_with_defaults() {
    let c = parse("edge.yaml", EDGE).unwrap();
    let l = &c.gateways[0].spec.listeners;
    assert_eq!(l[0].protocol, ListenerProtocol::HTTPS);
    assert_eq!(l[0].limits.max_connections, 100);
    assert_eq!(l[0].limits.max_request_headers, 100, "default kept");
    assert_eq!(l[2].tls.as_ref().unwrap().mode, TlsMode::Passthrough);
    assert_eq!(c.tcp_routes.len(), 1);
    assert_eq!(c.tls_routes[0].spec.hostnames, ["*.example.com"]);
    // Relative certificate paths resolve against the file's directory.
    let mut c = c;
    c.base_dir = Some("/etc/weft".into());
    let files = c.referenced_files();
    assert!(files.contains(&"/etc/weft/certs/a.crt".into()), "{files:?}");
    assert!(files.contains(&"/etc/ca.pem".into()), "{files:?}");
}

#[test]
fn edge_rules_are_enforced() {
    let cases = [
        ("protocol: HTTPS\n", "protocol: HTTP\n", "takes no `tls`"),
        (
            "tls: {certificates: [{certFile: certs/a.crt, keyFile: certs/a.key}]}",
            "tls: {certificates: []}",
            "needs at least one certificate",
        ),
        (
            "protocol: TLS, tls: {mode: Passthrough}",
            "protocol: TLS",
            "needs `tls`",
        ),
        (
            "tls: {mode: Passthrough}",
            "tls: {mode: Passthrough, certificates: [{certFile: a, keyFile: b}]}",
            "never uses certificates",
        ),
        (
            "maxConnections: 100",
            "maxConnections: 0",
            "must be at least 1",
        ),
        (
            "headerReadTimeout: 5s",
            "maxRequestHeaderBytes: 100",
            "outside 8192..=1048576",
        ),
        (
            "parentRefs: [{name: edge, sectionName: raw}]",
            "parentRefs: [{name: edge, sectionName: https}]",
            "a TCPRoute cannot attach",
        ),
        (
            "parentRefs: [{name: edge, sectionName: https}]",
            "parentRefs: [{name: edge, sectionName: raw}]",
            "a HTTPRoute cannot attach",
        ),
        (
            "metadata: {name: db}\nspec:\n",
            "metadata: {name: db}\nspec:\n  hostnames: [a.example.com]\n",
            "a TCPRoute cannot match names",
        ),
        (
            "hostnames: [\"*.example.com\"]\n  rules: [{backendRefs: [{name: app}]}]",
            "hostnames: [\"*.example.com\"]\n  rules: [{backendRefs: [{name: ghost}]}]",
            "unknown Service `ghost`",
        ),
        (
            "serverName: app.internal",
            "serverName: \"a b\"",
            "serverName",
        ),
    ];
    for (from, to, want) in cases {
        let bad = EDGE.replacen(from, to, 1);
        assert_ne!(bad, EDGE, "replacement {from:?} did not apply");
        let errs = errors_of(&bad);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:#?}"
        );
    }
}

#[test]
fn resilience_settings_are_checked() {
    let with = |service: &str| {
        GOOD.replacen(
            "  connectTimeout: 500ms\n",
            &format!("  connectTimeout: 500ms\n{service}"),
            1,
        )
    };
    let ok = parse("r.yaml", &with("  retry: {attempts: 3, on: [connect-failure, gateway-error], statusCodes: [429], grpcCodes: [14]}\n  timeouts: {request: 2s, perTry: 500ms}\n  circuitBreaker: {maxRequests: 10}\n")).unwrap();
    let s = &ok.service("echo").unwrap().spec;
    assert_eq!(s.retry.attempts, 3);
    assert_eq!(s.retry.budget.ratio, 0.2, "budget on by default");
    assert_eq!(s.circuit_breaker.max_retries, 64);
    let cases = [
        ("  retry: {attempts: 11}\n", "over the maximum of 10"),
        (
            "  retry: {backoff: {base: 1s, max: 10ms}}\n",
            "needs 0 < base <= max",
        ),
        ("  retry: {budget: {ratio: 1.5}}\n", "outside 0..=1"),
        ("  retry: {grpcCodes: [20]}\n", "not a gRPC status code"),
        ("  retry: {statusCodes: [99]}\n", "not an HTTP status"),
        (
            "  retry: {on: [sometimes]}\n",
            "unknown variant `sometimes`",
        ),
        ("  timeouts: {request: 0s}\n", "must be greater than 0"),
        ("  circuitBreaker: {maxRetries: 0}\n", "must be at least 1"),
    ];
    for (service, want) in cases {
        let errs = errors_of(&with(service));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:#?}"
        );
    }
    let route = GOOD.replacen(
        "      backendRefs: [{name: echo, weight: 9}, {name: echo2}]\n",
        "      backendRefs: [{name: echo, weight: 9}, {name: echo2}]\n      timeouts: {backendRequest: 0ms}\n",
        1,
    );
    assert_ne!(route, GOOD);
    let errs = errors_of(&route);
    assert!(
        errs.iter()
            .any(|e| e.contains("timeouts.backendRequest: must be greater than 0")),
        "{errs:#?}"
    );
}

#[test]
fn rate_limits_and_faults_are_checked() {
    let rule = |extra: &str| {
        GOOD.replacen(
            "      backendRefs: [{name: echo, weight: 9}, {name: echo2}]\n",
            &format!("      backendRefs: [{{name: echo, weight: 9}}, {{name: echo2}}]\n{extra}"),
            1,
        )
    };
    assert!(parse("ok.yaml", &rule("      rateLimit: {requestsPerSecond: 10, key: {clientAddress: true}}\n      fault: {abort: {status: 503, percent: 1.5}}\n")).is_ok());
    for (extra, want) in [
        (
            "      rateLimit: {requestsPerSecond: 0}\n",
            "must be between 0.001",
        ),
        (
            "      rateLimit: {requestsPerSecond: 1e-20}\n",
            "must be between 0.001",
        ),
        (
            "      rateLimit: {requestsPerSecond: 1, key: {}}\n",
            "set exactly one of header, clientAddress",
        ),
        (
            "      rateLimit: {requestsPerSecond: 1, burst: 0}\n",
            "must be at least 1",
        ),
        (
            "      fault: {abort: {status: 503, percent: 101}}\n",
            "must be within 0..=100",
        ),
        (
            "      fault: {abort: {status: 42, percent: 1}}\n",
            "not a status to answer with",
        ),
    ] {
        let errs = errors_of(&rule(extra));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:#?}"
        );
    }
}

#[test]
fn health_checks_and_outlier_detection_are_checked() {
    let with = |service: &str| {
        GOOD.replacen(
            "  connectTimeout: 500ms\n",
            &format!("  connectTimeout: 500ms\n{service}"),
            1,
        )
    };
    let ok = parse(
        "ok.yaml",
        &with("  healthCheck: {http: {path: /healthz}, interval: 2s}\n  outlierDetection: {consecutive5xx: 3}\n"),
    )
    .unwrap();
    let s = &ok.service("echo").unwrap().spec;
    assert_eq!(s.health_check.as_ref().unwrap().unhealthy_threshold, 3);
    assert_eq!(s.outlier_detection.consecutive_5xx, 3);
    assert_eq!(s.outlier_detection.max_ejection_percent, 50);
    for (extra, want) in [
        (
            "  healthCheck: {http: {path: healthz}}\n",
            "is not a request path",
        ),
        ("  healthCheck: {interval: 1ms}\n", "must be at least 10ms"),
        (
            "  healthCheck: {healthyThreshold: 0}\n",
            "thresholds must be at least 1",
        ),
        (
            "  outlierDetection: {maxEjectionPercent: 101}\n",
            "is over 100",
        ),
        (
            "  outlierDetection: {baseEjectionTime: 10m}\n",
            "baseEjectionTime <= maxEjectionTime",
        ),
    ] {
        let errs = errors_of(&with(extra));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:#?}"
        );
    }
}

#[test]
fn request_mirror_needs_a_known_service() {
    let with = |mirror: &str| {
        GOOD.replacen(
            "    - filters:\n        - type: RequestRedirect",
            &format!("    - backendRefs: [{{name: echo}}]\n      filters: [{{type: RequestMirror, requestMirror: {mirror}}}]\n    - filters:\n        - type: RequestRedirect"),
            1,
        )
    };
    assert!(parse("ok.yaml", &with("{backendRef: {name: echo2}, percent: 10}")).is_ok());
    let errs = errors_of(&with("{backendRef: {name: ghost}}"));
    assert!(
        errs.iter().any(|e| e.contains("unknown Service `ghost`")),
        "{errs:#?}"
    );
    let errs = errors_of(&with("{backendRef: {name: echo2}, percent: 120}"));
    assert!(
        errs.iter().any(|e| e.contains("requestMirror.percent")),
        "{errs:#?}"
    );
}

#[test]
fn adaptive_concurrency_bounds_are_checked() {
    let with = |extra: &str| {
        GOOD.replacen(
            "  connectTimeout: 500ms\n",
            &format!("  connectTimeout: 500ms\n{extra}"),
            1,
        )
    };
    assert!(parse(
        "ok.yaml",
        &with("  adaptiveConcurrency: {initialLimit: 10}\n")
    )
    .is_ok());
    for (extra, want) in [
        (
            "  adaptiveConcurrency: {initialLimit: 10, minLimit: 20}\n",
            "minLimit <= initialLimit",
        ),
        (
            "  adaptiveConcurrency: {tolerance: 0.5}\n",
            "must be within 1..=10",
        ),
        (
            "  adaptiveConcurrency: {sampleCount: 0}\n",
            "must be at least 1",
        ),
    ] {
        let errs = errors_of(&with(extra));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{want:?} not in {errs:#?}"
        );
    }
}

#[test]
fn the_examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // Mesh resources are checked against a control plane, with the services they
            // name registered (crates/weft-cli/tests/docs.rs).
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("kind: Intention") || text.contains("kind: Service, name:") {
                continue;
            }
            load_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "examples found: {n}");
}

#[test]
fn mesh_and_intentions_parse_with_defaults_and_precedence() {
    let c = parse(
        "f.yaml",
        "kind: Mesh\nmetadata: {name: mesh}\nspec: {mtls: {mode: permissive}}\n---\n\
         kind: Intention\nmetadata: {name: web-db}\nspec: {source: web, destination: db, action: allow}\n---\n\
         kind: Intention\nmetadata: {name: any-db}\nspec:\n  source: '*'\n  destination: db\n  permissions:\n  \
         - action: allow\n    http: {path: {type: PathPrefix, value: /public}, methods: [GET]}\n",
    )
    .unwrap();
    let mesh = c.mesh();
    assert_eq!(mesh.mtls.mode, MtlsMode::Permissive);
    assert_eq!(mesh.default_action, Action::Deny, "deny by default");
    assert_eq!(c.intentions[0].spec.precedence(), 3);
    assert_eq!(c.intentions[1].spec.precedence(), 2);
    assert!(c.intentions[1].spec.applies(None, "db"));
    assert!(!c.intentions[0].spec.applies(None, "db"));
    // No Mesh resource: strict and deny.
    let c = parse("f.yaml", "").unwrap();
    assert_eq!(c.mesh().mtls.mode, MtlsMode::Strict);
    assert_eq!(c.mesh().default_action, Action::Deny);
}

#[test]
fn bad_mesh_and_intentions_are_refused_with_their_field() {
    let errors = errors_of(
        "kind: Mesh\nmetadata: {name: main}\nspec: {}\n---\n\
         kind: Intention\nmetadata: {name: a}\nspec: {source: Web, destination: db, action: allow}\n---\n\
         kind: Intention\nmetadata: {name: b}\nspec: {source: web, destination: db}\n---\n\
         kind: Intention\nmetadata: {name: c}\nspec:\n  source: web\n  destination: db\n  action: deny\n  \
         permissions: [{action: allow}]\n---\n\
         kind: Intention\nmetadata: {name: d}\nspec:\n  source: web\n  destination: db\n  permissions:\n  \
         - action: allow\n    http: {methods: [get], path: {type: RegularExpression, value: '('}}\n",
    );
    let all = errors.join("\n");
    for expected in [
        "Mesh/main: metadata.name: the Mesh resource is named `mesh`",
        "Intention/a: spec.source: `Web` is neither a service name nor `*`",
        "Intention/b: spec: needs `action` (allow or deny) or `permissions`",
        "Intention/c: spec.permissions: give either `action`",
        "Intention/d: spec.permissions[0].http.methods[0]: `get` is not an HTTP method",
        "Intention/d: spec.permissions[0].http.path.value: invalid regular expression",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(
        errors_of("kind: Mesh\nmetadata: {name: mesh}\nspec: {mtls: {mode: off}}\n")
            .join("\n")
            .contains("unknown variant `off`")
    );
}

#[test]
fn intention_precedence_more_specific_wins_and_deny_wins_ties() {
    let c = parse(
        "f.yaml",
        "kind: Intention\nmetadata: {name: all-deny}\nspec: {source: '*', destination: '*', action: deny}\n---\n\
         kind: Intention\nmetadata: {name: any-db}\nspec: {source: '*', destination: db, action: allow}\n---\n\
         kind: Intention\nmetadata: {name: web-db}\nspec: {source: web, destination: db, action: deny}\n---\n\
         kind: Intention\nmetadata: {name: web-db-2}\nspec: {source: web, destination: db, action: allow}\n---\n\
         kind: Intention\nmetadata: {name: api-db}\nspec:\n  source: api\n  destination: db\n  permissions:\n  \
         - {action: allow, http: {methods: [GET]}}\n",
    )
    .unwrap();
    let all: Vec<_> = c.intentions.iter().collect();
    let decide = |src: Option<&str>, dst: &str, m: Option<&dyn Fn(usize, usize) -> bool>| {
        decide(&all, Action::Allow, src, dst, m).map(|v| (v.action, v.reason.to_string()))
    };
    // web → db: two exact intentions, deny wins the tie.
    assert_eq!(
        decide(Some("web"), "db", None),
        Some((Action::Deny, "intention web-db".into()))
    );
    // cache → db: `*` → db (more specific than `*` → `*`).
    assert_eq!(
        decide(Some("cache"), "db", None),
        Some((Action::Allow, "intention any-db".into()))
    );
    // No identity: only `*` intentions apply; their denies count, their allows not
    // (any-db is not `unauthenticated`): the default decides.
    let (action, reason) = decide(None, "db", None).unwrap();
    assert_eq!(action, Action::Allow);
    assert!(
        reason.starts_with("intention any-db allows only callers with a mesh identity"),
        "{reason}"
    );
    assert_eq!(decide(None, "queue", None).unwrap().0, Action::Deny);
    // api → db is L7: undecided per connection, decided per request; no matching
    // permission falls to the mesh default (allow here), not to `*` → db.
    assert_eq!(decide(Some("api"), "db", None), None);
    let get = |_: usize, _: usize| true;
    let post = |_: usize, _: usize| false;
    assert_eq!(
        decide(Some("api"), "db", Some(&get)),
        Some((Action::Allow, "intention api-db permission 0".into()))
    );
    assert_eq!(
        decide(Some("api"), "db", Some(&post)),
        Some((
            Action::Allow,
            "no permission matched; Mesh/mesh spec.defaultAction: allow".into()
        ))
    );
    let none: Vec<&Resource<IntentionSpec>> = Vec::new();
    assert_eq!(
        weft_model_decide_default(&none),
        (
            Action::Deny,
            "no intention applies; Mesh/mesh spec.defaultAction: deny".to_string()
        )
    );
}

fn weft_model_decide_default(none: &[&Resource<IntentionSpec>]) -> (Action, String) {
    let v = decide(none, Action::Deny, Some("a"), "b", None).unwrap();
    (v.action, v.reason.to_string())
}

#[test]
fn a_star_allow_admits_callers_without_identity_only_when_it_says_so() {
    let config = |unauth: &str| {
        parse(
            "f.yaml",
            &format!(
                "kind: Intention\nmetadata: {{name: any-db}}\nspec: {{source: '*', destination: db, action: allow{unauth}}}\n"
            ),
        )
        .unwrap()
    };
    let strict = config("");
    let all: Vec<_> = strict.intentions.iter().collect();
    let v = decide(&all, Action::Deny, None, "db", None).unwrap();
    assert_eq!(v.action, Action::Deny, "{v:?}");
    assert_eq!(
        decide(&all, Action::Deny, Some("web"), "db", None)
            .unwrap()
            .action,
        Action::Allow
    );
    let open = config(", unauthenticated: true");
    let all: Vec<_> = open.intentions.iter().collect();
    assert_eq!(
        decide(&all, Action::Deny, None, "db", None).unwrap().action,
        Action::Allow
    );
    let errs = errors_of(
        "kind: Intention\nmetadata: {name: x}\nspec: {source: web, destination: db, action: allow, unauthenticated: true}\n",
    );
    assert!(errs.join("\n").contains("spec.unauthenticated"), "{errs:?}");
}

const SUBSETS: &str = r#"
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - {name: web, address: "127.0.0.1:0"}
---
kind: HTTPRoute
metadata: {name: canary}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  rules:
    - backendRefs: [{name: pay, subset: stable, weight: 90}, {name: pay, subset: canary, weight: 10}]
---
kind: Service
metadata: {name: pay}
spec:
  subsets:
    stable: {version: v1}
    canary: {version: v2}
  endpoints:
    - {address: "127.0.0.1:9001", metadata: {version: v1}}
    - {address: "127.0.0.1:9002", metadata: {version: v2, zone: a}}
"#;

#[test]
fn subsets_select_endpoints_by_their_labels() {
    let c = parse("s.yaml", SUBSETS).unwrap();
    let pay = c.service("pay").unwrap();
    let canary = &pay.spec.subsets["canary"];
    let picked: Vec<&str> = pay
        .spec
        .endpoints
        .iter()
        .filter(|e| e.matches(canary))
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(picked, ["127.0.0.1:9002"]);
    let b = &c.routes[0].spec.rules[0].backend_refs[1];
    assert_eq!(b.upstream(), "pay#canary");
    assert_eq!(
        c.routes[0].spec.rules[0].backend_refs[0].upstream(),
        "pay#stable"
    );
}

#[test]
fn a_subset_must_exist_and_select_by_something() {
    let errs = errors_of(&SUBSETS.replace("subset: canary, weight", "subset: v3, weight"));
    assert_eq!(
        errs,
        ["s.yaml:13: HTTPRoute/canary: spec.rules[0].backendRefs[1].subset: Service `pay` has no subset `v3` (it has: canary, stable)"
            .replace("s.yaml", "f.yaml")],
    );
    let errs = errors_of(&SUBSETS.replace("canary: {version: v2}", "canary: {}"));
    assert!(
        errs.len() == 1 && errs[0].contains("spec.subsets.canary: selects by no label"),
        "{errs:#?}"
    );
    let errs = errors_of(&SUBSETS.replace("canary: {version: v2}", "Canary_1: {version: v2}"));
    assert!(
        errs.iter().any(|e| e.contains("subset name `Canary_1`")),
        "{errs:#?}"
    );
    // A service with no subsets at all says so.
    let errs = errors_of(&SUBSETS.replace(
        "  subsets:\n    stable: {version: v1}\n    canary: {version: v2}\n",
        "",
    ));
    assert!(
        errs.len() == 2 && errs.iter().all(|e| e.contains("defines no subsets")),
        "{errs:#?}"
    );
}
