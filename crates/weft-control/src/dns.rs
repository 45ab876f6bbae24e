//! The DNS interface to the catalog (`weft server --dns ADDR`), over UDP and TCP.
//!
//! | name | answers |
//! | --- | --- |
//! | `<service>.service.<domain>` | A / AAAA of its healthy instances; SRV with their ports |
//! | `<tag>.<service>.service.<domain>` | the same, only instances with a metadata value `<tag>` (`version=v2` → `v2.payments...`) |
//! | `_<service>._tcp.service.<domain>` | RFC 2782 SRV (`_<service>._<tag>` filters by tag) |
//! | `<hex>.addr.<domain>` | the address an SRV target names (8 hex digits: IPv4, 32: IPv6) |
//! | `<service>.virtual.<domain>` | A: the service's virtual IP ([`crate::vip`]) |
//! | `<domain>` | its SOA |
//!
//! Answers come from the server's view of the catalog, so they are as fresh as the
//! discovery stream's. Healthy means what it means for endpoints: not `critical`.
//! A name that matches no healthy instance is NXDOMAIN; a known name asked for a type it
//! has none of is NODATA; names outside the domain are REFUSED (this is not a resolver).
//!
//! Size: a UDP answer fits the client's EDNS size (512 bytes without EDNS, at most
//! [`MAX_UDP`]); a larger one is cut to the records that fit and carries the TC bit, so
//! the client asks again over TCP, where a message may hold 65,535 bytes: ~2,000 A records
//! or ~1,000 SRV (hickory-proto compresses only a message's first 120 names, a guard
//! against quadratic work; full compression would fit ~4,000 A). A larger set gets TC over
//! TCP too, with the records that fit, rotating between queries. A and AAAA sets hold each
//! address once, so 5,000 instances on 1,000 hosts answer whole.
//! Additional records that do not fit are dropped without TC (RFC 2181 §9). Records are
//! rotated between queries, so clients that take the first address spread their load.
//!
//! Malformed messages get FORMERR when they carry an id, nothing otherwise; responses
//! are never answered (no loops between servers).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, SOA, SRV},
        DNSClass, Name, RData, Record, RecordType,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::{
    catalog::{Health, Instance},
    state::{State, View},
};

/// The largest UDP answer sent, whatever the client's EDNS size says: the size DNS Flag
/// Day 2020 settled on, which avoids IP fragmentation on common paths.
pub const MAX_UDP: usize = 1232;
/// A DNS message over TCP is at most this long (its length is a 16-bit prefix).
const MAX_TCP: usize = 65_535;
/// A TCP connection with no query for this long is closed (RFC 7766 asks for seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections at once; beyond, new ones are closed.
const MAX_TCP_CONNECTIONS: usize = 256;

/// What the DNS interface answers for: the domain and the TTL of its answers.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: Name,
    ttl: u32,
}

impl Zone {
    /// `domain` like `weft` (a trailing dot is optional); `ttl` of every answer (0: clients
    /// ask again each time, which keeps them on the catalog's current instances).
    pub fn new(domain: &str, ttl: Duration) -> Result<Zone, String> {
        let mut domain = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|e| format!("DNS domain `{domain}`: {e}"))?
            .to_lowercase();
        if domain.is_root() {
            return Err("DNS domain: the root cannot be weft's domain".into());
        }
        domain.set_fqdn(true);
        let ttl = u32::try_from(ttl.as_secs()).map_err(|_| "DNS TTL: too long".to_string())?;
        Ok(Zone { domain, ttl })
    }

    /// The domain, with its trailing dot.
    pub fn domain(&self) -> String {
        self.domain.to_ascii()
    }

    fn soa(&self, serial: u64) -> Record {
        let under = |label: &str| {
            Name::from_ascii(label)
                .and_then(|n| n.append_domain(&self.domain))
                .unwrap_or_else(|_| self.domain.clone())
        };
        let soa = SOA::new(
            under("ns"),
            under("hostmaster"),
            serial as u32,
            3600,
            600,
            86400,
            self.ttl,
        );
        Record::from_rdata(self.domain.clone(), self.ttl, RData::SOA(soa))
    }

    /// `<hex>.addr.<domain>`: the name an SRV record gives as the target at `ip`.
    fn addr_name(&self, ip: IpAddr) -> Name {
        let hex: String = match ip {
            IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
            IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
        };
        Name::from_ascii(format!("{hex}.addr"))
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone())
    }
}

