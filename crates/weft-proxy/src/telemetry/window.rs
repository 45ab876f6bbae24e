//! Rolling windows: what one route or edge did over the last 10 s, 1 min or 10 min,
//! answered from the proxy itself (`GET /stats` on the admin port), without Prometheus.
//!
//! A [`Rolling`] is a ring of [`SLOTS`] slots of [`SLOT_SECS`] seconds each (10 minutes in
//! all). A request is recorded in the slot of the second it ended in: counts by outcome,
//! and its latency in a [`Sketch`] that the slot allocates on its first request. A window
//! is the newest slots that cover it, the current (partial) one included, so a window
//! called "1m" spans 50–60 s, and rates divide by the time actually covered. Memory per
//! route or edge: the ring's counters (~4 KB) plus a 904-byte sketch per slot that has seen
//! traffic, at most ~58 KB for one busy for 10 minutes; nothing grows with the request
//! count.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Seconds per slot.
pub const SLOT_SECS: u64 = 10;
/// Slots in the ring: 10 minutes.
pub const SLOTS: usize = 60;
/// The windows a caller may ask for, in seconds.
pub const WINDOWS: [(&str, u64); 3] = [("10s", 10), ("1m", 60), ("10m", 600)];

/// Values below this are their own bucket (microseconds).
const LINEAR: u32 = 16;
/// Sub-buckets per power of two above [`LINEAR`]: a bucket spans 1/8 of its power of two,
/// so a quantile read as a bucket's midpoint is within 1/16 (6.25%) of the true value.
const SUB: u32 = 8;
/// Powers of two above [`LINEAR`] (16 µs) up to 2^30 µs (about 18 minutes).
const POWERS: u32 = 26;
const BUCKETS: usize = (LINEAR + POWERS * SUB) as usize;

/// A latency histogram with log-linear buckets (microseconds): mergeable by adding
/// counts, relative error of a quantile at most 1/16.
#[derive(Clone)]
pub struct Sketch {
    counts: [u32; BUCKETS],
    total: u64,
}

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch {
            counts: [0; BUCKETS],
            total: 0,
        }
    }
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("total", &self.total)
            .finish()
    }
}

impl Sketch {
    /// Counts one latency.
    pub fn add(&mut self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let c = &mut self.counts[bucket(us)];
        *c = c.saturating_add(1);
        self.total += 1;
    }

    /// Adds another sketch's counts.
    pub fn merge(&mut self, other: &Sketch) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// Latencies counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0–1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based (nearest rank).
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(Duration::from_nanos(midpoint_ns(i)));
            }
        }
        None
    }
}

/// The bucket of `us` microseconds.
fn bucket(us: u32) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let power = 31 - us.leading_zeros(); // 4.. for us >= 16
    if power >= 4 + POWERS {
        return BUCKETS - 1;
    }
    let sub = (us >> (power - 3)) & (SUB - 1);
    (LINEAR + (power - 4) * SUB + sub) as usize
}

/// The middle of bucket `i`, in nanoseconds.
fn midpoint_ns(i: usize) -> u64 {
    let i = i as u64;
    if i < u64::from(LINEAR) {
        return i * 1000 + 500;
    }
    let power = (i - u64::from(LINEAR)) / u64::from(SUB) + 4;
    let sub = (i - u64::from(LINEAR)) % u64::from(SUB);
    let width = 1u64 << (power - 3);
    let low = (1u64 << power) + sub * width;
    (low * 1000) + width * 500
}

/// One slot: what ended within its [`SLOT_SECS`] seconds.
#[derive(Debug, Default)]
struct Slot {
    /// Which 10-second period since the process started this slot holds (+1; 0 = never).
    epoch: u64,
    requests: u64,
    /// 5xx answers (and no answer at all).
    failures: u64,
    latency: Option<Box<Sketch>>,
    tcp_connections: u64,
    tcp_failures: u64,
    tcp_bytes: u64,
}

/// Ten minutes of one route's or edge's traffic, in slots.
#[derive(Debug)]
pub struct Rolling {
    slots: Mutex<Vec<Slot>>,
}

