//! weft's own HTTP/1.1 client, for the request most traffic is: one without a body and
//! without an upgrade, to an HTTP/1.1 service ([`fits`]). Everything else (bodies,
//! WebSockets, HTTP/2) still goes through hyper's client ([`super::client`]).
//!
//! Why: hyper's client runs each connection as a task of its own, hands every request to
//! it over a channel and the response back over another, and builds the request head
//! through its general encoder; for a bodiless request that is most of a proxied
//! request's cost (docs/benchmarks.md, "Where the instructions go"). Here the request's
//! own task writes the head (header bytes copied as they are), reads the response head
//! into the connection's buffer, parses it with `httparse` (header values are slices of
//! that buffer, not copies) and reads the body as the client takes it. The request is
//! only borrowed, so a pooled connection found closed leaves it intact for the next.
//!
//! The same rules as hyper's client (RFC 9112 §6.3): no body after HEAD, 204 or 304;
//! interim 1xx answers skipped (101 refused: no upgrade was asked for); chunked when
//! `Transfer-Encoding` ends in `chunked` (and then any `Content-Length` is dropped and the
//! connection not reused), read to the end otherwise; `Content-Length` values must all
//! agree; neither means read until close. Limits: [`MAX_HEADERS`] fields and
//! [`MAX_HEAD_BYTES`] of response head (hyper's defaults), chunk-size lines and trailers
//! bounded. Anything malformed is `UpstreamProtocol` (502); a connection is reused only
//! when its response was read to its exact end and nothing else arrived.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::body::RequestBody;
use super::retry::Permit;
use super::transport::UpstreamIo;
use crate::error::ProxyError;

/// Header fields a response head may have (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Bytes a response head may take (hyper's default buffer limit).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Bytes of a chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes of a chunked body's trailer section.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Trailer fields.
const MAX_TRAILERS: usize = 64;
/// Room made in the buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Whether `req` goes out on this client: HTTP/1.1, no body, no upgrade.
pub fn fits(req: &Request<RequestBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && http_body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(TRANSFER_ENCODING)
        && !req.headers().contains_key(UPGRADE)
        && !req.headers().contains_key(CONNECTION)
}

/// An open connection to an endpoint, between requests or carrying one.
pub struct Connection {
    io: UpstreamIo,
    /// The request head on the way out; the response as it arrives.
    buf: BytesMut,
    /// Counts the connection against the service's `maxConnections`.
    _permit: Permit,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection just opened.
    pub(super) fn new(io: UpstreamIo, permit: Permit) -> Box<Connection> {
        Box::new(Connection {
            io,
            buf: BytesMut::new(),
            _permit: permit,
        })
    }

