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
use weft_api::sketch::Sketch;

/// Seconds per slot.
pub const SLOT_SECS: u64 = 10;
/// Slots in the ring: 10 minutes.
pub const SLOTS: usize = 60;
/// The windows a caller may ask for, in seconds.
pub const WINDOWS: [(&str, u64); 3] = [("10s", 10), ("1m", 60), ("10m", 600)];

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

/// The process's clock origin: slots (and taps' seconds) are numbered from it.
pub(crate) fn origin() -> Instant {
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
        self.totals(now, seconds).summary()
    }

    /// The last `seconds` as of `now`, latency sketch included (what a proxy reports to
    /// the control plane, which merges instances).
    pub fn totals(&self, now: Instant, seconds: u64) -> Totals {
        let (current, into) = epoch_of(now);
        let span = seconds.div_ceil(SLOT_SECS).clamp(1, SLOTS as u64);
        let oldest = current.saturating_sub(span - 1).max(1);
        let alive = now.saturating_duration_since(origin()).as_secs_f64();
        let mut out = Totals {
            seconds: ((current - oldest) as f64 * SLOT_SECS as f64 + into).min(alive),
            ..Totals::default()
        };
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
                out.latency.merge(s);
            }
        }
        out
    }
}

/// A window's raw sums.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Seconds covered.
    pub seconds: f64,
    /// HTTP requests.
    pub requests: u64,
    /// Of which not 5xx.
    pub successes: u64,
    /// Their latencies.
    pub latency: Sketch,
    /// TCP connections ended.
    pub tcp_connections: u64,
    /// Of which refused or failed.
    pub tcp_failures: u64,
    /// Bytes both ways.
    pub tcp_bytes: u64,
}

impl Totals {
    /// Rates and quantiles.
    pub fn summary(&self) -> Summary {
        let ms = |q| self.latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        Summary {
            seconds: self.seconds,
            requests: self.requests,
            successes: self.successes,
            success_rate: (self.requests > 0).then(|| self.successes as f64 / self.requests as f64),
            rps: if self.seconds > 0.0 {
                self.requests as f64 / self.seconds
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            tcp_connections: self.tcp_connections,
            tcp_failures: self.tcp_failures,
            tcp_bytes: self.tcp_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
