//! End to end: TLS at the edge with real clients (curl, Python's ssl, openssl). HTTPS
//! termination with certificates chosen by SNI and ALPN; strict SNI; old protocol versions
//! and garbage refused; session resumption; certificate files replaced on disk picked up
//! while open connections keep their session; TLS origination to upstreams that verifies
//! what it talks to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_testkit::pki::{Leaf, Pki};
use weft_testkit::{
    curl, echo, eventually, metric_value, python, require, temp_dir, Echo, Proc, Proxy,
};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn cert_entry(l: &Leaf) -> String {
    format!(
        "{{certFile: \"{}\", keyFile: \"{}\"}}",
        l.cert.display(),
        l.key.display()
    )
}

/// An HTTPS listener `gw/tls` with `certs` (first is the default), and a plain HTTP one
/// `gw/web`, both routing to echo `backend`.
fn https_config(certs: &[&Leaf], extra_tls: &str, backend: &Echo) -> String {
    let certs: Vec<String> = certs.iter().map(|l| cert_entry(l)).collect();
    format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners:\n\
         \x20 - {{name: web, address: \"127.0.0.1:0\"}}\n\
         \x20 - name: tls\n    address: \"127.0.0.1:0\"\n    protocol: HTTPS\n\
         \x20   tls: {{certificates: [{}]{extra_tls}}}\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: s}}]}}]\n---\n\
         kind: Service\nmetadata: {{name: s}}\nspec:\n  endpoints: [{{address: \"{}\"}}]\n",
        certs.join(", "),
        backend.addr
    )
}

fn start(config: &str) -> Proxy {
    weft_testkit::proxy(&weft(), config, &["--watch-interval", "50ms"])
}

/// curl to `https://NAME:PORT/PATH` resolved to the listener, trusting `ca`.
fn https(
    p: &Proxy,
    listener: &str,
    name: &str,
    path: &str,
    ca: &Path,
    extra: &[&str],
) -> weft_testkit::CurlOut {
    let addr = p.listener(listener);
    let resolve = format!("{name}:{}:127.0.0.1", addr.port());
    let url = format!("https://{name}:{}{path}", addr.port());
    let ca = ca.display().to_string();
    let mut args = vec!["--resolve", &resolve, "--cacert", &ca];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn refused(p: &Proxy, reason: &str) -> f64 {
    metric_value(
        &p.admin_get("/metrics"),
        &format!(
            "weft_downstream_connections_refused_total{{listener=\"gw/tls\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

#[test]
fn https_picks_certificates_by_sni_and_negotiates_h2() {
    let dir = temp_dir();
    let pki = Pki::new(&dir, "edge");
    let a = pki.leaf("a", &["a.example.test"]);
    let wild = pki.leaf("wild", &["*.wild.example.test"]);
    let backend = echo(&weft(), "b", &[]);
    let p = start(&https_config(&[&a, &wild], "", &backend));

    // Exact name, verified against our CA; HTTP/2 chosen by ALPN; the backend learns
    // the request arrived over TLS.
    let r = https(
        &p,
        "gw/tls",
        "a.example.test",
        "/",
        &pki.ca_file,
        &["-w", "\n%{http_version}"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.ends_with("\n2"),
        "expected HTTP/2 via ALPN: {}",
        r.body
    );
    let json: serde_json::Value =
        serde_json::from_str(r.body.rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(json["headers"]["x-forwarded-proto"], "https");

    // HTTP/1.1 when the client offers only that.
    let r = https(
        &p,
        "gw/tls",
        "a.example.test",
        "/",
        &pki.ca_file,
        &["--http1.1", "-w", "\n%{http_version}"],
    );
    assert!(r.body.ends_with("\n1.1"), "{}", r.body);

    // The wildcard certificate answers for its subdomains.
    let r = https(&p, "gw/tls", "x.wild.example.test", "/", &pki.ca_file, &[]);
    assert_eq!(r.status, 200, "{r:?}");

    // An unknown name gets the default (first) certificate, which a verifying client
    // refuses because it is for another name (curl exit 60: peer certificate not OK).
    let r = https(&p, "gw/tls", "other.example.test", "/", &pki.ca_file, &[]);
    assert_eq!(r.exit, 60, "{r:?}");

    // TLS 1.1 and older are refused (curl exit 35: handshake failed).
    let r = https(
        &p,
        "gw/tls",
        "a.example.test",
        "/",
        &pki.ca_file,
        &["--tlsv1.0", "--tls-max", "1.1"],
    );
    assert_eq!(r.exit, 35, "{r:?}");
    // TLS 1.2 is fine.
    let r = https(
        &p,
        "gw/tls",
        "a.example.test",
        "/",
        &pki.ca_file,
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // Plain HTTP (garbage, as far as TLS is concerned) is refused and counted.
    let before = refused(&p, "tls-handshake");
    let plain = curl(&[&format!("http://{}/", p.listener("gw/tls"))]);
    assert_ne!(plain.status, 200);
    eventually("the refusal to be counted", Duration::from_secs(10), || {
        (refused(&p, "tls-handshake") > before).then_some(())
    });
    // And the listener keeps serving.
    let r = https(&p, "gw/tls", "a.example.test", "/", &pki.ca_file, &[]);
    assert_eq!(r.status, 200);
}

#[test]
fn strict_sni_refuses_unknown_names() {
    let dir = temp_dir();
    let pki = Pki::new(&dir, "edge");
    let a = pki.leaf("a", &["a.example.test"]);
    let backend = echo(&weft(), "b", &[]);
    let p = start(&https_config(&[&a], ", strictSni: true", &backend));
    assert_eq!(
        https(&p, "gw/tls", "a.example.test", "/", &pki.ca_file, &[]).status,
        200
    );
    // --insecure: the client would accept any certificate, so only the server can refuse.
    let r = https(
        &p,
        "gw/tls",
        "unknown.example.test",
        "/",
        &pki.ca_file,
        &["--insecure"],
    );
    assert_eq!(r.exit, 35, "strict SNI must refuse the handshake: {r:?}");
    assert!(refused(&p, "tls-handshake") >= 1.0);
}

/// Runs `support/tls_peer.py` with `args`; its stdout lines.
fn tls_peer(args: &[&str]) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_peer.py");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script).args(args);
    Proc::spawn(cmd)
}

#[test]
fn sessions_resume_and_replaced_certificates_apply_to_new_handshakes_only() {
    let dir = temp_dir();
    let pki = Pki::new(&dir, "edge");
    let first = pki.leaf("first", &["a.example.test"]);
    let second = pki.leaf("second", &["a.example.test"]);
    // The listener reads a fixed pair of paths; the test replaces their contents.
    let live = Leaf {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let backend = echo(&weft(), "b", &[]);
    let p = start(&https_config(&[&live], "", &backend));
    let addr = p.listener("gw/tls").to_string();

    // A held-open connection, and a resumed second handshake (TLS 1.3 tickets).
    let mut peer = tls_peer(&[&addr, "a.example.test", &pki.ca_file.display().to_string()]);
    let hello = &peer.ready;
    assert_eq!(hello["status"], 200, "{hello}");
    assert_eq!(hello["resumed"], true, "session resumption: {hello}");
    let first_fp = hello["cert_sha256"].as_str().unwrap().to_string();

    // Replace the files on disk (key first, then certificate, as tools do: the
    // half-replaced state is refused and the old pair keeps serving).
    std::fs::copy(&second.key, &live.key).unwrap();
    std::fs::copy(&second.cert, &live.cert).unwrap();
    let new_fp = eventually(
        "new handshakes to see the new certificate",
        Duration::from_secs(10),
        || {
            let probe = tls_peer(&[
                &addr,
                "a.example.test",
                &pki.ca_file.display().to_string(),
                "--once",
            ]);
            let fp = probe.ready["cert_sha256"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (fp != first_fp && !fp.is_empty()).then_some(fp)
        },
    );
    assert_ne!(new_fp, first_fp);

    // The connection opened before the change still works, on its old session.
    use std::io::Write;
    let stdin = peer.child.stdin.as_mut().expect("peer stdin");
    writeln!(stdin, "again").unwrap();
    let line = peer
        .lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the held connection answers");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["cert_sha256"], first_fp.as_str(), "{v}");
}

/// A second proxy that serves HTTPS with `leaf` in front of `backend`: an upstream that
/// speaks TLS.
fn tls_upstream(leaf: &Leaf, backend: &Echo) -> Proxy {
    start(&https_config(&[leaf], "", backend))
}

#[test]
fn tls_origination_verifies_the_upstream() {
    require("curl");
    let dir = temp_dir();
    let pki = Pki::new(&dir, "up");
    let other = Pki::new(&dir, "other");
    let good = pki.leaf("good", &["api.example.test", "127.0.0.1"]);
    let expired = pki.expired_leaf("expired", &["api.example.test"]);
    let foreign = other.leaf("foreign", &["api.example.test"]);
    let backend = echo(&weft(), "origin", &[]);
    let up_good = tls_upstream(&good, &backend);
    let up_expired = tls_upstream(&expired, &backend);
    let up_foreign = tls_upstream(&foreign, &backend);

    let ca = pki.ca_file.display();
    let svc = |name: &str, up: &Proxy, tls: &str| {
        format!(
            "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  endpoints: [{{address: \"{}\"}}]\n  tls: {tls}\n---\n",
            up.listener("gw/tls")
        )
    };
    let route = |name: &str, path: &str| {
        format!(
            "kind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - matches: [{{path: {{value: {path}}}}}]\n    backendRefs: [{{name: {name}}}]\n---\n"
        )
    };
    let config = format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n{}{}{}{}{}{}{}{}",
        svc("named", &up_good, &format!("{{caFile: \"{ca}\", serverName: api.example.test}}")),
        route("named", "/named"),
        svc("by-ip", &up_good, &format!("{{caFile: \"{ca}\"}}")),
        route("by-ip", "/by-ip"),
        svc("expired", &up_expired, &format!("{{caFile: \"{ca}\", serverName: api.example.test}}")),
        route("expired", "/expired"),
        svc("foreign", &up_foreign, &format!("{{caFile: \"{ca}\", serverName: api.example.test}}")),
        route("foreign", "/foreign"),
    );
    let p = start(&config);
    let get = |path: &str| curl(&[&format!("{}{path}", p.url("gw/web"))]);

    let r = get("/named");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-name"), Some("origin"));
    // Without serverName, the endpoint's IP is what the certificate must name.
    assert_eq!(get("/by-ip").status, 200);
    for path in ["/expired", "/foreign"] {
        let r = get(path);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert_eq!(
            r.header("x-weft-error"),
            Some("upstream-tls-error"),
            "{path}"
        );
    }
}

#[test]
fn broken_certificate_files_are_named_by_validate_and_refused_by_reload() {
    let dir = temp_dir();
    let pki = Pki::new(&dir, "edge");
    let a = pki.leaf("a", &["a.example.test"]);
    let b = pki.leaf("b", &["b.example.test"]);
    let backend = echo(&weft(), "b", &[]);
    let mismatched = Leaf {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let file = dir.join("bad.yaml");
    std::fs::write(&file, https_config(&[&mismatched], "", &backend)).unwrap();
    let out = std::process::Command::new(weft())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("b.key") && err.contains("does not match the certificate"),
        "{err}"
    );

    // A running proxy refuses the same change and keeps its working certificate.
    let p = start(&https_config(&[&a], "", &backend));
    weft_testkit::replace_file(&p.config, &https_config(&[&mismatched], "", &backend));
    eventually("the refusal", Duration::from_secs(10), || {
        let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).ok()?;
        cfg["last_rejected"]["reason"]
            .as_str()?
            .contains("does not match")
            .then_some(())
    });
    let r = https(&p, "gw/tls", "a.example.test", "/", &pki.ca_file, &[]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// nginx over TLS requiring a client certificate signed by `client_ca`, answering with the
/// certificate's subject.
fn nginx_requiring_client_certs(dir: &Path, server: &Leaf, client_ca: &Path) -> (Proc, u16) {
    weft_testkit::nginx(
        dir,
        &format!(
            "    listen 127.0.0.1:{{port}} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n\
             \x20   ssl_client_certificate {};\n    ssl_verify_client on;\n\
             \x20   location / {{ return 200 \"client=$ssl_client_s_dn\\n\"; }}",
            server.cert.display(),
            server.key.display(),
            client_ca.display()
        ),
    )
}

#[test]
fn tls_origination_presents_a_client_certificate() {
    let dir = temp_dir();
    let servers = Pki::new(&dir, "servers");
    let clients = Pki::new(&dir, "clients");
    let upstream_cert = servers.leaf("upstream", &["origin.example.test"]);
    let edge_cert = clients.leaf("edge", &["edge.example.test"]);
    let (_nginx, port) = nginx_requiring_client_certs(&dir, &upstream_cert, &clients.ca_file);

    let svc = |name: &str, client: &str| {
        format!(
            "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  endpoints: [{{address: \"127.0.0.1:{port}\"}}]\n\
             \x20 tls: {{caFile: \"{}\", serverName: origin.example.test{client}}}\n---\n\
             kind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - matches: [{{path: {{value: /{name}}}}}]\n    backendRefs: [{{name: {name}}}]\n---\n",
            servers.ca_file.display()
        )
    };
    let p = start(&format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"}}]\n---\n{}{}",
        svc(
            "with-cert",
            &format!(
                ", clientCertificate: {{certFile: \"{}\", keyFile: \"{}\"}}",
                edge_cert.cert.display(),
                edge_cert.key.display()
            )
        ),
        svc("without-cert", ""),
    ));
    let r = curl(&[&format!("{}/with-cert", p.url("gw/web"))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.starts_with("client=") && r.body.len() > "client=\n".len(),
        "{}",
        r.body
    );
    // nginx refuses a request without a client certificate (400), and weft passes that on.
    let r = curl(&[&format!("{}/without-cert", p.url("gw/web"))]);
    assert_eq!(r.status, 400, "{r:?}");
}
