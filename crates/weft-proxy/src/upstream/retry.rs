//! Resilience on the request path: which failures are retried, how long to wait, the retry
//! budget that keeps retries from multiplying load during an outage, and the circuit
//! breaker's fail-fast limits.
//!
//! ```text
//! request ─► breaker: requests in flight < maxRequests? else 503 overloaded
//!         ─► budget.deposit()
//!         ─► attempt ─► failure retriable? ─► attempts left, deadline not passed,
//!                                             budget.withdraw(), retries in flight < maxRetries
//!                                          ─► full-jitter backoff ─► next attempt (another
//!                                             endpoint when there is one)
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use weft_model::{RetryOn, RetryPolicy};

use crate::error::ProxyError;

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    on_connect: bool,
    on_reset: bool,
    on_per_try: bool,
    on_unavailable: bool,
    on_gateway: bool,
    status_codes: Vec<u16>,
    grpc_codes: Vec<u32>,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
    /// Largest body kept for replay.
    pub max_body_bytes: u64,
}

impl Retry {
    /// Compiles the configuration's policy.
    pub fn new(p: &RetryPolicy) -> Retry {
        let has = |r| p.on.contains(&r);
        Retry {
            attempts: p.attempts,
            on_connect: has(RetryOn::ConnectFailure),
            on_reset: has(RetryOn::Reset),
            on_per_try: has(RetryOn::PerTryTimeout),
            on_unavailable: has(RetryOn::Unavailable),
            on_gateway: has(RetryOn::GatewayError),
            status_codes: p.status_codes.clone(),
            grpc_codes: p.grpc_codes.clone(),
            backoff_base: p.backoff.base.get(),
            backoff_max: p.backoff.max.get(),
            non_idempotent: p.non_idempotent,
            max_body_bytes: p.max_body_bytes,
        }
    }

    /// Whether a request with `method` may be sent again after it may have reached the
    /// upstream.
    pub fn may_resend(&self, method: &Method) -> bool {
        self.non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }

    /// Whether any condition of the policy can retry a request that reached the upstream
    /// (only then is a copy of the request kept).
    pub fn retries_after_send(&self) -> bool {
        self.on_reset
            || self.on_per_try
            || self.on_unavailable
            || self.on_gateway
            || !self.status_codes.is_empty()
            || !self.grpc_codes.is_empty()
    }

    /// Whether a failed attempt is worth another; `resendable`: the request may be sent
    /// again even if it reached the upstream.
    pub fn retries_error(&self, e: ProxyError, resendable: bool) -> bool {
        match e {
            // Refused unprocessed: like a refused connection, whatever the method.
            ProxyError::ConnectRefused
            | ProxyError::ConnectTimeout
            | ProxyError::ConnectFailed
            | ProxyError::UpstreamTls
            | ProxyError::UpstreamRefused => self.on_connect,
            ProxyError::UpstreamReset | ProxyError::UpstreamProtocol => self.on_reset && resendable,
            ProxyError::PerTryTimeout => self.on_per_try && resendable,
            _ => false,
        }
    }

    /// Whether a response is a failure worth another attempt: its status, or a gRPC
    /// status in its headers (a trailers-only reply).
    pub fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let code = status.as_u16();
        if (self.on_unavailable && code == 503)
            || (self.on_gateway && matches!(code, 502..=504))
            || self.status_codes.contains(&code)
        {
            return true;
        }
        let grpc = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        match grpc {
            Some(14) if self.on_unavailable => true,
            Some(c) => self.grpc_codes.contains(&c),
            None => false,
        }
    }

    /// The wait before retry `n` (0-based): uniformly random in [0, min(max, base × 2^n)]
    /// ("full jitter"), so that clients that failed together do not retry together.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << n.min(20))
            .min(self.backoff_max);
        cap.mul_f64(fastrand::f64())
    }
}

/// Slots of the sliding window, one per second.
const SLOTS: usize = 10;

