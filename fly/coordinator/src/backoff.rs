//! How long to wait before retrying a failed Machines API call.
//!
//! Exponential backoff with jitter: many coordinator requests that hit the
//! same rate limit at the same moment must not retry in lockstep, or they
//! hit it again together. The pause never exceeds [`Backoff::cap`] unless
//! the server asked for longer with `Retry-After`; whether a pause still
//! fits before the caller's deadline is the caller's decision, not ours.

use std::time::Duration;

/// The retry budget and pacing for one Machines API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Retries after the first attempt; 0 means one attempt only.
    pub retries: u32,
    /// The pause before the first retry, before jitter.
    pub base: Duration,
    /// The longest pause we choose ourselves.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            retries: 4,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The pause before retry number `retry` (0 for the first retry).
    ///
    /// The pause is drawn from `[d/2, d]` where `d = min(cap, base * 2^retry)`
    /// ("equal jitter": spread out, yet never much shorter than intended). A
    /// `Retry-After` from the server wins when it asks for longer.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.cap);
        let half = exponential / 2;
        let jitter = half.mul_f64(fastrand::f64());
        let ours = half + jitter;
        match retry_after {
            Some(asked) if asked > ours => asked,
            _ => ours,
        }
    }
}

/// Parses a `Retry-After` header value given in seconds.
///
/// The HTTP-date form is not parsed: the Machines API sends seconds, and an
/// unparsed value just leaves the pause to [`Backoff::delay`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let backoff = Backoff {
            retries: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for _ in 0..200 {
            let first = backoff.delay(0, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff.delay(2, None);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff.delay(30, None);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let backoff = Backoff::default();
        assert!(backoff.delay(u32::MAX, None) <= backoff.cap);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let backoff = Backoff {
            retries: 3,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(20),
        };
        assert_eq!(
            backoff.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(backoff.delay(0, Some(Duration::ZERO)) <= Duration::from_millis(10));
    }

    #[test]
    fn retry_after_seconds_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
