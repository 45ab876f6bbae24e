//! Trace context: which trace a request belongs to, read from what arrived (W3C
//! `traceparent`/`tracestate`, B3 multi-header, B3 single), continued by this hop's span,
//! and passed on.
//!
//! Every proxy is one hop: its span is a child of the span the caller sent, and the
//! request goes on carrying this hop's span id as the parent of the next. W3C goes out
//! always; B3 in each form it arrived in, plus the forms configuration asks for. Trace
//! headers that arrived are replaced, never forwarded stale: a callee never sees an id
//! of a span that is not its parent.
//!
//! Rules for what arrived (W3C Trace Context level 1, B3):
//! * a valid `traceparent` wins; `tracestate` is kept only beside a valid one;
//! * `traceparent` is invalid — and ignored, with its `tracestate` — when its version is
//!   `ff` or not two lower-case hex digits, when version 00 is not exactly 55 characters,
//!   when an id is all zeros or not lower-case hex, or the separators are wrong;
//! * else `b3` (single), else `x-b3-traceid` + `x-b3-spanid` (multi); 64-bit B3 trace ids
//!   are widened to 128 bits for W3C and sent back 64-bit in B3; a lone `b3: 0|1|d` is a
//!   sampling decision for a trace that starts here;
//! * nothing valid: a new trace starts here; every trace header that arrived is replaced.
//!
//! Sampling: the caller's decision when it made one (W3C flags, `x-b3-sampled`,
//! `x-b3-flags: 1` and `d` meaning debug); otherwise this hop decides at the configured
//! rate. An unsampled request carries its ids onward all the same.

use std::fmt::Write as _;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// W3C `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi: trace id.
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi: span id.
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi: parent span id.
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi: sampling decision.
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi: debug flag.
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// `tracestate` longer than this is cut, whole entries from the end (W3C: at least 512
/// characters must be passed on; more may be).
pub const MAX_TRACESTATE: usize = 512;
/// `tracestate` entries passed on at most (W3C: 32).
const MAX_TRACESTATE_ENTRIES: usize = 32;

/// A listener's tracing: how often this hop records a trace the caller did not decide
/// about, the formats every request carries on, and the kind of its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Fraction (0.0–1.0) of undecided requests recorded.
    pub rate: f64,
    /// Formats sent besides W3C (and besides B3 in the form it arrived).
    pub always: Formats,
    /// Server spans (requests received), or client spans (a sidecar's outbound calls).
    pub kind: super::otlp::Kind,
}

impl Default for Settings {
    /// Propagation on; 1% of undecided requests recorded.
    fn default() -> Settings {
        Settings {
            rate: 0.01,
            always: Formats::W3C,
            kind: super::otlp::Kind::Server,
        }
    }
}

impl Settings {
    /// From a `tracing` block (absent: the defaults).
    pub fn from_model(t: Option<&weft_model::Tracing>, kind: super::otlp::Kind) -> Settings {
        let t = t.cloned().unwrap_or_default();
        Settings {
            rate: (t.sampling_percent / 100.0).clamp(0.0, 1.0),
            always: Formats::from_names(t.propagation.iter().map(|p| p.as_str())),
            kind,
        }
    }
}

/// A set of propagation formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    /// W3C Trace Context.
    pub const W3C: Formats = Formats(1);
    /// B3 multi-header.
    pub const B3_MULTI: Formats = Formats(2);
    /// B3 single header.
    pub const B3_SINGLE: Formats = Formats(4);

    /// No format.
    pub const fn empty() -> Formats {
        Formats(0)
    }

    /// Both sets.
    pub const fn union(self, other: Formats) -> Formats {
        Formats(self.0 | other.0)
    }

    /// Whether `other` is in this set.
    pub const fn contains(self, other: Formats) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// From configuration names (`w3c`, `b3multi`, `b3single`).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Formats {
        names.into_iter().fold(Formats::W3C, |f, n| {
            f.union(match n {
                "b3multi" => Formats::B3_MULTI,
                "b3single" => Formats::B3_SINGLE,
                _ => Formats::W3C,
            })
        })
    }
}

