//! [`ConcurrencyLimit`]: a bound on records in the rest of the chain, shared
//! by everything that holds a clone.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{unless_revoked, Middleware, Next};
use crate::group::{ConsumerRecord, HandlerError, Outcome};

/// At most `n` records in the rest of the chain at once. Clones share the
/// bound: put one clone in several routes (or the service's
/// [`Router::layer`](crate::service::Router::layer)) to bound them
/// together, for example to protect a database pool.
///
/// In a [`Service`](crate::service::Service), a record waiting for its
/// retry delay holds no slot: the wait comes before the chain.
///
/// A record waiting for a slot is in flight and holds its partition. The
/// wait ends early when the record's partition is revoked or the consumer
/// shuts down: the record then fails (kind
/// [`Retry`](crate::group::FailureKind::Retry)) and goes to the
/// partition's next owner.
///
/// ```
/// use kastellan::middleware::{ConcurrencyLimit, Stack};
/// use kastellan::group::{ConsumerRecord, HandlerError};
///
/// let database = ConcurrencyLimit::new(4);
/// let orders = Stack::new()
///     .layer(database.clone())
///     .handler(|_r: ConsumerRecord| async move { Ok::<(), HandlerError>(()) });
/// let refunds = Stack::new()
///     .layer(database.clone()) // the same 4 slots
///     .handler(|_r: ConsumerRecord| async move { Ok::<(), HandlerError>(()) });
/// assert_eq!(database.available(), 4);
/// # let _ = (orders, refunds);
/// ```
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl ConcurrencyLimit {
    /// A bound of `n` records at once (at least 1).
    pub fn new(n: usize) -> Self {
        let limit = n.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

impl Middleware for ConcurrencyLimit {
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send {
        let slots = Arc::clone(&self.slots);
        async move {
            let permit = match unless_revoked(&record, slots.acquire_owned()).await {
                Some(Ok(permit)) => permit,
                // The semaphore is never closed.
                Some(Err(_)) => return Err(HandlerError::retry("concurrency limit closed")),
                None => {
                    return Err(HandlerError::retry(
                        "partition revoked while waiting for a concurrency slot",
                    ))
                }
            };
            let outcome = next.run(record).await;
            drop(permit);
            outcome
        }
    }
}
