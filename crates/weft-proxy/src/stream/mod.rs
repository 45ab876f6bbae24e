//! Opaque streams: `TCP` listeners with a `TCPRoute`, and `TLS` listeners with
//! `TLSRoute`s chosen by the ClientHello's SNI, either passed through untouched or
//! terminated here and forwarded as plain bytes.
//!
//! ```text
//! TCP  ─────────────────────────────────► route (the one TCPRoute) ─┐
//! TLS passthrough: read ClientHello ─► SNI ─► route ────────────────┤─► backend by weight
//! TLS terminate:   handshake        ─► SNI ─► route ────────────────┘   ─► endpoint ─► splice
//! ```
//!
//! A splice ends when either side closes, when no byte has moved for the listener's
//! `idleTimeout`, or when the proxy drains (then the connection is closed after the
//! drain deadline by the process exit, like any other).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weft_model::{Resource, StreamRouteSpec};

use weft_model::ListenerLimits;

use crate::telemetry::metrics::{Direction, EdgeStats, Metrics, TcpOutcome};
use crate::upstream::balance::{hash64, pick_by_weight, HashKey};
use crate::upstream::outlier::Outcome;
use crate::upstream::service::Service;

/// What a stream connection needs of its listener (as configured when it was accepted).
#[derive(Clone)]
pub struct Listener<'a> {
    /// `gateway/listener`.
    pub name: &'a str,
    /// Metrics.
    pub metrics: &'a Metrics,
    /// Its `TCPRoute`s / `TLSRoute`s.
    pub table: &'a StreamTable,
    /// Its limits (handshake and idle timeouts).
    pub limits: &'a ListenerLimits,
    /// Mesh: the edge its connections travel, for per-edge metrics.
    pub edge: Option<Edge<'a>>,
}

/// The edge of a mesh listener's connections.
#[derive(Clone)]
pub enum Edge<'a> {
    /// Calls made by this service (a sidecar's outbound listener): the destination is the
    /// service each connection is sent to.
    Calls(&'a str),
    /// Calls received (a sidecar's inbound listener), from one caller.
    Receives(Arc<EdgeStats>),
}

/// Largest ClientHello read while looking for the SNI (rustls itself accepts no more).
const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

/// The stream routes of one listener.
#[derive(Debug, Default)]
pub struct StreamTable {
    routes: Vec<StreamRoute>,
}

/// One `TCPRoute` / `TLSRoute`.
#[derive(Debug)]
pub struct StreamRoute {
    /// Route name (metrics).
    pub name: String,
    hostnames: Vec<String>,
    backends: Vec<(Arc<Service>, u32)>,
    total_weight: u64,
}

impl StreamTable {
    /// Compiles the routes attached to a listener (in file order).
    pub fn build<'a>(
        routes: impl Iterator<Item = &'a Resource<StreamRouteSpec>>,
        services: &HashMap<String, Arc<Service>>,
    ) -> StreamTable {
        let routes = routes
            .map(|r| {
                let backends: Vec<_> = r
                    .spec
                    .rules
                    .iter()
                    .flat_map(|rule| &rule.backend_refs)
                    .filter(|b| b.weight > 0)
                    .filter_map(|b| {
                        services
                            .get(b.upstream().as_ref())
                            .map(|s| (s.clone(), b.weight))
                    })
                    .collect();
                StreamRoute {
                    name: r.metadata.name.clone(),
                    hostnames: r
                        .spec
                        .hostnames
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    total_weight: backends.iter().map(|(_, w)| u64::from(*w)).sum(),
                    backends,
                }
            })
            .collect();
        StreamTable { routes }
    }

    /// The route for a connection: an exact SNI match, else the longest matching
    /// `*.` wildcard, else the first route without hostnames.
    pub fn route(&self, sni: Option<&str>) -> Option<&StreamRoute> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if let Some(r) = self.routes.iter().find(|r| r.hostnames.contains(&sni)) {
                return Some(r);
            }
            let wildcard = self
                .routes
                .iter()
                .flat_map(|r| r.hostnames.iter().map(move |h| (r, h)))
                .filter_map(|(r, h)| {
                    let suffix = h.strip_prefix('*')?;
                    (sni.ends_with(suffix) && sni.len() > suffix.len()).then_some((r, suffix.len()))
                })
                .max_by_key(|(_, len)| *len);
            if let Some((r, _)) = wildcard {
                return Some(r);
            }
        }
        self.routes.iter().find(|r| r.hostnames.is_empty())
    }
}

/// Serves one accepted `TCP` connection.
pub async fn serve_tcp<S>(l: Listener<'_>, io: S, client: std::net::SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let table = l.table;
    forward(l, table.route(None), io, &[], client).await;
}

