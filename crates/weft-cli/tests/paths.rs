//! Request paths cannot mean one thing to weft and another to the application: a corpus of
//! encodings (the CVE-2021-31920 class) sent through real sidecars, straight at a callee's
//! inbound listener with a mesh certificate, and through `weft proxy` route matches. None
//! may reach an application as an allowed request for a denied resource.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_testkit::mesh::{http, server, weft_cli, Server};
use weft_testkit::{curl, echo, eventually, proxy};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Encodings of `/admin/...` (denied) hidden behind allowed-looking paths, and a few
/// plainly allowed ones. Sent byte for byte as the request target.
const CORPUS: &[&str] = &[
    "/admin/x",
    "/public/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/x",
    "/public/%2e%2E/admin/x",
    "/public/.%2e/admin/x",
    "/public/%2e./admin/x",
    "/public/..%2fadmin/x",
    "/public/..%2Fadmin/x",
    "/public/%2e%2e%2fadmin/x",
    "/%61dmin/x",
    "/adm%69n/x",
    "/%61%64%6d%69%6e/x",
    "/%61%64%6D%69%6E",
    "//admin/x",
    "///admin/x",
    "/%2fadmin/x",
    "/%2Fadmin/x",
    "/x/%2e%2e/admin/x",
    "/x/../admin/x",
    "/x/./../admin/x",
    "/./admin/x",
    "/admin%2fx",
    "/;/admin/x",
    "/admin;x=1/y",
    "/admin;/x",
    "/public/..;/admin/x",
    "/public/%2e%2e;/admin/x",
    "/%252e%252e/admin/x",
    "/public/%252e%252e/admin/x",
    "/public/%252fadmin",
    "/public/%25252e%25252e/admin",
    "/admin%00/x",
    "/public%00/../admin/x",
    "/%c0%ae%c0%ae/admin/x",
    "/public/%c0%ae%c0%ae/admin/x",
    "/public/%e0%80%ae%e0%80%ae/admin/x",
    "/public\\..\\admin\\x",
    "/public/..\\admin/x",
    "/public/%5c..%5cadmin/x",
    "/public/%2e%2e%5cadmin",
    "/admin./x",
    "/public/../admin/.",
    "/public/.../admin",
    "/public/%2e/admin",
    "/public/%2e%2e",
    "/ad%6din/x",
    "/%ef%bc%8fadmin/x",
    "/\u{ff41}dmin/x",
    "/public/caf\u{e9}/x",
    "/public/%2E./admin/x",
    "/public/x/..%2f..%2fadmin",
    "/public/x?next=/admin",
    "/public/%2e%2e/admin?x=1",
];

