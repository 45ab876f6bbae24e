//! weft's own HTTP/1.1 server for the common request, in front of hyper's.
//!
//! ```text
//! read ─► httparse ─► a plain HTTP/1.1 request? ─► handle ─► head + body written here ─► next
//!                      ├ HTTP/2's preface ─► the connection goes to weft's HTTP/2 server (h2.rs)
//!                      └ anything else ─► the connection and the bytes read so far go to hyper
//! ```
//!
//! "Plain": HTTP/1.1, origin-form target, not CONNECT, no body (no `Transfer-Encoding`,
//! `Content-Length` absent or 0), no `Upgrade`, `Expect` or `TE`, within the listener's
//! header limits, and a head httparse accepts whole. Every other request — bodies,
//! upgrades, `100-continue`, trailers, HTTP/1.0, and every malformed or oversized head —
//! is handed to hyper with the connection, unread bytes first ([`Rewound`]), so its framing rules, its limits and its precise 400/413/414/431 answers
//! stay exactly as they were; hyper keeps the connection from then on. What this server
//! decides alone is only how a plain request is read and how its response is written, by
//! hyper's rules (`Content-Length` or chunked, none after HEAD/204/304, `date`, `connection:
//! close` when the connection ends after the response).
//!
//! It saves hyper's connection state machine, its per-request boxed header-read timer and
//! its header re-encoding: the timer here is one per connection, moved only when it fires
//! early (docs/benchmarks.md, "Where the instructions go").

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::upstream::body::Source;
use crate::upstream::h1::digits;

/// httparse's slots: hyper's default maximum; a listener allowing more hands heads with
/// more fields to hyper.
const SLOTS: usize = 100;
/// Longest request target taken here (hyper answers 414 above its own limit).
const MAX_TARGET: usize = 8 * 1024;
/// Fields the proxy may add to a request on its way upstream.
const ADDED_FIELDS: usize = 8;
/// Free space the read buffer keeps before each read.
const READ_CHUNK: usize = 4 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// Body pieces at least this large are written as they are, not copied.
const DIRECT: usize = 16 * 1024;

/// What one parse of the buffered bytes found. (Matched at once by the caller: boxing the
/// request would cost an allocation per request.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A plain request (its head taken from the buffer), and whether the client asked
    /// for the connection to close after it.
    Request(Request<Source>, bool),
    /// Not a whole head yet.
    Partial,
    /// Not plain: hyper serves it (and the rest of the connection), or weft's HTTP/2
    /// server if it is HTTP/2's preface.
    HandOff,
}

/// The listener limits a head is held to.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Header fields.
    pub fields: usize,
    /// Bytes of the whole head.
    pub bytes: usize,
}

