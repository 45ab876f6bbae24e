//! Live tap: the requests a proxy serves, as events, to whoever asked (`weft tap`, through
//! the control plane).
//!
//! A proxy holds the taps open on it in [`Taps`]. With none open, a request pays one
//! relaxed atomic load. With taps open, a request whose method, path and authority one of
//! them could match has its head copied when it starts ([`Tapped`], boxed in the
//! exchange); when its response ends, each tap it matches gets an [`Event`] if the tap is
//! under its events-per-second limit and its queue has room. Otherwise the event is
//! dropped and counted, and the next event delivered carries the count: a slow consumer
//! loses events, it never slows a request.
//!
//! Headers that carry credentials are redacted before an event leaves the proxy:
//! [`ALWAYS_REDACTED`] always, plus the names each tap asks for. Response bodies are
//! captured only when a tap asks, and only up to its byte cap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Headers whose values never leave the proxy.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];
/// What a redacted header's value reads.
pub const REDACTED: &str = "[redacted]";
/// Events per second a tap gets when it names no limit.
pub const DEFAULT_MAX_RPS: u32 = 100;
/// Events per second a tap may ask for at most.
pub const MAX_RPS_CEILING: u32 = 10_000;
/// Events queued per tap before new ones are dropped.
pub const QUEUE: usize = 256;
/// Largest response body capture a tap may ask for, per event.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Taps open on one proxy at once.
pub const MAX_TAPS: usize = 16;

/// What a tap matches; an empty field matches anything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The path starts with this.
    pub path_prefix: String,
    /// The method, exactly.
    pub method: String,
    /// The authority, exactly.
    pub authority: String,
    /// Outbound requests to this service only.
    pub to: String,
    /// Inbound requests from this service only.
    pub from: String,
}

impl Filter {
    fn head_matches(&self, method: &str, path: &str, authority: &str) -> bool {
        (self.method.is_empty() || self.method.eq_ignore_ascii_case(method))
            && path.starts_with(self.path_prefix.as_str())
            && (self.authority.is_empty() || self.authority.eq_ignore_ascii_case(authority))
    }

    fn matches(&self, e: &Event) -> bool {
        self.head_matches(&e.method, &e.path, &e.authority)
            && (self.to.is_empty() || (e.direction == "outbound" && e.destination == self.to))
            && (self.from.is_empty() || (e.direction == "inbound" && e.source == self.from))
    }
}

/// One tapped request, complete.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The method.
    pub method: String,
    /// The authority.
    pub authority: String,
    /// The path and query.
    pub path: String,
    /// The route that matched (empty: none).
    pub route: String,
    /// The status (0: no response).
    pub status: u16,
    /// The gRPC status, if the response carried one.
    pub grpc_status: Option<i64>,
    /// The proxy's own cause, when it answered itself.
    pub error: Option<&'static str>,
    /// When the request started (Unix milliseconds).
    pub started_ms: u64,
    /// Until the response ended.
    pub latency: Duration,
    /// Request body bytes sent upstream (the declared `content-length` if the body was
    /// never read, e.g. the proxy answered itself).
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// The calling service (`unknown` without a verified identity).
    pub source: String,
    /// The called service.
    pub destination: String,
    /// SPIFFE IDs, when known.
    pub source_identity: String,
    /// See `source_identity`.
    pub destination_identity: String,
    /// W3C trace id, hex.
    pub trace_id: String,
    /// Request headers, redacted.
    pub request_headers: Vec<(String, String)>,
    /// Response headers, redacted.
    pub response_headers: Vec<(String, String)>,
    /// The first bytes of the request body, if asked for.
    pub request_body: Bytes,
    /// The request body was longer than the capture.
    pub request_body_truncated: bool,
    /// The first bytes of the response body, if asked for.
    pub response_body: Bytes,
    /// The body was longer than the capture.
    pub response_body_truncated: bool,
    /// Events this tap dropped since the last one it delivered.
    pub dropped: u64,
}