impl Default for Rolling {
    fn default() -> Rolling {
        Rolling {
            slots: Mutex::new((0..SLOTS).map(|_| Slot::default()).collect()),
        }
    }
}

/// What a window shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Seconds the window actually covers (the current slot counts as far as it has run).
    pub seconds: f64,
    /// HTTP requests that ended in the window.
    pub requests: u64,
    /// Those answered with anything but a 5xx.
    pub successes: u64,
    /// `successes / requests` (absent without requests).
    pub success_rate: Option<f64>,
    /// Requests per second.
    pub rps: f64,
    /// Latency quantiles in milliseconds (absent without requests).
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// TCP connections that ended in the window (opaque TCP only).
    pub tcp_connections: u64,
    /// Of which refused or failed.
    pub tcp_failures: u64,
    /// Bytes both ways on those connections.
    pub tcp_bytes: u64,
}

/// The process's clock origin: slots are numbered from it.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `at` as (slot epoch + 1, seconds into that slot).
fn epoch_of(at: Instant) -> (u64, f64) {
    let since = at.saturating_duration_since(origin());
    let secs = since.as_secs();
    (
        secs / SLOT_SECS + 1,
        since.as_secs_f64() - (secs / SLOT_SECS * SLOT_SECS) as f64,
    )
}

