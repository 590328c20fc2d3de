//! The one place the data path decides how long to wait before trying
//! again. Every retry of the group consumer (join, sync, coordinator lookup,
//! start positions, metadata refresh, fetch restarts) and of the fetch loop
//! takes its pauses from a [`Backoff`], so moving to a client-wide retry
//! policy later changes only this file.

use std::time::Duration;

use rand::Rng;

use crate::config::ClientConfig;

/// Exponential backoff with jitter between a first and a largest pause.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    /// Failures since the last [`reset`](Self::reset).
    attempt: u32,
}

impl Backoff {
    /// The client's retry pauses: from `retry_backoff` up to
    /// `retry_backoff_max` (100 ms to 1 s by default).
    pub fn for_client(config: &ClientConfig) -> Self {
        Self::between(config.retry_backoff, config.retry_backoff_max)
    }

    /// Pauses from `first` up to `max`.
    pub fn between(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            attempt: 0,
        }
    }

    /// The next pause: `first * 2^attempt`, capped at `max`, with up to 20%
    /// jitter either way so that members failing together do not retry in
    /// lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .first
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::rng().random_range(0.8..=1.2);
        base.mul_f64(jitter).min(self.max)
    }

    /// Start again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::between(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(800) && late <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