/// Parses a request head at the start of `buf`; a plain request's head is split off.
pub fn parse(buf: &mut BytesMut, limits: HeadLimits) -> Parsed {
    // Left uninitialised: httparse writes the slots it fills (3.2 KB not zeroed per head).
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; SLOTS];
    let fields = limits.fields.min(SLOTS);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..fields]) {
        Ok(httparse::Status::Complete(len)) if len <= limits.bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.bytes => return Parsed::Partial,
        _ => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::HandOff;
    };
    if !target.starts_with('/') || target.len() > MAX_TARGET {
        return Parsed::HandOff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let target = span(target.as_bytes());
    let mut close = false;
    let mut named = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::HandOff;
        };
        match name {
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT | header::TE => {
                return Parsed::HandOff
            }
            header::CONTENT_LENGTH if h.value != b"0" => return Parsed::HandOff,
            header::CONNECTION => close |= has_token(h.value, b"close"),
            _ => {}
        }
        named.push((name, span(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target)) else {
        return Parsed::HandOff; // cannot happen after httparse; hyper would answer 400
    };
    // Room for the fields the proxy adds (x-forwarded-*, x-request-id, traceparent…):
    // growing a full map rehashes it.
    let mut headers = HeaderMap::with_capacity(named.len() + ADDED_FIELDS);
    for (name, value) in named {
        match HeaderValue::from_maybe_shared(head.slice(value)) {
            Ok(v) => headers.append(name, v),
            Err(_) => return Parsed::HandOff,
        };
    }
    let mut request = Request::new(Source::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Request(request, close)
}

/// Whether a comma-separated header value names `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the connection's owner tells the server, and what it tells its owner.
#[derive(Debug, Default)]
pub struct Flags {
    /// The listener is stopping: close after the response in flight.
    pub stopping: AtomicBool,
    /// Waiting for a request head (nothing in flight): the owner may close at once.
    pub waiting: AtomicBool,
}

/// How a connection left this server.
pub enum End<I> {
    /// Closed (by either side, a timeout, an error or the listener stopping).
    Closed,
    /// Another server serves the rest (hyper's HTTP/1.1, or weft's HTTP/2): the
    /// connection, with the bytes read and not yet parsed.
    HandOff(I, BytesMut),
}

/// Serves plain requests on `io` until the connection ends or a request is not plain.
/// `handle` answers one request; `header_timeout` bounds the wait for each head, from the
/// end of the previous response (an idle keep-alive connection is closed by it too).
pub async fn serve<I, F, Fut, B>(
    mut io: I,
    flags: &Flags,
    limits: HeadLimits,
    header_timeout: Duration,
    mut handle: F,
) -> End<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<Source>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::new();
    // One timer for the connection, moved only when it fires before the head's deadline.
    let mut deadline = Instant::now() + header_timeout;
    let mut timer = pin!(tokio::time::sleep_until(deadline));
    loop {
        flags.waiting.store(true, Ordering::Relaxed);
        if flags.stopping.load(Ordering::Relaxed) {
            return End::Closed;
        }
        let (req, asked_close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, limits) {
                    Parsed::Request(req, close) => break (req, close),
                    Parsed::HandOff => return End::HandOff(io, buf),
                    Parsed::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {}
                },
                _ = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        return End::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        };
        flags.waiting.store(false, Ordering::Relaxed);
        let head_request = req.method() == Method::HEAD;
        // While it is answered, a client that leaves (reads end) takes its request with
        // it, as with hyper: the exchange is dropped and its upstream request cancelled.
        // Pipelined bytes that come meanwhile wait in the buffer.
        let mut answer = pin!(handle(req));
        let Ok(resp) = loop {
            tokio::select! {
                biased;
                r = answer.as_mut() => break r,
                read = io.read_buf(&mut buf), if buf.len() < limits.bytes => match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {}
                },
            }
        };
        let close = asked_close || flags.stopping.load(Ordering::Relaxed);
        match respond(&mut io, &mut out, resp, head_request, close).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = io.shutdown().await;
                return End::Closed;
            }
        }
        deadline = Instant::now() + header_timeout;
        // An idle buffer gives its memory back; one with pipelined bytes keeps them.
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            buf = BytesMut::with_capacity(READ_CHUNK);
        }
        if out.capacity() > WRITE_BATCH {
            out = Vec::new();
        }
    }
}

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Writes `resp`; true when the connection can carry another request.
async fn respond<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<B>,
    head_request: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
{
    let (parts, body) = resp.into_parts();
    out.clear();
    let Some((framing, mut keep)) = encode_head(out, &parts, &body, head_request, close) else {
        // A 1xx final answer cannot be sent (hyper answers 500 and closes, as here).
        out.clear();
        out.extend_from_slice(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(false);
    };
    let mut remaining = match framing {
        Framing::Length(n) => n,
        Framing::Chunked => u64::MAX,
    };
    if remaining == 0 {
        // Nothing to read (HEAD, 204, 304, empty): the body ends its exchange on drop.
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep);
    }
    let mut body = pin!(body);
    loop {
        let next = poll_fn(|cx: &mut Context<'_>| match body.as_mut().poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(match frame.into_data() {
                Ok(data) => Next::Data(data),
                Err(_) => Next::Skip, // trailers: sent only to a client asking (`TE`)
            }),
            Poll::Ready(Some(Err(_))) => Poll::Ready(Next::Failed),
            Poll::Ready(None) => Poll::Ready(Next::End),
        })
        .await;
        match next {
            Next::Flush => {
                io.write_all(out).await?;
                io.flush().await?;
                out.clear();
            }
            Next::Skip => {}
            Next::Data(mut data) if !data.is_empty() => {
                if framing == Framing::Chunked {
                    write_chunk_size(out, data.len());
                } else if data.len() as u64 > remaining {
                    // More than declared: what fits is sent, then the connection ends.
                    data.truncate(remaining as usize);
                    keep = false;
                }
                remaining = remaining.saturating_sub(data.len() as u64);
                if data.len() >= DIRECT {
                    io.write_all(out).await?;
                    out.clear();
                    io.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if framing == Framing::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= WRITE_BATCH {
                    io.write_all(out).await?;
                    out.clear();
                }
                if remaining == 0 {
                    break;
                }
            }
            Next::Data(_) => {}
            Next::End => {
                match framing {
                    Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
                    // Fewer bytes than declared: the client must see the message cut.
                    Framing::Length(_) => keep = false,
                }
                break;
            }
            Next::Failed => {
                // The upstream failed mid-body: the message stays incomplete.
                io.write_all(out).await?;
                io.flush().await?;
                return Ok(false);
            }
        }
    }
    io.write_all(out).await?;
    io.flush().await?;
    Ok(keep)
}