    /// Whether an idle connection can carry a request: nothing to read — not closed by
    /// the server, no stray bytes. Polls once without waiting; for plain TCP, the
    /// runtime's readiness only (no system call): the socket has not become readable
    /// since its last read, which read a response to its end.
    pub(super) fn is_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if let UpstreamIo::Plain(tcp) = &self.io {
            return tcp.poll_read_ready(&mut cx).is_pending();
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// An endpoint's idle connections of this client, the most recently used on top (the
/// warmest is reused; the coldest age out).
#[derive(Debug, Default)]
pub struct Idle(Mutex<Vec<(Box<Connection>, Instant)>>);

impl Idle {
    fn stack(&self) -> std::sync::MutexGuard<'_, Vec<(Box<Connection>, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open.
    pub(super) fn take(&self, idle_timeout: Duration) -> Option<Box<Connection>> {
        loop {
            // Checked outside the lock: the check polls the socket.
            let (mut conn, since) = self.stack().pop()?;
            if since.elapsed() < idle_timeout && conn.is_quiet() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection for reuse, if there is room.
    fn put(&self, conn: Box<Connection>, max_idle: usize) {
        let mut stack = self.stack();
        if stack.len() < max_idle {
            stack.push((conn, Instant::now()));
        }
    }

    /// Closes the connections idle for longer than `idle_timeout` or closed by the server.
    pub(super) fn evict(&self, idle_timeout: Duration) {
        let stale: Vec<_> = {
            let mut stack = self.stack();
            let mut stale = Vec::new();
            for (mut conn, since) in std::mem::take(&mut *stack) {
                if since.elapsed() < idle_timeout && conn.is_quiet() {
                    stack.push((conn, since));
                } else {
                    stale.push(conn);
                }
            }
            stale
        };
        drop(stale); // closed outside the lock
    }
}

/// Where a connection goes back once its response has been read to the end.
#[derive(Debug)]
pub(super) struct Home {
    pub(super) idle: Arc<Idle>,
    pub(super) max_idle: usize,
}

/// How a round trip failed.
#[derive(Debug)]
pub(super) enum Failed {
    /// The connection failed before any byte of an answer came: on a pooled connection,
    /// the server had most likely closed it (an idempotent request may go again).
    Quiet(ProxyError),
    /// Anything else.
    Answer(ProxyError),
}

impl Failed {
    pub(super) fn error(self) -> ProxyError {
        match self {
            Failed::Quiet(e) | Failed::Answer(e) => e,
        }
    }
}

/// Sends `req` (its head: there is no body) on `conn` and reads the response head; the
/// body is read as the returned response's body is polled.
pub(super) async fn round_trip(
    mut conn: Box<Connection>,
    req: &Request<RequestBody>,
    home: Home,
) -> Result<Response<ResponseBody>, Failed> {
    conn.buf.clear();
    encode_head(&mut conn.buf, req);
    let Connection { io, buf, .. } = &mut *conn;
    let written = async {
        io.write_all(buf).await?;
        io.flush().await
    };
    if written.await.is_err() {
        return Err(Failed::Quiet(ProxyError::UpstreamReset));
    }
    buf.clear();
    let head_request = req.method() == Method::HEAD;
    let mut received = false;
    loop {
        match parse_head(buf, head_request) {
            Ok(Some(head)) => {
                let body = ResponseBody {
                    conn: Some(conn),
                    framing: head.framing,
                    reusable: head.reusable,
                    eof: false,
                    home,
                };
                return Ok(head.response.map(|()| body));
            }
            Ok(None) => {}
            Err(e) => return Err(Failed::Answer(e)),
        }
        buf.reserve(READ_CHUNK);
        match poll_fn(|cx| poll_read_buf(Pin::new(&mut *io), cx, buf)).await {
            Ok(0) | Err(_) if !received && buf.is_empty() => {
                return Err(Failed::Quiet(ProxyError::UpstreamReset))
            }
            Ok(0) | Err(_) => return Err(Failed::Answer(ProxyError::UpstreamReset)),
            Ok(_) => received = true,
        }
    }
}

/// The request line and header fields, as they are (names are lower case already).
pub fn encode_head(buf: &mut BytesMut, req: &Request<RequestBody>) {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let size = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    buf.reserve(req.method().as_str().len() + target.len() + size + 14);
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// A response head, read.
#[derive(Debug)]
pub struct Head {
    /// Status, version and header fields.
    pub response: Response<()>,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response's body.
    pub reusable: bool,
}

/// Parses the response head at the start of `buf` (taking it out of `buf`, interim 1xx
/// answers too); `None` while it is incomplete. `head_request`: the request was HEAD.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ProxyError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        let len = match parsed.parse(buf) {
            // However it arrived: a head that came in one read is held to the limit too.
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
            _ => return Err(ProxyError::UpstreamProtocol),
        };
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(ProxyError::UpstreamProtocol)?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ProxyError::UpstreamProtocol); // no upgrade was asked for
            }
            buf.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Values become slices of the head's bytes: where each one starts and ends.
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start, start + s.len())
        };
        // What the fields say about framing and reuse is noted as they are read, rather
        // than looked up in the map afterwards (each lookup hashes).
        let mut facts = Facts::default();
        let mut fields = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ProxyError::UpstreamProtocol)?;
            if facts.note(&name, h.value) {
                fields.push((name, span(h.value)));
            }
        }
        let reason = parsed
            .reason
            .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
            .map(|r| span(r.as_bytes()));
        let head = buf.split_to(len).freeze();
        // Room for fields the proxy or a route adds to the response (growing a full map
        // rehashes it).
        let mut headers = HeaderMap::with_capacity(fields.len() + 4);
        for (name, (start, end)) in fields {
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| ProxyError::UpstreamProtocol)?;
            headers.append(name, value);
        }
        // HTTP/1.1 keeps a connection unless told `close`; HTTP/1.0 only when told `keep-alive`.
        let mut reusable = if version == Version::HTTP_10 {
            facts.keep_alive
        } else {
            !facts.close
        };
        let framing = if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if let Some(chunked) = facts.chunked {
            if version == Version::HTTP_10 {
                return Err(ProxyError::UpstreamProtocol); // HTTP/1.0 has no transfer codings
            }
            if !chunked {
                Framing::Close
            } else {
                if facts.length.is_some() {
                    // Both: chunked wins, and a server that sends both is not trusted
                    // with another request (RFC 9112 §6.3).
                    headers.remove(CONTENT_LENGTH);
                    reusable = false;
                }
                Framing::Chunked(Chunked::Size)
            }
        } else {
            match facts.length {
                Some(Some(n)) => Framing::Length(n),
                Some(None) => return Err(ProxyError::UpstreamProtocol),
                None => Framing::Close,
            }
        };
        if matches!(framing, Framing::Close) {
            reusable = false;
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some((start, end)) = reason {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(head.slice(start..end)) {
                response.extensions_mut().insert(r);
            }
        }
        return Ok(Some(Head {
            response,
            framing,
            reusable,
        }));
    }
}

