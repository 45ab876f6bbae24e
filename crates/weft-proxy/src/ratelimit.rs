//! Local rate limits: token buckets per rule or service, optionally one per client key
//! (a header's value or the client address). Over the limit a request is answered 429 with
//! `retry-after` (whole seconds until a token is due).
//!
//! Buckets refill lazily on use. Keyed limiters keep at most [`MAX_KEYS`] buckets; when
//! full, buckets that have refilled completely (idle clients) are dropped first, and if
//! none has, the whole table is reset — so memory stays bounded whatever the clients send.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};

use crate::balance::hash64;
use crate::error::ProxyError;

/// Most distinct keys one limiter tracks.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What separates clients.
#[derive(Debug)]
enum Key {
    None,
    Header(HeaderName),
    ClientAddress,
}

/// One rate limit.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    key: Key,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

impl RateLimiter {
    /// From the configuration.
    pub fn new(c: &weft_model::RateLimit) -> RateLimiter {
        let key = match &c.key {
            Some(k) => match k
                .header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            {
                Some(h) => Key::Header(h),
                None if k.client_address => Key::ClientAddress,
                None => Key::None,
            },
            None => Key::None,
        };
        RateLimiter {
            rate: c.requests_per_second,
            burst: f64::from(
                c.burst
                    .unwrap_or(c.requests_per_second.ceil().max(1.0) as u32),
            ),
            key,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for this request, or refuses it with the whole seconds until one is
    /// due (for `retry-after`).
    pub fn check(&self, headers: &HeaderMap, client: IpAddr) -> Result<(), ProxyError> {
        self.take(headers, client)
            .map_err(|wait| ProxyError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u32))
    }

    fn take(&self, headers: &HeaderMap, client: IpAddr) -> Result<(), Duration> {
        let key = match &self.key {
            Key::None => 0,
            Key::Header(h) => headers.get(h).map_or(1, |v| hash64(v.as_bytes())),
            Key::ClientAddress => match client {
                IpAddr::V4(a) => hash64(&a.octets()),
                IpAddr::V6(a) => hash64(&a.octets()),
            },
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_keys_apart() {
        let l = RateLimiter::new(&weft_model::RateLimit {
            requests_per_second: 1.0,
            burst: Some(3),
            key: Some(weft_model::RateLimitKey {
                header: Some("x-key".into()),
                client_address: false,
            }),
        });
        let ip: IpAddr = [127, 0, 0, 1].into();
        let mut a = HeaderMap::new();
        a.insert("x-key", "a".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("x-key", "b".parse().unwrap());
        let allowed = (0..10).filter(|_| l.take(&a, ip).is_ok()).count();
        assert_eq!(allowed, 3);
        let wait = l.take(&a, ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.take(&b, ip).is_ok(), "another key has its own bucket");
        assert_eq!(l.check(&a, ip), Err(ProxyError::RateLimited(1)));
    }
}