impl Rolling {
    /// The slot for `at`, emptied first if it last held an older period.
    fn with_slot(&self, at: Instant, f: impl FnOnce(&mut Slot)) {
        let (epoch, _) = epoch_of(at);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            let latency = slot.latency.take().map(|mut s| {
                *s = Sketch::default();
                s
            });
            *slot = Slot {
                epoch,
                latency,
                ..Slot::default()
            };
        }
        f(slot);
    }

    /// Records an HTTP exchange that ended at `at` (status 0: no answer).
    pub fn record(&self, at: Instant, status: u16, latency: Duration) {
        self.with_slot(at, |slot| {
            slot.requests += 1;
            if status >= 500 || status == 0 {
                slot.failures += 1;
            }
            slot.latency
                .get_or_insert_with(Default::default)
                .add(latency);
        });
    }

    /// Records a TCP connection that ended at `at`.
    pub fn record_tcp(&self, at: Instant, failed: bool, bytes: u64) {
        self.with_slot(at, |slot| {
            slot.tcp_connections += 1;
            slot.tcp_failures += u64::from(failed);
            slot.tcp_bytes += bytes;
        });
    }

    /// The last `seconds` (rounded up to whole slots) as of `now`.
    pub fn summary(&self, now: Instant, seconds: u64) -> Summary {
        let (current, into) = epoch_of(now);
        let span = seconds.div_ceil(SLOT_SECS).clamp(1, SLOTS as u64);
        let oldest = current.saturating_sub(span - 1).max(1);
        let alive = now.saturating_duration_since(origin()).as_secs_f64();
        let mut out = Summary {
            seconds: ((current - oldest) as f64 * SLOT_SECS as f64 + into).min(alive),
            ..Summary::default()
        };
        let mut latency = Sketch::default();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots
            .iter()
            .filter(|s| s.epoch >= oldest && s.epoch <= current)
        {
            out.requests += slot.requests;
            out.successes += slot.requests - slot.failures;
            out.tcp_connections += slot.tcp_connections;
            out.tcp_failures += slot.tcp_failures;
            out.tcp_bytes += slot.tcp_bytes;
            if let Some(s) = &slot.latency {
                latency.merge(s);
            }
        }
        drop(slots);
        if out.seconds > 0.0 {
            out.rps = out.requests as f64 / out.seconds;
        }
        if out.requests > 0 {
            out.success_rate = Some(out.successes as f64 / out.requests as f64);
        }
        let ms = |q| latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        (out.p50_ms, out.p95_ms, out.p99_ms) = (ms(0.5), ms(0.95), ms(0.99));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_stated_error() {
        let mut s = Sketch::default();
        // 1..=10,000 µs, once each.
        for us in 1..=10_000u64 {
            s.add(Duration::from_micros(us));
        }
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let truth = q * 10_000.0;
            let got = s.quantile(q).unwrap().as_secs_f64() * 1e6;
            assert!(
                (got - truth).abs() / truth <= 1.0 / 16.0 + 1e-9,
                "q{q}: {got} vs {truth}"
            );
        }
        assert_eq!(s.quantile(0.5).map(|_| ()), Some(()));
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn every_bucket_holds_its_values_and_the_last_catches_the_rest() {
        let mut last = 0;
        for us in [0u32, 1, 15, 16, 17, 31, 32, 1000, 65_535, 1 << 29, u32::MAX] {
            let b = bucket(us);
            assert!(b >= last && b < BUCKETS, "{us} -> {b}");
            last = b;
            if us < (1 << 29) {
                let mid = midpoint_ns(b) as f64 / 1000.0;
                let err = (mid - f64::from(us)).abs() / f64::from(us.max(1));
                assert!(
                    err <= 1.0 / 16.0 + 1e-9 || us < LINEAR,
                    "{us}: midpoint {mid}"
                );
            }
        }
        assert_eq!(bucket(u32::MAX), BUCKETS - 1);
    }

    #[test]
    fn merged_sketches_equal_one_fed_both() {
        let (mut a, mut b, mut both) = (Sketch::default(), Sketch::default(), Sketch::default());
        for us in [5u64, 50, 500, 5000, 50_000] {
            a.add(Duration::from_micros(us));
            both.add(Duration::from_micros(us));
            b.add(Duration::from_micros(us * 3));
            both.add(Duration::from_micros(us * 3));
        }
        a.merge(&b);
        assert_eq!(a.counts, both.counts);
        assert_eq!(a.total(), 10);
    }

    #[test]
    fn windows_slide_and_old_slots_are_forgotten() {
        let w = Rolling::default();
        let t0 = origin() + Duration::from_secs(1000); // a slot boundary
        for i in 0..30 {
            // 30 requests in the first slot, 3 of them failing.
            let status = if i % 10 == 0 { 500 } else { 200 };
            w.record(
                t0 + Duration::from_millis(i * 10),
                status,
                Duration::from_millis(20),
            );
        }
        let s = w.summary(t0 + Duration::from_secs(5), 60);
        assert_eq!((s.requests, s.successes), (30, 27));
        assert_eq!(s.success_rate, Some(0.9));
        let p50 = s.p50_ms.unwrap();
        assert!((p50 - 20.0).abs() / 20.0 <= 1.0 / 16.0, "{p50}");
        // "1m" covers this slot (5 s so far) and the five before it.
        assert!((s.seconds - 55.0).abs() < 1e-6, "{}", s.seconds);
        let s = w.summary(t0 + Duration::from_secs(5), 10);
        assert!((s.seconds - 5.0).abs() < 1e-6, "{}", s.seconds);
        assert!((s.rps - 6.0).abs() < 1e-6);
        // 25 s later the 10 s window no longer holds them; the 1 min window still does.
        let later = t0 + Duration::from_secs(30);
        w.record(later, 200, Duration::from_millis(1));
        assert_eq!(w.summary(later, 10).requests, 1);
        assert_eq!(w.summary(later, 60).requests, 31);
        // Ten minutes on, the ring has wrapped: the first slot's 30 are gone (a new request
        // took their place in the ring); the one of 30 s later is still in the 10 min window.
        let wrapped = t0 + Duration::from_secs(SLOT_SECS * SLOTS as u64);
        w.record(wrapped, 200, Duration::from_millis(1));
        let s = w.summary(wrapped, 600);
        assert_eq!(s.requests, 2, "{s:?}");
        assert_eq!(
            w.summary(wrapped + Duration::from_secs(700), 600).requests,
            0
        );
    }

    #[test]
    fn tcp_connections_count_apart_from_requests() {
        let w = Rolling::default();
        let t = origin() + Duration::from_secs(2000);
        w.record_tcp(t, false, 1000);
        w.record_tcp(t, true, 0);
        let s = w.summary(t, 10);
        assert_eq!(
            (s.tcp_connections, s.tcp_failures, s.tcp_bytes),
            (2, 1, 1000)
        );
        assert_eq!((s.requests, s.success_rate, s.p99_ms), (0, None, None));
    }
}
