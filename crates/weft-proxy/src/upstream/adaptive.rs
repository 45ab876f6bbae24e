//! Adaptive concurrency: a per-service limit on requests in flight that follows measured
//! latency, in the spirit of Netflix's concurrency-limits "Gradient2".
//!
//! Every `sampleCount` responses, the average latency of those samples (`sample`) is
//! compared with the service's unloaded latency (`min`). `min` is re-measured every 50
//! windows the way Envoy's gradient controller does it: for one window the limit is pinned
//! to `minLimit` (excess requests fail fast), so the service is measured nearly idle, and a
//! service that became slower for good is not throttled forever. That window counts only
//! requests sent after the pin: those already in flight were sent at the old limit, and
//! their queueing would be taken for the unloaded latency.
//!
//! ```text
//! gradient  = clamp(tolerance × min / sample, 0.5, 1.0)
//! new_limit = limit × gradient + headroom        (headroom: √limit while gradient = 1)
//! limit     = 0.8 × limit + 0.2 × new_limit      (smoothed), clamped to [min, max]
//! ```
//!
//! When latency rises (a service reaching capacity queues), the gradient falls below 1 and
//! the limit shrinks towards what the service can take; while latency holds, the limit
//! grows by about √limit per window. Requests over the limit fail fast (503
//! `concurrency-limited`) instead of queueing where nobody can see them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_model::AdaptiveConcurrency;

use super::retry::Permit;

/// One service's adaptive limit.
#[derive(Debug)]
pub struct Adaptive {
    min: f64,
    max: f64,
    tolerance: f64,
    window: u32,
    in_flight: Arc<AtomicU32>,
    /// The current limit, readable without the lock.
    limit: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: f64,
    min_rtt: Option<f64>,
    windows: u32,
    /// The limit to return to after a window pinned at `min` for measuring, and when the
    /// pin began.
    pinned_from: Option<(f64, Instant)>,
    sum: f64,
    count: u32,
}

