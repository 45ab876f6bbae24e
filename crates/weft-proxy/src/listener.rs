//! Accepting client connections and serving them by the listener's protocol.
//!
//! ```text
//! accept ─► over maxConnections? close ─► HTTP  ─────────────────► HTTP/1.1 or h2c (hyper)
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

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use weft_model::{ListenerLimits, ListenerProtocol};

use crate::forward::{self, ListenerContext};
use crate::metrics::ListenerStats;
use crate::snapshot::HttpBuilder;
use crate::stream;

/// The HTTP server settings a listener's limits imply.
pub fn http_builder(limits: &ListenerLimits) -> HttpBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_buf_size(limits.max_request_header_bytes as usize)
        .max_headers(limits.max_request_headers as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets as usize)
        .max_header_list_size(limits.max_request_header_bytes)
        // A peer that stops answering pings is gone; free its streams.
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
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
    ctx: Arc<ListenerContext>,
    stats: ListenerStats,
    alive: mpsc::Sender<()>,
) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    let running = Running {
        name: ctx.name.clone(),
        configured,
        local: ctx.local,
        stop,
    };
    tokio::spawn(accept_loop(listener, ctx, stats, stop_rx, alive));
    running
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
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
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = ctx.snapshot.load();
        let Some(settings) = snapshot.listener(&ctx.name) else {
            continue; // removed in the instant before this loop stops
        };
        if active.load(Ordering::Relaxed) >= settings.limits.max_connections as usize {
            // Refused cleanly: closed at once (FIN), counted; open connections go on.
            ctx.metrics.connection_refused(&ctx.name, "max-connections");
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
            http: settings.http.clone(),
            limits: settings.limits.clone(),
            progress,
            stop: stop.clone(),
            _active: ActiveGuard::new(&active),
            _alive: alive.clone(),
        };
        tokio::spawn(conn.serve(io));
    }
}

/// Decrements the listener's open-connection count when the connection ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(n: &Arc<AtomicUsize>) -> ActiveGuard {
        n.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(n.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection and the settings it was accepted with.
struct Connection {
    ctx: Arc<ListenerContext>,
    client: SocketAddr,
    protocol: ListenerProtocol,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mesh: Option<crate::snapshot::MeshListener>,
    http: Arc<HttpBuilder>,
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
            (ListenerProtocol::HTTP, _) => Box::pin(self.serve_http(io, false)).await,
            (ListenerProtocol::TCP, _) => {
                Box::pin(stream::serve_tcp(&self.ctx, io, self.client)).await
            }
            (ListenerProtocol::TLS, None) => {
                Box::pin(stream::serve_passthrough(&self.ctx, io, self.client)).await
            }
            (ListenerProtocol::HTTPS, None) => {} // validation makes this impossible
            (protocol, Some(acceptor)) => Box::pin(self.serve_tls(protocol, acceptor, io)).await,
        }
    }

    async fn serve_tls(
        self,
        protocol: ListenerProtocol,
        acceptor: tokio_rustls::TlsAcceptor,
        io: CountingIo,
    ) {
        let Some(tls) = self.handshake(&acceptor, io).await else {
            return;
        };
        if protocol == ListenerProtocol::HTTPS {
            self.serve_http(tls, true).await;
        } else {
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            stream::serve_terminated(&self.ctx, tls, sni, self.client).await;
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
        let judged = |snapshot: &crate::snapshot::Snapshot| -> Result<(), String> {
            let verdict = snapshot
                .listener(&self.ctx.name)
                .and_then(|l| l.mesh.as_ref())
                .map(|m| m.authz.connection(source.as_deref()));
            match verdict {
                Some(v) if v.action == weft_model::Action::Allow => Ok(()),
                Some(v) => Err(v.reason),
                None => Err("the listener no longer serves the mesh".to_string()),
            }
        };
        let deny = |reason: &str, open: bool| {
            self.ctx
                .metrics
                .connection_refused(&self.ctx.name, "denied-by-intention");
            tracing::info!(
                listener = %self.ctx.name,
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
        let serve = stream::serve_terminated(&self.ctx, io, None, self.client);
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

    async fn handshake(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        io: CountingIo,
    ) -> Option<tokio_rustls::server::TlsStream<CountingIo>> {
        let timeout = self.limits.tls_handshake_timeout.get();
        match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(listener = %self.ctx.name, client = %self.client, error = %e, "TLS handshake failed");
                self.ctx
                    .metrics
                    .connection_refused(&self.ctx.name, "tls-handshake");
                None
            }
            Err(_) => {
                self.ctx
                    .metrics
                    .connection_refused(&self.ctx.name, "tls-handshake-timeout");
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

    /// Serves HTTP; `peer` is the caller's verified SPIFFE ID (mesh mutual TLS).
    async fn serve_http_as<I>(mut self, io: I, secure: bool, peer: Option<Arc<str>>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let client = forward::Client::new(self.client, secure).with_peer(peer);
        let svc = service_fn(move |req| forward::handle(ctx.clone(), client.clone(), req));
        let conn = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout.get();
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

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How often an open mesh TCP connection looks for a new snapshot to be judged against.
const TCP_RECHECK: Duration = Duration::from_millis(500);

/// Counts bytes in and out; publishes totals when the connection ends (one atomic add per
/// direction per connection, not per read).
pub(crate) struct CountingIo {
    inner: TcpStream,
    stats: ListenerStats,
    /// Bumped on every read and write: the idle watchdog compares it over time.
    progress: Arc<AtomicU64>,
    read: u64,
    written: u64,
}

impl Drop for CountingIo {
    fn drop(&mut self) {
        self.stats.bytes_in.inc_by(self.read);
        self.stats.bytes_out.inc_by(self.written);
        self.stats.open.dec();
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
