//! Token buckets: the per-session command budget and the reports gateway's
//! rate limit. A bucket holds up to `burst` tokens, refills at `rate` per
//! second, and a request takes as many tokens as it costs.
//!
//! Hand-written rather than `governor`: each bucket has one owner (a session's
//! reader) or sits behind one uncontended mutex (about 50 reports a second), so
//! a lock-free GCRA buys nothing; `governor::check_n` refuses a cost above the
//! burst for ever, where we cap it (a 1 000-token subscribe still goes through
//! a configured burst of 500); and the clock is passed in, so the refill
//! arithmetic is tested without sleeping.
//!
//! Owns: refill and the wait until a refused request would fit. Must never:
//! sleep, or refuse anything when the rate is 0 (unlimited).

use std::time::{Duration, Instant};

/// `rate` tokens per second on average, `burst` at once; 0 = unlimited.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes `cost` tokens (capped at the burst, so no request is refused for
    /// ever); `Err(wait)` when there are too few, `wait` being how long until
    /// there would be enough.
    pub(crate) fn take(&mut self, cost: u32) -> Result<(), Duration> {
        self.take_at(cost, Instant::now())
    }

    fn take_at(&mut self, cost: u32, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        let cost = f64::from(cost).min(self.burst);
        if self.tokens < cost {
            return Err(Duration::from_secs_f64((cost - self.tokens) / self.rate));
        }
        self.tokens -= cost;
        Ok(())
    }
}

/// A `Retry-After` value: whole seconds, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 20);
        b.last = t0;
        for _ in 0..20 {
            assert!(b.take_at(1, t0).is_ok());
        }
        let wait = b.take_at(1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Half a second refills 5.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take_at(5, t1).is_ok());
        assert!(b.take_at(1, t1).is_err());
    }

    #[test]
    fn weights_and_the_cap() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 500);
        b.last = t0;
        // A cost over the burst is capped: it takes the whole bucket, not never.
        assert!(b.take_at(1000, t0).is_ok());
        let wait = b.take_at(1000, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(5));
        assert!(b.take_at(1000, t0 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0.0, 1);
        for _ in 0..10_000 {
            assert!(b.take(1000).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
