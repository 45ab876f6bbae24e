//! Connections to upstream endpoints: connect (TCP, then TLS when the service originates
//! it — or an in-memory network in tests), HTTP/1.1 and HTTP/2 clients over them, and
//! sending a request on a pooled or new connection ([`super::pool`]). [`reap`], run
//! periodically by the proxy, closes connections idle for longer than their service's
//! `idleTimeout`.
//!
//! An HTTP/1.1 connection's writes may die before its reads (a server answering an upload
//! early): [`KeepReading`] lets the answer be read, and such a connection is not pooled.
//!
//! Built directly on `hyper::client::conn` so that the request path decides everything
//! itself: which endpoint (the balancer already chose), the connect timeout, the HTTP/2
//! `:authority`, and why a failure happened (connect refused/timed out vs. reset), which
//! retries need (a connect failure hands the request back unsent, see [`SendError`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use weft_model::ServiceProtocol;

use super::body::BoxError;
use super::body::{RecvBody, RequestBody, Verdict};
use super::endpoint::Endpoint;
use super::keep_reading::KeepReading;
use super::pool::{Lease, Shared};
use super::retry::{Breaker, Permit};
use super::transport::{Network, UpstreamIo, UpstreamTls};
use super::{h1, h2};
use crate::error::ProxyError;

/// A response body as it comes from upstream: read by hyper's HTTP/1.1 client (upgrades,
/// requests with bodies), by weft's own HTTP/1.1 client ([`super::h1`]) or by weft's own
/// HTTP/2 client ([`super::h2`]).
#[derive(Debug)]
pub enum Received {
    /// hyper's HTTP/1.1 client.
    Hyper(Incoming),
    /// weft's own HTTP/1.1 client.
    H1(h1::ResponseBody),
    /// weft's own HTTP/2 client.
    H2(RecvBody),
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Received::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Received::H1(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Received::H2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(b) => b.is_end_stream(),
            Received::H1(b) => b.is_end_stream(),
            Received::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Received::Hyper(b) => b.size_hint(),
            Received::H1(b) => b.size_hint(),
            Received::H2(b) => b.size_hint(),
        }
    }
}

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
    /// Where connections go (TCP but in tests).
    pub network: Network,
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

    /// weft's HTTP/2 client's failed send, with the request if it never left (or was not
    /// processed: sent again once already, it may still go to another endpoint).
    fn from_h2(failed: h2::Failed) -> SendError {
        match failed {
            h2::Failed::Unsent(req, e) => SendError::unsent(e, *req),
            h2::Failed::Refused(req) => SendError::unsent(ProxyError::UpstreamRefused, *req),
            h2::Failed::Sent(e) => SendError::sent(e),
        }
    }

    /// hyper's failed send, with the request if it never left.
    fn from_hyper(mut e: TrySendError<Request<RequestBody>>) -> SendError {
        SendError {
            error: ProxyError::from_hyper(e.error()),
            unsent: e.take_message(),
        }
    }
}

/// The upstream side of one service.
#[derive(Debug)]
pub struct Upstream {
    /// Connection settings.
    pub settings: Settings,
    /// Counts open connections against `maxConnections`.
    breaker: Arc<Breaker>,
}

impl Upstream {
    /// An upstream with the given settings.
    pub fn new(settings: Settings, breaker: Arc<Breaker>) -> Self {
        Upstream { settings, breaker }
    }

