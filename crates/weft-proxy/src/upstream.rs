//! Connections to upstream endpoints.
//!
//! Each endpoint owns its pool: a stack of idle HTTP/1.1 connections (most recently used
//! first, so the warmest connection is reused and the coldest ages out) and, for HTTP/2
//! services, one shared multiplexed connection. A request checks out a connection, and an
//! HTTP/1.1 connection comes back to the pool only when its response body has been read to
//! the end ([`Lease::release`]); a response abandoned half-way closes its connection, so a
//! half-read stream is never reused. [`reap`], run periodically by the proxy over the
//! current snapshot, closes connections idle for longer than their service's `idleTimeout`.
//!
//! An HTTP/1.1 connection's writes may die before its reads (a server answering an upload
//! early): [`KeepReading`] lets the answer be read, and such a connection is not pooled.
//!
//! Built directly on `hyper::client::conn` so that the request path decides everything
//! itself: which endpoint (the balancer already chose), the connect timeout, the HTTP/2
//! `:authority`, and why a failure happened (connect refused/timed out vs. reset), which
//! retries need (a connect failure hands the request back unsent, see [`SendError`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use weft_model::ServiceProtocol;

use crate::balance::Endpoint;
use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::keep_reading::KeepReading;

/// How a service connects to its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// HTTP/1.1 or HTTP/2.
    pub protocol: ServiceProtocol,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint.
    pub max_idle: usize,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// TLS origination, if the service asks for it.
    pub tls: Option<UpstreamTls>,
}

/// TLS to a service's endpoints, with its files loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    spec: weft_model::UpstreamTls,
    /// Hash of the files' contents: a replaced file makes a different value, so pools
    /// made with the old material are not carried into the new snapshot.
    digest: u64,
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Mesh mutual TLS: the SPIFFE ID the endpoints must prove.
    peer: Option<String>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.digest == other.digest && self.peer == other.peer
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Mesh mutual TLS to the sidecars of the service whose SPIFFE ID is `peer`. The
    /// configuration follows the proxy's identity and trust bundle as they rotate, so
    /// pools stay valid across rotations.
    pub fn mesh(
        mesh: &Arc<weft_tls::mesh::MeshTls>,
        peer: &str,
        protocol: ServiceProtocol,
    ) -> Result<UpstreamTls, weft_tls::TlsError> {
        let alpn = alpn_of(protocol);
        Ok(UpstreamTls {
            spec: weft_model::UpstreamTls::default(),
            digest: 0,
            connector: tokio_rustls::TlsConnector::from(mesh.client_config(peer, alpn)?),
            server_name: None,
            peer: Some(peer.to_string()),
        })
    }

    /// Loads the CA bundle and client certificate named by `spec`; ALPN follows `protocol`.
    pub fn load(
        config: &weft_model::Config,
        spec: &weft_model::UpstreamTls,
        protocol: ServiceProtocol,
    ) -> Result<UpstreamTls, weft_tls::TlsError> {
        let ca = spec.ca_file.as_deref().map(|f| config.resolve(f));
        let client = spec
            .client_certificate
            .as_ref()
            .map(|c| {
                weft_tls::load_cert(&config.resolve(&c.cert_file), &config.resolve(&c.key_file))
            })
            .transpose()?;
        let client_config =
            weft_tls::client_config(ca.as_deref(), client.as_ref(), alpn_of(protocol))?;
        let server_name = spec
            .server_name
            .as_ref()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|e| {
                    weft_tls::TlsError::Rustls(rustls::Error::General(format!(
                        "serverName `{n}`: {e}"
                    )))
                })
            })
            .transpose()?;
        let mut h = std::hash::DefaultHasher::new();
        let own_files = spec.ca_file.iter().chain(
            spec.client_certificate
                .iter()
                .flat_map(|c| [&c.cert_file, &c.key_file]),
        );
        for f in own_files {
            std::hash::Hash::hash(
                &std::fs::read(config.resolve(f)).unwrap_or_default(),
                &mut h,
            );
        }
        Ok(UpstreamTls {
            spec: spec.clone(),
            digest: std::hash::Hasher::finish(&h),
            connector: tokio_rustls::TlsConnector::from(client_config),
            server_name,
            peer: None,
        })
    }

    /// Runs the handshake on a connected socket; the certificate must be valid for the
    /// configured name, or else for the endpoint's IP address.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await.map_err(|e| {
            tracing::debug!(endpoint = %addr, error = %e, "upstream TLS handshake failed");
            ProxyError::UpstreamTls
        })
    }
}

