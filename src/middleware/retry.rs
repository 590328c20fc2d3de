//! [`Retry`]: try the rest of the chain again, in process, for transient
//! failures.

use std::future::Future;
use std::time::Duration;

use super::{unless_revoked, Middleware, Next};
use crate::config::RetryPolicy;
use crate::group::{ConsumerRecord, FailureKind, Outcome};

/// Calls the rest of the chain again when it fails with
/// [`FailureKind::Retry`], up to a number of attempts in all (Kefka's
/// `Retry`). [`FailureKind::DeadLetter`] failures, and the last attempt's
/// failure, are returned as they are.
///
/// Pauses between attempts grow exponentially from `initial` to `max`
/// (default 100 ms to 5 s), each shortened by a random part of up to a
/// fifth so that records failing together do not retry in step — the same
/// shape as the client's own [`RetryPolicy`](crate::RetryPolicy). While it
/// pauses, the record stays in flight and holds its partition (in offset
/// order, nothing behind it is handled); for long waits use the service's
/// retry topic instead ([`Route::retries`](crate::service::Route::retries)),
/// which frees the partition. A pause ends early when the record's
/// partition is revoked or the consumer shuts down: the last failure is
/// returned at once and the record goes to the partition's next owner.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use kastellan::group::testing::test_record;
/// use kastellan::group::{ConsumerRecord, Handler, HandlerError};
/// use kastellan::middleware::{Retry, Stack};
/// use kastellan::Record;
///
/// let calls = Arc::new(AtomicU32::new(0));
/// let counter = Arc::clone(&calls);
/// let handler = Stack::new()
///     .layer(Retry::new(3).backoff(Duration::from_millis(1), Duration::from_millis(5)))
///     .handler(move |_record: ConsumerRecord| {
///         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
///         async move {
///             if n < 3 {
///                 return Err(HandlerError::retry("not yet"));
///             }
///             Ok(())
///         }
///     });
/// let (record, _probe) = test_record(Record::new("orders", 0, 1));
/// assert!(handler.handle(record).await.is_ok());
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Retry {
    attempts: u32,
    initial: Duration,
    max: Duration,
}

impl Retry {
    /// Up to `attempts` attempts in all (at least 1: the first call).
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }

    /// First and longest pause between attempts (default 100 ms and 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// The most attempts, the first one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl Middleware for Retry {
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send {
        let attempts = self.attempts;
        let policy = RetryPolicy::between(self.initial, self.max);
        async move {
            let mut pauses = policy.pauses();
            let mut attempt = 1;
            loop {
                let error = match next.run(record.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                if error.kind() != FailureKind::Retry || attempt >= attempts {
                    return Err(error);
                }
                let pause = pauses.next().unwrap_or(policy.max());
                tracing::debug!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    attempt, ?pause, error = %error, "retrying in process"
                );
                if unless_revoked(&record, tokio::time::sleep(pause))
                    .await
                    .is_none()
                {
                    return Err(error);
                }
                attempt += 1;
            }
        }
    }
}
