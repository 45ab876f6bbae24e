//! weft's own HTTP/2 server, on the `h2` crate (the HTTP/2 implementation hyper uses), for
//! every HTTP/2 connection a listener accepts (prior knowledge in plaintext, or `h2` by
//! ALPN over TLS: both start with the connection preface, which `h1::serve` hands off).
//!
//! Why: the stream's task. hyper's server spawned every stream's future — the exchange
//! and then its response body's state — as a task, and tokio copies a task's future when
//! it is spawned and when it ends. Here the connection's task accepts streams and spawns,
//! per stream, a future of a few words (the exchange's boxed future and the stream's
//! handle) that runs the exchange and sends the head; a body that is complete at once
//! (one data frame, the common small answer) goes with it, any other is sent by a boxed
//! future of its own as flow control allows (trailers included: gRPC). Also gone: hyper's
//! IO adapters and its second pass over connection headers (docs/benchmarks.md, "weft's
//! own HTTP/2 server").
//!
//! The settings ([`crate::http::server_settings`]) are hyper's (stream and connection
//! windows of 1 MiB, 16 KiB frames, 400 KiB of send buffer per stream, at most 1,024
//! streams reset for our own errors before the connection is closed), with the listener's
//! limits on top: concurrent streams (`http2MaxConcurrentStreams`, the excess refused with
//! REFUSED_STREAM), streams reset by the client before they were answered
//! (`http2MaxPendingResets`, beyond which the connection is closed with
//! ENHANCE_YOUR_CALM: rapid reset, CVE-2023-44487), and the size of a header list
//! (`maxRequestHeaderBytes`). A client that resets a stream cancels its exchange (and the
//! upstream request). A ping every minute, unanswered for 20 seconds, closes a connection
//! whose peer is gone; one with no stream open for the listener's `idleTimeout` is closed
//! gracefully.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Ping, Reason};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use weft_model::ListenerLimits;

use super::counting::ActiveGuard;
use crate::http::headers::{strip_hop_by_hop, Hop};
use crate::upstream::body::{RecvBody, Source};
use crate::upstream::h2::send_body;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `read`, the first bytes of a connection (which the HTTP/1.1 parser gave up
/// on), are HTTP/2's preface or its start: a client may send it in pieces, and the parser
/// can refuse `PRI * HTTP/2.0` before the line ends. The handshake reads and checks the
/// rest.
pub fn is_preface(read: &[u8]) -> bool {
    let n = read.len().min(PREFACE.len());
    n > 0 && read[..n] == PREFACE[..n]
}

/// How often a connection's peer is asked to prove it is there.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How long a ping may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After a connection was asked to close for being idle (or for not answering a ping):
/// how long it may take.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// What woke the connection's loop.
enum Event<R> {
    /// A stream arrived, or the connection ended (`None`) or failed.
    Accepted(Option<Result<R, h2::Error>>),
    /// The listener is stopping.
    Stop,
    /// The pong to our ping (or the connection's end).
    Pong(Result<h2::Pong, h2::Error>),
    /// The timer: the idle check, a ping due, or a ping unanswered.
    Timer,
}

/// Serves HTTP/2 on `io` (the preface not yet read from it), with `settings` (the
/// listener's: [`crate::http::server_settings`]), until the connection ends, the listener
/// stops (`stop`: no new streams, those in flight finish), or it is idle: no stream open
/// for the listener's idle timeout (as gRPC's `MAX_CONNECTION_IDLE`: pings, ours or the
/// client's, do not keep a connection, and a long stream does). The client's preface and
/// settings must come within the header read timeout. `handle` answers each request, in a
/// task of the stream's own.
pub async fn serve<I, F, Fut, B>(
    io: I,
    settings: &h2::server::Builder,
    limits: &ListenerLimits,
    stop: &mut watch::Receiver<bool>,
    handle: F,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<Source>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Send,
{
    let handshake = settings.handshake::<_, Bytes>(io);
    let handshake_timeout = limits.header_read_timeout.get();
    let mut conn = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let idle = limits.idle_timeout.get();
    let mut pings = conn.ping_pong();
    let mut stopping = false;
    // One timer for the connection: the idle check, the next ping, or a ping's deadline.
    let mut idle_check = Instant::now() + idle;
    // Streams whose task is running, and whether one arrived since the last idle check.
    let open = Arc::new(AtomicUsize::new(0));
    let mut arrived = false;
    let mut next_ping = Instant::now() + KEEP_ALIVE;
    let mut pong_due: Option<Instant> = None;
    let mut closing_by: Option<Instant> = None;
    let deadline = |idle_check: Instant, next_ping, pong_due: Option<Instant>, closing_by| {
        let mut d = idle_check.min(pong_due.unwrap_or(next_ping));
        if let Some(c) = closing_by {
            d = d.min(c);
        }
        d
    };
    let mut timer = pin!(tokio::time::sleep_until(deadline(
        idle_check, next_ping, pong_due, closing_by
    )));
    loop {
        let event = {
            let awaiting = pong_due.is_some();
            tokio::select! {
                biased;
                accepted = conn.accept() => Event::Accepted(accepted),
                _ = stop.changed(), if !stopping => Event::Stop,
                pong = std::future::poll_fn(|cx| match pings.as_mut() {
                    Some(p) => p.poll_pong(cx),
                    None => Poll::Pending,
                }), if awaiting => Event::Pong(pong),
                _ = timer.as_mut() => Event::Timer,
            }
        };
        match event {
            Event::Accepted(Some(Ok((req, respond)))) => {
                let answer = handle(req.map(|recv| Source::H2(RecvBody::new(recv))));
                arrived = true;
                let open = ActiveGuard::new(&open);
                tokio::spawn(async move {
                    let _open = open;
                    answer_stream(answer, respond).await;
                });
            }
            Event::Accepted(Some(Err(e))) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                return;
            }
            Event::Accepted(None) => return,
            Event::Stop => {
                // No new streams (GOAWAY); those in flight finish, then it closes.
                stopping = true;
                conn.graceful_shutdown();
            }
            Event::Pong(Ok(_)) => {
                pong_due = None;
                next_ping = Instant::now() + KEEP_ALIVE;
            }
            Event::Pong(Err(_)) => pong_due = None, // the connection is ending
            Event::Timer => {
                let now = Instant::now();
                if closing_by.is_some_and(|c| now >= c) {
                    return; // closed: its streams' handles fail
                }
                if pong_due.is_some_and(|d| now >= d) {
                    tracing::debug!("HTTP/2 keep-alive ping unanswered; closing");
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    pong_due = None;
                    closing_by = Some(now + IDLE_GRACE);
                }
                if pong_due.is_none() && now >= next_ping {
                    match pings.as_mut().map(|p| p.send_ping(Ping::opaque())) {
                        Some(Ok(())) => pong_due = Some(now + KEEP_ALIVE_TIMEOUT),
                        _ => next_ping = now + KEEP_ALIVE,
                    }
                }
                if now >= idle_check {
                    let idle_now = !arrived && open.load(Ordering::Relaxed) == 0;
                    if idle_now && closing_by.is_none() {
                        // No stream for a whole idle period: finish politely (a stream
                        // that races the GOAWAY is still served), but not for long.
                        conn.graceful_shutdown();
                        closing_by = Some(now + IDLE_GRACE);
                    }
                    arrived = false;
                    idle_check = now + idle;
                }
                timer
                    .as_mut()
                    .reset(deadline(idle_check, next_ping, pong_due, closing_by));
            }
        }
    }
}

/// Runs one stream's exchange and sends its answer. A client that resets the stream
/// before the answer is ready cancels the exchange (dropped, with its upstream request).
/// The task's future holds only the exchange's (boxed) future and the stream's handle;
/// a response body that is not complete at once is sent by a boxed future of its own.
async fn answer_stream<Fut, B>(answer: Fut, mut respond: SendResponse<Bytes>)
where
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Send,
{
    let mut answer = pin!(answer);
    let sending = std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(resp)) = answer.as_mut().poll(cx) {
            return Poll::Ready(start_response(resp, &mut respond, cx));
        }
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    if let Some(sending) = sending {
        sending.await;
    }
}