fn alpn_of(protocol: ServiceProtocol) -> &'static [&'static [u8]] {
    match protocol {
        ServiceProtocol::Http => &[weft_tls::ALPN_HTTP11],
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => &[weft_tls::ALPN_H2],
    }
}

/// A connection to an endpoint: plain TCP or TLS.
pub enum UpstreamIo {
    /// Plain.
    Plain(TcpStream),
    /// TLS-originated.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Settings {
    /// Whether requests go out as HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(
            self.protocol,
            ServiceProtocol::Http2 | ServiceProtocol::Grpc
        )
    }
}

/// The connections of one endpoint.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: tokio::sync::Mutex<Option<Shared>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    /// Set when the connection's writes found the peer gone ([`KeepReading`]).
    dead_writes: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Shared {
    sender: http2::SendRequest<RequestBody>,
    last_used: Instant,
}

impl Pool {
    fn take_idle(
        &self,
        idle_timeout: Duration,
    ) -> Option<(http1::SendRequest<RequestBody>, Arc<AtomicBool>)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < idle_timeout {
                return Some((c.sender, c.dead_writes));
            }
        }
        None
    }

    fn put_idle(
        &self,
        sender: http1::SendRequest<RequestBody>,
        dead_writes: Arc<AtomicBool>,
        max_idle: usize,
    ) {
        if sender.is_closed() || dead_writes.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
                dead_writes,
            });
        }
    }

    /// Closes connections idle for longer than `idle_timeout` (dropping the sender ends the
    /// connection task, which closes the socket).
    fn evict(&self, idle_timeout: Duration) {
        let stale: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let (keep, stale) = idle
                .drain(..)
                .partition(|c| !c.sender.is_closed() && c.since.elapsed() < idle_timeout);
            *idle = keep;
            stale
        };
        drop(stale);
        if let Ok(mut h2) = self.h2.try_lock() {
            if h2
                .as_ref()
                .is_some_and(|s| s.sender.is_closed() || s.last_used.elapsed() >= idle_timeout)
            {
                *h2 = None;
            }
        }
    }
}

/// A checked-out HTTP/1.1 connection, returned to its pool by [`Lease::release`] once the
/// response has been read to the end; dropped otherwise, which closes it.
#[derive(Debug)]
pub struct Lease {
    sender: http1::SendRequest<RequestBody>,
    endpoint: Arc<Endpoint>,
    max_idle: usize,
    dead_writes: Arc<AtomicBool>,
}

impl Lease {
    /// Puts the connection back for reuse (unless its writes found the peer gone).
    pub fn release(self) {
        self.endpoint
            .pool
            .put_idle(self.sender, self.dead_writes, self.max_idle);
    }
}

/// A failed send: why, and the request itself when it never left (so it can go elsewhere).
#[derive(Debug)]
pub struct SendError {
    /// Why.
    pub error: ProxyError,
    /// The request, if nothing of it was sent.
    pub unsent: Option<Request<RequestBody>>,
}

impl SendError {
    fn unsent(error: ProxyError, req: Request<RequestBody>) -> SendError {
        SendError {
            error,
            unsent: Some(req),
        }
    }

    fn sent(error: ProxyError) -> SendError {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// The upstream side of one service.
#[derive(Debug)]
pub struct Upstream {
    /// Connection settings.
    pub settings: Settings,
    /// Counts open connections against `maxConnections`.
    breaker: Arc<crate::retry::Breaker>,
}

impl Upstream {
    /// An upstream with the given settings.
    pub fn new(settings: Settings, breaker: Arc<crate::retry::Breaker>) -> Self {
        Upstream { settings, breaker }
    }

    /// Sends `req` to `endpoint`. The request's URI must already be in the form the
    /// protocol needs (origin-form for HTTP/1.1, absolute for HTTP/2). A request that never
    /// left (no connection could be made) comes back in the error, so it can be sent
    /// elsewhere without having been copied.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        if self.settings.is_http2() {
            self.send_h2(endpoint, req).await.map(|r| (r, None))
        } else {
            self.send_h1(endpoint, req).await
        }
    }

