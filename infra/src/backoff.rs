//! Exponential backoff with full jitter: the one retry schedule of every consumer (the runtime's
//! transient errors, payment's gateway calls, the notifier's SMTP sends).
//!
//! Delay before retry `n` (1-based) is a uniformly random duration in
//! `[0, min(max_delay, base * factor^(n-1))]` ("full jitter", AWS Architecture Blog, 2015):
//! thousands of bookings that failed together do not retry together.

use std::time::Duration;

/// When and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// How much the ceiling grows per attempt.
    pub factor: f64,
    /// The ceiling never grows past this.
    pub max_delay: Duration,
    /// Attempts in all, the first included: `5` means the first try and four retries.
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_secs(10),
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn may_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The ceiling of the delay after attempt `attempt` (1-based) failed.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let ceiling = self.base.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        Duration::from_secs_f64(ceiling.min(self.max_delay.as_secs_f64()).max(0.0))
    }

    /// The delay after attempt `attempt` failed, jittered by `unit`, a random number in `[0, 1)`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay after attempt `attempt` failed, with fresh randomness.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_millis(1_000),
            max_attempts: 5,
        }
    }

    #[test]
    fn the_ceiling_grows_by_the_factor_and_stops_at_the_maximum() {
        let backoff = policy();
        let ceilings: Vec<u128> = (1..=6).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        let backoff = policy();
        assert_eq!(backoff.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay_with(3, 0.5), Duration::from_millis(200));
        for _ in 0..1_000 {
            assert!(backoff.delay(4) <= Duration::from_millis(800));
        }
    }

    #[test]
    fn max_attempts_counts_the_first_try() {
        let backoff = policy();
        assert!(backoff.may_retry_after(4));
        assert!(!backoff.may_retry_after(5));
    }
}
