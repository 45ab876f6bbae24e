//! Endpoint health: passive (outlier detection: consecutive failures eject an endpoint for
//! a while) and active (health checks mark it down). The balancer skips endpoints that are
//! not [`Health::available`].
//!
//! Ejections are lazy: an endpoint carries the instant until which it is ejected, and comes
//! back by itself when that passes — no timer per endpoint. The n-th ejection lasts n ×
//! `baseEjectionTime` (capped); a readmitted endpoint that behaves for a base time earns
//! one ejection back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since the process-wide base instant (0 is never a valid deadline).
fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64 + 1
}

/// One endpoint's health.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// `now_ms()` until which it is ejected; 0 when never ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// Set by active health checks.
    down: AtomicBool,
    /// Health-check probes: successes and failures in a row, and when the last started.
    probe_ok: AtomicU32,
    probe_failed: AtomicU32,
    probe_at: AtomicU64,
}

impl Health {
    /// Whether traffic may go to the endpoint now.
    pub fn available(&self) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Whether it is currently ejected by outlier detection.
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Whether it has any failure or ejection on record (a success then has work to do).
    pub fn touched(&self) -> bool {
        self.consecutive_5xx.load(Ordering::Relaxed) != 0
            || self.consecutive_gateway.load(Ordering::Relaxed) != 0
            || self.consecutive_local.load(Ordering::Relaxed) != 0
            || self.ejections.load(Ordering::Relaxed) != 0
    }

    /// Marks the endpoint up or down (active health checks); returns whether it changed.
    pub fn set_down(&self, down: bool) -> bool {
        self.down.swap(down, Ordering::Relaxed) != down
    }

    /// Whether a health-check probe is due (and, if so, claims it).
    pub fn probe_due(&self, interval: Duration) -> bool {
        let now = now_ms();
        let last = self.probe_at.load(Ordering::Relaxed);
        if last != 0 && now < last + interval.as_millis() as u64 {
            return false;
        }
        self.probe_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Records a probe's result; returns `Some(up)` when the endpoint changed state.
    pub fn probe_result(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if ok {
            self.probe_failed.store(0, Ordering::Relaxed);
            let n = self.probe_ok.fetch_add(1, Ordering::Relaxed) + 1;
            (n >= healthy && self.set_down(false)).then_some(true)
        } else {
            self.probe_ok.store(0, Ordering::Relaxed);
            let n = self.probe_failed.fetch_add(1, Ordering::Relaxed) + 1;
            (n >= unhealthy && self.set_down(true)).then_some(false)
        }
    }
}

/// How an attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response with this status.
    ServerError(u16),
    /// No response: connect failure, reset, per-try timeout, TLS failure.
    LocalFailure,
}

/// A service's outlier-detection settings.
#[derive(Debug, Clone)]
pub struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    base: Duration,
    max: Duration,
    max_percent: u32,
}

/// Why an endpoint was ejected.
pub type Reason = &'static str;

impl Outlier {
    /// From the configuration.
    pub fn new(c: &weft_model::OutlierDetection) -> Outlier {
        Outlier {
            consecutive_5xx: c.consecutive_5xx,
            consecutive_gateway: c.consecutive_gateway_errors,
            consecutive_local: c.consecutive_local_failures,
            base: c.base_ejection_time.get(),
            max: c.max_ejection_time.get(),
            max_percent: c.max_ejection_percent,
        }
    }