/// Serves one accepted `TLS` connection in passthrough mode: reads the ClientHello (within
/// the handshake timeout), routes by its SNI, and replays it to the backend.
pub async fn serve_passthrough<S>(l: Listener<'_>, mut io: S, client: std::net::SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match weft_tls::peek_sni(&hello) {
                weft_tls::PeekedHello::Hello(sni) => return Ok(sni),
                weft_tls::PeekedHello::Invalid(e) => return Err(e),
                weft_tls::PeekedHello::NeedMore if hello.len() >= MAX_HELLO_BYTES => {
                    return Err("ClientHello too large".into())
                }
                weft_tls::PeekedHello::NeedMore => {}
            }
            match io.read(&mut chunk).await {
                Ok(0) => return Err("closed before a complete ClientHello".into()),
                Ok(n) => hello.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let sni = match tokio::time::timeout(l.limits.tls_handshake_timeout.get(), read).await {
        Ok(Ok(sni)) => sni,
        Ok(Err(why)) => {
            tracing::debug!(listener = %l.name, %client, %why, "not a TLS ClientHello");
            l.metrics.connection_refused(l.name, "not-tls");
            return;
        }
        Err(_) => {
            l.metrics
                .connection_refused(l.name, "tls-handshake-timeout");
            return;
        }
    };
    let table = l.table;
    forward(l, table.route(sni.as_deref()), io, &hello, client).await;
}

/// Serves a `TLS` connection whose handshake the listener completed (`Terminate`).
pub async fn serve_terminated<S>(
    l: Listener<'_>,
    io: S,
    sni: Option<String>,
    client: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let table = l.table;
    forward(l, table.route(sni.as_deref()), io, &[], client).await;
}

async fn forward<S>(
    l: Listener<'_>,
    route: Option<&StreamRoute>,
    mut downstream: S,
    prefix: &[u8],
    client: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ctx_name, metrics, idle) = (l.name, l.metrics, l.limits.idle_timeout.get());
    let Some(route) = route else {
        metrics.connection_refused(ctx_name, "no-route");
        return;
    };
    let Some((service, _)) = pick_by_weight(&route.backends, route.total_weight, |(_, w)| *w)
    else {
        metrics.stream_connection(ctx_name, &route.name, "", "no-healthy-endpoints");
        return;
    };
    let record =
        |result: &str| metrics.stream_connection(ctx_name, &route.name, &service.name, result);
    let edge = match &l.edge {
        Some(Edge::Calls(source)) => Some(metrics.edge(Direction::Outbound, source, &service.name)),
        Some(Edge::Receives(e)) => Some(e.clone()),
        None => None,
    };
    let failed = || {
        if let Some(e) = &edge {
            e.tcp(TcpOutcome::Failed);
        }
    };
    let key = match service.balancer.hash_key() {
        Some(HashKey::ClientAddress) => Some(hash64(&match client.ip() {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        })),
        _ => None,
    };
    let Some(endpoint) = service.balancer.pick(key) else {
        record("no-healthy-endpoints");
        failed();
        return;
    };
    let _inflight = endpoint.start();
    let connected = service.upstream.connect(endpoint).await;
    let outcome = match &connected {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::LocalFailure,
    };
    service.record(endpoint, outcome, metrics);
    let (mut upstream, _permit) = match connected {
        Ok(u) => u,
        Err(e) => {
            metrics.connect_error(&service.name, e.code());
            record("connect-failed");
            failed();
            return;
        }
    };
    if !prefix.is_empty() && upstream.write_all(prefix).await.is_err() {
        record("connect-failed");
        failed();
        return;
    }
    record("ok");
    let started = std::time::Instant::now();
    let (received, sent) = splice(&mut downstream, &mut upstream, idle).await;
    if let Some(e) = &edge {
        e.tcp(TcpOutcome::Forwarded {
            received: received + prefix.len() as u64,
            sent,
            duration: started.elapsed(),
        });
    }
}

/// Copies both ways until both sides finish or nothing moves for `idle`; returns the
/// bytes copied from `a` to `b` and from `b` to `a`.
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut a_open = true;
    let mut b_open = true;
    let mut buf_a = vec![0u8; 16 * 1024];
    let mut buf_b = vec![0u8; 16 * 1024];
    let (mut a_to_b, mut b_to_a) = (0u64, 0u64);
    while a_open || b_open {
        let step = async {
            tokio::select! {
                // Flushed after each write: a TLS stream may keep encrypted bytes it
                // could not write yet, and nothing else would push them out before the
                // peer's next message (which may wait for these).
                r = ar.read(&mut buf_a), if a_open => match r {
                    Ok(0) | Err(_) => { a_open = false; let _ = bw.shutdown().await; Ok(()) }
                    Ok(n) => match bw.write_all(&buf_a[..n]).await {
                        Ok(()) => { a_to_b += n as u64; bw.flush().await }
                        Err(e) => Err(e),
                    },
                },
                r = br.read(&mut buf_b), if b_open => match r {
                    Ok(0) | Err(_) => { b_open = false; let _ = aw.shutdown().await; Ok(()) }
                    Ok(n) => match aw.write_all(&buf_b[..n]).await {
                        Ok(()) => { b_to_a += n as u64; aw.flush().await }
                        Err(e) => Err(e),
                    },
                },
            }
        };
        match tokio::time::timeout(idle, step).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (a_to_b, b_to_a)
}
