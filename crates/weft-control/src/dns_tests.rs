use std::{net::IpAddr, time::Duration};

use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use super::{instance, respond, Transport, Zone, MAX_UDP};
use crate::{catalog::Instance, state::View};

fn zone() -> Zone {
    Zone::new("weft", Duration::ZERO).unwrap()
}

fn view(instances: Vec<Instance>) -> View {
    View::from_instances(instances, 42)
}

fn small() -> View {
    view(vec![
        instance("payments", "p1", "10.0.0.1", 15001, "v1", false),
        instance("payments", "p2", "fd00::2", 15002, "v2", false),
        instance("payments", "p3", "10.0.0.3", 15001, "v2", true),
        instance("payments", "p4", "10.0.0.4", 15001, "v2", false),
        instance("a.b", "x", "10.0.1.1", 80, "v1", false),
    ])
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask(
    view: &View,
    name: &str,
    qtype: RecordType,
    transport: Transport,
    edns: Option<u16>,
) -> Message {
    let a = respond(view, &zone(), &query(name, qtype, edns), transport, 0).expect("an answer");
    let m = Message::from_vec(&a.bytes).expect("the answer parses");
    assert_eq!(m.metadata.response_code, a.rcode);
    assert_eq!(m.metadata.truncation, a.truncated);
    m
}

/// `ask` over UDP without EDNS.
fn udp(view: &View, name: &str, qtype: RecordType) -> Message {
    ask(view, name, qtype, Transport::Udp, None)
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn a_and_aaaa_answer_the_healthy_instances_only() {
    let v = small();
    let m = udp(&v, "payments.service.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired, "RD is copied from the query");
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(
        addresses(&m),
        ips(&["10.0.0.1", "10.0.0.4"]),
        "p3 is critical"
    );
    let m = udp(&v, "payments.service.weft.", RecordType::AAAA);
    assert_eq!(addresses(&m), ips(&["fd00::2"]));
    // Names are case-insensitive.
    let m = udp(&v, "PayMents.SERVICE.Weft.", RecordType::A);
    assert_eq!(addresses(&m), ips(&["10.0.0.1", "10.0.0.4"]));
}

#[test]
fn a_tag_selects_instances_by_a_metadata_value() {
    let v = small();
    let m = udp(&v, "v2.payments.service.weft.", RecordType::A);
    assert_eq!(addresses(&m), ips(&["10.0.0.4"]));
    let m = udp(&v, "v1.payments.service.weft.", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "NODATA");
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1, "NODATA carries the SOA");
    let m = udp(&v, "v9.payments.service.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A service name holding a dot, with and without a tag.
    let m = udp(&v, "a.b.service.weft.", RecordType::A);
    assert_eq!(addresses(&m), ips(&["10.0.1.1"]));
    let m = udp(&v, "v1.a.b.service.weft.", RecordType::A);
    assert_eq!(addresses(&m), ips(&["10.0.1.1"]));
}

#[test]
fn srv_gives_ports_and_targets_that_resolve() {
    let v = small();
    for name in ["_payments._tcp.service.weft.", "payments.service.weft."] {
        let m = ask(&v, name, RecordType::SRV, Transport::Udp, None);
        let mut srv: Vec<(u16, String)> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        srv.sort();
        assert_eq!(
            srv,
            vec![
                (15001, "0a000001.addr.weft.".to_string()),
                (15001, "0a000004.addr.weft.".to_string()),
                (
                    15002,
                    "fd000000000000000000000000000002.addr.weft.".to_string()
                ),
            ],
            "{name}"
        );
        assert_eq!(m.additionals.len(), 3, "the targets' addresses ride along");
    }
    let m = udp(&v, "_payments._v2.service.weft.", RecordType::SRV);
    assert_eq!(m.answers.len(), 2, "a tag in the RFC 2782 form");
    let m = udp(&v, "0a000004.addr.weft.", RecordType::A);
    assert_eq!(addresses(&m), ips(&["10.0.0.4"]));
    let m = udp(
        &v,
        "fd000000000000000000000000000002.addr.weft.",
        RecordType::AAAA,
    );
    assert_eq!(addresses(&m), ips(&["fd00::2"]));
    let m = udp(&v, "0a0000zz.addr.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // The RFC 2782 form names SRV records only.
    let m = udp(&v, "_payments._tcp.service.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn unknown_names_are_nxdomain_and_foreign_ones_refused() {
    let v = small();
    for name in [
        "nope.service.weft.",
        "service.weft.",
        "x.y.weft.",
        "v1.nope.service.weft.",
    ] {
        let m = ask(&v, name, RecordType::A, Transport::Udp, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(
            m.authorities.len(),
            1,
            "{name}: the SOA for negative caching"
        );
    }
    let m = udp(&v, "example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    let m = udp(&v, "weft.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    // A service whose every instance is critical has no answer either.
    let m = ask(
        &view(vec![instance("down", "d", "10.0.0.9", 1, "v1", true)]),
        "down.service.weft.",
        RecordType::A,
        Transport::Udp,
        None,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Before the view has loaded: SERVFAIL (ask again), not a false NXDOMAIN.
    let m = udp(&View::default(), "payments.service.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

fn many(n: usize, ports_per_address: usize) -> View {
    view(
        (0..n)
            .map(|i| {
                let a = i / ports_per_address;
                let addr = format!("10.{}.{}.{}", a >> 16 & 255, a >> 8 & 255, a & 255);
                instance(
                    "big",
                    &format!("i{i}"),
                    &addr,
                    20000 + (i % ports_per_address) as u16,
                    "v1",
                    false,
                )
            })
            .collect(),
    )
}

#[test]
fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let v = many(500, 1);
    // Without EDNS: 512 bytes.
    let m = udp(&v, "big.service.weft.", RecordType::A);
    assert!(m.metadata.truncation);
    assert!(!m.answers.is_empty() && m.answers.len() < 500);
    let bytes = respond(
        &v,
        &zone(),
        &query("big.service.weft.", RecordType::A, None),
        Transport::Udp,
        0,
    )
    .unwrap();
    assert!(bytes.bytes.len() <= 512);
    // EDNS asks for 4096; weft sends at most MAX_UDP, and says so in its OPT.
    let a = respond(
        &v,
        &zone(),
        &query("big.service.weft.", RecordType::A, Some(4096)),
        Transport::Udp,
        0,
    )
    .unwrap();
    assert!(a.truncated && a.bytes.len() <= MAX_UDP && a.bytes.len() > 512);
    let m = Message::from_vec(&a.bytes).unwrap();
    assert_eq!(
        m.edns.as_ref().map(|e| e.max_payload()),
        Some(MAX_UDP as u16)
    );
    // TCP: every one.
    let m = ask(&v, "big.service.weft.", RecordType::A, Transport::Tcp, None);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 500);
    let m = ask(
        &v,
        "big.service.weft.",
        RecordType::SRV,
        Transport::Tcp,
        None,
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 500);
}

#[test]
fn five_thousand_instances_answer_over_tcp_as_far_as_a_message_holds() {
    // 5,000 instances on 1,000 hosts: every address fits one TCP message.
    let v = many(5000, 5);
    let m = ask(&v, "big.service.weft.", RecordType::A, Transport::Tcp, None);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 1000);
    // 5,000 distinct addresses need at least 80,000 bytes of A records and a message holds
    // 65,535 (and hickory-proto compresses only a message's first 120 names): the answer
    // is the ~2,000 that fit, with TC, rotating between queries so that a few of them
    // cover every instance.
    let v = many(5000, 1);
    let mut seen = std::collections::BTreeSet::new();
    let mut turn = 0;
    let mut queries = 0;
    while seen.len() < 5000 && queries < 10 {
        let a = respond(
            &v,
            &zone(),
            &query("big.service.weft.", RecordType::A, None),
            Transport::Tcp,
            turn,
        )
        .unwrap();
        assert!(a.truncated && a.bytes.len() <= 65_535);
        let m = Message::from_vec(&a.bytes).unwrap();
        assert!(m.answers.len() > 2000, "{}", m.answers.len());
        seen.extend(addresses(&m));
        turn += m.answers.len() as u64;
        queries += 1;
    }
    assert_eq!((seen.len(), queries), (5000, 3));
    let m = ask(
        &v,
        "big.service.weft.",
        RecordType::SRV,
        Transport::Tcp,
        None,
    );
    assert!(
        m.metadata.truncation && m.answers.len() > 1000,
        "{}",
        m.answers.len()
    );
}

#[test]
fn records_rotate_between_queries() {
    let v = many(10, 1);
    let first = |turn| {
        let a = respond(
            &v,
            &zone(),
            &query("big.service.weft.", RecordType::A, None),
            Transport::Udp,
            turn,
        )
        .unwrap();
        Message::from_vec(&a.bytes).unwrap().answers[0].data.clone()
    };
    assert_ne!(first(0), first(1));
    assert_eq!(first(0), first(10));
}

#[test]
fn malformed_messages_get_formerr_or_nothing_and_never_panic() {
    let v = small();
    let z = zone();
    assert!(
        respond(&v, &z, &[1, 2, 3], Transport::Udp, 0).is_none(),
        "no header: nothing"
    );
    let mut resp = query("payments.service.weft.", RecordType::A, None);
    resp[2] |= 0x80;
    assert!(
        respond(&v, &z, &resp, Transport::Udp, 0).is_none(),
        "responses are not answered"
    );
    let garbage = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
    ];
    let a = respond(&v, &z, &garbage, Transport::Udp, 0).unwrap();
    let m = Message::from_vec(&a.bytes).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // Two questions: FORMERR.
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.service.weft.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.service.weft.").unwrap(),
        RecordType::A,
    ));
    let a = respond(&v, &z, &two.to_vec().unwrap(), Transport::Udp, 0).unwrap();
    assert_eq!(a.rcode, ResponseCode::FormErr);
    // EDNS version 1: BADVERS.
    let mut q =
        Message::from_vec(&query("payments.service.weft.", RecordType::A, Some(1232))).unwrap();
    q.edns.as_mut().unwrap().set_version(1);
    let a = respond(&v, &z, &q.to_vec().unwrap(), Transport::Udp, 0).unwrap();
    assert_eq!(a.rcode, ResponseCode::BADVERS);
    // Every truncation and every byte flip of real queries, and random bytes.
    let seeds = [
        query("payments.service.weft.", RecordType::A, Some(1232)),
        query("_payments._tcp.service.weft.", RecordType::SRV, None),
        query("0a000001.addr.weft.", RecordType::A, None),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut inputs = 0;
    for seed in &seeds {
        for cut in 0..seed.len() {
            super::fuzz(&seed[..cut]);
            inputs += 1;
        }
        for _ in 0..3000 {
            let mut m = seed.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
            }
            super::fuzz(&m);
            inputs += 1;
        }
    }
    for _ in 0..3000 {
        let len = rng.usize(0..600);
        let m: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        super::fuzz(&m);
        inputs += 1;
    }
    assert!(inputs > 12_000);
}

#[test]
fn a_virtual_name_answers_the_services_one_address() {
    let v = small().with_vip("payments", "240.0.0.7".parse().unwrap());
    let m = udp(&v, "payments.virtual.weft.", RecordType::A);
    assert_eq!(addresses(&m), ips(&["240.0.0.7"]));
    let m = udp(&v, "payments.virtual.weft.", RecordType::AAAA);
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0),
        "NODATA"
    );
    // Registered but not given its address yet: SERVFAIL (ask again), not NXDOMAIN.
    let m = udp(&v, "a.b.virtual.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = udp(&v, "nope.virtual.weft.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}
