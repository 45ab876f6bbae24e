//! Transparent mode (`weft sidecar --transparent`): the application's outbound TCP is
//! redirected to the sidecar by iptables rules in its network namespace, and each
//! connection goes where the application meant it to go — through the mesh when the
//! destination is a mesh service's instance, untouched (or refused) otherwise.
//!
//! ```text
//! app connect(10.0.0.7:8080) ─► nat OUTPUT ─► WEFT_OUTPUT ─► REDIRECT :15006 (this listener)
//!   SO_ORIGINAL_DST = 10.0.0.7:8080 ─► a mesh service's instance? ─► its out-<service>
//!                                       │  listener (routes, mTLS, intentions, metrics)
//!                                       └► not in the mesh: connect to it as it is
//!                                          (`allow-any`) or close (`registry-only`)
//! ```
//!
//! A destination is recognised by the catalog: the addresses of the services the sidecar
//! already calls (their `Endpoints`), else the control plane is asked which service's
//! virtual IP it is or which service has an instance at that IP
//! (`GET /v1/catalog/addresses/{ip}`), and the sidecar subscribes to it on the spot: the first connection waits for that one subscription (at most
//! [`SUBSCRIBE_WAIT`]). IPs that are not in the mesh are remembered for
//! [`NEGATIVE_TTL`], so traffic to the outside asks the control plane rarely.
//!
//! Nothing is sniffed: a mesh service's protocol comes from its registration
//! (`--app-protocol`), and other traffic is spliced as bytes. So protocols where the
//! server speaks first (MySQL/MariaDB, SMTP, PostgreSQL's greeting) never wait for a
//! client byte that will not come.
//!
//! The sidecar's own traffic is never redirected (its uid is excluded), nor loopback, nor
//! the ports and CIDRs the operator excludes. The rules live in two chains of the nat
//! table, `WEFT_OUTPUT` (jumped to from `OUTPUT`) and `WEFT_INBOUND` (from `PREROUTING`,
//! sending the application's port to the mutual-TLS inbound listener); installing removes
//! any left by a sidecar killed with `-9` first, so it is idempotent, and the sidecar
//! removes them when it exits.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{control_api, SidecarSpec};
use crate::{config::Snapshot, proxy::ProxyWatch, telemetry::metrics::Metrics};

/// The nat chain of outbound redirection.
pub const CHAIN_OUT: &str = "WEFT_OUTPUT";
/// The nat chain of inbound redirection.
pub const CHAIN_IN: &str = "WEFT_INBOUND";
/// How long the first connection to a newly found mesh service waits for its subscription.
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How long an IP found outside the mesh is remembered as such.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// IPs remembered as outside the mesh, at most.
const NEGATIVE_MAX: usize = 4096;
/// Connecting to a destination outside the mesh gives up after this long.
const PASSTHROUGH_CONNECT: Duration = Duration::from_secs(10);

/// What happens to connections to destinations outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// They go where the application meant, untouched.
    AllowAny,
    /// They are closed at once (and counted).
    RegistryOnly,
}

impl OutboundPolicy {
    /// `allow-any` or `registry-only`.
    pub fn parse(s: &str) -> Option<OutboundPolicy> {
        match s {
            "allow-any" => Some(OutboundPolicy::AllowAny),
            "registry-only" => Some(OutboundPolicy::RegistryOnly),
            _ => None,
        }
    }
}

/// The redirection rules of one sidecar's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The transparent listener's port (outbound connections are sent there).
    pub port: u16,
    /// The sidecar's uid: its own connections are never redirected.
    pub uid: u32,
    /// Destination ports never redirected.
    pub exclude_ports: Vec<u16>,
    /// Destination CIDRs never redirected (`10.0.0.0/8`, `fd00::/8`).
    pub exclude_cidrs: Vec<(IpAddr, u8)>,
    /// Inbound: connections arriving for the application's port (first) are sent to the
    /// inbound listener's port (second), so callers outside the mesh cannot skip it.
    pub inbound: Option<(u16, u16)>,
}

