//! weft's own HTTP/2 client, on the `h2` crate (the HTTP/2 implementation hyper uses),
//! for every request to an HTTP/2 or gRPC service: one shared connection per endpoint,
//! multiplexed.
//!
//! Why: hyper's HTTP/2 client hands each request to the connection's task over a
//! channel, strips connection headers again, spawns a task per request to await the
//! response (and to send the body) and sends the response back over another channel —
//! about a tenth of what the calling sidecar of a mesh hop spends per request
//! (docs/benchmarks.md, "Mesh hop"). Here the request's own task opens the stream and
//! awaits the response on it; only a request with a body gets a task of its own, which
//! sends the body while the response comes back (gRPC streams both ways at once).
//!
//! The connection keeps hyper's client settings (stream window 2 MiB, connection window
//! 5 MiB, frames of 16 KiB, a 16 KiB limit on a response's header list, 1 MiB of send
//! buffer per stream, 100 streams before the server's settings arrive, no push), so
//! the change of client changes no behaviour on the wire. A body is sent as the peer's
//! flow control allows, capacity being asked for only once a chunk is in hand (never
//! speculatively: a stream waiting for its body must not hold the connection's window).
//! A response body gives its window back as it is read. Dropping a response (the
//! caller went away, a timeout) resets the stream with CANCEL; a peer's reset stops the
//! body being sent.
//!
//! A server's GOAWAY (noticed by `goaway.rs`, since `h2` does not say) ends the
//! connection's use for new requests: the next request goes on a new connection while the
//! streams already open finish. A stream the server did not process — above the GOAWAY's
//! last stream id, or refused with REFUSED_STREAM (RFC 9113 §8.7) — is sent once more on
//! the endpoint's current connection (a new one after a GOAWAY), whatever its method: the
//! server guarantees it did nothing with it (gRPC calls this a transparent retry). Refused
//! again, it fails as `upstream-refused`, which the retry policy treats as a refused
//! connection (`connect-failure`, on by default). For that the request's head (and a body
//! already in memory) is kept until the answer's head arrives (~0.3 KB, one header-map
//! copy); a streamed body cannot be sent again, and such a request fails as a reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Poll};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, SendStream};
use http::{Request, Response};
use http_body::Body;

use super::body::{RecvBody, RequestBody};
use super::goaway::{Watched, NO_GOAWAY};
use super::retry::Permit;
use super::transport::UpstreamIo;
use crate::error::ProxyError;

/// Stream-level receive window (hyper's client default).
const STREAM_WINDOW: u32 = 2 << 20;
/// Connection-level receive window (hyper's client default).
const CONN_WINDOW: u32 = 5 << 20;
/// Largest frame we accept.
const MAX_FRAME: u32 = 16 << 10;
/// Largest response header list we accept.
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Body bytes buffered per stream before its sender waits.
const MAX_SEND_BUFFER: usize = 1 << 20;
/// Streams opened before the server's SETTINGS say how many it allows.
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// An endpoint's shared HTTP/2 connection; cloned for each request.
#[derive(Debug, Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    /// The last stream id of the server's GOAWAY ([`NO_GOAWAY`] before one): once
    /// there is one, no new stream may go on the connection.
    last_stream: Arc<AtomicU32>,
    /// Set when the connection's task has ended (closed by either side, or failed).
    ended: Arc<AtomicBool>,
}

/// Why a request failed, and whether it left.
#[derive(Debug)]
pub enum Failed {
    /// The connection was gone before the request was given to it: it can go on another.
    /// (Boxed: a rare outcome that would otherwise size every result.)
    Unsent(Box<Request<RequestBody>>, ProxyError),
    /// The server did not process the request (it refused the stream, or said GOAWAY
    /// before reading it): here it is again, to be sent on another stream.
    Refused(Box<Request<RequestBody>>),
    /// The request (or part of it) went out.
    Sent(ProxyError),
}

