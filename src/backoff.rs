//! The one place the data path decides how long to wait before trying
//! again. Every retry of the group consumer (join, sync, coordinator lookup,
//! start positions, metadata refresh, fetch restarts) and of the fetch pool
//! takes its pauses from a [`Backoff`], so moving to a client-wide retry
//! policy later changes only this file.

use std::time::Duration;

use crate::config::{ClientConfig, RetryPolicy};

/// The pauses between attempts of one retrying loop: the client's
/// [`RetryPolicy`] (doubling, with jitter that only shortens, never past
/// the maximum), or the same shape between other bounds where a loop waits
/// on a slower clock (restarting a fetch that failed for good, polling for
/// a missing topic). The loops that use it decide themselves when to stop.
pub(crate) struct Backoff {
    policy: RetryPolicy,
    pauses: Box<dyn Iterator<Item = Duration> + Send + Sync>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Backoff {
    /// The client's retry pauses: from `retry_backoff` up to
    /// `retry_backoff_max` (100 ms to 1 s by default).
    pub(crate) fn for_client(config: &ClientConfig) -> Self {
        Self::from_policy(config.retry_policy())
    }

    /// Pauses of the same shape from `first` up to `max`.
    pub(crate) fn between(first: Duration, max: Duration) -> Self {
        Self::from_policy(RetryPolicy::between(first, max))
    }

    fn from_policy(policy: RetryPolicy) -> Self {
        Self {
            policy,
            pauses: Box::new(policy.pauses()),
        }
    }

    /// The next pause.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.pauses.next().unwrap_or_else(|| self.policy.max())
    }

    /// Start again from the first pause (after a success).
    pub(crate) fn reset(&mut self) {
        self.pauses = Box::new(self.policy.pauses());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::between(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(800) && late <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