/// Unix milliseconds now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One open tap.
pub struct Tap {
    /// The id the control plane gave it.
    pub id: u64,
    filter: Filter,
    redact: Vec<String>,
    body_bytes: usize,
    max_rps: u32,
    /// (second of the process, events sent in it).
    second: Mutex<(u64, u32)>,
    dropped: AtomicU64,
    /// The proxy's `weft_tap_events_dropped_total`.
    dropped_total: Counter,
    tx: mpsc::Sender<Event>,
}

/// How a tap is asked for.
#[derive(Debug, Clone, Default)]
pub struct TapSpec {
    /// What it matches.
    pub filter: Filter,
    /// Header names to redact besides [`ALWAYS_REDACTED`] (any case).
    pub redact: Vec<String>,
    /// Response body bytes to capture per event (capped at [`MAX_BODY_BYTES`]).
    pub body_bytes: usize,
    /// Events per second (0: [`DEFAULT_MAX_RPS`]; capped at [`MAX_RPS_CEILING`]).
    pub max_rps: u32,
}

impl Tap {
    /// Offers one event: sent if under the rate and the queue has room, else counted.
    fn offer(&self, mut event: Event) {
        let now = super::window::origin().elapsed().as_secs();
        let allowed = {
            let mut s = self.second.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 != now {
                *s = (now, 0);
            }
            s.1 < self.max_rps && {
                s.1 += 1;
                true
            }
        };
        if !allowed {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.inc();
            return;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        event.dropped = dropped;
        redact(&mut event.request_headers, &self.redact);
        redact(&mut event.response_headers, &self.redact);
        let cap = |body: &mut Bytes, truncated: &mut bool| {
            if self.body_bytes == 0 {
                *body = Bytes::new();
                *truncated = false;
            } else if body.len() > self.body_bytes {
                body.truncate(self.body_bytes);
                *truncated = true;
            }
        };
        cap(&mut event.request_body, &mut event.request_body_truncated);
        cap(&mut event.response_body, &mut event.response_body_truncated);
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
            self.dropped_total.inc();
        }
    }
}

fn redact(headers: &mut [(String, String)], extra: &[String]) {
    for (name, value) in headers.iter_mut() {
        if ALWAYS_REDACTED.contains(&name.as_str()) || extra.iter().any(|e| e == name) {
            *value = REDACTED.to_string();
        }
    }
}

/// Who this proxy is, for the events' source and destination.
#[derive(Debug, Clone, Default)]
pub struct Own {
    /// The service it stands beside.
    pub service: String,
    /// Its SPIFFE ID.
    pub identity: String,
}

/// The taps open on one proxy.
#[derive(Default)]
pub struct Taps {
    /// Any tap open: the one thing a request reads when none is.
    active: AtomicBool,
    open: Mutex<Vec<Arc<Tap>>>,
    own: Mutex<Own>,
    dropped_total: Counter,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a tap was not opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// [`MAX_TAPS`] are open.
    #[error("this proxy has {MAX_TAPS} taps open, the most it serves at once")]
    TooMany,
}

impl Taps {
    /// No taps yet; drops are counted in `dropped_total`.
    pub fn new(dropped_total: Counter) -> Taps {
        Taps {
            dropped_total,
            ..Taps::default()
        }
    }

    /// Sets who this proxy is.
    pub fn set_own(&self, own: Own) {
        *self.own.lock().unwrap_or_else(|p| p.into_inner()) = own;
    }