impl Adaptive {
    /// From the configuration.
    pub fn new(c: &AdaptiveConcurrency) -> Adaptive {
        Adaptive {
            min: f64::from(c.min_limit),
            max: f64::from(c.max_limit),
            tolerance: c.tolerance,
            window: c.sample_count,
            in_flight: Arc::default(),
            limit: AtomicU32::new(c.initial_limit),
            state: Mutex::new(State {
                limit: f64::from(c.initial_limit),
                min_rtt: None,
                windows: 0,
                pinned_from: None,
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A slot under the current limit, or None (fail fast).
    pub fn acquire(&self) -> Option<Permit> {
        super::retry::acquire(&self.in_flight, self.limit())
    }

    /// Feeds one response's latency; returns the new limit when this sample closed a
    /// window.
    pub fn sample(&self, rtt: Duration) -> Option<u32> {
        self.sample_at(rtt, Instant::now())
    }

    fn sample_at(&self, rtt: Duration, now: Instant) -> Option<u32> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, pinned_at)) = s.pinned_from {
            if now.checked_sub(rtt).is_none_or(|sent| sent < pinned_at) {
                // Sent before the pin, at the old limit: not an unloaded measurement.
                return None;
            }
        }
        s.sum += rtt.as_secs_f64();
        s.count += 1;
        if s.count < self.window {
            return None;
        }
        let sample = s.sum / f64::from(s.count);
        s.sum = 0.0;
        s.count = 0;
        s.windows = s.windows.wrapping_add(1);
        if let Some((resume, _)) = s.pinned_from.take() {
            // The window measured at the pinned limit: the new unloaded latency.
            s.min_rtt = Some(sample);
            s.limit = resume;
            let limit = s.limit.floor().max(1.0) as u32;
            self.limit.store(limit, Ordering::Relaxed);
            return Some(limit);
        }
        if s.windows % 50 == 0 {
            s.pinned_from = Some((s.limit, now));
            let limit = self.min.max(1.0) as u32;
            self.limit.store(limit, Ordering::Relaxed);
            return Some(limit);
        }
        let min = s.min_rtt.map_or(sample, |m| m.min(sample));
        s.min_rtt = Some(min);
        let gradient = (self.tolerance * min / sample.max(1e-9)).clamp(0.5, 1.0);
        // Room to probe for more only while latency is within tolerance.
        let headroom = if gradient >= 1.0 { s.limit.sqrt() } else { 0.0 };
        let next = s.limit * gradient + headroom;
        s.limit = (0.8 * s.limit + 0.2 * next).clamp(self.min, self.max);
        let limit = s.limit.floor().max(1.0) as u32;
        self.limit.store(limit, Ordering::Relaxed);
        Some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Adaptive {
        Adaptive::new(&AdaptiveConcurrency {
            initial_limit: 50,
            min_limit: 1,
            max_limit: 200,
            tolerance: 1.5,
            sample_count: 10,
        })
    }

    thread_local! {
        static CLOCK: std::cell::Cell<Instant> = std::cell::Cell::new(Instant::now());
    }

    /// Ten responses of `ms` each, one after the other (on a simulated clock).
    fn window(a: &Adaptive, ms: u64) -> u32 {
        (0..10)
            .filter_map(|_| {
                let now = CLOCK.get() + Duration::from_millis(ms);
                CLOCK.set(now);
                a.sample_at(Duration::from_millis(ms), now)
            })
            .last()
            .expect("a window closed")
    }

    #[test]
    fn steady_latency_grows_the_limit() {
        let a = adaptive();
        let grown = (0..20).map(|_| window(&a, 10)).last().unwrap();
        assert!(grown > 50, "steady latency lets the limit grow: {grown}");
    }

    /// A service that serves 20 at a time: beyond that, requests queue and latency grows
    /// with the concurrency offered. The limit settles near the capacity instead of
    /// staying at 150.
    #[test]
    fn a_queueing_service_pulls_the_limit_down_to_its_capacity() {
        let a = Adaptive::new(&AdaptiveConcurrency {
            initial_limit: 150,
            min_limit: 1,
            max_limit: 1000,
            tolerance: 1.5,
            sample_count: 10,
        });
        // The first window sees the service unloaded.
        window(&a, 10);
        let mut limit = a.limit();
        for _ in 0..200 {
            let rtt = 10.0 * (f64::from(limit) / 20.0).max(1.0);
            limit = window(&a, rtt as u64);
        }
        assert!((20..=60).contains(&limit), "settled at {limit}");
    }

    /// While the limit is pinned to re-measure the unloaded latency, responses to requests
    /// sent before the pin (they queued at the old limit) are not taken for it.
    #[test]
    fn the_pinned_window_ignores_requests_sent_before_the_pin() {
        let a = adaptive();
        let mut now = Instant::now();
        // One response every 20 ms, taking `ms`.
        let mut feed = |ms: u64| {
            now += Duration::from_millis(20);
            let _ = a.sample_at(Duration::from_millis(ms), now);
        };
        // 49 windows at 10 ms, then the 50th pins the limit.
        for _ in 0..500 {
            feed(10);
        }
        assert_eq!(a.limit(), 1, "pinned to min for one window");
        // Requests that queued before the pin come back slow: ignored.
        for ms in (0..30).map(|i| 400 + 20 * i) {
            feed(ms);
        }
        assert_eq!(a.limit(), 1, "still measuring");
        // Ten requests sent after the pin close the window at their latency.
        for _ in 0..10 {
            feed(10);
        }
        assert!(a.limit() > 1, "resumed: {}", a.limit());
        let s = a.state.lock().unwrap();
        let min = s.min_rtt.unwrap();
        assert!(
            (0.009..0.011).contains(&min),
            "unloaded latency measured: {min}"
        );
    }

    #[test]
    fn over_the_limit_fails_fast() {
        let a = Adaptive::new(&AdaptiveConcurrency {
            initial_limit: 2,
            min_limit: 1,
            max_limit: 10,
            tolerance: 1.5,
            sample_count: 10,
        });
        let _p1 = a.acquire().unwrap();
        let _p2 = a.acquire().unwrap();
        assert!(a.acquire().is_none());
    }
}
