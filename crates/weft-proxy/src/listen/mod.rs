//! Accepting client connections and serving them by the listener's protocol.
//!
//! ```text
//! accept ─► over maxConnections? close ─► HTTP  ─────────────────► HTTP/1.1 or HTTP/2
//!                                      ├► HTTPS ─► TLS handshake ─► HTTP/1.1 or h2 (ALPN)
//!                                      ├► TCP   ─► stream::serve_tcp
//!                                      └► TLS   ─► passthrough (SNI peek) or terminate ─► splice
//! ```
//!
//! Each connection runs in its own task and reads its listener's settings (protocol,
//! certificates, limits) from the snapshot current when it was accepted, so a reload changes
//! them for new connections without touching open ones. Each listener has its own stop
//! signal: when it is removed by a reload or the proxy shuts down, the accept loop ends (the
//! socket closes) and every connection finishes gracefully (HTTP/1: close after the
//! in-flight response; HTTP/2: GOAWAY) while the caller waits up to its drain deadline.
//!
//! HTTP is served by weft's own HTTP/1.1 server ([`h1`]) for plain requests, by hyper's
//! HTTP/1.1 server for the rest of a connection once a request is not plain, and by weft's
//! own HTTP/2 server ([`h2`]) for every connection that opens with HTTP/2's preface.

mod counting;
pub mod h1;
pub mod h2;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use weft_model::{ListenerLimits, ListenerProtocol};

use crate::config::{Snapshot, SnapshotHandle};
use crate::http::authz::MeshListener;
use crate::http::{self, HttpServer, Routes};
use crate::stream;
use crate::telemetry::metrics::{Direction, ListenerStats, TcpOutcome, UNKNOWN_SOURCE};
use crate::upstream::body::Source;
use counting::{ActiveGuard, CountingIo};

/// What every connection of a listener shares.
#[derive(Debug)]
pub struct Shared {
    /// The HTTP side: the listener's name, metrics, access log, local address.
    pub http: Arc<http::Context>,
    /// The live configuration: each request (and each stream connection) reads the
    /// version current when it starts.
    pub snapshot: SnapshotHandle,
}

impl Shared {
    /// A stream connection's view of its listener in `snapshot`; `source`: the caller's
    /// service on a sidecar's inbound listener (`None`: no identity).
    fn stream<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        source: Option<&str>,
    ) -> Option<stream::Listener<'a>> {
        let l = snapshot.listener(&self.http.name)?;
        let edge = match (&l.caller, &l.http.inbound_edge) {
            (Some(caller), _) => Some(stream::Edge::Calls(caller)),
            (None, Some(own)) => Some(stream::Edge::Receives(self.http.metrics.edge(
                Direction::Inbound,
                source.unwrap_or(UNKNOWN_SOURCE),
                own,
            ))),
            (None, None) => None,
        };
        Some(stream::Listener {
            name: &self.http.name,
            metrics: &self.http.metrics,
            table: &l.streams,
            limits: &l.limits,
            edge,
        })
    }
}

/// A bound listener, accepting until stopped.
#[derive(Debug)]
pub struct Running {
    /// `gateway/listener`.
    pub name: String,
    /// The address as configured (port 0 stays 0): what a reload compares.
    pub configured: String,
    /// The bound address.
    pub local: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Closes the socket and drains the listener's connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Starts accepting on `listener`. `alive` is held by every task; the proxy drains by
/// waiting for all clones to drop.
pub fn spawn(
    listener: TcpListener,
    configured: String,
    ctx: Arc<Shared>,
    stats: ListenerStats,
    alive: mpsc::Sender<()>,
) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    let running = Running {
        name: ctx.http.name.clone(),
        configured,
        local: ctx.http.local,
        stop,
    };
    tokio::spawn(accept_loop(listener, ctx, stats, stop_rx, alive));
    running
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Shared>,
    stats: ListenerStats,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %ctx.http.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = ctx.snapshot.load();
        let Some(settings) = snapshot.listener(&ctx.http.name) else {
            continue; // removed in the instant before this loop stops
        };
        if active.load(Ordering::Relaxed) >= settings.limits.max_connections as usize {
            // Refused cleanly: closed at once (FIN), counted; open connections go on.
            ctx.http
                .metrics
                .connection_refused(&ctx.http.name, "max-connections");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        stats.accepted.inc();
        stats.open.inc();
        let progress = Arc::new(AtomicU64::new(0));
        let io = CountingIo {
            inner: stream,
            stats: stats.clone(),
            progress: progress.clone(),
            read: 0,
            written: 0,
        };
        let conn = Connection {
            ctx: ctx.clone(),
            client,
            protocol: settings.protocol,
            tls: settings.tls.clone(),
            mesh: settings.mesh.clone(),
            server: settings.server.clone(),
            routes: settings.http.clone(),
            limits: settings.limits.clone(),
            progress,
            stop: stop.clone(),
            _active: ActiveGuard::new(&active),
            _alive: alive.clone(),
        };
        tokio::spawn(conn.serve(io));
    }
}