    /// Opens tap `id`; its events arrive on the receiver until [`Taps::close`] (or the
    /// receiver is dropped, which closes it at the next event).
    pub fn open(&self, id: u64, spec: TapSpec) -> Result<mpsc::Receiver<Event>, TapError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|t| !t.tx.is_closed());
        if open.len() >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        open.push(Arc::new(Tap {
            id,
            filter: spec.filter,
            redact: spec.redact.iter().map(|r| r.to_ascii_lowercase()).collect(),
            body_bytes: spec.body_bytes.min(MAX_BODY_BYTES),
            max_rps: match spec.max_rps {
                0 => DEFAULT_MAX_RPS,
                n => n.min(MAX_RPS_CEILING),
            },
            second: Mutex::new((u64::MAX, 0)),
            dropped: AtomicU64::new(0),
            dropped_total: self.dropped_total.clone(),
            tx,
        }));
        self.active.store(true, Ordering::Relaxed);
        Ok(rx)
    }

    /// Closes tap `id` (and any whose receiver is gone).
    pub fn close(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|t| t.id != id && !t.tx.is_closed());
        self.active.store(!open.is_empty(), Ordering::Relaxed);
    }

    /// Closes every tap (the control plane's stream ended).
    pub fn close_all(&self) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.active.store(false, Ordering::Relaxed);
    }

    /// Whether any tap is open: all a request reads when none is.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether a request with this head may be tapped: copy what an event needs.
    pub fn wants(&self, method: &str, path: &str, authority: &str) -> bool {
        self.active()
            && self
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|t| t.filter.head_matches(method, path, authority))
    }

    /// The largest body capture any open tap asks for.
    pub fn body_bytes(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| t.body_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Who this proxy is.
    pub fn own(&self) -> Own {
        self.own.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hands a finished request to every tap it matches.
    pub fn publish(&self, event: Event) {
        let taps: Vec<Arc<Tap>> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|t| t.filter.matches(&event))
            .cloned()
            .collect();
        if let Some((last, rest)) = taps.split_last() {
            for t in rest {
                t.offer(event.clone());
            }
            last.offer(event);
        }
    }
}

/// What a tapped request carries from its start to its end (boxed in the exchange, only
/// while a tap could want it).
#[derive(Debug)]
pub(crate) struct Tapped {
    pub(crate) event: Event,
    /// The response body as it streams to the client.
    pub(crate) response: Captured,
    /// The request body as it went upstream (see [`TapBody`]).
    pub(crate) request: Option<Arc<Mutex<Captured>>>,
}

/// A body's bytes counted, and its first `capture` ones kept (+1, to know it was longer).
#[derive(Debug, Default)]
pub(crate) struct Captured {
    bytes: u64,
    pub(crate) kept: BytesMut,
    capture: usize,
}

impl Captured {
    /// Nothing seen yet; keeps up to `capture` bytes.
    pub(crate) fn new(capture: usize) -> Captured {
        Captured {
            capture,
            ..Captured::default()
        }
    }

