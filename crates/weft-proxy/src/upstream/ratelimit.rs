//! Local rate limits: token buckets per rule or service, optionally one per client key
//! (a header's value or the client address). Over the limit a request is answered 429 with
//! `retry-after` (whole seconds until a token is due).
//!
//! Buckets refill lazily on use. Keyed limiters keep at most [`MAX_KEYS`] buckets, in two
//! generations: a key used is moved to the current one, and when the current one is half
//! full it becomes the previous one and the old previous one is dropped. So the keys
//! forgotten are those least recently used (a client that keeps hammering is never one of
//! them), each request costs O(1), and memory stays bounded whatever the clients send.
//!
//! A header-keyed limit is only as strong as the header: a client that may choose its
//! value gets a new bucket with each new value. Key on a header that something upstream of
//! the proxy sets (an authenticated user id, say), or on the client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};

use super::balance::hash64;
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
    buckets: Mutex<Generations>,
}

/// The buckets of a keyed limiter: recently used ones, and those used before.
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<u64, Bucket>,
    previous: HashMap<u64, Bucket>,
}

impl Generations {
    /// The bucket of `key`, moved to the current generation (a new one holds `fresh`).
    fn get(&mut self, key: u64, fresh: Bucket) -> &mut Bucket {
        if !self.current.contains_key(&key) {
            let bucket = self.previous.remove(&key).unwrap_or(fresh);
            if self.current.len() >= MAX_KEYS / 2 {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(key, bucket);
        }
        // Present: found or inserted just above.
        self.current.entry(key).or_insert(fresh)
    }
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
            buckets: Mutex::new(Generations::default()),
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
        let b = buckets.get(
            key,
            Bucket {
                tokens: self.burst,
                at: now,
            },
        );
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            // Validation keeps the rate ≥ 0.001/s, so this is at most 1000 s; saturate
            // rather than trust it.
            Err(Duration::try_from_secs_f64((1.0 - b.tokens) / self.rate).unwrap_or(Duration::MAX))
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

    #[test]
    fn a_throttled_client_stays_throttled_however_many_keys_pass() {
        let l = RateLimiter::new(&weft_model::RateLimit {
            requests_per_second: 0.01,
            burst: Some(1),
            key: Some(weft_model::RateLimitKey {
                header: Some("x-key".into()),
                client_address: false,
            }),
        });
        let ip: IpAddr = [127, 0, 0, 1].into();
        let mut hammer = HeaderMap::new();
        hammer.insert("x-key", "hammer".parse().unwrap());
        assert!(l.take(&hammer, ip).is_ok());
        let mut other = HeaderMap::new();
        // Three times the table's size in distinct keys, the throttled client still
        // trying between them: it is never forgotten, so never let through again.
        for i in 0..3 * MAX_KEYS {
            other.insert("x-key", i.to_string().parse().unwrap());
            let _ = l.take(&other, ip);
            if i % 1000 == 0 {
                assert!(
                    l.take(&hammer, ip).is_err(),
                    "let through after {i} other keys"
                );
            }
        }
        let tracked = {
            let g = l.buckets.lock().unwrap();
            g.current.len() + g.previous.len()
        };
        assert!(tracked <= MAX_KEYS, "{tracked} buckets");
    }
}