/// What a response head's fields say about its body's framing and the connection.
#[derive(Debug, Default)]
struct Facts {
    /// `Transfer-Encoding` was there: whether its last coding is `chunked`.
    chunked: Option<bool>,
    /// `Content-Length` was there: the length, if every value (repeated, or a list) is
    /// the same number.
    length: Option<Option<u64>>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
}

impl Facts {
    /// Notes what the field says; false for a field the response need not carry on: a
    /// `Connection` that names no field (only `keep-alive` or `close`, read here) and
    /// `Keep-Alive`, both hop-by-hop and removed before the response goes on anyway
    /// (leaving them out saves putting them in the map and taking them out again).
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name == TRANSFER_ENCODING {
            // The last field's last coding decides.
            let last = tokens().next_back().unwrap_or_default();
            self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == CONTENT_LENGTH {
            for item in tokens() {
                let n = digits(item);
                self.length = match self.length {
                    None => Some(n),
                    Some(seen) if seen == n => Some(n),
                    Some(_) => Some(None),
                };
            }
        } else if name == CONNECTION {
            let mut names_fields = false;
            for t in tokens() {
                let close = t.eq_ignore_ascii_case(b"close");
                let keep_alive = t.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                names_fields |= !(close || keep_alive || t.is_empty());
            }
            return names_fields;
        } else if name.as_str() == "keep-alive" {
            return false;
        }
        true
    }
}

/// A decimal number of at most 19 digits (no sign, no spaces).
pub(crate) fn digits(item: &[u8]) -> Option<u64> {
    if item.is_empty() || item.len() > 19 {
        return None;
    }
    item.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// How a response body is delimited, and how much of it is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes more.
    Length(u64),
    /// Chunked, at this point of the coding.
    Chunked(Chunked),
    /// Until the server closes the connection.
    Close,
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes more.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// Read to the end.
    Done,
}

/// What the next step of reading a body gave.
#[derive(Debug)]
pub enum Step {
    /// A frame of the body.
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body has ended.
    End,
}