    /// Records an attempt's outcome on the endpoint whose health is `h`, one of `all` (the
    /// service's endpoints' health, read only when an ejection is due); returns
    /// `Ok(reason)` when this ejected it, `Err(reason)` when it should have been but the
    /// ejection cap prevented it.
    pub fn record<'a>(
        &self,
        h: &Health,
        all: impl ExactSizeIterator<Item = &'a Health>,
        outcome: Outcome,
    ) -> Option<Result<Reason, Reason>> {
        if outcome == Outcome::Success && !h.touched() {
            return None; // a clean record stays clean: no stores on the request path
        }
        let bump =
            |c: &AtomicU32, limit: u32| limit > 0 && c.fetch_add(1, Ordering::Relaxed) + 1 >= limit;
        let reason = match outcome {
            Outcome::Success => {
                h.consecutive_5xx.store(0, Ordering::Relaxed);
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                h.consecutive_local.store(0, Ordering::Relaxed);
                self.forgive(h);
                return None;
            }
            Outcome::ServerError(status) => {
                h.consecutive_local.store(0, Ordering::Relaxed);
                let gateway = matches!(status, 502..=504)
                    && bump(&h.consecutive_gateway, self.consecutive_gateway);
                if !matches!(status, 502..=504) {
                    h.consecutive_gateway.store(0, Ordering::Relaxed);
                }
                if bump(&h.consecutive_5xx, self.consecutive_5xx) {
                    "consecutive-5xx"
                } else if gateway {
                    "consecutive-gateway-errors"
                } else {
                    return None;
                }
            }
            Outcome::LocalFailure => {
                if bump(&h.consecutive_local, self.consecutive_local) {
                    "consecutive-local-failures"
                } else {
                    return None;
                }
            }
        };
        if h.ejected() {
            return None; // already out (a late result of a request sent before)
        }
        h.consecutive_5xx.store(0, Ordering::Relaxed);
        h.consecutive_gateway.store(0, Ordering::Relaxed);
        h.consecutive_local.store(0, Ordering::Relaxed);
        let total = all.len() as u64;
        let ejected_now = all.filter(|e| e.ejected()).count() as u64;
        if (ejected_now + 1) * 100 > u64::from(self.max_percent) * total {
            return Some(Err(reason));
        }
        let n = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = self.base.saturating_mul(n).min(self.max);
        h.ejected_until
            .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        Some(Ok(reason))
    }

    /// A readmitted endpoint that has behaved for a base ejection time since it came back
    /// earns one ejection back, so an old incident does not lengthen the next ejection
    /// forever.
    fn forgive(&self, h: &Health) {
        let until = h.ejected_until.load(Ordering::Relaxed);
        if until == 0 || h.ejections.load(Ordering::Relaxed) == 0 {
            return;
        }
        let back_since = now_ms().saturating_sub(until);
        if back_since >= self.base.as_millis() as u64 {
            let _ = h
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            // Restart the clock for the next step of forgiveness.
            h.ejected_until.store(now_ms(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(percent: u32) -> Outlier {
        Outlier::new(&weft_model::OutlierDetection {
            base_ejection_time: weft_model::duration::Duration::from_millis(60_000),
            max_ejection_percent: percent,
            ..Default::default()
        })
    }

    fn endpoints(n: u16) -> Vec<Health> {
        (0..n).map(|_| Health::default()).collect()
    }

    #[test]
    fn five_consecutive_failures_eject_and_a_success_resets_the_count() {
        let o = outlier(50);
        let eps = endpoints(4);
        for _ in 0..4 {
            assert_eq!(o.record(&eps[0], eps.iter(), Outcome::LocalFailure), None);
        }
        assert_eq!(o.record(&eps[0], eps.iter(), Outcome::Success), None);
        for _ in 0..4 {
            assert_eq!(
                o.record(&eps[0], eps.iter(), Outcome::ServerError(500)),
                None
            );
        }
        assert_eq!(
            o.record(&eps[0], eps.iter(), Outcome::ServerError(503)),
            Some(Ok("consecutive-5xx"))
        );
        assert!(!eps[0].available());
        assert!(eps[1].available());
    }

    #[test]
    fn the_cap_keeps_most_endpoints_in() {
        let o = outlier(50);
        let eps = endpoints(2);
        for _ in 0..5 {
            o.record(&eps[0], eps.iter(), Outcome::LocalFailure);
        }
        assert!(eps[0].ejected());
        let mut last = None;
        for _ in 0..5 {
            last = o.record(&eps[1], eps.iter(), Outcome::LocalFailure);
        }
        assert_eq!(last, Some(Err("consecutive-local-failures")));
        assert!(eps[1].available(), "never more than half");
        let single = endpoints(1);
        for _ in 0..5 {
            last = o.record(&single[0], single.iter(), Outcome::LocalFailure);
        }
        assert_eq!(last, Some(Err("consecutive-local-failures")));
        assert!(single[0].available(), "the last endpoint stays");
    }
}