/// What a request's trace headers said: the caller's span (if valid ones arrived), the
/// caller's sampling decision, and which formats arrived (valid or not: all are replaced
/// on the way out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span.
    pub parent: Option<Parent>,
    /// The caller's sampling decision, if it made one (B3 may send one without ids).
    pub sampled: Option<bool>,
    /// B3 debug: sample, and say so downstream.
    pub debug: bool,
    /// The formats the request carried.
    pub arrived: Formats,
}

/// The caller's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: u128,
    /// The caller's span: this hop's parent.
    pub span_id: u64,
    /// The trace id came as 64 bits (B3): B3 goes back out 64-bit.
    pub short_trace_id: bool,
    /// W3C vendor state, passed on as it came (cut to [`MAX_TRACESTATE`]).
    pub tracestate: Option<HeaderValue>,
}

/// This hop's span: where it sits in the trace, and whether it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: u128,
    /// This hop's span.
    pub span_id: u64,
    /// The caller's span, if the request came with one.
    pub parent_id: Option<u64>,
    /// Recorded (and exported, where an exporter is configured).
    pub sampled: bool,
    /// B3 debug.
    pub debug: bool,
    short_trace_id: bool,
    tracestate: Option<HeaderValue>,
    arrived: Formats,
}

impl SpanContext {
    /// This hop's span: a child of the caller's, or the root of a new trace. `rate`
    /// (0.0–1.0) decides sampling when the caller did not.
    pub fn start(incoming: Incoming, rate: f64) -> SpanContext {
        let decide = || rate >= 1.0 || (rate > 0.0 && fastrand::f64() < rate);
        let sampled = incoming.debug || incoming.sampled.unwrap_or_else(decide);
        let (trace_id, parent_id, short_trace_id, tracestate) = match incoming.parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.short_trace_id, p.tracestate),
            None => {
                let id = (u128::from(nonzero_u64()) << 64) | u128::from(fastrand::u64(..));
                (id, None, false, None)
            }
        };
        SpanContext {
            trace_id,
            span_id: nonzero_u64(),
            parent_id,
            sampled,
            debug: incoming.debug,
            short_trace_id,
            tracestate,
            arrived: incoming.arrived,
        }
    }

    /// `00-{trace}-{span}-{flags}`, written without the formatting machinery (it is on
    /// every request). Marked for HPACK's "never indexed" form: a new span id on every
    /// hop is never worth an HTTP/2 table entry (see `http::headers::ensure_request_id`).
    pub fn traceparent(&self) -> HeaderValue {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex_into(&mut b[3..35], &self.trace_id.to_be_bytes());
        b[35] = b'-';
        hex_into(&mut b[36..52], &self.span_id.to_be_bytes());
        b[52..54].copy_from_slice(b"-0");
        b[54] = if self.sampled { b'1' } else { b'0' };
        let mut v = HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    /// The W3C vendor state that arrived with the trace (empty if none).
    pub fn tracestate(&self) -> &str {
        self.tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Sets the request's trace headers for the next hop: those that arrived are replaced,
    /// W3C is always set, B3 in each form that arrived or that `always` names.
    pub fn inject(&self, h: &mut HeaderMap, always: Formats) {
        let wants = |f| self.arrived.contains(f) || always.contains(f);
        if wants(Formats::B3_MULTI) {
            // All five go, whichever arrived: a stale flag beside fresh ids would lie.
            for n in [
                B3_TRACE_ID,
                B3_SPAN_ID,
                B3_PARENT_SPAN_ID,
                B3_SAMPLED,
                B3_FLAGS,
            ] {
                h.remove(n);
            }
        }
        h.insert(TRACEPARENT, self.traceparent());
        match &self.tracestate {
            Some(s) => {
                h.insert(TRACESTATE, s.clone());
            }
            None if self.arrived.contains(Formats::W3C) => {
                h.remove(TRACESTATE);
            }
            None => {}
        }
        if !wants(Formats::B3_SINGLE) && !wants(Formats::B3_MULTI) {
            return; // the common case: no B3 (and its ids are not formatted)
        }
        let b3_trace = if self.short_trace_id {
            format!("{:016x}", self.trace_id as u64)
        } else {
            format!("{:032x}", self.trace_id)
        };
        let sampled = if self.debug {
            "d"
        } else if self.sampled {
            "1"
        } else {
            "0"
        };
        if wants(Formats::B3_SINGLE) {
            let mut v = format!("{b3_trace}-{:016x}-{sampled}", self.span_id);
            if let Some(p) = self.parent_id {
                let _ = write!(v, "-{p:016x}");
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(B3, v);
            }
        } else if self.arrived.contains(Formats::B3_SINGLE) {
            h.remove(B3);
        }
        if wants(Formats::B3_MULTI) {
            let mut set = |n: HeaderName, v: &str| {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(n, v);
                }
            };
            set(B3_TRACE_ID, &b3_trace);
            set(B3_SPAN_ID, &format!("{:016x}", self.span_id));
            if let Some(p) = self.parent_id {
                set(B3_PARENT_SPAN_ID, &format!("{p:016x}"));
            }
            if self.debug {
                set(B3_FLAGS, "1");
            } else {
                set(B3_SAMPLED, sampled);
            }
        }
    }
}

