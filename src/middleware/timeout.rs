//! [`Timeout`]: a time limit for the rest of the chain.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use super::{Middleware, Next};
use crate::group::{ConsumerRecord, HandlerError, Outcome};

/// Fails a record whose rest of the chain takes longer than `limit`: the
/// work is dropped (cancelled at its next `.await`) and the record fails
/// with [`FailureKind::Retry`](crate::group::FailureKind::Retry), the error
/// being [`TimedOut`] (reason `handler took longer than 5s`).
///
/// Put it inside a [`Retry`](super::Retry) to bound each attempt, outside
/// to bound all of them together.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use kastellan::group::testing::test_record;
/// use kastellan::group::{ConsumerRecord, FailureKind, Handler, HandlerError};
/// use kastellan::middleware::{Stack, TimedOut, Timeout};
/// use kastellan::Record;
///
/// let handler = Stack::new()
///     .layer(Timeout::new(Duration::from_millis(10)))
///     .handler(|_record: ConsumerRecord| async move {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok::<(), HandlerError>(())
///     });
/// let (record, _probe) = test_record(Record::new("orders", 0, 1));
/// let failure = handler.handle(record).await.unwrap_err();
/// assert_eq!(failure.kind(), FailureKind::Retry);
/// assert_eq!(failure.reason(), "handler took longer than 10ms");
/// assert!(failure.error().is::<TimedOut>());
/// # });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// At most `limit` per call of the rest of the chain.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl Middleware for Timeout {
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send {
        let limit = self.limit;
        async move {
            match tokio::time::timeout(limit, next.run(record)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(HandlerError::retry(TimedOut { limit })),
            }
        }
    }
}

/// The failure of a record whose handler took longer than a [`Timeout`]
/// allows.
///
/// ```
/// use std::time::Duration;
/// use kastellan::group::HandlerError;
/// use kastellan::middleware::TimedOut;
///
/// fn was_slow(failure: &HandlerError) -> Option<Duration> {
///     failure.error().downcast_ref::<TimedOut>().map(TimedOut::limit)
/// }
/// assert_eq!(was_slow(&HandlerError::retry("busy")), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    limit: Duration,
}

impl TimedOut {
    /// The limit that was passed.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler took longer than {:?}", self.limit)
    }
}

impl std::error::Error for TimedOut {}
