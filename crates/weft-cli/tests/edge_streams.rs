//! End to end: opaque streams. A TCP listener forwards to a service with its balancing; a
//! TLS listener passes TLS through untouched, routed by the ClientHello's SNI (the proxy
//! holds no certificate, the client verifies the backend's); a TLS listener in Terminate
//! mode decrypts and forwards plain bytes. Listeners come and go with the config file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_testkit::pki::{Leaf, Pki};
use weft_testkit::{curl, echo, eventually, metric_value, temp_dir, Echo, Proxy};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn start(config: &str) -> Proxy {
    weft_testkit::proxy(&weft(), config, &["--watch-interval", "50ms"])
}

fn service(name: &str, addrs: &[String]) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    format!(
        "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  loadBalancer: {{policy: RoundRobin}}\n  endpoints: [{}]\n---\n",
        eps.join(", ")
    )
}

/// A proxy with one HTTPS listener holding `leaf`, in front of `backend`.
fn https_backend(leaf: &Leaf, backend: &Echo) -> Proxy {
    start(&format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners:\n  - name: tls\n    address: \"127.0.0.1:0\"\n    protocol: HTTPS\n    tls: {{certificates: [{{certFile: \"{}\", keyFile: \"{}\"}}]}}\n---\n\
         kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: s}}]}}]\n---\n{}",
        leaf.cert.display(),
        leaf.key.display(),
        service("s", &[backend.addr.to_string()])
    ))
}

fn https_via(p: &Proxy, listener: &str, name: &str, ca: &Path) -> weft_testkit::CurlOut {
    let port = p.listener(listener).port();
    curl(&[
        "--resolve",
        &format!("{name}:{port}:127.0.0.1"),
        "--cacert",
        &ca.display().to_string(),
        &format!("https://{name}:{port}/"),
    ])
}

