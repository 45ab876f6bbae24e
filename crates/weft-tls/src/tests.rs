use std::io::Write;

use super::*;

fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = self_signed(names).unwrap();
    let c = dir.join(format!("{stem}.crt"));
    let k = dir.join(format!("{stem}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

#[test]
fn loads_names_and_picks_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1) = write_pair(dir.path(), "a", &["a.example.com"]);
    let (c2, k2) = write_pair(dir.path(), "w", &["*.example.com", "example.com"]);
    let a = load_cert(&c1, &k1).unwrap();
    let w = load_cert(&c2, &k2).unwrap();
    assert_eq!(a.names, vec!["a.example.com"]);
    assert_eq!(w.names, vec!["*.example.com", "example.com"]);

    let r = SniResolver::new(&[a.clone(), w.clone()], false);
    let is = |got: Option<Arc<CertifiedKey>>, want: &LoadedCert| {
        Arc::ptr_eq(&got.expect("a certificate"), &want.key)
    };
    assert!(is(r.pick(Some("a.example.com")), &a));
    assert!(is(r.pick(Some("b.example.com")), &w));
    assert!(is(r.pick(Some("example.com")), &w));
    // A wildcard covers one label only; unknown names get the default (the first).
    assert!(is(r.pick(Some("x.b.example.com")), &a));
    assert!(is(r.pick(None), &a));

    let strict = SniResolver::new(&[a, w.clone()], true);
    assert!(strict.pick(Some("other.test")).is_none());
    assert!(strict.pick(None).is_none());
    assert!(is(strict.pick(Some("b.example.com")), &w));
}

#[test]
fn refuses_mismatched_or_malformed_material() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, _) = write_pair(dir.path(), "a", &["a.test"]);
    let (_, k2) = write_pair(dir.path(), "b", &["b.test"]);
    let err = load_cert(&c1, &k2).unwrap_err().to_string();
    assert!(err.contains("does not match the certificate"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::File::create(&garbage)
        .unwrap()
        .write_all(b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n")
        .unwrap();
    let err = load_cert(&garbage, &k2).unwrap_err().to_string();
    assert!(err.contains("garbage.pem"), "{err}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = load_cert(&empty, &k2).unwrap_err().to_string();
    assert!(err.contains("no CERTIFICATE"), "{err}");
    let err = load_cert(&c1, &empty).unwrap_err().to_string();
    assert!(err.contains("no usable private key"), "{err}");
    let err = load_cert(&dir.path().join("missing.pem"), &k2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem: cannot read"), "{err}");
}

/// The first flight a real rustls client sends for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = write_pair(dir.path(), "ca", &["ca.test"]);
    let config = client_config(Some(&c), None, &[ALPN_H2]).unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn peeks_sni_from_a_real_client_hello() {
    let hello = client_hello("api.example.com");
    assert_eq!(
        peek_sni(&hello),
        PeekedHello::Hello(Some("api.example.com".into()))
    );
    assert_eq!(peek_sni(&hello[..hello.len() / 2]), PeekedHello::NeedMore);
    assert_eq!(peek_sni(&[]), PeekedHello::NeedMore);
    assert!(matches!(
        peek_sni(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        PeekedHello::Invalid(_)
    ));
}

#[test]
fn resolver_config_builds_with_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = write_pair(dir.path(), "a", &["a.test"]);
    let cert = load_cert(&c, &k).unwrap();
    let res = Resumption::new().unwrap();
    let cfg = server_config(&[cert], false, &[ALPN_H2, ALPN_HTTP11], &res).unwrap();
    assert_eq!(
        cfg.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}