/// One step of writing a body.
enum Next {
    Data(Bytes),
    Skip,
    Flush,
    End,
    Failed,
}

fn write_chunk_size(out: &mut Vec<u8>, n: usize) {
    use std::io::Write;
    let _ = write!(out, "{n:x}\r\n");
}

/// Writes the status line and fields by hyper's server rules; `None` for a 1xx status.
/// Returns the body's framing and whether the connection stays open after it.
fn encode_head<B: Body>(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &B,
    head_request: bool,
    mut close: bool,
) -> Option<(Framing, bool)> {
    let status = parts.status;
    if status.is_informational() {
        return None;
    }
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let empty = body.is_end_stream();
    let (mut declared, mut dated) = (None, false);
    let mut said_close = false;
    for (name, value) in &parts.headers {
        match *name {
            header::CONTENT_LENGTH => {
                // An empty body drops a stale length, except after HEAD (it describes
                // the body a GET would get); repeated equal ones are written once.
                if (empty && !head_request) || declared.is_some() {
                    continue;
                }
                match digits(value.as_bytes().trim_ascii()) {
                    Some(n) => declared = Some(n),
                    None => continue,
                }
            }
            // The framing is this server's to choose.
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => said_close |= has_token(value.as_bytes(), b"close"),
            header::DATE => dated = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (declared, body.size_hint().exact()) {
        (Some(n), _) => Framing::Length(n),
        (None, _) if empty => {
            if !no_body {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Length(0)
        }
        (None, Some(n)) => {
            if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Framing::Length(n)
        }
        (None, None) if no_body => Framing::Length(0),
        (None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    // HEAD, 204 and 304 never carry a body, whatever their fields say.
    let framing = if no_body { Framing::Length(0) } else { framing };
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    close |= said_close;
    if close && !said_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((framing, !close))
}

/// Now as an HTTP date, formatted once a second per thread (as hyper does).
pub(super) fn date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let (at, text) = c.get();
        if at == secs && secs != 0 {
            return text;
        }
        let mut text = [b' '; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        c.set((secs, text));
        text
    })
}

/// A connection handed to hyper: the bytes already read come first.
#[derive(Debug)]
pub struct Rewound<I> {
    pre: Bytes,
    inner: I,
}

impl<I> Rewound<I> {
    /// `inner`, with `pre` read before anything from it.
    pub fn new(inner: I, pre: Bytes) -> Rewound<I> {
        Rewound { pre, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(dst.remaining());
            dst.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, dst)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, src)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
