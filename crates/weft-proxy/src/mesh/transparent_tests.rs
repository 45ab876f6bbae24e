use std::net::SocketAddr;

use super::{classify, Destinations, Detected, OutboundPolicy, Redirect};

fn redirect() -> Redirect {
    Redirect {
        port: 15006,
        uid: 1337,
        exclude_ports: vec![22],
        exclude_cidrs: vec![
            Redirect::parse_cidr("10.9.0.0/16").unwrap(),
            Redirect::parse_cidr("fd00::1").unwrap(),
        ],
        inbound: Some((8080, 15001)),
    }
}

#[test]
fn the_rules_exclude_the_sidecar_loopback_and_what_the_operator_names() {
    let v4 = redirect().script(false);
    let lines: Vec<&str> = v4.lines().collect();
    // Whatever an earlier sidecar left is removed first, quietly.
    assert_eq!(
        lines[0],
        "iptables -w -t nat -D OUTPUT -p tcp -j WEFT_OUTPUT 2>/dev/null || true"
    );
    let rules: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.ends_with("|| true"))
        .collect();
    assert_eq!(
        rules,
        vec![
            "iptables -w -t nat -N WEFT_OUTPUT",
            "iptables -w -t nat -A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "iptables -w -t nat -A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "iptables -w -t nat -A WEFT_OUTPUT -p tcp --dport 22 -j RETURN",
            "iptables -w -t nat -A WEFT_OUTPUT -d 10.9.0.0/16 -j RETURN",
            "iptables -w -t nat -A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 15006",
            "iptables -w -t nat -A OUTPUT -p tcp -j WEFT_OUTPUT",
            "iptables -w -t nat -N WEFT_INBOUND",
            "iptables -w -t nat -A WEFT_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15001",
            "iptables -w -t nat -A PREROUTING -p tcp -j WEFT_INBOUND",
        ]
    );
    let v6 = redirect().script(true);
    assert!(v6.contains("ip6tables -w -t nat -A WEFT_OUTPUT -d ::1/128 -j RETURN"));
    assert!(
        v6.contains("-d fd00::1/128 -j RETURN"),
        "each CIDR in its own family"
    );
    assert!(!v6.contains("10.9.0.0"));
}

#[test]
fn cidrs_and_policies_parse_or_say_why_not() {
    assert_eq!(Redirect::parse_cidr("10.0.0.0/8").unwrap().1, 8);
    assert_eq!(Redirect::parse_cidr("10.1.2.3").unwrap().1, 32);
    assert!(Redirect::parse_cidr("10.0.0.0/33")
        .unwrap_err()
        .contains("0-32"));
    assert!(Redirect::parse_cidr("payments")
        .unwrap_err()
        .contains("not an IP"));
    assert_eq!(
        OutboundPolicy::parse("registry-only"),
        Some(OutboundPolicy::RegistryOnly)
    );
    assert_eq!(OutboundPolicy::parse("deny"), None);
}

#[test]
fn destinations_match_an_instance_exactly_or_by_an_ip_only_one_service_has() {
    let a: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:4002".parse().unwrap();
    let listeners = vec![
        (
            "sidecar/inbound".to_string(),
            "127.0.0.1:15001".parse().unwrap(),
        ),
        ("sidecar/out-payments".to_string(), a),
        ("sidecar/out-db".to_string(), b),
        (
            "sidecar/out-pending".to_string(),
            "127.0.0.1:4003".parse().unwrap(),
        ),
    ];
    let d = Destinations::from_parts(&listeners, |service| match service {
        "payments" => vec!["10.0.0.7:15001".into(), "10.0.0.8:15001".into()],
        "db" => vec!["10.0.0.8:15002".into(), "10.0.0.9:15002".into()],
        _ => vec![],
    });
    let at = |s: &str| d.lookup(s.parse().unwrap());
    assert_eq!(
        at("10.0.0.7:8080"),
        Some(a),
        "any port of an IP only payments has"
    );
    assert_eq!(at("10.0.0.9:3306"), Some(b));
    assert_eq!(
        at("10.0.0.8:15002"),
        Some(b),
        "a shared IP: the exact instance decides"
    );
    assert_eq!(at("10.0.0.8:15001"), Some(a));
    assert_eq!(
        at("10.0.0.8:80"),
        None,
        "a shared IP and another port: undecidable"
    );
    assert_eq!(at("192.0.2.1:80"), None);
    assert_eq!(d.service("payments"), Some(a));
    assert_eq!(d.service("pending"), None, "no endpoints yet: not routable");
}

#[test]
fn first_bytes_tell_tls_http2_http1_or_something_else() {
    let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    assert_eq!(classify(&hello), Some(Detected::Tls));
    assert_eq!(classify(&hello[..2]), None, "too few to tell");
    assert_eq!(classify(&[0x16, 0x07, 0x01]), Some(Detected::Other));
    assert_eq!(
        classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Some(Detected::Http2)
    );
    assert_eq!(
        classify(b"PRI * HTTP/2"),
        None,
        "a preface not finished yet"
    );
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
    assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http1));
    assert_eq!(classify(b"POS"), None);
    assert_eq!(
        classify(b"PRIORITY / HTTP/1.1"),
        Some(Detected::Http1),
        "PRI... but not the preface"
    );
    assert_eq!(
        classify(b"get / HTTP/1.1"),
        Some(Detected::Other),
        "methods are upper case"
    );
    assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Other));
    assert_eq!(
        classify(b"ABCDEFGHIJKLMNOPQRS"),
        Some(Detected::Other),
        "no method this long"
    );
    assert_eq!(classify(b""), None);
}