    /// Sends `req` to `endpoint`. The request's URI must already be in the form the
    /// protocol needs (origin-form for HTTP/1.1, absolute for HTTP/2). A request that never
    /// left (no connection could be made) comes back in the error, so it can be sent
    /// elsewhere without having been copied.
    ///
    /// This and the functions it calls return `async move` blocks rather than being `async
    /// fn`s: an `async fn` keeps its by-value arguments twice in its future (as given and
    /// as a local), and the request is ~300 bytes, copied with every future on the way
    /// (docs/benchmarks.md, "Where the instructions go").
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps the request twice in its future"
    )]
    pub fn send<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<(Response<Received>, Option<Lease>), SendError>> + 'a {
        async move {
            if self.settings.is_http2() {
                let resp = self.send_h2(endpoint, req).await?;
                Ok((resp.map(Received::H2), None))
            } else if h1::fits(&req) {
                let resp = self.send_own_h1(endpoint, req).await?;
                Ok((resp.map(Received::H1), None))
            } else {
                let (resp, lease) = self.send_h1(endpoint, req).await?;
                Ok((resp.map(Received::Hyper), lease))
            }
        }
    }

    /// A request without a body or upgrade, on weft's own HTTP/1.1 client: pooled
    /// connections first. One found closed before any answer came takes an idempotent
    /// request to the next (the request is only borrowed, so nothing needs copying).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps the request twice in its future"
    )]
    fn send_own_h1<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<h1::ResponseBody>, SendError>> + 'a {
        async move {
            let home = || h1::Home {
                idle: endpoint.pool.own.clone(),
                max_idle: self.settings.max_idle,
            };
            while let Some(conn) = endpoint.pool.own.take(self.settings.idle_timeout) {
                match h1::round_trip(conn, &req, home()).await {
                    Ok(resp) => return Ok(resp),
                    Err(h1::Failed::Quiet(_)) if req.method().is_idempotent() => continue,
                    Err(failed) => return Err(SendError::sent(failed.error())),
                }
            }
            // Boxed, as for hyper's connections below: opening is rare, requests are not.
            let conn = match Box::pin(self.connect(endpoint)).await {
                Ok((io, permit)) => h1::Connection::new(io, permit),
                Err(e) => return Err(SendError::unsent(e, req)),
            };
            h1::round_trip(conn, &req, home())
                .await
                .map_err(|failed| SendError::sent(failed.error()))
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps the request twice in its future"
    )]
    fn send_h1<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<Lease>), SendError>> + 'a {
        async move {
            let request = req.body().verdict();
            // Pooled connections first. One that turns out closed hands the request back
            // unsent, so trying the next is safe.
            while let Some((mut sender, dead)) = endpoint.pool.take_idle(self.settings.idle_timeout)
            {
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        return Ok((resp, Some(self.lease(sender, dead, endpoint, request))))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(SendError::sent(ProxyError::from_hyper(e.error()))),
                    },
                }
            }
            // A new connection: a cold path, boxed so that its (large) connect and handshake
            // futures do not size every request's future, which is moved several times per
            // request (docs/benchmarks.md, "Where the instructions go").
            let (mut sender, dead) = match Box::pin(self.open_h1(endpoint)).await {
                Ok(opened) => opened,
                Err(e) => return Err(SendError::unsent(e, req)),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => Ok((resp, Some(self.lease(sender, dead, endpoint, request)))),
                Err(e) => Err(SendError::from_hyper(e)),
            }
        }
    }

    /// Opens a new HTTP/1.1 connection to `endpoint`; its connection task is spawned.
    async fn open_h1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(http1::SendRequest<RequestBody>, Arc<AtomicBool>), ProxyError> {
        let (stream, permit) = self.connect(endpoint).await?;
        // The answer of a server that stops reading the body is still read (KeepReading).
        let stream = KeepReading::new(stream);
        let dead = stream.dead_writes();
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, RequestBody>(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::from_hyper(&e))?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok((sender, dead))
    }

    fn lease(
        &self,
        sender: http1::SendRequest<RequestBody>,
        dead_writes: Arc<AtomicBool>,
        endpoint: &Arc<Endpoint>,
        request: Verdict,
    ) -> Lease {
        Lease {
            sender,
            pool: endpoint.pool.clone(),
            max_idle: self.settings.max_idle,
            dead_writes,
            request,
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps the request twice in its future"
    )]
    fn send_h2<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<RecvBody>, SendError>> + 'a {
        async move {
            let conn = match self.h2_conn(endpoint).await {
                Ok(c) => c,
                Err(e) => return Err(SendError::unsent(e, req)),
            };
            match conn.round_trip(req).await {
                Ok(resp) => Ok(resp),
                // The shared connection went away before the request left, or the server
                // did not process it: once more, on a new connection if this one is done.
                // Boxed: a rare path that would otherwise size every request's future.
                Err(h2::Failed::Unsent(again, _)) => {
                    Box::pin(self.resend_h2(endpoint, *again, true)).await
                }
                Err(h2::Failed::Refused(again)) => {
                    Box::pin(self.resend_h2(endpoint, *again, false)).await
                }
                Err(failed) => Err(SendError::from_h2(failed)),
            }
        }
    }

    /// Sends `req` once more: on a new shared HTTP/2 connection when the last one went
    /// away (`gone`), else on the endpoint's current one (a new one if the server said
    /// GOAWAY).
    async fn resend_h2(
        &self,
        endpoint: &Arc<Endpoint>,
        req: Request<RequestBody>,
        gone: bool,
    ) -> Result<Response<RecvBody>, SendError> {
        if gone {
            *endpoint.pool.h2.lock().await = None;
        }
        let conn = match self.h2_conn(endpoint).await {
            Ok(c) => c,
            Err(e) => return Err(SendError::unsent(e, req)),
        };
        conn.round_trip(req).await.map_err(SendError::from_h2)
    }

    /// The endpoint's shared HTTP/2 connection, opened if needed (one connect at a time).
    async fn h2_conn(&self, endpoint: &Arc<Endpoint>) -> Result<h2::Conn, ProxyError> {
        let mut slot = endpoint.pool.h2.lock().await;
        if let Some(shared) = slot.as_mut() {
            if !shared.conn.is_closed() {
                shared.last_used = Instant::now();
                return Ok(shared.conn.clone());
            }
        }
        // Boxed, as for HTTP/1.1: opening is rare, requests are not.
        let conn = Box::pin(self.open_h2(endpoint)).await?;
        *slot = Some(Shared {
            conn: conn.clone(),
            last_used: Instant::now(),
        });
        Ok(conn)
    }

    /// Opens a new HTTP/2 connection to `endpoint`; its connection task is spawned.
    async fn open_h2(&self, endpoint: &Endpoint) -> Result<h2::Conn, ProxyError> {
        let (stream, permit) = self.connect(endpoint).await?;
        h2::Conn::open(stream, permit).await
    }

    /// Opens a connection to `endpoint`: TCP within the connect timeout, then TLS if the
    /// service originates it.
    /// The returned permit counts the connection against the service's `maxConnections`
    /// until it is dropped (with the connection).
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<(UpstreamIo, Permit), ProxyError> {
        let permit = self.breaker.connection().ok_or(ProxyError::Overloaded)?;
        if let Network::Memory(dial) = &self.settings.network {
            if self.settings.tls.is_some() {
                return Err(ProxyError::UpstreamTls); // no TLS over the in-memory network
            }
            let pipe = dial(endpoint.addr).map_err(|e| ProxyError::from_connect(&e))?;
            return Ok((UpstreamIo::Memory(pipe), permit));
        }
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