/// How a permissive application reads a path: every escape decoded once, `\` as `/`,
/// `;` parameters stripped (Tomcat), a NUL ends it (C), repeated slashes merged, dot
/// segments resolved.
fn as_an_app_reads(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(v) = escaped {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    if let Some(nul) = decoded.iter().position(|&b| b == 0) {
        decoded.truncate(nul);
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn is_admin(path: &str) -> bool {
    let p = as_an_app_reads(path);
    p == "/admin" || p.starts_with("/admin/")
}

#[test]
fn the_app_reading_of_the_corpus_is_what_an_attacker_counts_on() {
    // The helper itself: these are the readings that make each encoding dangerous.
    assert!(is_admin("/public/%2e%2e/admin/x"));
    assert!(is_admin("/admin;x=1/y"));
    assert!(is_admin("/public\\..\\admin\\x"));
    assert!(is_admin("//admin/x"));
    assert!(is_admin("/admin%00/x"));
    assert!(!is_admin("/public/x"));
    assert!(!is_admin("/public/%252e%252e/admin"));
    assert!(CORPUS.len() >= 40);
}

/// A request with `target` sent byte for byte: (status, body).
fn raw(addr: SocketAddr, target: &str) -> (u16, String) {
    let (status, body) = http(addr, "GET", target, b"").expect("request");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The same over mutual TLS straight to a sidecar's inbound listener with `cert`/`key`,
/// byte for byte (openssl s_client), as a caller that skips its own sidecar would.
fn raw_tls(addr: SocketAddr, cert: &(PathBuf, PathBuf), target: &str) -> (u16, String) {
    let openssl = weft_testkit::require("openssl");
    let mut child = Command::new(openssl)
        .args(["s_client", "-quiet", "-connect", &addr.to_string(), "-cert"])
        .arg(&cert.0)
        .arg("-key")
        .arg(&cert.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(
            format!("GET {target} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .expect("write");
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    drop(stdin);
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// What the echo app says it was asked for.
fn app_path(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("not the echo app's JSON ({e}): {body}"));
    v["path"].as_str().expect("path").to_string()
}

/// Checks one answer: refused, or allowed with the app seeing a path that is not under
/// `/admin` however it reads it — and exactly the normal form weft judged.
fn judge(via: &str, target: &str, status: u16, body: &str) -> &'static str {
    match status {
        200 => {
            let seen = app_path(body);
            assert!(
                !is_admin(&seen),
                "{via}: {target:?} reached the app as {seen:?}, which it reads as {:?}",
                as_an_app_reads(&seen)
            );
            assert_eq!(
                weft_proxy::http::path::normalize(&seen, &Default::default()).as_deref(),
                Ok(seen.as_str()),
                "{via}: {target:?}: the app saw a path that is not in normal form"
            );
            "allowed"
        }
        400 => "invalid",
        403 => {
            assert!(
                is_admin(target),
                "{via}: {target:?} was denied but does not read as /admin"
            );
            "denied"
        }
        other => panic!("{via}: {target:?}: unexpected status {other}: {body}"),
    }
}

#[test]
fn encoded_paths_cannot_reach_a_denied_resource_through_sidecars() {
    let s = server(&weft());
    let b = weft_testkit::mesh::instance(&weft(), &s, "b", "b-1", &[]);
    let a = weft_testkit::mesh::instance(&weft(), &s, "a", "a-1", &["--upstream", "b=127.0.0.1:0"]);
    apply(
        &s,
        "kind: Intention\nmetadata: {name: a-b}\nspec:\n  source: a\n  destination: b\n  permissions:\n  \
         - {action: deny, http: {path: {type: PathPrefix, value: /admin}}}\n  \
         - {action: allow, http: {}}\n",
    );
    let out = a.sidecar.listener("out-b");
    eventually("a → b allowed", Duration::from_secs(10), || {
        (raw(out, "/public/x").0 == 200).then_some(())
    });
    let inbound = b.sidecar.listener("inbound");
    let cert = mesh_cert(&s, "a");
    let mut tally = std::collections::BTreeMap::<&str, usize>::new();
    for target in CORPUS {
        let (status, body) = raw(out, target);
        *tally
            .entry(judge("through a's sidecar", target, status, &body))
            .or_default() += 1;
        let (status, body) = raw_tls(inbound, &cert, target);
        judge("straight to b's inbound", target, status, &body);
    }
    // The baseline holds both ways, and the classic bypasses are now denied or refused.
    assert_eq!(raw(out, "/admin/x").0, 403);
    assert_eq!(raw(out, "/public/%2e%2e/admin/x").0, 403);
    assert_eq!(raw(out, "/%61dmin/x").0, 403);
    assert_eq!(raw(out, "/public/..%2fadmin/x").0, 400);
    assert_eq!(raw_tls(inbound, &cert, "/public/%2e%2e/admin/x").0, 403);
    assert_eq!(raw_tls(inbound, &cert, "/admin;x=1/y").0, 400);
    assert_eq!(app_path(&raw(out, "/public/%7ex/./y").1), "/public/~x/y");
    assert!(tally.get("allowed").is_some_and(|&n| n >= 5), "{tally:?}");

    // `weft intention check` judges the path the same way.
    let check = |path: &str| {
        weft_cli(
            &weft(),
            &[
                "intention",
                "check",
                "a",
                "b",
                "--path",
                path,
                "--server",
                &s.url(),
            ],
        )
    };
    let (ok, out_text, _) = check("/public/%2e%2e/admin/x");
    assert!(!ok && out_text.contains("permission 0"), "{out_text}");
    let (ok, out_text, _) = check("/public/..%2fadmin/x");
    assert!(!ok && out_text.contains("invalid-path"), "{out_text}");
}

#[test]
fn encoded_paths_cannot_reach_a_route_they_would_not_match() {
    let admin = echo(&weft(), "admin", &[]);
    let public = echo(&weft(), "public", &[]);
    let config = |paths: &str| {
        format!(
            "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: web, address: \"127.0.0.1:0\"{paths}}}]\n---\n\
             kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /admin}}}}]\n    backendRefs: [{{name: admin}}]\n  \
             - backendRefs: [{{name: public}}]\n---\n\
             kind: Service\nmetadata: {{name: admin}}\nspec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
             kind: Service\nmetadata: {{name: public}}\nspec: {{endpoints: [{{address: \"{}\"}}]}}\n",
            admin.addr, public.addr
        )
    };
    let p = proxy(&weft(), &config(""), &[]);
    let web = p.listener("gw/web");
    let name = |body: &str| -> String {
        serde_json::from_str::<serde_json::Value>(body).expect("json")["name"]
            .as_str()
            .expect("name")
            .to_string()
    };
    for target in CORPUS {
        let (status, body) = raw(web, target);
        match status {
            200 => {
                let seen = app_path(&body);
                // The route taken agrees with how the app reads the path it got.
                assert_eq!(
                    name(&body) == "admin",
                    is_admin(&seen),
                    "{target:?} went to {} as {seen:?}",
                    name(&body)
                );
                assert_eq!(
                    weft_proxy::http::path::normalize(&seen, &Default::default()).as_deref(),
                    Ok(seen.as_str())
                );
            }
            400 => {}
            other => panic!("{target:?}: {other} {body}"),
        }
    }
    let (status, body) = raw(web, "/public/%2e%2e/admin/x");
    assert_eq!((status, name(&body)), (200, "admin".to_string()));
    let r = curl(&[&format!("http://{web}/admin%2fx")]);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-weft-error"), Some("invalid-path"));
    assert!(r.body.contains("paths.escapedSlashes"), "{}", r.body);

    // The lenient policy: escaped slashes kept (never separators), parameters stripped.
    drop(p);
    let p = proxy(
        &weft(),
        &config(", paths: {escapedSlashes: keep, pathParameters: strip}"),
        &[],
    );
    let web = p.listener("gw/web");
    let (status, body) = raw(web, "/admin%2fx");
    assert_eq!(
        (status, name(&body), app_path(&body)),
        (200, "public".into(), "/admin%2Fx".into())
    );
    let (status, body) = raw(web, "/admin;x=1/y");
    assert_eq!(
        (status, name(&body), app_path(&body)),
        (200, "admin".into(), "/admin/y".into())
    );
    let (status, body) = raw(web, "/public/..;/admin/x");
    assert_eq!(
        (status, name(&body), app_path(&body)),
        (200, "admin".into(), "/admin/x".into())
    );
}

fn apply(s: &Server, yaml: &str) {
    weft_testkit::mesh::apply_wait(&weft(), s, yaml);
}

fn mesh_cert(s: &Server, service: &str) -> (PathBuf, PathBuf) {
    weft_testkit::mesh::mesh_cert(s, service)
}