/// The transport a query came over (it decides how large the answer may be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: the client's EDNS size (512 without EDNS), at most [`MAX_UDP`].
    Udp,
    /// TCP: 65,535 bytes.
    Tcp,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// An answer, ready to send, and how it went (for the metrics).
#[derive(Debug)]
pub struct Answered {
    /// The DNS message.
    pub bytes: Vec<u8>,
    /// Its response code.
    pub rcode: ResponseCode,
    /// Whether answer records were left out for size (the TC bit is set).
    pub truncated: bool,
}

impl Answered {
    /// The response code as a metric label: `noerror`, `nxdomain`, `refused`, ...
    pub fn rcode_label(&self) -> &'static str {
        match self.rcode {
            ResponseCode::NoError => "noerror",
            ResponseCode::NXDomain => "nxdomain",
            ResponseCode::Refused => "refused",
            ResponseCode::FormErr => "formerr",
            ResponseCode::ServFail => "servfail",
            ResponseCode::NotImp => "notimp",
            ResponseCode::BADVERS => "badvers",
            _ => "other",
        }
    }
}

/// The answer to the DNS message `query` from the catalog in `view`; `turn` rotates the
/// records (a counter per query). None: nothing to send (a response, or too short to
/// carry an id).
pub fn respond(
    view: &View,
    zone: &Zone,
    query: &[u8],
    transport: Transport,
    turn: u64,
) -> Option<Answered> {
    let header: &[u8; 12] = query.get(..12)?.try_into().ok()?;
    if header[2] & 0x80 != 0 {
        return None; // QR set: a response, never answered
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    let Ok(msg) = Message::from_vec(query) else {
        return finish(
            Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
            512,
        );
    };
    let mut resp = Message::response(id, msg.op_code);
    resp.metadata.recursion_desired = msg.recursion_desired;
    resp.queries.clone_from(&msg.queries);
    let limit = match transport {
        Transport::Udp => usize::from(msg.max_payload()).min(MAX_UDP),
        Transport::Tcp => MAX_TCP,
    };
    if let Some(edns) = &msg.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(MAX_UDP as u16);
        resp.edns = Some(ours);
        if edns.version() > 0 {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return finish(resp, limit);
        }
    }
    let rcode = match (msg.op_code, msg.queries.as_slice()) {
        (OpCode::Query, [q]) if matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) => {
            let name = q.name().to_lowercase();
            if zone.domain.zone_of(&name) {
                resp.metadata.authoritative = true;
                lookup(view, zone, &name, q.query_type(), turn, &mut resp)
            } else {
                ResponseCode::Refused
            }
        }
        (OpCode::Query, [_]) => ResponseCode::Refused,
        (OpCode::Query, _) => ResponseCode::FormErr,
        _ => ResponseCode::NotImp,
    };
    resp.metadata.response_code = rcode;
    if matches!(rcode, ResponseCode::NXDomain | ResponseCode::NoError) && resp.answers.is_empty() {
        resp.authorities.push(zone.soa(view.revision));
    }
    finish(resp, limit)
}