/// The rest of a response body, sent after its head.
type Sending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sends the head of `resp` and, when its body is complete already (its one frame is
/// there and is the last: most small answers), the body; otherwise returns what sends
/// the rest.
fn start_response<B>(
    resp: Response<B>,
    respond: &mut SendResponse<Bytes>,
    cx: &mut Context<'_>,
) -> Option<Sending>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Send,
{
    let (mut head, mut body) = resp.into_parts();
    // HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2); h2 refuses to send them.
    strip_hop_by_hop(&mut head.headers, Hop::Response { trailers: true });
    if !head.headers.contains_key(header::DATE) {
        if let Some(now) = date() {
            head.headers.insert(header::DATE, now);
        }
    }
    let end = body.is_end_stream();
    let mut first = None;
    if !end {
        if !head.headers.contains_key(header::CONTENT_LENGTH) {
            if let Some(len) = body.size_hint().exact() {
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
            first = Some(frame);
        }
    }
    let mut stream = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 response not sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return None;
        }
    };
    match first {
        None if end => None,
        // The body is done already: an empty end, or its only frame (no task state for it).
        Some(None) => {
            let _ = stream.send_data(Bytes::new(), true);
            None
        }
        Some(Some(Ok(frame))) if frame.is_data() && body.is_end_stream() => {
            let data = frame.into_data().unwrap_or_default();
            let _ = stream.send_data(data, true);
            None
        }
        Some(Some(Err(_))) => {
            stream.send_reset(Reason::INTERNAL_ERROR);
            None
        }
        first => {
            let body = Prefixed {
                first: first.flatten().and_then(Result::ok),
                rest: body,
            };
            Some(Box::pin(send_body(body, stream, Reason::INTERNAL_ERROR)))
        }
    }
}

/// A body with its first frame read already.
struct Prefixed<B> {
    first: Option<Frame<Bytes>>,
    rest: B,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

/// Now as an HTTP date: the HTTP/1.1 server's text (made once a second per thread), kept
/// as a header value while it stays the same, so that cloning it shares its bytes.
fn date() -> Option<HeaderValue> {
    thread_local! {
        static CACHE: RefCell<Option<([u8; 29], HeaderValue)>> = const { RefCell::new(None) };
    }
    let text = super::h1::date();
    CACHE.with_borrow_mut(|cache| {
        if let Some((at, value)) = cache {
            if *at == text {
                return Some(value.clone());
            }
        }
        let value = HeaderValue::from_bytes(&text).ok()?;
        *cache = Some((text, value.clone()));
        Some(value)
    })
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
