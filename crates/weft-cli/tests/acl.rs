//! ACL tokens on the control plane: real server, real CLI, curl for raw API calls.

use std::path::PathBuf;
use std::time::Duration;

use weft_testkit::mesh::{server, sidecar, token_for, weft_cli, Server};
use weft_testkit::{curl, echo, eventually, metric_value, CurlOut};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// A raw API call with `token` (or none).
fn call(s: &Server, token: Option<&str>, method: &str, path: &str, body: &str) -> CurlOut {
    let mut args = vec![
        "-X".to_string(),
        method.into(),
        "-H".into(),
        "content-type: application/json".into(),
    ];
    if let Some(t) = token {
        args.extend(["-H".into(), format!("x-weft-token: {t}")]);
    }
    if !body.is_empty() {
        args.extend(["--data-binary".into(), body.into()]);
    }
    args.push(format!("{}{path}", s.url()));
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn code(r: &CurlOut) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

/// `weft acl create ARGS` with the management token: (accessor, secret).
fn create(s: &Server, args: &[&str]) -> (String, String) {
    let mut all = vec!["acl", "create", "--server"];
    let url = s.url();
    all.push(&url);
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

#[test]
fn the_api_refuses_missing_unknown_and_insufficient_tokens() {
    let s = server(&weft());
    let admin = token_for(&s.url()).expect("bootstrapped");

    let r = call(&s, None, "GET", "/v1/config", "");
    assert_eq!(
        (r.status, code(&r).as_str()),
        (401, "acl-token-missing"),
        "{}",
        r.body
    );
    let r = call(&s, Some("0123456789abcdef"), "GET", "/v1/config", "");
    assert_eq!((r.status, code(&r).as_str()), (401, "acl-token-invalid"));
    assert_eq!(call(&s, Some(&admin), "GET", "/v1/config", "").status, 200);
    let r = call(&s, None, "POST", "/v1/acl/bootstrap", "");
    assert_eq!((r.status, code(&r).as_str()), (409, "acl-bootstrapped"));

    // Read-only: reads, cannot write configuration, KV, or manage tokens.
    let (ro_id, ro) = create(&s, &["--rule", "operator:read", "--description", "auditor"]);
    assert_eq!(call(&s, Some(&ro), "GET", "/v1/config", "").status, 200);
    assert_eq!(call(&s, Some(&ro), "GET", "/v1/proxies", "").status, 200);
    let svc = "kind: Service\nmetadata: {name: api}\nspec: {}\n";
    let r = call(&s, Some(&ro), "POST", "/v1/config", svc);
    assert_eq!(
        (r.status, code(&r).as_str()),
        (403, "permission-denied"),
        "{}",
        r.body
    );
    assert!(r.body.contains("operator:write"), "{}", r.body);
    assert_eq!(call(&s, Some(&ro), "PUT", "/v1/kv/app/x", "1").status, 403);
    assert_eq!(call(&s, Some(&ro), "GET", "/v1/acl/tokens", "").status, 403);
    assert_eq!(
        call(&s, Some(&admin), "GET", "/v1/config/Service/api", "").status,
        404
    );

    // KV by prefix.
    let (_, kv) = create(&s, &["--rule", "kv:app/:write"]);
    assert_eq!(
        call(&s, Some(&kv), "PUT", "/v1/kv/app/flag", "on").status,
        200
    );
    assert_eq!(
        call(&s, Some(&kv), "GET", "/v1/kv/app/flag", "").status,
        200
    );
    assert_eq!(call(&s, Some(&kv), "PUT", "/v1/kv/other", "x").status, 403);
    assert_eq!(call(&s, Some(&kv), "GET", "/v1/config", "").status, 403);

    // Intentions, and nothing else.
    let (_, it) = create(&s, &["--rule", "intentions:write"]);
    let intention = "kind: Intention\nmetadata: {name: a-b}\nspec: {source: a, destination: b, action: allow}\n";
    assert_eq!(
        call(&s, Some(&it), "POST", "/v1/config", intention).status,
        200
    );
    assert_eq!(call(&s, Some(&it), "POST", "/v1/config", svc).status, 403);
    let both = format!("{intention}---\n{svc}");
    assert_eq!(
        call(&s, Some(&it), "POST", "/v1/config", &both).status,
        403,
        "no smuggling"
    );

    // Bad rules are refused with the reason.
    let (ok, _, err) = weft_cli(
        &weft(),
        &[
            "acl",
            "create",
            "--rule",
            "service:web",
            "--server",
            &s.url(),
        ],
    );
    assert!(!ok && err.contains("invalid-rule"), "{err}");

    // Lists never show secrets; revocation takes effect.
    let list = call(&s, Some(&admin), "GET", "/v1/acl/tokens", "");
    assert!(list.body.contains(&ro_id) && list.body.contains("auditor"));
    for secret in [&admin, &ro, &kv, &it] {
        assert!(
            !list.body.contains(secret.as_str()),
            "a secret in the token list"
        );
    }
    assert!(!list.body.contains("secretHash"));
    let (ok, out, err) = weft_cli(&weft(), &["acl", "revoke", &ro_id, "--server", &s.url()]);
    assert!(ok, "{out}{err}");
    let r = call(&s, Some(&ro), "GET", "/v1/config", "");
    assert_eq!((r.status, code(&r).as_str()), (401, "acl-token-invalid"));
}

#[test]
fn a_service_token_registers_and_gets_certificates_only_for_its_own_service() {
    let s = server(&weft());
    let (_, a) = create(&s, &["--service", "a"]);
    let reg = |svc: &str, id: &str, port: u16| {
        format!(r#"{{"service": "{svc}", "id": "{id}", "address": "127.0.0.1", "port": {port}}}"#)
    };
    let r = call(
        &s,
        Some(&a),
        "POST",
        "/v1/catalog/register",
        &reg("b", "b-x", 9),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        &s,
        Some(&a),
        "POST",
        "/v1/catalog/register",
        &reg("a", "a-1", 9),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a_lease = r.json()["lease"].as_u64().expect("lease");

    let (csr, _key) = weft_tls::ca::new_csr("x").expect("csr");
    let sign = |svc: &str| {
        let body = serde_json::json!({"service": svc, "csr": csr}).to_string();
        call(&s, Some(&a), "POST", "/v1/ca/sign", &body)
    };
    assert_eq!(sign("b").status, 403, "no certificate for b");
    let ok = sign("a");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["spiffeId"], "spiffe://weft.local/svc/a");

    // b's instance, registered by an operator: a's token cannot keep it alive or remove it.
    let admin = token_for(&s.url()).expect("admin");
    let r = call(
        &s,
        Some(&admin),
        "POST",
        "/v1/catalog/register",
        &reg("b", "b-1", 9),
    );
    let b_lease = r.json()["lease"].as_u64().expect("lease");
    let renew = |lease: u64, svc: &str| {
        call(
            &s,
            Some(&a),
            "PUT",
            &format!("/v1/catalog/leases/{lease}/renew?service={svc}"),
            "",
        )
        .status
    };
    assert_eq!(renew(b_lease, "b"), 403);
    assert_eq!(renew(b_lease, "a"), 403, "a lease of b passed off as a's");
    assert_eq!(renew(a_lease, "a"), 200);
    let r = call(
        &s,
        Some(&a),
        "DELETE",
        "/v1/catalog/services/b/instances/b-1",
        "",
    );
    assert_eq!(r.status, 403);
    let r = call(
        &s,
        Some(&a),
        "PUT",
        "/v1/catalog/services/b/instances/b-1/health",
        r#"{"status": "critical"}"#,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn a_sidecar_runs_on_its_service_token_and_stops_following_when_it_is_revoked() {
    let s = server(&weft());
    let (a_id, a) = create(&s, &["--service", "a"]);
    let app = echo(&weft(), "a-1", &[]);
    let side = sidecar(
        &weft(),
        &s.url(),
        "a",
        "a-1",
        app.addr,
        &[
            "--token",
            &a,
            "--admin",
            "127.0.0.1:0",
            "--upstream",
            "b=127.0.0.1:0",
        ],
    );
    side.wait_synced();
    let admin_addr = side.proc.ready["admin"]
        .as_str()
        .expect("admin")
        .to_string();
    let connected = || {
        let m = curl(&[&format!("http://{admin_addr}/metrics")]).body;
        metric_value(&m, "weft_discovery_connected")
    };
    assert_eq!(connected(), Some(1.0));
    // Registered under its own token.
    let admin = token_for(&s.url()).expect("admin");
    let r = call(&s, Some(&admin), "GET", "/v1/catalog/services/a", "");
    assert!(r.body.contains("a-1"), "{}", r.body);

    let (ok, out, err) = weft_cli(&weft(), &["acl", "revoke", &a_id, "--server", &s.url()]);
    assert!(ok, "{out}{err}");
    eventually("the stream ended", Duration::from_secs(10), || {
        (connected() == Some(0.0)).then_some(())
    });
    // And it stays ended: the server refuses the token on reconnection.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(connected(), Some(0.0));
    let log = side.proc.stderr();
    assert!(
        log.contains("revoked") || log.contains("unknown or revoked"),
        "{log}"
    );
}