/// One `iptables`/`ip6tables` invocation: the program and its arguments.
pub type Command = (&'static str, Vec<String>);

impl Redirect {
    /// Parses `--exclude-outbound-cidrs` entries (`IP/LEN` or a bare IP).
    pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}`: not an IP address or CIDR"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0-{max}"))?,
        };
        Ok((ip, len))
    }

    /// The commands that install the rules for one family (after [`Redirect::removal`]).
    pub fn installation(&self, v6: bool) -> Vec<Command> {
        let nat = |args: &[&str]| nat(v6, args);
        let loopback = if v6 { "::1/128" } else { "127.0.0.0/8" };
        let uid = self.uid.to_string();
        let port = self.port.to_string();
        let mut out = vec![
            nat(&["-N", CHAIN_OUT]),
            nat(&[
                "-A",
                CHAIN_OUT,
                "-m",
                "owner",
                "--uid-owner",
                &uid,
                "-j",
                "RETURN",
            ]),
            nat(&["-A", CHAIN_OUT, "-d", loopback, "-j", "RETURN"]),
        ];
        for p in &self.exclude_ports {
            let p = p.to_string();
            out.push(nat(&[
                "-A", CHAIN_OUT, "-p", "tcp", "--dport", &p, "-j", "RETURN",
            ]));
        }
        for (ip, len) in self
            .exclude_cidrs
            .iter()
            .filter(|(ip, _)| ip.is_ipv6() == v6)
        {
            let cidr = format!("{ip}/{len}");
            out.push(nat(&["-A", CHAIN_OUT, "-d", &cidr, "-j", "RETURN"]));
        }
        out.push(nat(&[
            "-A",
            CHAIN_OUT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ]));
        out.push(nat(&["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN_OUT]));
        if let Some((app, inbound)) = self.inbound {
            let (app, inbound) = (app.to_string(), inbound.to_string());
            out.push(nat(&["-N", CHAIN_IN]));
            out.push(nat(&[
                "-A",
                CHAIN_IN,
                "-p",
                "tcp",
                "--dport",
                &app,
                "-j",
                "REDIRECT",
                "--to-ports",
                &inbound,
            ]));
            out.push(nat(&["-A", "PREROUTING", "-p", "tcp", "-j", CHAIN_IN]));
        }
        out
    }

    /// The commands that remove every rule weft installs in a family (each may fail when
    /// there is nothing to remove; the jumps are deleted until none is left).
    pub fn removal(v6: bool) -> Vec<Command> {
        let nat = |args: &[&str]| nat(v6, args);
        vec![
            nat(&["-D", "OUTPUT", "-p", "tcp", "-j", CHAIN_OUT]),
            nat(&["-F", CHAIN_OUT]),
            nat(&["-X", CHAIN_OUT]),
            nat(&["-D", "PREROUTING", "-p", "tcp", "-j", CHAIN_IN]),
            nat(&["-F", CHAIN_IN]),
            nat(&["-X", CHAIN_IN]),
        ]
    }

    /// The rules as shell commands, for review (`--print-rules`).
    pub fn script(&self, v6: bool) -> String {
        Self::removal(v6)
            .into_iter()
            .map(|c| format!("{} 2>/dev/null || true", shell(&c)))
            .chain(self.installation(v6).iter().map(shell))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Removes any rules left behind, then installs these: IPv4 must succeed (else
    /// nothing is left installed); IPv6 is tried when `v6` (the sidecar listens on
    /// `[::1]` too) and its failure only logged. Returns whether IPv6 is redirected.
    pub fn install(&self, v6: bool) -> Result<bool, String> {
        Self::remove();
        for c in self.installation(false) {
            if let Err(e) = run(&c) {
                Self::remove();
                return Err(e);
            }
        }
        if !v6 {
            return Ok(false);
        }
        for c in self.installation(true) {
            if let Err(e) = run(&c) {
                tracing::warn!(error = %e, "IPv6 outbound connections are not redirected");
                for c in Self::removal(true) {
                    let _ = run(&c);
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes every rule weft installs, in both families; quiet when there are none.
    pub fn remove() {
        for v6 in [false, true] {
            for c in Self::removal(v6) {
                // A jump may be there more than once (rules added by hand, or by an
                // older version): delete until iptables says there is none.
                for _ in 0..16 {
                    if run(&c).is_err() || c.1.get(3).map(String::as_str) != Some("-D") {
                        break;
                    }
                }
            }
        }
    }
}

/// `iptables -w -t nat ARGS` (or ip6tables).
fn nat(v6: bool, args: &[&str]) -> Command {
    let prog = if v6 { "ip6tables" } else { "iptables" };
    let mut v = vec!["-w".to_string(), "-t".into(), "nat".into()];
    v.extend(args.iter().map(|a| a.to_string()));
    (prog, v)
}

fn shell(c: &Command) -> String {
    std::iter::once(c.0.to_string())
        .chain(c.1.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(c: &Command) -> Result<(), String> {
    let out = std::process::Command::new(c.0)
        .args(&c.1)
        .output()
        .map_err(|e| format!("{}: {e} (install iptables: apt install iptables)", c.0))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            shell(c),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The uid this process runs as (from `/proc/self/status`: no unsafe code).
pub fn own_uid() -> Result<u32, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1)) // real, effective, ...: the effective
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| "/proc/self/status: no Uid line".to_string())
}

/// The mesh destinations a sidecar calls now: instance address → the local listener that
/// calls its service.
#[derive(Debug, Default)]
pub struct Destinations {
    /// Local listeners that serve HTTP (the others are TCP).
    http: std::collections::HashSet<SocketAddr>,
    by_endpoint: HashMap<SocketAddr, SocketAddr>,
    /// None: instances of several services share this IP (then only the port decides).
    by_ip: HashMap<IpAddr, Option<SocketAddr>>,
    by_service: HashMap<String, SocketAddr>,
}

impl Destinations {
    /// From the proxy's configuration: each `sidecar/out-<service>` listener and the
    /// endpoints of `<service>`.
    pub fn of(snapshot: &Snapshot, listeners: &[(String, SocketAddr)]) -> Destinations {
        let endpoints = |service: &str| -> Vec<String> {
            snapshot
                .config
                .services
                .iter()
                .find(|s| s.metadata.name == service)
                .map(|s| s.spec.endpoints.iter().map(|e| e.address.clone()).collect())
                .unwrap_or_default()
        };
        let mut d = Destinations::from_parts(listeners, endpoints);
        let http_listeners = snapshot
            .config
            .gateways
            .iter()
            .filter(|g| g.metadata.name == super::GATEWAY)
            .flat_map(|g| g.spec.listeners.iter())
            .filter(|l| l.protocol == weft_model::ListenerProtocol::HTTP)
            .map(|l| format!("{}/{}", super::GATEWAY, l.name));
        for name in http_listeners {
            if let Some((_, local)) = listeners.iter().find(|(n, _)| *n == name) {
                d.http.insert(*local);
            }
        }
        d
    }

    /// From the bound listeners and each service's endpoint addresses.
    fn from_parts(
        listeners: &[(String, SocketAddr)],
        endpoints: impl Fn(&str) -> Vec<String>,
    ) -> Destinations {
        let mut d = Destinations::default();
        for (name, local) in listeners {
            let Some(service) = name.strip_prefix("sidecar/out-") else {
                continue;
            };
            let addresses = endpoints(service);
            if addresses.is_empty() {
                continue; // not known yet: a connection now would find nothing to call
            }
            d.by_service.insert(service.to_string(), *local);
            for a in addresses {
                let Ok(addr) = a.parse::<SocketAddr>() else {
                    continue;
                };
                d.by_endpoint.insert(addr, *local);
                let slot = d.by_ip.entry(addr.ip()).or_insert(Some(*local));
                if *slot != Some(*local) {
                    *slot = None;
                }
            }
        }
        d
    }

    /// The local listener for a connection to `dst`: its exact instance address, else its
    /// IP when only one service has instances there.
    pub fn lookup(&self, dst: SocketAddr) -> Option<SocketAddr> {
        self.by_endpoint
            .get(&dst)
            .copied()
            .or_else(|| self.by_ip.get(&dst.ip()).copied().flatten())
    }

    /// Whether the local listener at `local` serves HTTP.
    pub fn is_http(&self, local: SocketAddr) -> bool {
        self.http.contains(&local)
    }

    /// The local listener of `service`, once it has endpoints.
    pub fn service(&self, service: &str) -> Option<SocketAddr> {
        self.by_service.get(service).copied()
    }
}

/// Finds and subscribes to the mesh service at an address the sidecar does not call yet.
pub struct OnDemand {
    servers: Vec<String>,
    specs: watch::Sender<SidecarSpec>,
    outside: Mutex<HashMap<IpAddr, Instant>>,
    /// Virtual IPs met so far → their service (a VIP stays with its service for good).
    virtual_ips: Mutex<HashMap<IpAddr, String>>,
}

impl OnDemand {
    /// Asks `servers` (in turn); subscribes by adding upstreams to `specs`.
    pub fn new(servers: Vec<String>, specs: watch::Sender<SidecarSpec>) -> OnDemand {
        OnDemand {
            servers,
            specs,
            outside: Mutex::new(HashMap::new()),
            virtual_ips: Mutex::new(HashMap::new()),
        }
    }

    /// The mesh service whose virtual IP `ip` is, or the one service with an instance
    /// there (None: none, several, or the control plane could not say), remembered as
    /// outside for [`NEGATIVE_TTL`] when none.
    async fn service_at(&self, ip: IpAddr) -> Option<String> {
        if let Some(service) = self
            .virtual_ips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
        {
            return Some(service.clone());
        }
        {
            let mut outside = self.outside.lock().unwrap_or_else(|p| p.into_inner());
            match outside.get(&ip) {
                Some(at) if at.elapsed() < NEGATIVE_TTL => return None,
                Some(_) => {
                    outside.remove(&ip);
                }
                None => {}
            }
        }
        let path = format!("/v1/catalog/addresses/{ip}");
        for server in &self.servers {
            let Ok((200, body)) = control_api::call(server, "GET", &path, None).await else {
                continue;
            };
            if let Some(service) = body["virtual"].as_str() {
                self.virtual_ips
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ip, service.to_string());
                return Some(service.to_string());
            }
            let mut services: Vec<&str> = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["service"].as_str())
                .collect();
            services.sort_unstable();
            services.dedup();
            return match services.as_slice() {
                [one] => Some(one.to_string()),
                [] => {
                    let mut outside = self.outside.lock().unwrap_or_else(|p| p.into_inner());
                    if outside.len() >= NEGATIVE_MAX {
                        outside.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                        if outside.len() >= NEGATIVE_MAX {
                            outside.clear();
                        }
                    }
                    outside.insert(ip, Instant::now());
                    None
                }
                several => {
                    tracing::warn!(%ip, services = ?several, "instances of several services share this IP: connections to it are not sent through the mesh unless they name an instance's exact address");
                    None
                }
            };
        }
        tracing::warn!(%ip, "the control plane could not say which service is at this address");
        None
    }

    /// Adds `service` to the upstreams (a local listener on an ephemeral port).
    fn subscribe(&self, service: &str) {
        self.specs.send_if_modified(|spec| {
            if spec.upstreams.iter().any(|(n, _)| n == service) {
                return false;
            }
            tracing::info!(service, "subscribing on demand (transparent mode)");
            spec.upstreams
                .push((service.to_string(), "127.0.0.1:0".to_string()));
            true
        });
    }
}

/// A destinations table and what it was built from (snapshot, listener count).
type Built = (Arc<Snapshot>, usize, Arc<Destinations>);

/// What the transparent listener needs, shared by its connections.
struct Front {
    proxy: ProxyWatch,
    on_demand: Arc<OnDemand>,
    policy: OutboundPolicy,
    metrics: Arc<Metrics>,
    /// The snapshot and listener count the table was built from (the snapshot is held, so
    /// a newer one can never reuse its address), and the table.
    cache: Mutex<Option<Built>>,
}

impl Front {
    fn destinations(&self) -> Arc<Destinations> {
        let snapshot = self.proxy.snapshot();
        let listeners = self.proxy.listeners();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, n, d)) = cache.as_ref() {
            if Arc::ptr_eq(built_from, &snapshot) && *n == listeners.len() {
                return d.clone();
            }
        }
        let d = Arc::new(Destinations::of(&snapshot, &listeners));
        *cache = Some((snapshot, listeners.len(), d.clone()));
        d
    }

    /// The local listener that calls the mesh service at `dst`, subscribing to it first
    /// when it is new; None: `dst` is not in the mesh.
    async fn mesh_route(&self, dst: SocketAddr) -> Option<(SocketAddr, bool)> {
        let known = self.destinations();
        if let Some(local) = known.lookup(dst) {
            return Some((local, known.is_http(local)));
        }
        let service = self.on_demand.service_at(dst.ip()).await?;
        self.on_demand.subscribe(&service);
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        loop {
            let known = self.destinations();
            if let Some(local) = known.service(&service) {
                return Some((local, known.is_http(local)));
            }
            if Instant::now() >= deadline {
                tracing::warn!(%service, "no endpoints arrived for an on-demand subscription in time");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn serve(self: Arc<Front>, mut client: TcpStream, local: SocketAddr) {
        let _ = client.set_nodelay(true);
        let Some(dst) = original_dst(&client, local) else {
            self.metrics.transparent("not-redirected");
            return;
        };
        let mut route = self.mesh_route(dst).await;
        if let Some((_, true)) = route {
            // An HTTP service: the mesh carries HTTP only. What the client sends first
            // decides; a client that says nothing yet goes through the mesh all the same.
            let detected = detect(&client).await;
            self.metrics.transparent_protocol(detected.label());
            if matches!(detected, Detected::Tls | Detected::Other) {
                tracing::debug!(%dst, protocol = detected.label(), "not HTTP for an HTTP service: not through the mesh");
                route = None;
            }
        }
        let (outcome, upstream) = match route {
            Some((listener, _)) => ("mesh", TcpStream::connect(listener).await),
            None if self.policy == OutboundPolicy::RegistryOnly => {
                tracing::debug!(%dst, "outside the mesh: refused (registry-only)");
                self.metrics.transparent("refused");
                return;
            }
            None => (
                "passthrough",
                tokio::time::timeout(PASSTHROUGH_CONNECT, TcpStream::connect(dst))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            ),
        };
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%dst, outcome, error = %e, "intercepted connection: connect failed");
                self.metrics.transparent("failed");
                return;
            }
        };
        self.metrics.transparent(outcome);
        let _ = upstream.set_nodelay(true);
        let _ = copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// How long an intercepted connection to an HTTP service is watched for its first bytes.
pub const DETECT_WAIT: Duration = Duration::from_millis(500);
/// The most bytes detection looks at (the HTTP/2 preface is the longest sign).
const DETECT_BYTES: usize = 24;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A TLS handshake record (ClientHello).
    Tls,
    /// The HTTP/2 connection preface (prior knowledge, h2c).
    Http2,
    /// An HTTP/1.x request line.
    Http1,
    /// Something else.
    Other,
    /// Nothing within [`DETECT_WAIT`] (a client waiting for the server to speak).
    Silent,
}

impl Detected {
    fn label(self) -> &'static str {
        match self {
            Detected::Tls => "tls",
            Detected::Http2 => "http2",
            Detected::Http1 => "http1",
            Detected::Other => "other",
            Detected::Silent => "silent",
        }
    }
}

/// Classifies the first bytes of a connection; None: too few to tell yet.
pub fn classify(first: &[u8]) -> Option<Detected> {
    let &b0 = first.first()?;
    if b0 == 0x16 {
        // Handshake record, TLS 1.0-1.3 record version (3, 1..=4; 3, 0 for SSLv3 hellos).
        return match (first.get(1), first.get(2)) {
            (Some(3), Some(minor)) if *minor <= 4 => Some(Detected::Tls),
            (None, _) | (Some(3), None) => None,
            _ => Some(Detected::Other),
        };
    }
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // An HTTP/1 method: upper-case token letters, then a space.
    match first.iter().position(|b| !b.is_ascii_uppercase()) {
        Some(i) if i > 0 && first[i] == b' ' => Some(Detected::Http1),
        Some(_) => Some(Detected::Other),
        None if first.len() >= 16 => Some(Detected::Other), // no method is this long
        None => None,
    }
}

/// Peeks at `stream`'s first bytes (consuming nothing), at most [`DETECT_BYTES`] and
/// [`DETECT_WAIT`].
async fn detect(stream: &TcpStream) -> Detected {
    let deadline = tokio::time::Instant::now() + DETECT_WAIT;
    let mut buf = [0u8; DETECT_BYTES];
    let mut seen = 0;
    loop {
        let peeked = tokio::time::timeout_at(deadline, async {
            loop {
                // `peek` returns what is queued at once; wait for more than was seen.
                let n = stream.peek(&mut buf).await?;
                if n != seen || n == 0 || n == buf.len() {
                    return Ok::<usize, std::io::Error>(n);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        match peeked {
            Ok(Ok(0)) | Ok(Err(_)) => return Detected::Other, // closed at once
            Ok(Ok(n)) => {
                seen = n;
                if let Some(d) = classify(&buf[..n]) {
                    return d;
                }
                if n == buf.len() {
                    return Detected::Other;
                }
            }
            Err(_) if seen == 0 => return Detected::Silent,
            Err(_) => return classify(&buf[..seen]).unwrap_or(Detected::Other),
        }
    }
}

/// Where `stream` was going before iptables redirected it; None when it was not
/// redirected (a connection made to the listener itself).
fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let dst = dst.ok()?.as_socket()?;
    (dst != local).then_some(dst)
}

/// Serves intercepted connections accepted on `listeners` (127.0.0.1 and, when bound,
/// [::1]) for ever.
pub async fn serve(
    listeners: Vec<TcpListener>,
    proxy: ProxyWatch,
    on_demand: Arc<OnDemand>,
    policy: OutboundPolicy,
) {
    let front = Arc::new(Front {
        metrics: proxy.metrics(),
        proxy,
        on_demand,
        policy,
        cache: Mutex::new(None),
    });
    // Dropping this future (the sidecar stopping) aborts the accept loops.
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        let front = front.clone();
        loops.spawn(async move {
            let Ok(local) = l.local_addr() else { return };
            loop {
                match l.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(front.clone().serve(stream, local));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "transparent listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    while loops.join_next().await.is_some() {}
}

#[cfg(test)]
#[path = "transparent_tests.rs"]
mod tests;