    async fn send_h1(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        // Pooled connections first. One that turns out closed hands the request back
        // unsent, so trying the next is safe.
        while let Some((mut sender, dead)) = endpoint.pool.take_idle(self.settings.idle_timeout) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(self.lease(sender, dead, endpoint)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::sent(ProxyError::from_hyper(e.error()))),
                },
            }
        }
        let (stream, permit) = match self.connect(endpoint).await {
            Ok(c) => c,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        // The answer of a server that stops reading the body is still read (KeepReading).
        let stream = KeepReading::new(stream);
        let dead = stream.dead_writes();
        let (mut sender, conn) = match http1::Builder::new()
            .handshake::<_, RequestBody>(TokioIo::new(stream))
            .await
        {
            Ok(h) => h,
            Err(e) => return Err(SendError::unsent(ProxyError::from_hyper(&e), req)),
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, Some(self.lease(sender, dead, endpoint)))),
            Err(mut e) => {
                let error = ProxyError::from_hyper(e.error());
                Err(SendError {
                    error,
                    unsent: e.take_message(),
                })
            }
        }
    }

    fn lease(
        &self,
        sender: http1::SendRequest<RequestBody>,
        dead_writes: Arc<AtomicBool>,
        endpoint: &Arc<Endpoint>,
    ) -> Lease {
        Lease {
            sender,
            endpoint: endpoint.clone(),
            max_idle: self.settings.max_idle,
            dead_writes,
        }
    }

    async fn send_h2(
        &self,
        endpoint: &Arc<Endpoint>,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.h2_sender(endpoint).await {
            Ok(s) => s,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                // The shared connection went away before the request left: once more on a new one.
                Some(unsent) => {
                    *endpoint.pool.h2.lock().await = None;
                    let mut sender = match self.h2_sender(endpoint).await {
                        Ok(s) => s,
                        Err(e) => return Err(SendError::unsent(e, unsent)),
                    };
                    match sender.try_send_request(unsent).await {
                        Ok(resp) => Ok(resp),
                        Err(mut e) => Err(SendError {
                            error: ProxyError::from_hyper(e.error()),
                            unsent: e.take_message(),
                        }),
                    }
                }
                None => Err(SendError::sent(ProxyError::from_hyper(e.error()))),
            },
        }
    }

    /// The endpoint's shared HTTP/2 connection, opened if needed (one connect at a time).
    async fn h2_sender(
        &self,
        endpoint: &Arc<Endpoint>,
    ) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
        let mut slot = endpoint.pool.h2.lock().await;
        if let Some(shared) = slot.as_mut() {
            if !shared.sender.is_closed() {
                shared.last_used = Instant::now();
                return Ok(shared.sender.clone());
            }
        }
        let (stream, permit) = self.connect(endpoint).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, RequestBody>(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::from_hyper(&e))?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *slot = Some(Shared {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        Ok(sender)
    }

    /// Opens a connection to `endpoint`: TCP within the connect timeout, then TLS if the
    /// service originates it.
    /// The returned permit counts the connection against the service's `maxConnections`
    /// until it is dropped (with the connection).
    pub async fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(UpstreamIo, crate::retry::Permit), ProxyError> {
        let permit = self.breaker.connection().ok_or(ProxyError::Overloaded)?;
        let tcp = self.connect_tcp(endpoint).await?;
        let io = match &self.settings.tls {
            None => UpstreamIo::Plain(tcp),
            Some(tls) => {
                let handshake = tls.handshake(tcp, endpoint.addr);
                match tokio::time::timeout(self.settings.connect_timeout, handshake).await {
                    Err(_) => return Err(ProxyError::ConnectTimeout),
                    Ok(r) => UpstreamIo::Tls(Box::new(r?)),
                }
            }
        };
        Ok((io, permit))
    }

    async fn connect_tcp(&self, endpoint: &Endpoint) -> Result<TcpStream, ProxyError> {
        let stream = match tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(endpoint.addr),
        )
        .await
        {
            Err(_) => return Err(ProxyError::ConnectTimeout),
            Ok(Err(e)) => return Err(ProxyError::from_connect(&e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Closes the idle connections of every endpoint in `services` that have outlived their
/// service's `idleTimeout`, and returns how long to wait before the next pass (a quarter of
/// the shortest idle timeout, between 50 ms and 5 s).
pub fn reap<'a>(services: impl Iterator<Item = &'a crate::snapshot::Service>) -> Duration {
    let mut next = Duration::from_secs(5);
    for service in services {
        let idle_timeout = service.upstream.settings.idle_timeout;
        next = next.min(idle_timeout / 4);
        for e in service.balancer.endpoints() {
            e.pool.evict(idle_timeout);
        }
    }
    next.max(Duration::from_millis(50))
}
