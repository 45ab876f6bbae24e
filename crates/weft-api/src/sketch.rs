//! The latency sketch both sides of the live views share: a proxy fills one per window
//! slot, reports it (sparse) to the server, and the server adds the sketches of every
//! instance of a service to read that service's quantiles. Its bucket layout is therefore
//! part of the contract.
//!
//! Log-linear buckets over microseconds: 0–15 µs one bucket each, then every power of two
//! up to 2^30 µs (about 18 minutes) split in 8; a quantile read as its bucket's midpoint
//! is within 1/16 (6.25%) of the true value, and sketches merge by adding counts.

use std::time::Duration;

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
#[derive(Clone, PartialEq)]
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

impl Sketch {
    /// The non-empty buckets as `index, count` pairs (the `Window.latency` field).
    pub fn to_sparse(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                out.extend([i as u32, c]);
            }
        }
        out
    }

    /// Adds sparse `index, count` pairs (as [`Sketch::to_sparse`] writes them); pairs
    /// naming no bucket, and a trailing odd number, are ignored.
    pub fn add_sparse(&mut self, pairs: &[u32]) {
        for pair in pairs.chunks_exact(2) {
            if let Some(c) = self.counts.get_mut(pair[0] as usize) {
                *c = c.saturating_add(pair[1]);
                self.total += u64::from(pair[1]);
            }
        }
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
    fn sparse_pairs_round_trip_and_bad_pairs_are_ignored() {
        let mut s = Sketch::default();
        for us in [3u64, 3, 700, 90_000] {
            s.add(Duration::from_micros(us));
        }
        let pairs = s.to_sparse();
        assert_eq!(pairs.len(), 6, "three non-empty buckets");
        let mut back = Sketch::default();
        back.add_sparse(&pairs);
        assert!(back == s);
        back.add_sparse(&[9999, 5, 1]);
        assert!(
            back == s,
            "an unknown bucket and an odd tail change nothing"
        );
    }
}