    fn data(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let room = (self.capture + 1).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// A tapped request's body: passed through unchanged, counted and (up to the capture)
/// copied into the exchange's [`Captured`] as it is read.
pub(crate) struct TapBody<B> {
    inner: B,
    seen: Arc<Mutex<Captured>>,
}

impl<B> TapBody<B> {
    /// Wraps `inner`; what it reads goes to `tapped` (which the exchange then reads).
    pub(crate) fn new(inner: B, tapped: &mut Tapped) -> TapBody<B> {
        let seen = Arc::new(Mutex::new(Captured::new(tapped.response.capture)));
        tapped.request = Some(seen.clone());
        TapBody { inner, seen }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for TapBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                self.seen.lock().unwrap_or_else(|p| p.into_inner()).data(d);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Tapped {
    /// The request body as far as it was read: (bytes, the first ones kept).
    pub(crate) fn request_body(&self) -> Option<(u64, Bytes)> {
        let seen = self.request.as_ref()?;
        let mut c = seen.lock().unwrap_or_else(|p| p.into_inner());
        Some((c.bytes, std::mem::take(&mut c.kept).freeze()))
    }
}

impl Tapped {
    /// Copies the response's head (and its gRPC status, when it carries one).
    pub(crate) fn response(&mut self, headers: &HeaderMap, grpc_status: Option<i64>) {
        self.event.response_headers = pairs(headers);
        self.event.grpc_status = grpc_status.or(self.event.grpc_status);
    }

    /// Counts (and, within the capture, keeps) a chunk of the response body.
    pub(crate) fn data(&mut self, chunk: &[u8]) {
        self.response.data(chunk);
        self.event.response_bytes = self.response.bytes;
    }
}

/// A header map as (name, value) pairs (values that are not text shown lossily).
pub(crate) fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> Event {
        Event {
            direction: "inbound",
            method: "GET".into(),
            path: path.into(),
            source: "frontend".into(),
            destination: "payments".into(),
            request_headers: vec![
                ("authorization".into(), "Bearer s3cret".into()),
                ("x-api-key".into(), "k".into()),
                ("accept".into(), "*/*".into()),
            ],
            ..Event::default()
        }
    }

    #[tokio::test]
    async fn a_tap_gets_only_what_matches_redacted() {
        let taps = Taps::default();
        assert!(!taps.wants("GET", "/order", "x"), "no tap: nothing wanted");
        let spec = TapSpec {
            filter: Filter {
                path_prefix: "/order".into(),
                from: "frontend".into(),
                ..Filter::default()
            },
            redact: vec!["X-Api-Key".into()],
            ..TapSpec::default()
        };
        let mut rx = taps.open(7, spec).unwrap();
        assert!(taps.wants("GET", "/order/1", "x"));
        assert!(!taps.wants("GET", "/health", "x"));
        taps.publish(event("/health"));
        let mut other = event("/order/2");
        other.source = "admin".into();
        taps.publish(other);
        taps.publish(event("/order/1"));
        let got = rx.try_recv().unwrap();
        assert_eq!(got.path, "/order/1");
        assert_eq!(
            got.request_headers,
            vec![
                ("authorization".to_string(), REDACTED.to_string()),
                ("x-api-key".to_string(), REDACTED.to_string()),
                ("accept".to_string(), "*/*".to_string()),
            ]
        );
        assert!(rx.try_recv().is_err(), "nothing else matched");
        taps.close(7);
        assert!(!taps.wants("GET", "/order/1", "x"));
    }

    #[tokio::test]
    async fn over_the_rate_or_a_full_queue_events_are_dropped_and_counted() {
        let total = Counter::default();
        let taps = Taps::new(total.clone());
        let mut rx = taps
            .open(
                1,
                TapSpec {
                    max_rps: 3,
                    ..TapSpec::default()
                },
            )
            .unwrap();
        for _ in 0..10 {
            taps.publish(event("/"));
        }
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        // Within one second only 3 pass (a second boundary may let a few more through).
        assert!((3..=6).contains(&got), "{got} events delivered");
        // A queue that nobody reads: bounded, never blocks.
        let _slow = taps
            .open(
                2,
                TapSpec {
                    max_rps: MAX_RPS_CEILING,
                    ..TapSpec::default()
                },
            )
            .unwrap();
        for _ in 0..(QUEUE + 50) {
            taps.publish(event("/"));
        }
        let tap = taps
            .open
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.id == 2)
            .cloned()
            .unwrap();
        assert_eq!(tap.dropped.load(Ordering::Relaxed), 50);
        // The proxy's counter: both taps' drops (10 - delivered, then 50, plus what the
        // first tap, still open at 3 per second, dropped of the second burst).
        assert!(total.get() >= (10 - got) as u64 + 50, "{}", total.get());
    }

    #[tokio::test]
    async fn a_request_body_is_passed_through_counted_and_captured() {
        use http_body_util::BodyExt;
        let mut t = Tapped {
            event: Event::default(),
            response: Captured::new(3),
            request: None,
        };
        let body = TapBody::new(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            &mut t,
        );
        let read = body.collect().await.unwrap().to_bytes();
        assert_eq!(&read[..], b"hello", "unchanged");
        let (n, kept) = t.request_body().unwrap();
        assert_eq!((n, &kept[..]), (5, &b"hell"[..]), "cap + 1 kept");
    }

    #[test]
    fn a_body_capture_keeps_its_cap_and_says_it_was_longer() {
        let mut t = Tapped {
            event: Event::default(),
            response: Captured::new(4),
            request: None,
        };
        t.data(b"abc");
        t.data(b"defgh");
        assert_eq!(t.event.response_bytes, 8);
        assert_eq!(&t.response.kept[..], b"abcde", "cap + 1 kept");
    }
}