/// One accepted connection and the settings it was accepted with.
struct Connection {
    ctx: Arc<Shared>,
    client: SocketAddr,
    protocol: ListenerProtocol,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mesh: Option<MeshListener>,
    server: Arc<HttpServer>,
    routes: Arc<Routes>,
    limits: ListenerLimits,
    progress: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
    _active: ActiveGuard,
    _alive: mpsc::Sender<()>,
}

impl Connection {
    /// Each protocol's future is boxed separately: an idle connection then holds only the
    /// state of its own protocol, not the largest of all of them (which with TLS and
    /// HTTP/2 inlined was over 7 KB per connection).
    async fn serve(self, io: CountingIo) {
        if let (Some(mesh), Some(acceptor)) = (self.mesh.clone(), self.tls.clone()) {
            return Box::pin(self.serve_mesh(mesh.mode, acceptor, io)).await;
        }
        match (self.protocol, self.tls.clone()) {
            (ListenerProtocol::HTTP, _) => Box::pin(self.serve_plain(io)).await,
            (ListenerProtocol::TCP, _) => {
                let snapshot = self.ctx.snapshot.load_full();
                if let Some(l) = self.ctx.stream(&snapshot, None) {
                    Box::pin(stream::serve_tcp(l, io, self.client)).await
                }
            }
            (ListenerProtocol::TLS, None) => {
                let snapshot = self.ctx.snapshot.load_full();
                if let Some(l) = self.ctx.stream(&snapshot, None) {
                    Box::pin(stream::serve_passthrough(l, io, self.client)).await
                }
            }
            (ListenerProtocol::HTTPS, None) => {} // validation makes this impossible
            (protocol, Some(acceptor)) => Box::pin(self.serve_tls(protocol, acceptor, io)).await,
        }
    }

    /// Plain HTTP: nothing of HTTP is made until the client's first bytes arrive.
    async fn serve_plain(mut self, io: CountingIo) {
        if self.first_bytes(&io.inner, false).await {
            Box::pin(self.serve_http(io, false)).await
        }
    }

    async fn serve_tls(
        mut self,
        protocol: ListenerProtocol,
        acceptor: tokio_rustls::TlsAcceptor,
        io: CountingIo,
    ) {
        // Boxed: its state (the TLS connection mid-handshake, the timer) is gone once done.
        let Some(mut tls) = Box::pin(self.handshake(&acceptor, io)).await else {
            return;
        };
        if protocol == ListenerProtocol::HTTPS {
            // Records that came with the handshake's last flight are decrypted already;
            // an error is left for the HTTP server to meet and close on.
            let buffered = tls
                .get_mut()
                .1
                .process_new_packets()
                .map_or(true, |state| state.plaintext_bytes_to_read() > 0);
            if self.first_bytes(&tls.get_ref().0.inner, buffered).await {
                Box::pin(self.serve_http(tls, true)).await;
            }
        } else {
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let snapshot = self.ctx.snapshot.load_full();
            if let Some(l) = self.ctx.stream(&snapshot, None) {
                Box::pin(stream::serve_terminated(l, tls, sni, self.client)).await;
            }
        }
    }