/// A retry budget: in every second, retries may be at most `ratio` × that second's
/// requests + `min_per_second`, and over the sliding 10-second window at most `ratio` ×
/// its requests + `min_per_second` × 10. The per-second bound spreads retries with the
/// traffic: the window's allowance cannot be spent in a burst when a failure starts (or
/// when an old second leaves the window). Approximate by design (per-second slots updated
/// with relaxed atomics): a budget needs to bound the load, not to count exactly.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    per_second: f64,
    floor: f64,
    unlimited: bool,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Budget {
    /// A budget from the configuration.
    pub fn new(b: &weft_model::RetryBudget) -> Budget {
        Budget {
            ratio: b.ratio,
            per_second: f64::from(b.min_per_second),
            floor: f64::from(b.min_per_second) * SLOTS as f64,
            unlimited: b.unlimited,
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }

    /// Whether the settings are those of `b` (a reload keeps the window when they are).
    pub fn same_settings(&self, b: &weft_model::RetryBudget) -> bool {
        self.ratio == b.ratio
            && self.floor == f64::from(b.min_per_second) * SLOTS as f64
            && self.unlimited == b.unlimited
    }

    fn slot(&self) -> &Slot {
        let now = self.epoch.elapsed().as_secs() + 1; // 0 marks an unused slot
        let slot = &self.slots[(now % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    fn totals(&self) -> (u64, u64) {
        let now = self.epoch.elapsed().as_secs() + 1;
        self.slots
            .iter()
            .filter(|s| now.saturating_sub(s.second.load(Ordering::Relaxed)) < SLOTS as u64)
            .fold((0, 0), |(q, r), s| {
                (
                    q + s.requests.load(Ordering::Relaxed),
                    r + s.retries.load(Ordering::Relaxed),
                )
            })
    }

    /// Counts a request (first attempts only).
    pub fn deposit(&self) {
        self.slot().requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if it allows one.
    pub fn withdraw(&self) -> bool {
        if self.unlimited {
            return true;
        }
        let (requests, retries) = self.totals();
        if (retries + 1) as f64 > self.ratio * requests as f64 + self.floor {
            return false;
        }
        let slot = self.slot();
        let (now_requests, now_retries) = (
            slot.requests.load(Ordering::Relaxed),
            slot.retries.load(Ordering::Relaxed),
        );
        if (now_retries + 1) as f64 > self.ratio * now_requests as f64 + self.per_second {
            return false;
        }
        slot.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The circuit breaker of one service: its limits, and counters of what is in flight that
/// a reload carries into the next snapshot (so requests in flight during a reload still
/// count against the new limits).
#[derive(Debug)]
pub struct Breaker {
    max_requests: u32,
    max_connections: u32,
    max_retries: u32,
    requests: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
    /// Open upstream connections (the pool takes and releases them).
    connections: Arc<AtomicU32>,
}

/// Held while a request (or retry, or connection) counts against a limit.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU32>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn acquire(counter: &Arc<AtomicU32>, max: u32) -> Option<Permit> {
    let mut n = counter.load(Ordering::Relaxed);
    loop {
        if n >= max {
            return None;
        }
        match counter.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(Permit(counter.clone())),
            Err(actual) => n = actual,
        }
    }
}

impl Breaker {
    /// A breaker from the configuration.
    pub fn new(c: &weft_model::CircuitBreaker) -> Breaker {
        Breaker {
            max_requests: c.max_requests,
            max_connections: c.max_connections,
            max_retries: c.max_retries,
            requests: Arc::default(),
            retries: Arc::default(),
            connections: Arc::default(),
        }
    }

    /// A breaker with new limits that keeps counting what is already in flight.
    pub fn with_limits(&self, c: &weft_model::CircuitBreaker) -> Breaker {
        Breaker {
            max_requests: c.max_requests,
            max_connections: c.max_connections,
            max_retries: c.max_retries,
            requests: self.requests.clone(),
            retries: self.retries.clone(),
            connections: self.connections.clone(),
        }
    }

    /// A request slot, or None when `maxRequests` are in flight.
    pub fn request(&self) -> Option<Permit> {
        acquire(&self.requests, self.max_requests)
    }

    /// A retry slot, or None when `maxRetries` retries are in flight.
    pub fn retry(&self) -> Option<Permit> {
        acquire(&self.retries, self.max_retries)
    }

    /// A connection slot, or None when `maxConnections` are open.
    pub fn connection(&self) -> Option<Permit> {
        acquire(&self.connections, self.max_connections)
    }
}

/// The `grpc-timeout` header's value as a duration (gRPC over HTTP/2: digits and a unit,
/// H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value (milliseconds, rounded up; at most 8 digits).
pub fn format_grpc_timeout(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    format!("{ms}m")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_ratio_plus_floor() {
        let b = Budget::new(&weft_model::RetryBudget {
            ratio: 0.2,
            min_per_second: 0,
            unlimited: false,
        });
        for _ in 0..100 {
            b.deposit();
        }
        let allowed = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(allowed, 20);
        let floor = Budget::new(&weft_model::RetryBudget {
            ratio: 0.0,
            min_per_second: 1,
            unlimited: false,
        });
        // The floor is per second: 1 now, not the window's 10 at once.
        assert_eq!((0..100).filter(|_| floor.withdraw()).count(), 1);
    }

    #[test]
    fn a_failure_that_starts_cannot_spend_the_window_at_once() {
        // 300 requests in the first second of an outage, every one failing and retried
        // as often as allowed: at most 0.2 × 300 + 10 retries, not the window's
        // 0.2 × 300 + 100.
        let b = Budget::new(&weft_model::RetryBudget {
            ratio: 0.2,
            min_per_second: 10,
            unlimited: false,
        });
        let mut allowed = 0;
        for _ in 0..300 {
            b.deposit();
            allowed += (0..3).filter(|_| b.withdraw()).count();
        }
        assert!(allowed <= 70, "{allowed} retries in one second");
        assert!(allowed >= 60, "{allowed}: the budget is there to be used");
    }

    #[test]
    fn full_jitter_stays_under_the_cap() {
        let r = Retry::new(&RetryPolicy::default());
        for n in 0..30 {
            let cap = Duration::from_millis(25)
                .saturating_mul(1 << n.min(20))
                .min(Duration::from_millis(250));
            assert!(r.backoff(n) <= cap);
        }
    }

    #[test]
    fn responses_are_classified_by_status_and_grpc_status() {
        let policy = |on: Vec<RetryOn>, codes: Vec<u16>, grpc: Vec<u32>| {
            Retry::new(&RetryPolicy {
                on,
                status_codes: codes,
                grpc_codes: grpc,
                ..RetryPolicy::default()
            })
        };
        let grpc = |code: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", code.parse().unwrap());
            h
        };
        let none = HeaderMap::new();
        let unavailable = policy(vec![RetryOn::Unavailable], vec![], vec![]);
        assert!(unavailable.retries_response(StatusCode::SERVICE_UNAVAILABLE, &none));
        assert!(!unavailable.retries_response(StatusCode::BAD_GATEWAY, &none));
        assert!(unavailable.retries_response(StatusCode::OK, &grpc("14")));
        assert!(!unavailable.retries_response(StatusCode::OK, &grpc("8")));
        let gateway = policy(vec![RetryOn::GatewayError], vec![429], vec![8]);
        assert!(gateway.retries_response(StatusCode::GATEWAY_TIMEOUT, &none));
        assert!(gateway.retries_response(StatusCode::TOO_MANY_REQUESTS, &none));
        assert!(gateway.retries_response(StatusCode::OK, &grpc("8")));
        assert!(!gateway.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &none));
        // Connect failures are always resendable; a reset only for resendable requests.
        let default = Retry::new(&RetryPolicy::default());
        assert!(default.retries_error(ProxyError::ConnectRefused, false));
        assert!(default.retries_error(ProxyError::UpstreamRefused, false));
        assert!(!default.retries_error(ProxyError::UpstreamReset, true));
        let resets = policy(vec![RetryOn::Reset], vec![], vec![]);
        assert!(resets.retries_error(ProxyError::UpstreamReset, true));
        assert!(!resets.retries_error(ProxyError::UpstreamReset, false));
    }

    #[test]
    fn grpc_timeouts_round_trip() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(format_grpc_timeout(Duration::from_micros(1500)), "2m");
    }

    #[test]
    fn breaker_fails_fast_at_the_limit_and_frees_on_drop() {
        let b = Breaker::new(&weft_model::CircuitBreaker {
            max_requests: 2,
            max_connections: 1,
            max_retries: 1,
        });
        let p1 = b.request().unwrap();
        let _p2 = b.request().unwrap();
        assert!(b.request().is_none());
        drop(p1);
        let _p3 = b.request().expect("a slot freed by the drop");
        let kept = b.with_limits(&weft_model::CircuitBreaker {
            max_requests: 2,
            max_connections: 1,
            max_retries: 1,
        });
        assert!(
            kept.request().is_none(),
            "in-flight count survives a reload"
        );
    }
}