impl Framing {
    /// Takes the next frame out of `buf`; `eof`: the server has closed the connection.
    pub fn next(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, ProxyError> {
        let short = |eof| {
            if eof {
                Err(ProxyError::UpstreamReset) // closed before the body's end
            } else {
                Ok(Step::More)
            }
        };
        match self {
            Framing::Length(0) | Framing::Chunked(Chunked::Done) => Ok(Step::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return short(eof);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok(Step::Frame(Frame::data(buf.split_to(n as usize).freeze())))
            }
            Framing::Close if buf.is_empty() => Ok(if eof { Step::End } else { Step::More }),
            Framing::Close => Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Framing::Chunked(state) => loop {
                match state {
                    Chunked::Size => {
                        let Some(line) = line_end(buf, MAX_CHUNK_LINE)? else {
                            return short(eof);
                        };
                        let size = chunk_size(&buf[..line])?;
                        buf.advance(line + 2);
                        *state = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(left) => {
                        if buf.is_empty() {
                            return short(eof);
                        }
                        let n = (*left).min(buf.len() as u64);
                        *left -= n;
                        if *left == 0 {
                            *state = Chunked::DataEnd;
                        }
                        return Ok(Step::Frame(Frame::data(buf.split_to(n as usize).freeze())));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return short(eof);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ProxyError::UpstreamProtocol);
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                            *state = Chunked::Done;
                            return Ok(Step::End);
                        }
                        let Some(trailers) = trailers(buf)? else {
                            return short(eof);
                        };
                        *state = Chunked::Done;
                        return Ok(Step::Frame(Frame::trailers(trailers)));
                    }
                    Chunked::Done => return Ok(Step::End),
                }
            },
        }
    }

    /// Whether nothing of the body is left to read.
    fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }
}

/// Where the CRLF ending the first line of `buf` is; `None` while it has not arrived.
/// A line longer than `max`, or ended by a bare LF, is refused.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, ProxyError> {
    match buf.iter().take(max + 2).position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(ProxyError::UpstreamProtocol),
        // The LF of a line of `max` bytes is at `max + 1`: past it, the line is too long.
        None if buf.len() >= max + 2 => Err(ProxyError::UpstreamProtocol),
        None => Ok(None),
    }
}

/// A chunk-size line (without its CRLF): hex digits, then optional extensions, ignored.
fn chunk_size(line: &[u8]) -> Result<u64, ProxyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ProxyError::UpstreamProtocol);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Err(ProxyError::UpstreamProtocol);
    }
    let digits = std::str::from_utf8(&line[..digits]).map_err(|_| ProxyError::UpstreamProtocol)?;
    u64::from_str_radix(digits, 16).map_err(|_| ProxyError::UpstreamProtocol)
}

/// The trailer section at the start of `buf` (up to and with its empty line), taken out;
/// `None` while it has not all arrived.
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, ProxyError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILER_BYTES => return Ok(None),
        _ => return Err(ProxyError::UpstreamProtocol),
    };
    if len > MAX_TRAILER_BYTES {
        return Err(ProxyError::UpstreamProtocol);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name =
            HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ProxyError::UpstreamProtocol)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| ProxyError::UpstreamProtocol)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(map))
}

/// A response body read off its connection as it is polled; the connection goes back to
/// its pool when the body has been read to its exact end (also when that end needed no
/// reading: HEAD, 204, 304, `Content-Length: 0`), and is closed otherwise.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Box<Connection>>,
    framing: Framing,
    reusable: bool,
    eof: bool,
    home: Home,
}

impl ResponseBody {
    /// The connection back to its pool, if it can carry another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && !self.eof && conn.buf.is_empty() {
                self.home.idle.put(conn, self.home.max_idle);
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.framing.is_done() {
            self.finish();
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.next(&mut conn.buf, this.eof) {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {
                    conn.buf.reserve(READ_CHUNK);
                    match ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)) {
                        Ok(0) => this.eof = true,
                        Ok(_) => {}
                        Err(_) => {
                            this.conn = None;
                            return Poll::Ready(Some(Err(ProxyError::UpstreamReset)));
                        }
                    }
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done() || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
