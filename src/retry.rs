//! Retrying failures that may go away by themselves, under one wall-clock
//! deadline: the only retry loop of the request/response paths (client
//! bootstrap, metadata, admin operations, producer ids). Everything below
//! it (the connection pool, metadata lookups, a single request) makes one
//! attempt and reports, so retries never nest.
//!
//! The pauses and the deadline come from the client's
//! [`RetryPolicy`](crate::config::RetryPolicy). Each attempt is told the
//! time left and is cut off at the deadline, so an operation ends within
//! its deadline (plus scheduling) whatever its timeouts are.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryPolicy;
use crate::error::{Error, Result};

/// The state of one retrying operation: when it started and which pause
/// comes next. Owned by the task running the operation.
pub(crate) struct Attempts {
    deadline: Duration,
    started: Instant,
    pauses: Box<dyn Iterator<Item = Duration> + Send + Sync>,
    attempts: u32,
}

impl Attempts {
    /// Start counting now.
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            deadline: policy.deadline(),
            started: Instant::now(),
            pauses: Box::new(policy.pauses()),
            attempts: 1,
        }
    }

    /// Time since the first attempt began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time left before the deadline.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }

    /// Attempts begun so far.
    pub(crate) fn count(&self) -> u32 {
        self.attempts
    }

    /// Wait before the next attempt. Returns `false`, without waiting,
    /// when the deadline leaves no time for another attempt.
    pub(crate) async fn pause(&mut self) -> bool {
        let left = self.remaining();
        let Some(pause) = self.pauses.next() else {
            return false;
        };
        if pause >= left {
            return false;
        }
        tokio::time::sleep(pause).await;
        self.attempts += 1;
        true
    }
}

/// Run `op` until it succeeds, fails with an error retrying cannot fix, or
/// the policy's deadline passes; then [`Error::RetriesExhausted`] carries
/// the last error. `op` gets the time left, to bound its own waits by; an
/// attempt still running at the deadline is cut off.
///
/// There is always a first attempt: with a retry deadline of zero (no
/// retries) it runs to its own timeouts, and `op` is told it has
/// unlimited time.
pub(crate) async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    operation: &'static str,
    mut op: F,
) -> Result<T>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = Attempts::new(policy);
    let mut last: Option<Error> = None;
    loop {
        let outcome = if policy.deadline().is_zero() {
            Ok(op(Duration::MAX).await)
        } else {
            let left = attempts.remaining();
            tokio::time::timeout(left, op(left)).await
        };
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if !e.is_retriable() => return Err(e),
            Ok(Err(e)) => e,
            // Cut off at the deadline: the cause is whatever failed before,
            // or that this attempt did not finish.
            Err(_) => {
                return Err(exhausted(
                    operation,
                    &attempts,
                    last.unwrap_or_else(|| Error::Client {
                        context: operation.to_string(),
                        message: format!(
                            "no result within the retry deadline of {:?}",
                            policy.deadline()
                        ),
                        retriable: true,
                    }),
                ))
            }
        };
        tracing::debug!(operation, attempt = attempts.count(), error = %error, "failed; retrying");
        if !attempts.pause().await {
            return Err(exhausted(operation, &attempts, error));
        }
        last = Some(error);
    }
}

fn exhausted(operation: &'static str, attempts: &Attempts, last: Error) -> Error {
    Error::RetriesExhausted {
        operation,
        elapsed: attempts.elapsed(),
        attempts: attempts.count(),
        last: Box::new(last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientConfig;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(deadline_ms: u64) -> RetryPolicy {
        ClientConfig::new("x:1")
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(40))
            .retry_deadline(Duration::from_millis(deadline_ms))
            .retry_policy()
    }

    fn retriable() -> Error {
        Error::Connect {
            broker: "x:1".into(),
            reason: "refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_the_last_error_and_real_elapsed_time() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let err = retry(policy(1_000), "Test", |_| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(retriable())
        })
        .await
        .unwrap_err();
        let took = started.elapsed();
        assert!(took <= Duration::from_millis(1_000), "{took:?}");
        let Error::RetriesExhausted {
            elapsed,
            attempts,
            last,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*elapsed, took);
        assert_eq!(*attempts, calls.load(Ordering::Relaxed));
        assert!(matches!(**last, Error::Connect { .. }));
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(err.is_retriable());
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_hangs_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let mut first = true;
        let err = retry(policy(500), "Test", |_| {
            let hang = !std::mem::take(&mut first);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Err::<(), _>(retriable())
            }
        })
        .await
        .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert!(
            err.to_string().contains("refused"),
            "the earlier cause is kept: {err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_deadline_still_makes_one_whole_attempt() {
        let calls = AtomicU32::new(0);
        let err = retry(policy(0), "Test", |left| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                assert_eq!(left, Duration::MAX, "no deadline to bound the attempt");
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err::<(), _>(retriable())
            }
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_retrying_cannot_fix_return_at_once() {
        let calls = AtomicU32::new(0);
        let err = retry(policy(1_000), "Test", |_| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Error::Config("bad".into()))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_stay_within_the_policy() {
        let p = policy(60_000);
        let pauses: Vec<Duration> = p.pauses().take(20).collect();
        assert!(pauses[0] >= Duration::from_millis(8) && pauses[0] <= Duration::from_millis(10));
        assert!(pauses.iter().all(|d| *d <= Duration::from_millis(40)));
        assert!(pauses[10] >= Duration::from_millis(32), "{pauses:?}");
    }
}