impl Conn {
    /// Performs the HTTP/2 handshake over `io` and spawns the connection's task, which
    /// holds `permit` (the service's connection count) until the connection ends.
    pub async fn open(io: UpstreamIo, permit: Permit) -> Result<Conn, ProxyError> {
        let last_stream = Arc::new(AtomicU32::new(NO_GOAWAY));
        let io = Watched::new(io, last_stream.clone());
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| error(&e))?;
        let ended = Arc::new(AtomicBool::new(false));
        let end = ended.clone();
        // With no handle and no stream left, h2 wakes the task and closes the connection
        // (GOAWAY): dropping the pool's handle is how an idle connection is closed.
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
            end.store(true, Ordering::Release);
        });
        Ok(Conn {
            send,
            last_stream,
            ended,
        })
    }

    /// Whether no new request may go on the connection (a new one is needed): it has
    /// ended, or the server said GOAWAY (its open streams still finish).
    pub fn is_closed(&self) -> bool {
        self.last_stream.load(Ordering::Acquire) != NO_GOAWAY || self.ended.load(Ordering::Acquire)
    }

    /// Whether a stream's failure says the server did not process it (RFC 9113 §8.7): it
    /// was refused, or is above the last stream id of the server's GOAWAY — errored by h2
    /// for that reason, or opened in the instant before the GOAWAY was read and failed
    /// when the connection closed.
    fn unprocessed(&self, e: &h2::Error, stream: &h2::client::ResponseFuture) -> bool {
        if e.is_remote() && (e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM)) {
            return true;
        }
        let last = self.last_stream.load(Ordering::Acquire);
        last != NO_GOAWAY && u32::from(stream.stream_id()) > last
    }

    /// Sends `req` (its URI absolute: scheme and authority become `:scheme` and
    /// `:authority`; connection-specific fields already removed) and waits for the
    /// response head. Waits first for the server to allow another stream. (Not an `async
    /// fn`, which would keep the request twice in its future: see `Upstream::send`.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps the request twice in its future"
    )]
    pub fn round_trip(
        &self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<RecvBody>, Failed>> + '_ {
        async move {
            let mut send = match self.send.clone().ready().await {
                Ok(send) => send,
                Err(e) => return Err(Failed::Unsent(Box::new(req), error(&e))),
            };
            if self.last_stream.load(Ordering::Acquire) != NO_GOAWAY {
                return Err(Failed::Unsent(Box::new(req), ProxyError::UpstreamReset));
            }
            let (head, body) = req.into_parts();
            let end = body.is_end_stream();
            // Kept to send again should the server not process it.
            let again = Again::of(&head, &body);
            let (mut response, stream) = match send.send_request(Request::from_parts(head, ()), end)
            {
                Ok(sent) => sent,
                // No stream was opened (the connection failed meanwhile): nothing left.
                Err(e) => {
                    return Err(match again {
                        Some(again) => Failed::Unsent(Box::new(again.request()), error(&e)),
                        None => Failed::Sent(error(&e)),
                    })
                }
            };
            // A body still going out when the answer has ended is cut (the stream
            // cancelled, the client's body let go): the server does not want it, and
            // sending it would only spend the connection's bandwidth and window.
            let request = body.verdict();
            if !end {
                tokio::spawn(send_body(body, stream, Reason::CANCEL));
            }
            match (&mut response).await {
                Ok(resp) => Ok(resp.map(|recv| RecvBody::answering(recv, request))),
                Err(e) => match again {
                    Some(again) if self.unprocessed(&e, &response) => {
                        tracing::debug!(error = %e, "upstream HTTP/2 stream not processed: sent again");
                        Err(Failed::Refused(Box::new(again.request())))
                    }
                    _ => Err(Failed::Sent(error(&e))),
                },
            }
        }
    }
}

/// A request's head, and its body when already in memory, kept to send it again.
struct Again {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Option<Bytes>,
}

impl Again {
    /// A copy of the request, if it can be sent again: without a body, or with one read
    /// in full (a streamed body is gone once sent).
    fn of(head: &http::request::Parts, body: &RequestBody) -> Option<Again> {
        let body = match body {
            RequestBody::Bytes(b) => b.clone(),
            RequestBody::Stream(_) if body.is_end_stream() => None,
            RequestBody::Stream(_) => return None,
        };
        Some(Again {
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            headers: head.headers.clone(),
            body,
        })
    }

    fn request(self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Bytes(self.body));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// What an h2 failure means to the proxy: the upstream went away or broke the protocol;
/// both are a reset for retries and status codes, as hyper's client reported them.
fn error(e: &h2::Error) -> ProxyError {
    tracing::debug!(error = %e, "upstream HTTP/2");
    ProxyError::UpstreamReset
}

/// Sends a body on its stream (a request's, or a response's by weft's own HTTP/2 server
/// in `listen/h2.rs`), as flow control allows; a body that fails ends the stream with a
/// reset of `failed` (so the peer knows it is cut short); a peer that resets the stream
/// stops it being read (and dropping it cancels whatever produces it).
pub(crate) async fn send_body<B: Body<Data = Bytes>>(
    body: B,
    mut stream: SendStream<Bytes>,
    failed: Reason,
) {
    let mut body = std::pin::pin!(body);
    if let Err(Some(reason)) = pump(body.as_mut(), &mut stream, failed).await {
        stream.send_reset(reason);
    }
}

/// Err(Some(reason)): reset the stream with it; Err(None): it is over already.
async fn pump<B: Body<Data = Bytes>>(
    mut body: Pin<&mut B>,
    stream: &mut SendStream<Bytes>,
    failed: Reason,
) -> Result<(), Option<Reason>> {
    loop {
        let frame = std::future::poll_fn(|cx| {
            // A reset from the peer while we wait for the body: stop reading it.
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(None));
            }
            body.as_mut().poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => {
                // The body ended without saying so on its last frame.
                return stream.send_data(Bytes::new(), true).map_err(|_| None);
            }
            Some(Err(_)) => return Err(Some(failed)),
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.reserve_capacity(0);
                    return stream.send_trailers(trailers).map_err(|_| None);
                }
                continue; // a frame kind h2 has no use for
            }
        };
        let end = body.is_end_stream();
        if data.is_empty() {
            stream.send_data(Bytes::new(), end).map_err(|_| None)?;
        }
        while !data.is_empty() {
            // Capacity asked for with the chunk in hand, no more than it needs.
            stream.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| {
                if stream.capacity() > 0 {
                    return Poll::Ready(Ok(stream.capacity()));
                }
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(n)) => Poll::Ready(Ok(n)),
                    Some(Err(_)) | None => Poll::Ready(Err(None)),
                }
            })
            .await?;
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            stream
                .send_data(chunk, end && data.is_empty())
                .map_err(|_| None)?;
        }
        if end {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