/// Fills `resp` with what `name` (lower-case, inside the zone) has of type `qtype`.
fn lookup(
    view: &View,
    zone: &Zone,
    name: &Name,
    qtype: RecordType,
    turn: u64,
    resp: &mut Message,
) -> ResponseCode {
    if view.revision == 0 {
        return ResponseCode::ServFail; // the view is not loaded yet: ask again
    }
    let relative = usize::from(name.num_labels() - zone.domain.num_labels());
    let labels: Vec<&str> = name
        .iter()
        .take(relative)
        .map(|l| std::str::from_utf8(l).unwrap_or(""))
        .collect();
    match labels.as_slice() {
        [] => {
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                resp.answers.push(zone.soa(view.revision));
            }
            ResponseCode::NoError
        }
        [hex, "addr"] => match decode_hex_ip(hex) {
            Some(ip) => {
                if let Some(r) = address_record(name, ip, qtype, zone.ttl) {
                    resp.answers.push(r);
                }
                ResponseCode::NoError
            }
            None => ResponseCode::NXDomain,
        },
        [rest @ .., "virtual"] if !rest.is_empty() => {
            let service = rest.join(".");
            match view.vip_of(&service) {
                Some(ip) => {
                    if let Some(r) = address_record(name, IpAddr::V4(ip), qtype, zone.ttl) {
                        resp.answers.push(r);
                    }
                    ResponseCode::NoError
                }
                // Known, its address on the way (the leader gives it): ask again.
                None if view.instances_of(&service).is_some() => ResponseCode::ServFail,
                None => ResponseCode::NXDomain,
            }
        }
        [rest @ .., "service"] if !rest.is_empty() => {
            let Some((instances, srv_only)) = select(view, rest) else {
                return ResponseCode::NXDomain;
            };
            if instances.is_empty() {
                return ResponseCode::NXDomain;
            }
            answer_instances(zone, name, &instances, qtype, srv_only, turn, resp);
            ResponseCode::NoError
        }
        _ => ResponseCode::NXDomain,
    }
}

/// The healthy instances a `service` name's labels (before `service`) select, and whether
/// the name is RFC 2782's `_service._proto` form (SRV only). None: no such service.
fn select<'v>(view: &'v View, rest: &[&str]) -> Option<(Vec<&'v Instance>, bool)> {
    let healthy = |i: &&Instance| i.health != Health::Critical;
    let tagged = |tag: &str| {
        let tag = tag.to_string();
        move |i: &&Instance| i.metadata.values().any(|v| v.eq_ignore_ascii_case(&tag))
    };
    if let [service, proto] = rest {
        if let (Some(service), Some(proto)) = (service.strip_prefix('_'), proto.strip_prefix('_')) {
            let all = view.instances_of(service)?.values().filter(healthy);
            let list: Vec<&Instance> = if proto == "tcp" {
                all.collect()
            } else {
                all.filter(tagged(proto)).collect()
            };
            return Some((list, true));
        }
    }
    // Service names may hold dots: the whole prefix as a service comes first, then the
    // first label as a tag of the rest.
    if let Some(set) = view.instances_of(&rest.join(".")) {
        return Some((set.values().filter(healthy).collect(), false));
    }
    let (tag, service) = rest.split_first()?;
    let set = view.instances_of(&service.join("."))?;
    Some((
        set.values().filter(healthy).filter(tagged(tag)).collect(),
        false,
    ))
}