    /// A sidecar's inbound connection: mutual TLS (or, in permissive mode, plaintext
    /// when the first byte is not a TLS handshake record).
    async fn serve_mesh(
        self,
        mode: weft_model::MtlsMode,
        acceptor: tokio_rustls::TlsAcceptor,
        io: CountingIo,
    ) {
        if mode == weft_model::MtlsMode::Permissive {
            let mut first = [0u8; 1];
            let timeout = self.limits.tls_handshake_timeout.get();
            match tokio::time::timeout(timeout, io.inner.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
                    if self.protocol == ListenerProtocol::TCP {
                        self.serve_mesh_tcp(io, None).await;
                    } else {
                        self.serve_http(io, false).await;
                    }
                    return;
                }
                Ok(Ok(1)) => {}
                _ => return, // closed, failed or silent before a byte
            }
        }
        let Some(tls) = self.handshake(&acceptor, io).await else {
            return;
        };
        let peer = weft_tls::mesh::peer_identity(tls.get_ref().1).map(Arc::<str>::from);
        if self.protocol == ListenerProtocol::TCP {
            let source = peer
                .as_deref()
                .and_then(weft_tls::spiffe::ServiceId::parse)
                .map(|id| id.service.to_string());
            return self.serve_mesh_tcp(tls, source).await;
        }
        // HTTP: intentions are judged per request (403 `denied-by-intention`), never by
        // closing the connection: a caller's sidecar would take a closed connection for
        // a failing endpoint, retry it and eject it.
        self.serve_http_as(tls, true, peer).await;
    }

    /// An opaque TCP connection to a sidecar's app from `source` (None: no identity,
    /// permissive mode): judged by the intentions when accepted, and again whenever the
    /// snapshot changes while it is open; denied, it is closed (counted as refused
    /// `denied-by-intention`, and logged).
    async fn serve_mesh_tcp<I>(self, io: I, source: Option<String>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let name = &self.ctx.http.name;
        let judged = |snapshot: &Snapshot| -> Result<(), String> {
            let verdict = snapshot
                .listener(name)
                .and_then(|l| l.mesh.as_ref())
                .map(|m| m.authz.connection(source.as_deref()));
            match verdict {
                Some(v) if v.action == weft_model::Action::Allow => Ok(()),
                Some(v) => Err(v.reason.to_string()),
                None => Err("the listener no longer serves the mesh".to_string()),
            }
        };
        let deny = |reason: &str, open: bool| {
            let metrics = &self.ctx.http.metrics;
            metrics.connection_refused(name, "denied-by-intention");
            if let Some(own) = self
                .ctx
                .snapshot
                .load()
                .listener(name)
                .and_then(|l| l.http.inbound_edge.clone())
            {
                let source = source.as_deref().unwrap_or(UNKNOWN_SOURCE);
                // Denied at once, or cut when a new intention denies it while open.
                metrics
                    .edge(Direction::Inbound, source, &own)
                    .tcp(TcpOutcome::Denied);
            }
            tracing::info!(
                listener = %name,
                client = %self.client,
                source = %source.as_deref().unwrap_or("(no identity)"),
                reason = %reason,
                open,
                "connection denied by intention"
            );
        };
        let mut seen = self.ctx.snapshot.load_full();
        if let Err(reason) = judged(&seen) {
            deny(&reason, false);
            return;
        }
        let serving = seen.clone();
        let Some(l) = self.ctx.stream(&serving, source.as_deref()) else {
            return;
        };
        let serve = stream::serve_terminated(l, io, None, self.client);
        tokio::pin!(serve);
        let mut recheck = tokio::time::interval(TCP_RECHECK);
        loop {
            tokio::select! {
                _ = &mut serve => return,
                _ = recheck.tick() => {
                    let now = self.ctx.snapshot.load_full();
                    if Arc::ptr_eq(&now, &seen) {
                        continue;
                    }
                    if let Err(reason) = judged(&now) {
                        deny(&reason, true);
                        return;
                    }
                    seen = now;
                }
            }
        }
    }

    /// Waits for a client's first bytes before any HTTP state is made for its connection
    /// (hyper's connection, buffers, the HTTP/2 variant sized in): an idle connection then
    /// holds its socket, its TLS state and this small future only (bench/tls.py's idle
    /// figures). `buffered`: bytes are already waiting (decrypted with the handshake).
    /// False when the client sent nothing within the header read timeout (a silent
    /// connection is treated like a request head that never comes), closed, or the
    /// listener is stopping.
    async fn first_bytes(&mut self, tcp: &tokio::net::TcpStream, buffered: bool) -> bool {
        if buffered {
            return true;
        }
        let wait = self.limits.header_read_timeout.get();
        let mut first = [0u8; 1];
        tokio::select! {
            // `peek`, not `readable`: readiness may be reported before any byte is there.
            r = tokio::time::timeout(wait, tcp.peek(&mut first)) => matches!(r, Ok(Ok(1))),
            _ = self.stop.changed() => false,
        }
    }

    async fn handshake(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        io: CountingIo,
    ) -> Option<tokio_rustls::server::TlsStream<CountingIo>> {
        let timeout = self.limits.tls_handshake_timeout.get();
        match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(listener = %self.ctx.http.name, client = %self.client, error = %e, "TLS handshake failed");
                self.ctx
                    .http
                    .metrics
                    .connection_refused(&self.ctx.http.name, "tls-handshake");
                None
            }
            Err(_) => {
                self.ctx
                    .http
                    .metrics
                    .connection_refused(&self.ctx.http.name, "tls-handshake-timeout");
                None
            }
        }
    }

    async fn serve_http<I>(self, io: I, secure: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_http_as(io, secure, None).await;
    }

    /// Serves HTTP; `peer` is the caller's verified SPIFFE ID (mesh mutual TLS). Plain
    /// HTTP/1.1 requests are served by weft's own server ([`h1`]) until one is not plain;
    /// hyper serves the rest of the connection from there; a connection that opens with
    /// HTTP/2's preface goes to weft's own HTTP/2 server ([`h2`]).
    async fn serve_http_as<I>(mut self, io: I, secure: bool, peer: Option<Arc<str>>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.ctx.clone();
        let accepted = self.routes.clone();
        let client = http::Client::new(self.client, secure)
            .with_peer(peer)
            .on_edge(&shared.http.metrics, accepted.inbound_edge.as_deref());
        let exchange = Exchange {
            shared,
            accepted,
            client,
        };
        let idle = self.limits.idle_timeout.get();
        let flags = h1::Flags::default();
        let limits = h1::HeadLimits {
            fields: self.limits.max_request_headers as usize,
            bytes: self.limits.max_request_header_bytes as usize,
        };
        let mut stopping = false;
        let end = {
            let own = h1::serve(
                io,
                &flags,
                limits,
                self.limits.header_read_timeout.get(),
                |req| exchange.start(req),
            );
            tokio::pin!(own);
            let mut seen = self.progress.load(Ordering::Relaxed);
            loop {
                tokio::select! {
                    end = own.as_mut() => break end,
                    _ = self.stop.changed(), if !stopping => {
                        // Closed now when no request is in flight, else after its response.
                        stopping = true;
                        flags.stopping.store(true, Ordering::Relaxed);
                        if flags.waiting.load(Ordering::Relaxed) {
                            break h1::End::Closed;
                        }
                    }
                    _ = tokio::time::sleep(idle) => {
                        let now = self.progress.load(Ordering::Relaxed);
                        if now == seen {
                            break h1::End::Closed; // nothing moved for a whole idle period
                        }
                        seen = now;
                    }
                }
            }
        };
        let h1::End::HandOff(io, read) = end else {
            return;
        };
        if stopping {
            return;
        }
        let h2 = h2::is_preface(&read);
        let io = h1::Rewound::new(io, read.freeze());
        if h2 {
            let stop = &mut self.stop;
            let limits = &self.limits;
            return h2::serve(io, &self.server.http2, limits, stop, |req| {
                exchange.start(req)
            })
            .await;
        }
        let svc = service_fn(move |req: ::http::Request<hyper::body::Incoming>| {
            exchange.start(req.map(Source::from))
        });
        let conn = self
            .server
            .http1
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let mut seen = self.progress.load(Ordering::Relaxed);
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = self.stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
                _ = tokio::time::sleep(idle) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    if now == seen {
                        // Nothing moved for a whole idle period: finish politely, but
                        // not for long.
                        conn.as_mut().graceful_shutdown();
                        break tokio::time::timeout(Duration::from_secs(1), conn)
                            .await
                            .unwrap_or(Ok(()));
                    }
                    seen = now;
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// What each request of a connection is served with.
struct Exchange {
    shared: Arc<Shared>,
    /// The routes when the connection was accepted (used if the listener has gone since).
    accepted: Arc<Routes>,
    client: http::Client,
}

impl Exchange {
    /// Serves `req` with the routes current when it arrives. Boxed: hyper moves the
    /// request's future (several KB) into its own slot, and for HTTP/2 into a task of its
    /// own, copying it each time; a box moves as a pointer, and an idle connection of the
    /// own server holds no slot for it (docs/benchmarks.md, "Where the instructions go").
    fn start(
        &self,
        req: ::http::Request<Source>,
    ) -> Pin<
        Box<
            impl Future<Output = Result<::http::Response<http::ResponseBody>, Infallible>>
                + Send
                + use<>,
        >,
    > {
        let routes = self
            .shared
            .snapshot
            .load()
            .listener(&self.shared.http.name)
            .map_or_else(|| self.accepted.clone(), |l| l.http.clone());
        Box::pin(http::handle(
            self.shared.http.clone(),
            routes,
            self.client.clone(),
            req,
        ))
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How often an open mesh TCP connection looks for a new snapshot to be judged against.
const TCP_RECHECK: Duration = Duration::from_millis(500);
