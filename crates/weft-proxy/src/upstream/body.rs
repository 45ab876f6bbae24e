//! The request body as it goes upstream, with the listener's limits enforced on the way:
//! a body larger than `maxRequestBodyBytes` or one that pauses for longer than
//! `requestBodyIdleTimeout` fails the upstream request, and the verdict tells the request
//! path to answer 413 or 408 instead of blaming the upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;

const TOO_LARGE: u8 = 1;
const TIMED_OUT: u8 = 2;
const MALFORMED: u8 = 3;

/// What the request path, the body and the upstream side share about a streamed body:
/// why it stopped early (readable after the upstream request failed), and whether the
/// upstream's answer is complete already.
#[derive(Debug, Clone, Default)]
pub struct Verdict(Option<Arc<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    /// Why the body stopped early (a limit), or 0.
    code: AtomicU8,
    /// The upstream's answer is complete: the rest of the body is not wanted.
    answered: AtomicBool,
    /// The body has been read to its end.
    ended: AtomicBool,
    /// The task waiting for the client's next piece, woken when `answered` is set.
    waiting: Mutex<Option<Waker>>,
}

impl Verdict {
    /// The client's fault, if the body was cut short by a limit.
    pub fn error(&self) -> Option<ProxyError> {
        match self.0.as_ref()?.code.load(Ordering::Relaxed) {
            TOO_LARGE => Some(ProxyError::BodyTooLarge),
            TIMED_OUT => Some(ProxyError::BodyTimeout),
            MALFORMED => Some(ProxyError::BodyMalformed),
            _ => None,
        }
    }

    /// The upstream has answered in full while the body was still coming: what is left of
    /// it is not wanted. The body ends at its next read — with an error, so that the
    /// upstream connection it was going to is closed, not reused after a body cut short —
    /// and lets go of the client's stream: an HTTP/2 client is told to stop sending
    /// (`RST_STREAM NO_ERROR`, RFC 9113 §8.1) and its unread data stops holding the
    /// connection's flow-control window; an HTTP/1.1 client's connection is closed after
    /// its response. True if the body was still going out (its connection is then not
    /// reusable). Before, such a connection went back to the pool still sending, the next
    /// request waited on it, and uploads multiplexed on one HTTP/2 connection stalled
    /// until the upstream gave up on the unfinished body (nginx: 5 s).
    pub fn answered(&self) -> bool {
        let Some(shared) = &self.0 else {
            return false;
        };
        if shared.ended.load(Ordering::Acquire) {
            return false;
        }
        shared.answered.store(true, Ordering::Release);
        let waiting = shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = waiting {
            w.wake();
        }
        true
    }
}

/// A request body as it goes upstream: the client's body streamed under limits, or bytes
/// read in full beforehand so that a retry can send them again.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed from the client.
    Stream(Guarded),
    /// Already read (replayable); `None` once sent.
    Bytes(Option<Bytes>),
}

/// Where a request body comes from: the client's connection, or any other body (a test's,
/// or one the proxy makes itself).
pub enum Source {
    /// From hyper's server connection (HTTP/1.1 requests that are not plain).
    Incoming(Incoming),
    /// From weft's own HTTP/2 server (`listen/h2.rs`).
    H2(RecvBody),
    /// No body: a request weft's own HTTP/1.1 server read (`listen/h1.rs`).
    Empty,
    /// Anything else.
    Other(BoxBody<Bytes, BoxError>),
}

/// An error of a body that is not hyper's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Incoming(b) => b.fmt(f),
            Source::H2(b) => b.fmt(f),
            Source::Empty => f.write_str("Empty"),
            Source::Other(_) => f.write_str("Other"),
        }
    }
}

impl From<Incoming> for Source {
    fn from(b: Incoming) -> Source {
        Source::Incoming(b)
    }
}

impl Source {
    /// A body of these bytes (tests, and requests the proxy makes).
    pub fn bytes(b: impl Into<Bytes>) -> Source {
        use http_body_util::BodyExt;
        Source::Other(
            http_body_util::Full::new(b.into())
                .map_err(|never| match never {})
                .boxed(),
        )
    }
}

impl Body for Source {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Source::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Source::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Source::Empty => Poll::Ready(None),
            Source::Other(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Incoming(b) => b.is_end_stream(),
            Source::H2(b) => b.is_end_stream(),
            Source::Empty => true,
            Source::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Incoming(b) => b.size_hint(),
            Source::H2(b) => b.size_hint(),
            Source::Empty => SizeHint::with_exact(0),
            Source::Other(b) => b.size_hint(),
        }
    }
}

/// The client's body under the listener's limits.
#[derive(Debug)]
pub struct Guarded {
    inner: Source,
    remaining: u64,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    verdict: Verdict,
}