/// What the request's trace headers say. One pass over the names finds the formats that
/// arrived (three hash lookups cost more on the common request that carries none); the
/// first valid format in the order W3C, B3 single, B3 multi gives the context, and the
/// presence of the others is noted so that they are replaced, not forwarded stale.
pub fn extract(h: &HeaderMap) -> Incoming {
    let (mut w3c, mut single) = (None, None);
    let mut found = Incoming::default();
    for (name, value) in h {
        match name.as_str().as_bytes() {
            b"traceparent" if w3c.is_none() => w3c = Some(value),
            b"b3" if single.is_none() => single = Some(value),
            b"x-b3-traceid" => found.arrived = found.arrived.union(Formats::B3_MULTI),
            _ => {}
        }
    }
    if let Some(v) = w3c {
        found.arrived = found.arrived.union(Formats::W3C);
        if let Some((trace_id, span_id, sampled)) = parse_traceparent(v.as_bytes()) {
            found.parent = Some(Parent {
                trace_id,
                span_id,
                short_trace_id: false,
                tracestate: tracestate(h),
            });
            found.sampled = Some(sampled);
        }
    }
    if let Some(v) = single {
        found.arrived = found.arrived.union(Formats::B3_SINGLE);
        if found.parent.is_none() {
            read_b3_single(v.as_bytes(), &mut found);
        }
    }
    if found.arrived.contains(Formats::B3_MULTI)
        && found.parent.is_none()
        && found.sampled.is_none()
    {
        read_b3_multi(h, &mut found);
    }
    found
}