/// A and AAAA (or SRV, with the targets' addresses as additional records) for `instances`.
fn answer_instances(
    zone: &Zone,
    name: &Name,
    instances: &[&Instance],
    qtype: RecordType,
    srv_only: bool,
    turn: u64,
    resp: &mut Message,
) {
    let mut endpoints: Vec<(IpAddr, u16)> = instances
        .iter()
        .filter_map(|i| Some((i.address.parse::<IpAddr>().ok()?, i.port)))
        .collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    let wants_srv = qtype == RecordType::SRV || (srv_only && qtype == RecordType::ANY);
    if wants_srv {
        let srv = rotate(endpoints.clone(), turn)
            .into_iter()
            .map(|(ip, port)| {
                let target = zone.addr_name(ip);
                Record::from_rdata(
                    name.clone(),
                    zone.ttl,
                    RData::SRV(SRV::new(1, 1, port, target)),
                )
            });
        resp.answers.extend(srv);
    }
    let mut addresses: Vec<IpAddr> = endpoints.iter().map(|(ip, _)| *ip).collect();
    addresses.dedup(); // sorted by address already
    let addresses = rotate(addresses, turn);
    if wants_srv {
        let extra = addresses.iter().filter_map(|ip| {
            let any = if ip.is_ipv4() {
                RecordType::A
            } else {
                RecordType::AAAA
            };
            address_record(&zone.addr_name(*ip), *ip, any, zone.ttl)
        });
        resp.additionals.extend(extra);
    } else if !srv_only {
        let records = addresses
            .iter()
            .filter_map(|ip| address_record(name, *ip, qtype, zone.ttl));
        resp.answers.extend(records);
    }
}

/// `list` starting at position `turn` (mod its length).
fn rotate<T>(mut list: Vec<T>, turn: u64) -> Vec<T> {
    if !list.is_empty() {
        let by = (turn % list.len() as u64) as usize;
        list.rotate_left(by);
    }
    list
}

/// An A or AAAA record for `ip`, if `qtype` asks for its family (ANY asks for both).
fn address_record(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, rdata))
}

/// The address in an `addr` label: 8 hex digits (IPv4) or 32 (IPv6).
fn decode_hex_ip(hex: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes?.as_slice() {
        b if hex.len() == 8 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        b if hex.len() == 32 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// `resp` encoded within `limit` bytes: additional records are dropped first (no TC), then
/// answers are cut to as many as fit, with TC set.
fn finish(mut resp: Message, limit: usize) -> Option<Answered> {
    let rcode = resp.metadata.response_code;
    // The encoder itself stops at 65,535 bytes and sets TC in what it wrote: that too is
    // a message that did not fit.
    let fits = |m: &Message| {
        m.to_vec()
            .ok()
            .filter(|v| v.len() <= limit && (m.metadata.truncation || v[2] & 0x02 == 0))
    };
    if let Some(bytes) = fits(&resp) {
        return Some(Answered {
            bytes,
            rcode,
            truncated: false,
        });
    }
    resp.additionals.clear();
    if let Some(bytes) = fits(&resp) {
        return Some(Answered {
            bytes,
            rcode,
            truncated: false,
        });
    }
    resp.metadata.truncation = true;
    let all = std::mem::take(&mut resp.answers);
    // The largest prefix of the answers that fits (encoding is monotonic in the count).
    let (mut fit, mut over) = (0, all.len() + 1);
    let mut best = None;
    while fit + 1 < over {
        let mid = (fit + over) / 2;
        resp.answers = all[..mid].to_vec();
        match fits(&resp) {
            Some(b) => {
                fit = mid;
                best = Some(b);
            }
            None => over = mid,
        }
    }
    let bytes = match best {
        Some(b) => b,
        None => {
            resp.answers.clear();
            match fits(&resp) {
                Some(b) => b,
                // Not even the header and question fit (a huge name in 512 bytes cannot
                // happen: the question came in a message of its own).
                None => Message::error_msg(resp.id, resp.op_code, ResponseCode::ServFail)
                    .to_vec()
                    .ok()?,
            }
        }
    };
    Some(Answered {
        bytes,
        rcode,
        truncated: true,
    })
}

/// The DNS interface's sockets and zone (`weft server --dns`).
#[derive(Debug)]
pub struct Dns {
    /// UDP socket.
    pub udp: UdpSocket,
    /// TCP listener, on the same port.
    pub tcp: TcpListener,
    /// What it answers for.
    pub zone: Zone,
}

impl Dns {
    /// Binds UDP and TCP on `addr`; port 0 picks one free for both.
    pub async fn bind(addr: SocketAddr, zone: Zone) -> std::io::Result<Dns> {
        let mut last = None;
        for _ in 0..16 {
            let tcp = TcpListener::bind(addr).await?;
            match UdpSocket::bind(tcp.local_addr()?).await {
                Ok(udp) => return Ok(Dns { udp, tcp, zone }),
                // Port 0: the TCP port's UDP twin was taken; try another.
                Err(e) if addr.port() == 0 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Counts answers (`weft_control_dns_queries_total`, `..._truncated_total`).
pub type Count = Arc<dyn Fn(&'static str, &Answered) + Send + Sync>;

/// Answers DNS over UDP and TCP from `state` until the task is dropped.
pub async fn serve(dns: Dns, state: Arc<State>, count: Count) {
    let Dns { udp, tcp, zone } = dns;
    let zone = Arc::new(zone);
    let turn = Arc::new(AtomicU64::new(0));
    let answer = {
        let (zone, turn) = (zone.clone(), turn.clone());
        Arc::new(move |query: &[u8], transport: Transport| {
            let t = turn.fetch_add(1, Ordering::Relaxed);
            let answered = respond(&state.read(), &zone, query, transport, t)?;
            count(transport.label(), &answered);
            Some(answered.bytes)
        })
    };
    let udp_task = {
        let answer = answer.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(bytes) = answer(&buf[..n], Transport::Udp) {
                    let _ = udp.send_to(&bytes, from).await;
                }
            }
        }
    };
    let tcp_task = async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue; // full: closed at once
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = serve_tcp(stream, |q| answer(q, Transport::Tcp)).await;
            });
        }
    };
    tokio::join!(udp_task, tcp_task);
}

/// One TCP connection: length-prefixed queries, answered in turn, until the client
/// closes, idles [`TCP_IDLE`], or sends something that is not a query.
async fn serve_tcp(
    mut stream: TcpStream,
    answer: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return Ok(()),
        };
        buf.resize(len, 0);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return Ok(());
        }
        let Some(bytes) = answer(&buf) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.write_all(&out)).await,
            Ok(Ok(()))
        ) {
            return Ok(());
        }
    }
}