/// A limit cut the body short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// From the client connection.
    #[error(transparent)]
    Client(BoxError),
    /// A limit was hit.
    #[error("{0}")]
    Limit(ProxyError),
    /// The upstream answered in full before the body ended ([`Verdict::answered`]).
    #[error("the upstream answered before the request body ended")]
    Answered,
}

impl RequestBody {
    /// The body's shared verdict (nothing to share for bytes already read).
    pub fn verdict(&self) -> Verdict {
        match self {
            RequestBody::Stream(g) => g.verdict.clone(),
            RequestBody::Bytes(_) => Verdict::default(),
        }
    }

    /// Wraps `inner`; `max` bytes at most (None: unbounded), `idle` between frames.
    pub fn new(inner: Source, max: Option<u64>, idle: Duration) -> (RequestBody, Verdict) {
        let (g, v) = Guarded::new(inner, max, idle);
        (RequestBody::Stream(g), v)
    }

    /// Reads the whole body (under the same limits) so it can be sent more than once.
    pub async fn into_bytes(self) -> Result<Bytes, ProxyError> {
        use http_body_util::BodyExt;
        match self {
            RequestBody::Bytes(b) => Ok(b.unwrap_or_default()),
            RequestBody::Stream(g) => {
                let verdict = g.verdict.clone();
                match g.collect().await {
                    Ok(c) => Ok(c.to_bytes()),
                    Err(BodyError::Limit(e)) => Err(e),
                    Err(BodyError::Client(_) | BodyError::Answered) => {
                        Err(verdict.error().unwrap_or(ProxyError::BodyMalformed))
                    }
                }
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Stream(g) => Pin::new(g).poll_frame(cx),
            RequestBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(g) => g.is_end_stream(),
            RequestBody::Bytes(b) => b.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(g) => g.size_hint(),
            RequestBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Guarded {
    fn new(inner: Source, max: Option<u64>, idle: Duration) -> (Guarded, Verdict) {
        // Bodies that are already complete (GET, HEAD, ...) need no shared verdict.
        let verdict = if inner.is_end_stream() {
            Verdict(None)
        } else {
            Verdict(Some(Arc::new(Shared::default())))
        };
        let body = Guarded {
            inner,
            remaining: max.unwrap_or(u64::MAX),
            idle,
            timer: None,
            verdict: verdict.clone(),
        };
        (body, verdict)
    }

    fn ended(&self) {
        if let Some(shared) = &self.verdict.0 {
            shared.ended.store(true, Ordering::Release);
        }
    }

    fn fail(&mut self, code: u8, err: ProxyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(v) = &self.verdict.0 {
            v.code.store(code, Ordering::Relaxed);
        }
        Poll::Ready(Some(Err(BodyError::Limit(err))))
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(shared) = &this.verdict.0 {
            if shared.answered.load(Ordering::Acquire) {
                // Let go of the client's stream now (see `Verdict::answered`).
                this.inner = Source::Empty;
                return Poll::Ready(Some(Err(BodyError::Answered)));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        return this.fail(TOO_LARGE, ProxyError::BodyTooLarge);
                    }
                    this.remaining -= n;
                }
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(Instant::now() + this.idle);
                }
                if this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Broken framing from the client (bad chunk, early close): its fault.
                if let Some(v) = &this.verdict.0 {
                    v.code.store(MALFORMED, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(BodyError::Client(e))))
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(TIMED_OUT, ProxyError::BodyTimeout);
                }
                if let Some(shared) = &this.verdict.0 {
                    let mut waiting = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                    if !waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waiting = Some(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body read from an HTTP/2 stream (a response in weft's HTTP/2 client, `h2.rs`; a
/// request in weft's HTTP/2 server, `listen/h2.rs`): data frames, then the trailers if
/// any. The stream's window is given back as each frame is handed on. Errors are h2's (the
/// peer reset the stream or broke the protocol; a `content-length` that the data
/// contradicts is one).
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    /// Data frames may still come (then the trailers).
    data: bool,
    /// A response's: the body of its request, told when this answer is complete.
    request: Verdict,
}

impl RecvBody {
    /// The body arriving on `recv`.
    pub fn new(recv: RecvStream) -> RecvBody {
        RecvBody::answering(recv, Verdict::default())
    }

    /// A response body arriving on `recv` for a request whose body may still be going
    /// out: once the response has ended, the rest of that body is not wanted
    /// ([`Verdict::answered`]; weft's HTTP/2 client then cancels the stream's upload).
    pub fn answering(recv: RecvStream, request: Verdict) -> RecvBody {
        RecvBody {
            recv,
            data: true,
            request,
        }
    }

    fn ended(&mut self) {
        std::mem::take(&mut self.request).answered();
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.data {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if self.recv.is_end_stream() {
                        self.ended();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data = false,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => {
                self.ended();
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => {
                self.ended();
                Poll::Ready(None)
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
