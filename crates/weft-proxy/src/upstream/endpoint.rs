//! One upstream endpoint and what the request path learns about it: requests in flight and
//! a peak-EWMA latency estimate (the balancers' inputs), its connection pool, and its
//! health (passive outlier detection and active checks).
//!
//! The estimate jumps up at once on a slower answer, comes down over a 10 s time
//! constant (at least a tenth of the way per faster answer), decays toward zero while the
//! endpoint is not observed and starts at zero: new and recovered endpoints get tried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::outlier::Health;
use super::pool::Pool;

/// Added to every latency estimate in the P2C cost: below about a millisecond,
/// latency differences are measurement noise, not a reason to prefer an endpoint.
const COST_FLOOR: Duration = Duration::from_millis(1);
/// Decay time constant of the EWMA (and of an unobserved estimate toward zero).
const DECAY: Duration = Duration::from_secs(10);
/// The least share of the way to a lower sample an estimate moves per answer.
const MIN_STEP_DOWN: f64 = 0.1;
/// One upstream address with its live statistics.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// `addr` as a URI authority, built once rather than formatted per request.
    pub authority: http::uri::Authority,
    /// Its connections.
    pub pool: Arc<Pool>,
    /// Passive (outlier detection) and active (health checks) health.
    pub health: Health,
    inflight: AtomicU32,
    ewma: Mutex<PeakEwma>,
}

#[derive(Debug)]
struct PeakEwma {
    nanos: f64,
    stamp: Instant,
}

impl Endpoint {
    /// A fresh endpoint with no history.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        // A socket address always forms a valid authority.
        let authority = http::uri::Authority::from_maybe_shared(addr.to_string())
            .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0"));
        Endpoint {
            addr,
            weight: weight.max(1),
            authority,
            pool: Arc::new(Pool::default()),
            health: Health::default(),
            inflight: AtomicU32::new(0),
            // Never measured: zero, so a new endpoint is tried first.
            ewma: Mutex::new(PeakEwma {
                nanos: 0.0,
                stamp: Instant::now(),
            }),
        }
    }

    /// Requests currently outstanding.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard ends it when dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: Instant::now(),
        }
    }

    /// Current latency estimate in nanoseconds: decayed toward zero while unobserved, so
    /// an endpoint left alone becomes worth trying again.
    pub fn latency_estimate(&self) -> f64 {
        let now = Instant::now();
        let e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        e.nanos * decay_weight(now.saturating_duration_since(e.stamp))
    }

    pub(crate) fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let w = decay_weight(now.saturating_duration_since(e.stamp));
        e.nanos = if sample > e.nanos * w {
            sample // peak: jump up at once
        } else {
            // Down: by the time since the last answer, but at least a tenth of the way
            // per answer, so a one-off spike (a pause of the machine) is forgotten after a
            // few dozen normal answers instead of holding an endpoint back for seconds.
            let keep = w.min(1.0 - MIN_STEP_DOWN);
            e.nanos * keep + sample * (1.0 - keep)
        };
        e.stamp = now;
    }

    pub(crate) fn p2c_cost(&self) -> f64 {
        (self.latency_estimate() + COST_FLOOR.as_nanos() as f64) * f64::from(self.inflight() + 1)
            / f64::from(self.weight)
    }

    pub(crate) fn load_cost(&self) -> f64 {
        f64::from(self.inflight()) / f64::from(self.weight)
    }
}

fn decay_weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// An outstanding request on an endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl InFlight {
    /// Records the time to response headers in the endpoint's latency estimate.
    pub fn observe_response(&self) {
        self.endpoint.observe(self.started.elapsed());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    1,
                ))
            })
            .collect()
    }

    #[test]
    fn inflight_guard_counts() {
        let e = eps(1);
        let g = e[0].start();
        assert_eq!(e[0].inflight(), 1);
        drop(g);
        assert_eq!(e[0].inflight(), 0);
    }

    #[test]
    fn a_one_off_spike_is_forgotten_after_some_normal_answers() {
        let e = eps(1);
        e[0].observe(Duration::from_millis(20));
        for _ in 0..40 {
            e[0].observe(Duration::from_micros(300));
        }
        // 0.3 ms + 19.7 ms × 0.9^40 ≈ 0.6 ms (without the floor on the step: still ~20 ms).
        let est = e[0].latency_estimate() / 1e6;
        assert!(est < 1.0, "{est} ms after 40 normal answers");
    }

    #[test]
    fn an_unobserved_estimate_decays_toward_zero() {
        let e = eps(1);
        e[0].observe(Duration::from_millis(500));
        {
            let mut ewma = e[0].ewma.lock().unwrap();
            ewma.stamp -= Duration::from_secs(30);
        }
        // 500 ms × e^-3 ≈ 25 ms after 30 s unobserved.
        let est = e[0].latency_estimate() / 1e6;
        assert!((20.0..30.0).contains(&est), "{est} ms");
    }
}