/// An instance of `service` at `address:port`, healthy unless `critical`, with metadata
/// `version=<version>` (tests and fuzzing).
#[doc(hidden)]
pub fn instance(
    service: &str,
    id: &str,
    address: &str,
    port: u16,
    version: &str,
    critical: bool,
) -> Instance {
    Instance {
        service: service.into(),
        id: id.into(),
        address: address.into(),
        port,
        metadata: [("version".to_string(), version.to_string())].into(),
        protocol: weft_model::AppProtocol::default(),
        health: if critical {
            Health::Critical
        } else {
            Health::Passing
        },
        lease: Default::default(),
    }
}

/// For fuzzing: answers `data` from a view holding a few instances, and checks the
/// answer fits its transport and parses.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    thread_local! {
        static FIXTURE: (View, Zone) = (
            View::from_instances(
                [
                    instance("payments", "p1", "10.0.0.1", 15001, "v1", false),
                    instance("payments", "p2", "fd00::2", 15001, "v2", false),
                    instance("payments", "p3", "10.0.0.3", 15001, "v2", true),
                    instance("a.b", "x", "10.0.1.1", 80, "v1", false),
                ],
                7,
            )
            .with_vip("payments", std::net::Ipv4Addr::new(240, 0, 0, 7)),
            Zone::new("weft", Duration::ZERO).expect("a valid domain"),
        );
    }
    FIXTURE.with(|(view, zone)| {
        for transport in [Transport::Udp, Transport::Tcp] {
            if let Some(a) = respond(view, zone, data, transport, data.len() as u64) {
                let limit = if transport == Transport::Udp {
                    MAX_UDP
                } else {
                    MAX_TCP
                };
                assert!(a.bytes.len() <= limit, "answer over the transport's limit");
                assert!(Message::from_vec(&a.bytes).is_ok(), "answer does not parse");
            }
        }
    });
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
