//! Zero trust between sidecars: mutual TLS with SPIFFE identities from the control
//! plane's CA, intentions, certificate rotation. Real binaries, real sockets, curl.

use std::path::PathBuf;
use std::time::Duration;

use weft_testkit::mesh::{
    allow_all, echo_name as who, server, server_with, weft_cli, Instance, LoadLoop, Server,
};
use weft_testkit::{curl, eventually, metric_value, temp_dir};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn instance(server: &Server, service: &str, id: &str, extra: &[&str]) -> Instance {
    weft_testkit::mesh::instance(&weft(), server, service, id, extra)
}

fn write_pair(name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert).expect("write");
    std::fs::write(&k, key).expect("write");
    (c, k)
}

/// curl to a sidecar's inbound listener presenting `cert` (or none); the server's own
/// certificate is not checked here (-k): what is tested is what the sidecar accepts.
fn call_inbound(
    inbound: std::net::SocketAddr,
    cert: Option<&(PathBuf, PathBuf)>,
) -> weft_testkit::CurlOut {
    let url = format!("https://{inbound}/headers");
    let mut args = vec!["-k".to_string(), "--max-time".into(), "5".into()];
    if let Some((c, k)) = cert {
        args.extend([
            "--cert".into(),
            c.display().to_string(),
            "--key".into(),
            k.display().to_string(),
        ]);
    }
    args.push(url);
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_strict_inbound_takes_only_mesh_certificates_and_tells_the_app_who_called() {
    let s = server_with(&weft(), &["--cert-ttl", "10s"]);
    allow_all(&weft(), &s);
    let b = instance(&s, "b", "b-1", &[]);
    let inbound = b.sidecar.listener("inbound");

    // The control: a certificate from the mesh CA for service `a` is accepted, and the
    // app learns the caller's verified identity (a spoofed header is replaced).
    let a_cert = mesh_cert(&s, "a");
    let ok = curl(&[
        "-k",
        "--cert",
        &a_cert.0.display().to_string(),
        "--key",
        &a_cert.1.display().to_string(),
        "-H",
        "x-weft-source-identity: spiffe://weft.local/svc/admin",
        &format!("https://{inbound}/headers"),
    ]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen: serde_json::Value = serde_json::from_str(&ok.body).expect("json");
    assert_eq!(
        seen["headers"]["x-weft-source-identity"], "spiffe://weft.local/svc/a",
        "{}",
        ok.body
    );

    // Plaintext is refused.
    let plain = curl(&["--max-time", "5", &format!("http://{inbound}/headers")]);
    assert_eq!(plain.status, 0, "plaintext answered: {}", plain.body);
    // TLS without a client certificate is refused.
    assert_eq!(call_inbound(inbound, None).status, 0);
    // A certificate for the right identity from another CA is refused.
    let (root, root_key) =
        weft_tls::ca::new_root("weft.local", Duration::from_secs(3600)).expect("root");
    let other = weft_tls::ca::Signer::new(&root, &root_key).expect("signer");
    let (csr, key) = weft_tls::ca::new_csr("a").expect("csr");
    let forged = other
        .sign(&csr, "spiffe://weft.local/svc/a", Duration::from_secs(600))
        .expect("sign");
    let forged = write_pair("forged", &forged, &key);
    assert_eq!(call_inbound(inbound, Some(&forged)).status, 0);
    // A certificate from another trust domain (its own CA) is refused.
    let (root, root_key) =
        weft_tls::ca::new_root("other.example", Duration::from_secs(3600)).expect("root");
    let foreign = weft_tls::ca::Signer::new(&root, &root_key)
        .expect("signer")
        .sign(
            &csr,
            "spiffe://other.example/svc/a",
            Duration::from_secs(600),
        )
        .expect("sign");
    let foreign = write_pair("foreign", &foreign, &key);
    assert_eq!(call_inbound(inbound, Some(&foreign)).status, 0);
    // Our CA's certificate, once expired (TTL 10 s), is refused.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(call_inbound(inbound, Some(&a_cert)).status, 0);
    let fresh = mesh_cert(&s, "a");
    assert_eq!(call_inbound(inbound, Some(&fresh)).status, 200);

    // Nothing of this printed or served a private key (the CA's stays in the store).
    for log in [b.sidecar.proc.stderr(), s.proc.stderr()] {
        assert!(!log.contains("PRIVATE KEY"), "a key in a log:\n{log}");
    }
    for path in [
        "/v1/ca/roots",
        "/v1/config",
        "/v1/kv?prefix=",
        "/v1/catalog/services/b",
    ] {
        let token = weft_testkit::mesh::token_for(&s.url()).unwrap_or_default();
        let r = curl(&[
            "-H",
            &format!("x-weft-token: {token}"),
            &format!("{}{path}", s.url()),
        ]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(!r.body.contains("PRIVATE KEY"), "{path} served a key");
    }
}

#[test]
fn intentions_decide_who_may_call_with_precedence_and_apply_to_open_connections() {
    let s = server(&weft());
    let b = instance(&s, "b", "b-1", &["--admin", "127.0.0.1:0"]);
    let a = instance(&s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let c = instance(&s, "c", "c-1", &["--upstream", "b=127.0.0.1:0"]);
    let (a_out, c_out) = (a.sidecar.listener("out-b"), c.sidecar.listener("out-b"));
    let denied = |addr: std::net::SocketAddr| {
        let r = curl(&[&format!("http://{addr}/hello")]);
        r.status == 403 && r.header("x-weft-error") == Some("denied-by-intention")
    };
    // Nothing allows a → b: denied by default, with a valid certificate.
    assert!(denied(a_out));
    let check = |src: &str, extra: &[&str]| {
        let mut args = vec!["intention", "check", src, "b", "--server"];
        let url = s.url();
        args.push(&url);
        args.extend(extra);
        weft_cli(&weft(), &args)
    };
    let (ok, out, _) = check("a", &[]);
    assert!(
        !ok && out.contains("denied") && out.contains("Mesh/mesh spec.defaultAction: deny"),
        "{out}"
    );
    // Counted and logged by b's sidecar.
    let admin = b.sidecar.proc.ready["admin"]
        .as_str()
        .expect("admin")
        .to_string();
    let metrics = curl(&[&format!("http://{admin}/metrics")]).body;
    let denials = metric_value(
        &metrics,
        "weft_local_replies_total{listener=\"sidecar/inbound\",reason=\"denied-by-intention\"}",
    );
    assert!(denials.is_some_and(|n| n >= 1.0), "{metrics}");
    eventually("the denial is logged", Duration::from_secs(5), || {
        let log = b.sidecar.proc.stderr();
        (log.contains("request denied by intention") && log.contains("source=a")).then_some(())
    });

    // `*` → b allows everyone; the open connection a → b follows.
    apply(&s, "kind: Intention\nmetadata: {name: any-b}\nspec: {source: '*', destination: b, action: allow}\n");
    eventually("a → b allowed", Duration::from_secs(10), || {
        (who(a_out).ok()? == "b-1").then_some(())
    });
    assert_eq!(who(c_out).unwrap(), "b-1");
    // A more specific deny for c wins over `*`.
    apply(
        &s,
        "kind: Intention\nmetadata: {name: c-b}\nspec: {source: c, destination: b, action: deny}\n",
    );
    eventually("c → b denied", Duration::from_secs(10), || {
        denied(c_out).then_some(())
    });
    assert_eq!(who(a_out).unwrap(), "b-1");
    let (ok, out, _) = check("c", &[]);
    assert!(!ok && out.contains("intention c-b"), "{out}");

    // L7: a may only GET /hello; an equally specific deny beats an allow.
    apply(
        &s,
        "kind: Intention\nmetadata: {name: a-b}\nspec:\n  source: a\n  destination: b\n  permissions:\n  \
         - {action: allow, http: {path: {type: Exact, value: /hello}, methods: [GET]}}\n  \
         - {action: deny, http: {}}\n",
    );
    eventually("a → b POST denied", Duration::from_secs(10), || {
        let r = curl(&["-X", "POST", &format!("http://{a_out}/hello")]);
        (r.status == 403).then_some(())
    });
    assert_eq!(who(a_out).unwrap(), "b-1", "GET /hello still allowed");
    assert!(denied_path(a_out, "/other"));
    let (ok, out, _) = check("a", &["--path", "/hello", "--method", "GET"]);
    assert!(ok && out.contains("intention a-b permission 0"), "{out}");
    let (ok, out, _) = check("a", &["--path", "/x/../other", "--method", "GET"]);
    assert!(!ok && out.contains("permission 1"), "{out}");
    apply(&s, "kind: Intention\nmetadata: {name: a-b-2}\nspec: {source: a, destination: b, action: deny}\n");
    eventually("a → b denied by the tie", Duration::from_secs(10), || {
        denied(a_out).then_some(())
    });
}

fn denied_path(addr: std::net::SocketAddr, path: &str) -> bool {
    curl(&[&format!("http://{addr}{path}")]).status == 403
}

#[test]
fn leaf_rotation_every_10s_and_a_root_rotation_under_load_fail_no_request() {
    let s = server_with(&weft(), &["--cert-ttl", "15s"]);
    allow_all(&weft(), &s);
    let b = instance(&s, "b", "b-1", &["--admin", "127.0.0.1:0"]);
    let a = instance(
        &s,
        "a",
        "a-1",
        &["--upstream", "b=127.0.0.1:0", "--admin", "127.0.0.1:0"],
    );
    let out = a.sidecar.listener("out-b");
    eventually("b answers", Duration::from_secs(10), || {
        (who(out).ok()? == "b-1").then_some(())
    });
    let load = LoadLoop::start(out);
    // A 15 s certificate is renewed at about 10 s.
    std::thread::sleep(Duration::from_secs(12));
    // The root rotates: both roots are trusted, leaves are reissued under the new one,
    // and the old root leaves the bundle once its last leaf has expired (TTL + 10 s).
    let roots = |s: &Server| -> serde_json::Value {
        serde_json::from_str(&curl(&[&format!("{}/v1/ca/roots", s.url())]).body).expect("roots")
    };
    let old = roots(&s)["active"].as_str().expect("active").to_string();
    let (ok, out_text, err) = weft_cli(&weft(), &["ca", "rotate", "--server", &s.url()]);
    assert!(ok, "{out_text}{err}");
    let after = roots(&s);
    assert_eq!(after["roots"].as_array().map(Vec::len), Some(2), "{after}");
    let new = after["active"].as_str().expect("active").to_string();
    assert_ne!(new, old);
    eventually(
        "the old root left the bundle",
        Duration::from_secs(60),
        || {
            let r = roots(&s);
            (r["roots"].as_array().map(Vec::len) == Some(1)).then_some(())
        },
    );
    assert_eq!(roots(&s)["roots"][0]["id"], new.as_str());
    // Traffic goes on under the new root alone.
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failures) = load.finish();
    assert!(ok > 100, "load ran: {ok}");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for side in [&a, &b] {
        let admin = side.sidecar.proc.ready["admin"]
            .as_str()
            .expect("admin address");
        let metrics = curl(&[&format!("http://{admin}/metrics")]).body;
        let renewed = metric_value(
            &metrics,
            "weft_mesh_certificate_renewals_total{result=\"success\"}",
        )
        .unwrap_or(0.0);
        assert!(renewed >= 2.0, "renewals: {renewed}\n{metrics}");
        let left = metric_value(&metrics, "weft_mesh_certificate_expiry_seconds").expect("expiry");
        assert!(left > 0.0 && left <= 15.0, "{left}");
    }
}

#[test]
fn a_tls_scan_of_a_sidecar_inbound_finds_only_tls_1_2_and_1_3_with_strong_suites() {
    let testssl = weft_testkit::require("testssl");
    let s = server(&weft());
    let b = instance(&s, "b", "b-1", &[]);
    let inbound = b.sidecar.listener("inbound");
    let report = temp_dir().join("scan.json");
    let out = std::process::Command::new(testssl)
        .args(["--quiet", "--warnings", "off", "-p", "-E", "--jsonfile"])
        .arg(&report)
        .arg(inbound.to_string())
        .output()
        .expect("run testssl");
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("report JSON");
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("{id} not in the report:\n{text}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(finding(old), "not offered", "{old}");
    }
    assert!(finding("TLS1_2").starts_with("offered"));
    assert!(finding("TLS1_3").starts_with("offered"));
    let suites: Vec<String> = findings
        .iter()
        .filter(|f| f["id"].as_str().is_some_and(|id| id.starts_with("cipher-")))
        .filter_map(|f| f["finding"].as_str().map(str::to_string))
        .collect();
    assert!(suites.len() >= 3, "the scan listed the suites: {suites:?}");
    for s in &suites {
        let aead = s.contains("GCM") || s.contains("CHACHA20");
        let forward_secret = s.contains("ECDHE") || s.starts_with("TLS 1.3");
        let weak = ["CBC", "RC4", "3DES", "NULL", "EXPORT", "SHA1"]
            .iter()
            .any(|w| s.contains(w));
        assert!(aead && forward_secret && !weak, "weak suite offered: {s}");
    }
}

#[test]
fn permissive_mode_takes_plaintext_without_an_identity_and_a_service_can_insist() {
    let s = server(&weft());
    let b = instance(&s, "b", "b-1", &[]);
    let inbound = b.sidecar.listener("inbound");
    let plain = || curl(&["--max-time", "5", &format!("http://{inbound}/headers")]);
    assert_eq!(plain().status, 0, "strict by default");
    apply(
        &s,
        "kind: Mesh\nmetadata: {name: mesh}\nspec: {mtls: {mode: permissive}}\n",
    );
    // A plaintext caller has no identity: only `*` intentions apply, and none exists yet.
    eventually(
        "plaintext served (and denied)",
        Duration::from_secs(10),
        || (plain().status == 403).then_some(()),
    );
    // `*` means any caller with a mesh identity: an allow from `*` does not admit a
    // caller without one (a mesh certificate is accepted at once, plaintext stays denied)...
    apply(&s, "kind: Intention\nmetadata: {name: any-b}\nspec: {source: '*', destination: b, action: allow}\n");
    let cert = mesh_cert(&s, "a");
    eventually(
        "a certificate holder allowed",
        Duration::from_secs(10),
        || (call_inbound(inbound, Some(&cert)).status == 200).then_some(()),
    );
    assert_eq!(
        plain().status,
        403,
        "a `*` allow admitted a caller without an identity"
    );
    let (ok, out, _) = weft_cli(
        &weft(),
        &["intention", "check", "-", "b", "--server", &s.url()],
    );
    assert!(
        !ok && out.contains("allows only callers with a mesh identity"),
        "{out}"
    );
    // ...unless it says so.
    apply(&s, "kind: Intention\nmetadata: {name: any-b}\nspec: {source: '*', destination: b, action: allow, unauthenticated: true}\n");
    eventually("plaintext allowed", Duration::from_secs(10), || {
        let r = plain();
        (r.status == 200).then_some(r)
    });
    let r = plain();
    assert!(!r.body.contains("x-weft-source-identity"), "{}", r.body);
    // Mutual TLS still works beside it.
    assert_eq!(call_inbound(inbound, Some(&cert)).status, 200);
    // The service insists on strict for itself.
    apply(
        &s,
        "kind: Service\nmetadata: {name: b}\nspec: {mtls: {mode: strict}}\n",
    );
    eventually("plaintext refused again", Duration::from_secs(10), || {
        (plain().status == 0).then_some(())
    });
}

#[test]
fn the_api_and_the_discovery_stream_run_over_tls_verified_by_the_mesh_ca() {
    let s = server_with(&weft(), &["--tls", "on"]);
    let url = s.url();
    assert!(url.starts_with("https://"), "{url}");
    let ca = s.ca_file.clone().expect("the server wrote its CA file");
    let port = s.addr.port();

    // curl verifies the API's certificate with the mesh CA.
    let r = curl(&[
        "--cacert",
        &ca.display().to_string(),
        &format!("https://localhost:{port}/v1/ca/roots"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = curl(&[
        "--cacert",
        &ca.display().to_string(),
        &format!("https://127.0.0.1:{port}/v1/openapi.json"),
    ]);
    assert_eq!(r.status, 200, "the certificate covers 127.0.0.1 too");
    // Plaintext to the TLS port gets nothing.
    let r = curl(&[
        "--max-time",
        "5",
        &format!("http://127.0.0.1:{port}/v1/status"),
    ]);
    assert_ne!(r.status, 200);
    // The CLI needs the CA, and says so; a wrong CA fails the handshake.
    let out = std::process::Command::new(weft())
        .args(["status", "--server", &url])
        .env_remove("WEFT_CA_FILE")
        .env(
            "WEFT_TOKEN",
            weft_testkit::mesh::token_for(&url).expect("token"),
        )
        .output()
        .expect("weft status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--ca-file"), "{err}");
    let (root, _) = weft_tls::ca::new_root("weft.local", Duration::from_secs(3600)).expect("root");
    let wrong = temp_dir().join("wrong-ca.pem");
    std::fs::write(&wrong, root).expect("write");
    let out = std::process::Command::new(weft())
        .args([
            "status",
            "--server",
            &url,
            "--ca-file",
            &wrong.display().to_string(),
        ])
        .output()
        .expect("weft status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("TLS"), "{err}");
    let (ok, out, err) = weft_cli(&weft(), &["status", "--server", &url]);
    assert!(ok, "{out}{err}");

    // Sidecars register, get certificates and follow the discovery stream over TLS.
    allow_all(&weft(), &s);
    let _b = instance(&s, "b", "b-1", &[]);
    let a = instance(&s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let out_b = a.sidecar.listener("out-b");
    eventually("a → b over the mesh", Duration::from_secs(10), || {
        (who(out_b).ok()? == "b-1").then_some(())
    });
}

#[test]
fn an_edge_gateway_calls_mesh_services_as_itself_over_mutual_tls() {
    let s = server(&weft());
    let _b = instance(&s, "b", "b-1", &[]);
    let file = temp_dir().join("edge.yaml");
    std::fs::write(
        &file,
        "kind: Gateway\nmetadata: {name: edge}\nspec:\n  listeners: [{name: web, address: 127.0.0.1:0, protocol: HTTP}]\n\
         ---\nkind: HTTPRoute\nmetadata: {name: shop}\nspec:\n  parentRefs: [{name: edge}]\n  rules: [{backendRefs: [{name: b}]}]\n",
    )
    .expect("write");
    let (edge, web) = weft_testkit::mesh::edge_gateway(&weft(), &s.url(), &file, &[]);
    // The gateway is a caller like any other: no intention, no entry.
    eventually("edge → b denied", Duration::from_secs(10), || {
        let r = curl(&[&format!("http://{web}/hello")]);
        (r.status == 403 && r.header("x-weft-error") == Some("denied-by-intention")).then_some(())
    });
    apply(
        &s,
        "kind: Intention\nmetadata: {name: edge-b}\nspec: {source: edge, destination: b, action: allow}\n",
    );
    eventually("edge → b allowed", Duration::from_secs(10), || {
        (who(web).ok()? == "b-1").then_some(())
    });
    let r = curl(&[&format!("http://{web}/headers")]);
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        seen["headers"]["x-weft-source-identity"], "spiffe://weft.local/svc/edge",
        "b's app sees the gateway's verified identity: {}",
        r.body
    );
    // It registered nothing: it is not a destination.
    let (ok, out, _) = weft_cli(&weft(), &["catalog", "--server", &s.url()]);
    assert!(ok && !out.contains("edge"), "{out}");

    // The file is followed: a new route to a service the gateway did not call before
    // (it subscribes to it anew); the listener, unchanged, stays open where it is.
    let _c = instance(&s, "c", "c-1", &[]);
    apply(
        &s,
        "kind: Intention\nmetadata: {name: edge-c}\nspec: {source: edge, destination: c, action: allow}\n",
    );
    let two_routes = "kind: Gateway\nmetadata: {name: edge}\nspec:\n  listeners: [{name: web, address: 127.0.0.1:0, protocol: HTTP}]\n\
         ---\nkind: HTTPRoute\nmetadata: {name: shop}\nspec:\n  parentRefs: [{name: edge}]\n  rules:\n\
         \x20 - {matches: [{path: {type: PathPrefix, value: /c}}], backendRefs: [{name: c}]}\n\
         \x20 - {backendRefs: [{name: b}]}\n";
    weft_testkit::replace_file(&file, two_routes);
    // The echo's name, or the status and body when something else answered.
    let name_at = |path: &str| {
        let r = curl(&[&format!("http://{web}{path}")]);
        serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{} {}", r.status, r.body))
    };
    eventually("the new route reaches c", Duration::from_secs(15), || {
        (name_at("/c/x") == "c-1").then_some(())
    });
    assert_eq!(name_at("/other"), "b-1");
    // A file that does not build is refused whole; the running version keeps serving.
    weft_testkit::replace_file(
        &file,
        &two_routes.replace("name: c}", "name: c, weight: -1}"),
    );
    eventually("refusal logged", Duration::from_secs(15), || {
        edge.proc
            .stderr()
            .contains("gateway file refused")
            .then_some(())
    });
    assert_eq!(name_at("/c/x"), "c-1");
    assert_eq!(name_at("/other"), "b-1");
    // So is one that does not parse.
    weft_testkit::replace_file(&file, "kind: [Gateway\n");
    eventually("second refusal logged", Duration::from_secs(15), || {
        (edge.proc.stderr().matches("gateway file refused").count() == 2).then_some(())
    });
    assert!(edge.proc.stderr().contains("YAML syntax"));
    assert_eq!(name_at("/c/x"), "c-1");
}

#[test]
fn an_operator_provided_intermediate_signs_under_the_operators_root() {
    let dir = temp_dir();
    let root = weft_testkit::pki::Pki::new(&dir, "operator");
    let inter = root.intermediate("mesh-intermediate");
    let (cert, key, roots) = (
        inter.cert.display().to_string(),
        inter.key.display().to_string(),
        root.ca_file.display().to_string(),
    );
    // Refused: a key others can read, and a certificate that is not a CA.
    let loose = dir.join("loose.key");
    std::fs::copy(&inter.key, &loose).expect("copy");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let start = |cert: &str, key: &str| {
        std::process::Command::new(weft())
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(temp_dir().join("data"))
            .args(["--ca-cert", cert, "--ca-key", key, "--ca-roots", &roots])
            .output()
            .expect("weft server")
    };
    let out = start(&cert, &loose.display().to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    let leaf = root.leaf("not-a-ca", &["x.example"]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let out = start(
        &leaf.cert.display().to_string(),
        &leaf.key.display().to_string(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a CA"), "{err}");

    // Accepted: leaves are signed by the intermediate and trusted through the operator's root.
    let s = server_with(
        &weft(),
        &["--ca-cert", &cert, "--ca-key", &key, "--ca-roots", &roots],
    );
    let bundle = curl(&[&format!("{}/v1/ca/roots", s.url())]).json();
    let operator_root = std::fs::read_to_string(&root.ca_file).expect("root");
    assert_eq!(bundle["roots"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        bundle["roots"][0]["certificate"].as_str(),
        Some(operator_root.as_str())
    );
    let (leaf_cert, _) = mesh_cert(&s, "a");
    let chain = std::fs::read_to_string(leaf_cert).expect("chain");
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    allow_all(&weft(), &s);
    let _b = instance(&s, "b", "b-1", &[]);
    let a = instance(&s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    let out_b = a.sidecar.listener("out-b");
    eventually(
        "a → b through the intermediate",
        Duration::from_secs(10),
        || (who(out_b).ok()? == "b-1").then_some(()),
    );
}

/// A TCP echo server (opaque bytes, no HTTP).
fn tcp_echo() -> std::net::SocketAddr {
    weft_testkit::tcp_server(|mut conn| {
        use std::io::{Read, Write};
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// Sends `msg` on `conn` and reads until as many bytes came back, the peer closed, or
/// 3 s passed: what came back.
fn exchange(conn: &mut std::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    if conn.write_all(msg).is_err() {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < msg.len() {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn a_tcp_service_is_called_over_mutual_tls_and_denied_connections_are_closed() {
    use weft_testkit::mesh::sidecar;
    let s = server(&weft());
    let db_app = tcp_echo();
    let db = sidecar(
        &weft(),
        &s.url(),
        "db",
        "db-1",
        db_app,
        &["--app-protocol", "tcp", "--admin", "127.0.0.1:0"],
    );
    db.wait_synced();
    let web_app = weft_testkit::echo(&weft(), "web-1", &[]);
    let web = sidecar(
        &weft(),
        &s.url(),
        "web",
        "web-1",
        web_app.addr,
        &["--upstream", "db=127.0.0.1:0"],
    );
    web.wait_synced();
    let out = web.listener("out-db");
    let connect = || std::net::TcpStream::connect(out).expect("connect out-db");

    // No intention: the mesh default (deny) closes the connection at db's sidecar, after
    // the mutual TLS handshake, without a byte reaching the app.
    eventually("web → db denied", Duration::from_secs(15), || {
        let got = exchange(&mut connect(), b"ping\n");
        (got.is_empty() && db.proc.stderr().contains("connection denied by intention"))
            .then_some(())
    });
    let admin = db.proc.ready["admin"].as_str().expect("admin").to_string();
    let metrics = curl(&[&format!("http://{admin}/metrics")]).body;
    let denied = metric_value(
        &metrics,
        "weft_downstream_connections_refused_total{listener=\"sidecar/inbound\",reason=\"denied-by-intention\"}",
    );
    assert!(denied.is_some_and(|n| n >= 1.0), "{metrics}");
    let check = || {
        weft_cli(
            &weft(),
            &[
                "intention",
                "check",
                "web",
                "db",
                "--tcp",
                "--server",
                &s.url(),
            ],
        )
    };
    let (ok, out, _) = check();
    assert!(
        !ok && out.contains("denied: web → db (TCP connection)"),
        "{out}"
    );
    // Plaintext straight to db's inbound listener (strict mode) does not reach the app
    // either (at most a TLS alert comes back).
    let inbound = db.listener("inbound");
    let mut plain = std::net::TcpStream::connect(inbound).expect("connect inbound");
    let got = exchange(&mut plain, b"ping\n");
    assert!(!got.starts_with(b"ping"), "{got:?}");

    // Allowed: bytes go through, both ways.
    apply(
        &s,
        "kind: Intention\nmetadata: {name: web-db}\nspec: {source: web, destination: db, action: allow}\n",
    );
    let mut held = eventually("web → db allowed", Duration::from_secs(15), || {
        let mut c = connect();
        (exchange(&mut c, b"ping\n") == b"ping\n").then_some(c)
    });
    assert_eq!(exchange(&mut held, b"second\n"), b"second\n");
    let (ok, out, _) = check();
    assert!(ok && out.contains("intention web-db"), "{out}");
    // A deny applies to the connection already open: it is closed.
    apply(
        &s,
        "kind: Intention\nmetadata: {name: web-db}\nspec: {source: web, destination: db, action: deny}\n",
    );
    eventually(
        "the open connection is closed",
        Duration::from_secs(15),
        || exchange(&mut held, b"third\n").is_empty().then_some(()),
    );
    assert!(
        db.proc.stderr().contains("open=true"),
        "{}",
        db.proc.stderr()
    );
}

#[test]
fn a_root_rotation_can_move_the_mesh_to_an_operators_ca_and_bad_material_changes_nothing() {
    let s = server(&weft());
    let dir = temp_dir();
    let operator = weft_testkit::pki::Pki::new(&dir, "operator");
    let inter = operator.intermediate("mesh-intermediate");
    let stranger = weft_testkit::pki::Pki::new(&dir, "stranger");
    let private = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p.display().to_string()
    };
    let (cert, key) = (inter.cert.display().to_string(), private(&inter.key));
    let (roots, wrong_roots) = (
        operator.ca_file.display().to_string(),
        stranger.ca_file.display().to_string(),
    );
    let other_key = private(&operator.intermediate("other").key);
    let rotate = |args: &[&str]| {
        let mut all = vec!["ca", "rotate", "--server"];
        let url = s.url();
        all.push(&url);
        all.extend_from_slice(args);
        weft_cli(&weft(), &all)
    };
    let root_count = || {
        curl(&[&format!("{}/v1/ca/roots", s.url())]).json()["roots"]
            .as_array()
            .map(Vec::len)
    };
    // Refused, and nothing changes: a key that is not the certificate's, an
    // intermediate that does not chain to the roots given with it.
    let (ok, _, err) = rotate(&[
        "--ca-cert",
        &cert,
        "--ca-key",
        &other_key,
        "--ca-roots",
        &roots,
    ]);
    assert!(!ok && err.contains("the key does not belong"), "{err}");
    let (ok, _, err) = rotate(&[
        "--ca-cert",
        &cert,
        "--ca-key",
        &key,
        "--ca-roots",
        &wrong_roots,
    ]);
    assert!(
        !ok && err.contains("do not verify under the given roots"),
        "{err}"
    );
    assert_eq!(root_count(), Some(1));

    // Accepted: the operator's root joins the bundle and signs (through the
    // intermediate) from now on; the generated root stays trusted until it is pruned.
    let (ok, out, err) = rotate(&["--ca-cert", &cert, "--ca-key", &key, "--ca-roots", &roots]);
    assert!(ok, "{out}{err}");
    let bundle = curl(&[&format!("{}/v1/ca/roots", s.url())]).json();
    assert!(!bundle.to_string().contains("PRIVATE KEY"));
    let active = bundle["active"].as_str().expect("active");
    let operator_root = std::fs::read_to_string(&operator.ca_file).expect("root");
    let signing = bundle["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .find(|r| r["id"] == active)
        .expect("active root");
    assert_eq!(
        signing["certificate"].as_str(),
        Some(operator_root.as_str())
    );
    assert_eq!(root_count(), Some(2));
    let (leaf, _) = mesh_cert(&s, "a");
    let chain = std::fs::read_to_string(leaf).expect("chain");
    let intermediate = std::fs::read_to_string(&inter.cert).expect("intermediate");
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    assert!(chain.ends_with(&intermediate) || chain.trim_end().ends_with(intermediate.trim_end()));
    // The same CA again changes nothing: its root is not listed twice.
    let (ok, out, err) = rotate(&["--ca-cert", &cert, "--ca-key", &key, "--ca-roots", &roots]);
    assert!(ok, "{out}{err}");
    assert_eq!(root_count(), Some(2));
    let again = curl(&[&format!("{}/v1/ca/roots", s.url())]).json();
    assert_eq!(again["active"].as_str(), Some(active));
}

fn apply(s: &Server, yaml: &str) {
    weft_testkit::mesh::apply_wait(&weft(), s, yaml);
}

fn mesh_cert(s: &Server, service: &str) -> (PathBuf, PathBuf) {
    weft_testkit::mesh::mesh_cert(s, service)
}