#[test]
fn tcp_listener_balances_connections_over_the_service() {
    let a = echo(&weft(), "a", &[]);
    let b = echo(&weft(), "b", &[]);
    let p = start(&format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners: [{{name: raw, address: \"127.0.0.1:0\", protocol: TCP}}]\n---\n\
         kind: TCPRoute\nmetadata: {{name: t}}\nspec:\n  rules: [{{backendRefs: [{{name: s}}]}}]\n---\n{}",
        service("s", &[a.addr.to_string(), b.addr.to_string()])
    ));
    // HTTP is just bytes here: each new connection goes to the next endpoint.
    let mut names: Vec<String> = (0..4)
        .map(|_| {
            let r = curl(&[&format!("http://{}/", p.listener("gw/raw"))]);
            assert_eq!(r.status, 200, "{r:?}");
            r.header("x-echo-name").unwrap().to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);
    let m = p.admin_get("/metrics");
    assert_eq!(
        metric_value(
            &m,
            "weft_stream_connections_total{listener=\"gw/raw\",route=\"t\",service=\"s\",result=\"ok\"}"
        ),
        Some(4.0),
        "{m}"
    );
}

#[test]
fn tls_passthrough_routes_by_sni_and_terminate_mode_decrypts() {
    let dir = temp_dir();
    let pki = Pki::new(&dir, "pass");
    let leaf_a = pki.leaf("a", &["a.example.test"]);
    let leaf_b = pki.leaf("b", &["b.example.test"]);
    let leaf_t = pki.leaf("t", &["t.example.test"]);
    let echo_a = echo(&weft(), "a", &[]);
    let echo_b = echo(&weft(), "b", &[]);
    let echo_t = echo(&weft(), "t", &[]);
    let origin_a = https_backend(&leaf_a, &echo_a);
    let origin_b = https_backend(&leaf_b, &echo_b);

    let p = start(&format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners:\n\
         \x20 - {{name: pass, address: \"127.0.0.1:0\", protocol: TLS, tls: {{mode: Passthrough}}}}\n\
         \x20 - name: term\n    address: \"127.0.0.1:0\"\n    protocol: TLS\n    tls: {{certificates: [{{certFile: \"{}\", keyFile: \"{}\"}}]}}\n---\n\
         kind: TLSRoute\nmetadata: {{name: exact-a}}\nspec:\n  parentRefs: [{{name: gw, sectionName: pass}}]\n  hostnames: [a.example.test]\n  rules: [{{backendRefs: [{{name: origin-a}}]}}]\n---\n\
         kind: TLSRoute\nmetadata: {{name: wild}}\nspec:\n  parentRefs: [{{name: gw, sectionName: pass}}]\n  hostnames: [\"*.example.test\"]\n  rules: [{{backendRefs: [{{name: origin-b}}]}}]\n---\n\
         kind: TLSRoute\nmetadata: {{name: plain}}\nspec:\n  parentRefs: [{{name: gw, sectionName: term}}]\n  rules: [{{backendRefs: [{{name: echo-t}}]}}]\n---\n{}{}{}",
        leaf_t.cert.display(),
        leaf_t.key.display(),
        service("origin-a", &[origin_a.listener("gw/tls").to_string()]),
        service("origin-b", &[origin_b.listener("gw/tls").to_string()]),
        service("echo-t", &[echo_t.addr.to_string()]),
    ));

    // Passthrough: the client verifies the origin's own certificate end to end.
    let r = https_via(&p, "gw/pass", "a.example.test", &pki.ca_file);
    assert_eq!(
        (r.status, r.header("x-echo-name")),
        (200, Some("a")),
        "{r:?}"
    );
    let r = https_via(&p, "gw/pass", "b.example.test", &pki.ca_file);
    assert_eq!(
        (r.status, r.header("x-echo-name")),
        (200, Some("b")),
        "{r:?}"
    );

    // No route for the name (the wildcard does not cover other domains): closed, counted.
    let r = https_via(&p, "gw/pass", "a.other.test", &pki.ca_file);
    assert_ne!(r.status, 200);
    // Not TLS at all: closed, counted.
    let mut s = std::net::TcpStream::connect(p.listener("gw/pass")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "plaintext got an answer: {rest:?}");
    let m = p.admin_get("/metrics");
    let refused = |reason: &str| {
        metric_value(
            &m,
            &format!("weft_downstream_connections_refused_total{{listener=\"gw/pass\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("no-route"), Some(1.0), "{m}");
    assert_eq!(refused("not-tls"), Some(1.0), "{m}");

    // Terminate: the proxy's certificate, then plain HTTP bytes to the echo backend.
    let r = https_via(&p, "gw/term", "t.example.test", &pki.ca_file);
    assert_eq!(
        (r.status, r.header("x-echo-name")),
        (200, Some("t")),
        "{r:?}"
    );
}

#[test]
fn listeners_open_and_close_with_the_config_file() {
    let a = echo(&weft(), "a", &[]);
    let listener = |name: &str| format!("  - {{name: {name}, address: \"127.0.0.1:0\"}}\n");
    let config = |listeners: &str| {
        format!(
            "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners:\n{listeners}---\n\
             kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: s}}]}}]\n---\n{}",
            service("s", &[a.addr.to_string()])
        )
    };
    let p = start(&config(&listener("one")));
    let one = p.listener("gw/one");
    // A keep-alive connection on `one`, held across the reloads.
    let mut held = std::net::TcpStream::connect(one).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let ask = |s: &mut std::net::TcpStream| {
        s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut held).starts_with("HTTP/1.1 200"));

    // Add `two`: it opens; `one` keeps its socket and the held connection.
    weft_testkit::replace_file(&p.config, &config(&(listener("one") + &listener("two"))));
    let two = eventually("listener two to open", Duration::from_secs(10), || {
        let cfg: serde_json::Value = serde_json::from_str(&p.admin_get("/config")).ok()?;
        let addr = cfg["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "gw/two")?["address"]
            .as_str()?
            .to_string();
        Some(addr)
    });
    assert_eq!(curl(&[&format!("http://{two}/")]).status, 200);
    assert!(
        ask(&mut held).starts_with("HTTP/1.1 200"),
        "held connection broke"
    );
    assert_eq!(curl(&[&format!("http://{one}/")]).status, 200);

    // Remove `one`: its socket closes; `two` is untouched.
    weft_testkit::replace_file(&p.config, &config(&listener("two")));
    eventually("listener one to close", Duration::from_secs(10), || {
        std::net::TcpStream::connect(one).is_err().then_some(())
    });
    assert_eq!(curl(&[&format!("http://{two}/")]).status, 200);
}

/// A backend that answers each connection's first byte with `n` bytes (a counting
/// pattern) and keeps the connection open.
fn generator(n: usize) -> std::net::SocketAddr {
    weft_testkit::tcp_server(move |mut conn| {
        let mut one = [0u8; 1];
        if conn.read_exact(&mut one).is_err() {
            return;
        }
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let _ = conn.write_all(&data);
        // Held open: the client, not the backend, ends the exchange.
        std::thread::sleep(Duration::from_secs(30));
    })
}

#[test]
fn a_terminated_tls_stream_delivers_every_byte_to_a_slow_reader() {
    // The last bytes of a response written while the client's socket was full must not
    // stay in the proxy's TLS buffer waiting for more traffic.
    const SIZE: usize = 16 << 20;
    let dir = temp_dir();
    let pki = Pki::new(&dir, "slow");
    let leaf = pki.leaf("t", &["t.example.test"]);
    let backend = generator(SIZE);
    let p = start(&format!(
        "kind: Gateway\nmetadata: {{name: gw}}\nspec:\n  listeners:\n\
         \x20 - name: term\n    address: \"127.0.0.1:0\"\n    protocol: TLS\n    tls: {{certificates: [{{certFile: \"{}\", keyFile: \"{}\"}}]}}\n---\n\
         kind: TLSRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: [{{name: gen}}]}}]\n---\n{}",
        leaf.cert.display(),
        leaf.key.display(),
        service("gen", &[backend.to_string()]),
    ));
    let mut roots = weft_tls::rustls::RootCertStore::empty();
    roots.add_parsable_certificates(weft_tls::read_certs(&pki.ca_file).expect("ca"));
    let config = weft_tls::rustls::ClientConfig::builder_with_provider(weft_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = weft_tls::rustls::pki_types::ServerName::try_from("t.example.test").expect("name");
    let conn =
        weft_tls::rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let sock = std::net::TcpStream::connect(p.listener("gw/term")).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = weft_tls::rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"!").expect("ask");
    // Read slowly, so the proxy keeps finding the socket full.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut wrong = None;
    while got < SIZE {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(i) = (0..n).find(|&i| buf[i] != ((got + i) % 251) as u8) {
                    wrong = Some(got + i);
                    break;
                }
                got += n;
                std::thread::sleep(Duration::from_micros(300));
            }
            Err(e) => panic!("after {got} of {SIZE} bytes: {e}"),
        }
    }
    assert_eq!(wrong, None, "corrupted at byte {wrong:?}");
    assert_eq!(got, SIZE);
}