/// `version-traceid-parentid-flags`: (trace id, parent id, sampled).
fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, bool)> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_lower(&v[0..2])? as u8;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append `-...` fields.
    if (version == 0 && v.len() != 55) || (version > 0 && v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex_lower(&v[3..35])?;
    let span_id = hex_lower(&v[36..52])? as u64;
    let flags = hex_lower(&v[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((trace_id, span_id, flags & 1 == 1))
}

/// `{trace}-{span}[-{sampled}[-{parent}]]`, or a lone sampling decision (`0`, `1`, `d`)
/// for a trace that starts here.
fn read_b3_single(v: &[u8], found: &mut Incoming) {
    let decision = |d: &[u8]| match d {
        b"1" => Some((Some(true), false)),
        b"0" => Some((Some(false), false)),
        b"d" => Some((Some(true), true)),
        _ => None,
    };
    let mut parts = v.split(|&b| b == b'-');
    let (Some(first), second) = (parts.next(), parts.next()) else {
        return;
    };
    let Some(span) = second else {
        if let Some((sampled, debug)) = decision(first) {
            (found.sampled, found.debug) = (sampled, debug);
        }
        return;
    };
    let (Some((trace_id, short)), Some(span_id)) = (b3_trace_id(first), b3_span_id(span)) else {
        return;
    };
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some(d) => match decision(d) {
            Some(d) => d,
            None => return,
        },
    };
    if let Some(parent) = parts.next() {
        if b3_span_id(parent).is_none() || parts.next().is_some() {
            return;
        }
    }
    found.parent = Some(Parent {
        trace_id,
        span_id,
        short_trace_id: short,
        tracestate: None,
    });
    (found.sampled, found.debug) = (sampled, debug);
}

fn read_b3_multi(h: &HeaderMap, found: &mut Incoming) {
    let debug = h.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match h.get(B3_SAMPLED).map(|v| v.as_bytes()) {
        _ if debug => Some(true),
        Some(b"1") | Some(b"true") => Some(true),
        Some(b"0") | Some(b"false") => Some(false),
        _ => None,
    };
    (found.sampled, found.debug) = (sampled, debug);
    let trace = h.get(B3_TRACE_ID).and_then(|v| b3_trace_id(v.as_bytes()));
    let span = h.get(B3_SPAN_ID).and_then(|v| b3_span_id(v.as_bytes()));
    if let (Some((trace_id, short)), Some(span_id)) = (trace, span) {
        found.parent = Some(Parent {
            trace_id,
            span_id,
            short_trace_id: short,
            tracestate: None,
        });
    }
}

/// A B3 trace id: 16 or 32 lower-case hex digits, not zero; (id, was 64-bit).
fn b3_trace_id(v: &[u8]) -> Option<(u128, bool)> {
    let id = match v.len() {
        16 | 32 => hex_lower(v)?,
        _ => return None,
    };
    (id != 0).then_some((id, v.len() == 16))
}

/// A B3 span id: 16 lower-case hex digits, not zero.
fn b3_span_id(v: &[u8]) -> Option<u64> {
    if v.len() != 16 {
        return None;
    }
    let id = hex_lower(v)? as u64;
    (id != 0).then_some(id)
}

/// Lower-case hex (at most 32 digits) as a number; upper case is refused (W3C).
fn hex_lower(v: &[u8]) -> Option<u128> {
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    v.iter().try_fold(0u128, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(d))
    })
}

/// The `tracestate` to pass on: all its lines joined, cut to [`MAX_TRACESTATE`]
/// characters and [`MAX_TRACESTATE_ENTRIES`] entries by dropping whole entries from the
/// end; `None` when empty or not text.
fn tracestate(h: &HeaderMap) -> Option<HeaderValue> {
    let mut values = h.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let rest: Vec<&HeaderValue> = values.collect();
    if rest.is_empty() && first.len() <= MAX_TRACESTATE && !first.is_empty() {
        // The common case: one line that fits. (Entry count is bounded by the length.)
        if first.as_bytes().iter().filter(|&&b| b == b',').count() < MAX_TRACESTATE_ENTRIES {
            return Some(first.clone());
        }
    }
    let mut out = String::new();
    let mut entries = 0;
    for line in std::iter::once(first).chain(rest) {
        let Ok(line) = line.to_str() else {
            return None;
        };
        for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let extra = entry.len() + usize::from(!out.is_empty());
            if entries == MAX_TRACESTATE_ENTRIES || out.len() + extra > MAX_TRACESTATE {
                break;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(entry);
            entries += 1;
        }
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_str(&out).ok()
}

/// Lower-case hex of `bytes` into `out` (twice as long): one table lookup per byte, as it
/// runs on every request (trace ids, generated request ids).
pub(crate) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// Every byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// A random id that is not zero (zero means "invalid" in both formats).
fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests;
