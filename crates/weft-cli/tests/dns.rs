//! `weft server --dns`: the catalog answered to `dig` (Debian's bind9-dnsutils), over
//! real UDP and TCP sockets, from a server with real sidecars registered in it.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use weft_testkit::mesh::{http, instance, server_with, weft_cli, Server};
use weft_testkit::{eventually, metric_value, require};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn dns_addr(server: &Server) -> SocketAddr {
    server.proc.ready["dns"]
        .as_str()
        .expect("the ready line names the DNS address")
        .parse()
        .expect("an address")
}

/// `dig @ADDR ARGS +short` (or the full output without `+short` in `args`): stdout.
fn dig(dns: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(require("dig"))
        .args([
            format!("@{}", dns.ip()),
            "-p".into(),
            dns.port().to_string(),
        ])
        .args(["+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn register(server: SocketAddr, service: &str, id: &str, address: &str, port: u16) {
    let body = serde_json::json!({
        "service": service, "id": id, "address": address, "port": port,
        "metadata": {"version": "v1"}, "health": "passing", "ttl": "300s",
    });
    let (status, text) = http(
        server,
        "POST",
        "/v1/catalog/register",
        body.to_string().as_bytes(),
    )
    .expect("API reachable");
    assert_eq!(
        status,
        200,
        "register {id}: {}",
        String::from_utf8_lossy(&text)
    );
}

#[test]
fn dig_finds_healthy_instances_by_name_tag_and_srv() {
    let server = server_with(&weft(), &["--dns", "127.0.0.1:0"]);
    let dns = dns_addr(&server);
    let v1 = instance(
        &weft(),
        &server,
        "payments",
        "payments-1",
        &["--metadata", "version=v1"],
    );
    let v2 = instance(
        &weft(),
        &server,
        "payments",
        "payments-2",
        &["--metadata", "version=v2"],
    );
    let port = |i: &weft_testkit::mesh::Instance| i.sidecar.listener("inbound").port();
    let (p1, p2) = (port(&v1), port(&v2));

    // A: the sidecars' registered address, once (an RRset holds each address once).
    assert_eq!(
        dig(dns, &["payments.service.weft", "A", "+short"]).trim(),
        "127.0.0.1"
    );
    // SRV, both forms: each instance's inbound port, a target that resolves.
    for name in ["_payments._tcp.service.weft", "payments.service.weft"] {
        let srv = lines(&dig(dns, &[name, "SRV", "+short"]));
        let mut want = vec![
            format!("1 1 {p1} 7f000001.addr.weft."),
            format!("1 1 {p2} 7f000001.addr.weft."),
        ];
        want.sort();
        assert_eq!(srv, want, "{name}");
    }
    assert_eq!(
        dig(dns, &["7f000001.addr.weft", "A", "+short"]).trim(),
        "127.0.0.1"
    );
    // A tag is a metadata value.
    let srv = dig(dns, &["_payments._v2.service.weft", "SRV", "+short"]);
    assert_eq!(lines(&srv), vec![format!("1 1 {p2} 7f000001.addr.weft.")]);
    let srv = dig(dns, &["v1.payments.service.weft", "SRV", "+short"]);
    assert_eq!(lines(&srv), vec![format!("1 1 {p1} 7f000001.addr.weft.")]);
    // Over TCP the same.
    let srv = lines(&dig(
        dns,
        &["payments.service.weft", "SRV", "+short", "+tcp"],
    ));
    assert_eq!(srv.len(), 2);

    // Unknown names: NXDOMAIN; names outside the domain: REFUSED (not a resolver).
    let full = dig(dns, &["nope.service.weft", "A"]);
    assert!(
        full.contains("status: NXDOMAIN") && full.contains("flags: qr aa"),
        "{full}"
    );
    let full = dig(dns, &["example.com", "A"]);
    assert!(full.contains("status: REFUSED"), "{full}");

    // An instance whose app fails its health check leaves the answers.
    drop(v2.app);
    eventually(
        "payments-2 out of the SRV answer",
        Duration::from_secs(15),
        || {
            let srv = lines(&dig(dns, &["payments.service.weft", "SRV", "+short"]));
            (srv == vec![format!("1 1 {p1} 7f000001.addr.weft.")]).then_some(())
        },
    );
    drop(v1.app);
    eventually(
        "payments NXDOMAIN with no healthy instance",
        Duration::from_secs(15),
        || {
            dig(dns, &["payments.service.weft", "A"])
                .contains("status: NXDOMAIN")
                .then_some(())
        },
    );

    // The server counts what it answered.
    let (_, metrics) = http(server.addr, "GET", "/metrics", b"").expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    let n = metric_value(
        &metrics,
        "weft_control_dns_queries_total{transport=\"udp\",rcode=\"noerror\"}",
    );
    assert!(n.is_some_and(|n| n >= 8.0), "{metrics}");
    assert!(metric_value(
        &metrics,
        "weft_control_dns_queries_total{transport=\"tcp\",rcode=\"noerror\"}"
    )
    .is_some());
}

#[test]
fn five_thousand_instances_come_back_over_tcp_after_tc() {
    let server = server_with(
        &weft(),
        &[
            "--dns",
            "127.0.0.1:0",
            "--max-instances-per-service",
            "6000",
        ],
    );
    let dns = dns_addr(&server);
    // 5,000 instances on 1,000 hosts (5 ports each), registered from 8 threads.
    std::thread::scope(|s| {
        for t in 0..8 {
            let server = server.addr;
            s.spawn(move || {
                for i in (t..5000).step_by(8) {
                    let host = i / 5;
                    let address = format!("10.1.{}.{}", host / 250, host % 250 + 1);
                    register(
                        server,
                        "big",
                        &format!("big-{i}"),
                        &address,
                        20000 + (i % 5) as u16,
                    );
                }
            });
        }
    });
    eventually(
        "5,000 instances in the view",
        Duration::from_secs(30),
        || {
            let full = dig(dns, &["big.service.weft", "A", "+tcp"]);
            full.contains("ANSWER: 1000,").then_some(())
        },
    );
    // UDP alone (+ignore: do not retry): cut to what fits, with TC.
    let udp = dig(dns, &["big.service.weft", "A", "+ignore", "+bufsize=1232"]);
    assert!(udp.contains("flags: qr aa tc"), "{udp}");
    // dig's own fallback: TC over UDP, then every address over TCP.
    let full = dig(dns, &["big.service.weft", "A", "+bufsize=1232"]);
    assert!(full.contains("Truncated, retrying in TCP mode"), "{full}");
    let all = dig(dns, &["big.service.weft", "A", "+short"]);
    let mut want: Vec<String> = (0..1000)
        .map(|h| format!("10.1.{}.{}", h / 250, h % 250 + 1))
        .collect();
    want.sort();
    assert_eq!(lines(&all), want, "every host, each once");
    // SRV for 5,000 cannot fit one message (≥ 20 bytes a record): what fits, with TC.
    let srv = dig(dns, &["big.service.weft", "SRV", "+tcp"]);
    assert!(
        srv.contains("flags: qr aa tc"),
        "{}",
        &srv[..srv.len().min(600)]
    );
}

#[test]
fn malformed_packets_never_stop_the_dns_server() {
    let server = server_with(&weft(), &["--dns", "127.0.0.1:0"]);
    let dns = dns_addr(&server);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut rng = fastrand::Rng::with_seed(19);
    for _ in 0..2000 {
        let len = rng.usize(0..700);
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        sock.send_to(&junk, dns).expect("send");
    }
    // TCP: a length prefix promising more than is sent, then silence; a garbage stream.
    use std::io::Write;
    let mut half = std::net::TcpStream::connect(dns).expect("connect");
    half.write_all(&[0x01, 0x00, 1, 2, 3]).expect("write");
    let mut junk = std::net::TcpStream::connect(dns).expect("connect");
    let _ = junk.write_all(&[0u8; 3000]);
    // Still answering, over both transports.
    register(server.addr, "alive", "alive-1", "127.0.0.2", 80);
    eventually("an answer after the junk", Duration::from_secs(10), || {
        (dig(dns, &["alive.service.weft", "A", "+short"]).trim() == "127.0.0.2").then_some(())
    });
    assert_eq!(
        dig(dns, &["alive.service.weft", "A", "+short", "+tcp"]).trim(),
        "127.0.0.2"
    );
    // A message with an id but nonsense after the header: FORMERR, same id (once the junk is
    // through: UDP drops what overflows a socket's buffer, the junk's answers included).
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut bad = vec![0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0x3f; 40]);
    sock.send_to(&bad, dns).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("a FORMERR reply");
    let reply = &buf[..n];
    assert_eq!(reply[..2], [0xbe, 0xef], "the query's id");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    assert!(
        server.proc.stderr().find("panicked").is_none(),
        "{}",
        server.proc.stderr()
    );
}

#[test]
fn a_bad_dns_flag_is_refused_before_anything_starts() {
    for (flag, value, says) in [
        (
            "--dns",
            "localhost",
            "--dns localhost: expected IP:PORT or off",
        ),
        ("--dns-domain", "a..b", "--dns-domain"),
    ] {
        let dir = weft_testkit::temp_dir().join("data").display().to_string();
        let mut args = vec!["server", "--listen", "127.0.0.1:0", "--data-dir", &dir];
        if flag != "--dns" {
            args.extend(["--dns", "127.0.0.1:0"]);
        }
        args.extend([flag, value]);
        let (ok, out, err) = weft_cli(&weft(), &args);
        assert!(!ok, "{flag} {value}: {out}");
        assert!(err.contains(says), "{flag} {value}: {err}");
        assert!(
            !std::path::Path::new(&dir).join("ca.pem").exists(),
            "nothing started"
        );
    }
}
