//! What the group consumer calls for each record, and how a handler that
//! completes work later acknowledges it.

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::tracking::Tracking;
use crate::record::Record;
use crate::TopicPartition;

/// Error type handlers return: anything that can be displayed.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Processes one record at a time. Returning `Ok` completes the record (its
/// offset may be committed); returning `Err` marks it failed, which holds
/// the partition's commit point until it is completed another way. Failed
/// records count against `max_pending_per_partition`: a partition whose
/// in-flight records have all failed pauses, and the pause is reported on
/// the error stream and in the status.
///
/// Any `async` closure `Fn(ConsumerRecord) -> impl Future<Output = Result<(), HandlerError>>` is a handler.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handle one record.
    async fn handle(&self, record: ConsumerRecord) -> Result<(), HandlerError>;
}

#[async_trait::async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(ConsumerRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    async fn handle(&self, record: ConsumerRecord) -> Result<(), HandlerError> {
        self(record).await
    }
}

/// A record handed to a [`Handler`], with the means to complete it later.
///
/// Dereferences to [`Record`].
#[derive(Debug)]
pub struct ConsumerRecord {
    record: Record,
    completion: Completion,
}

impl ConsumerRecord {
    pub(crate) fn new(record: Record, completion: Completion) -> Self {
        Self { record, completion }
    }

    /// The record itself.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Take the record out (the completion stays with the consumer).
    pub fn into_record(self) -> Record {
        self.record
    }

    /// Take over completion: what the handler returns no longer completes
    /// the record; call [`AckHandle::ack`] or [`AckHandle::fail`] when the
    /// work is done (MiKa's `Ack`/`Fail`, Kaffe's async ack). Until then the
    /// record counts as in flight and holds the partition's commit point.
    pub fn defer(&self) -> AckHandle {
        self.completion.deferred.store(true, Ordering::Release);
        AckHandle {
            completion: Some(self.completion.clone()),
        }
    }
}

impl Deref for ConsumerRecord {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.record
    }
}

/// Where a record's completion goes.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub tracking: Arc<Tracking>,
    pub key: TopicPartition,
    pub offset: i64,
    /// Which assignment of the partition dispatched the record: a late ack
    /// from before a revocation must not complete a redelivered record.
    pub epoch: u64,
    pub deferred: Arc<AtomicBool>,
}

impl Completion {
    pub(crate) fn ack(&self) {
        self.tracking.ack(&self.key, self.offset, self.epoch);
    }

    pub(crate) fn fail(&self, reason: String) {
        self.tracking
            .fail(&self.key, self.offset, self.epoch, reason);
    }

    pub(crate) fn is_deferred(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }
}

/// Completes a deferred record. Dropping it without calling `ack` or `fail`
/// marks the record failed (it is never silently treated as done).
#[derive(Debug)]
pub struct AckHandle {
    completion: Option<Completion>,
}

impl AckHandle {
    /// The record's partition and offset (`None` once completed).
    pub fn position(&self) -> Option<(&TopicPartition, i64)> {
        self.completion.as_ref().map(|c| (&c.key, c.offset))
    }

    /// The record is done: its offset may be committed once every earlier
    /// record of the partition is done too.
    pub fn ack(mut self) {
        if let Some(c) = self.completion.take() {
            c.ack();
        }
    }

    /// The record failed: it keeps holding the commit point, and the reason
    /// shows up in stall reports.
    pub fn fail(mut self, reason: impl Into<String>) {
        if let Some(c) = self.completion.take() {
            c.fail(reason.into());
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            tracing::warn!(
                partition = %c.key,
                offset = c.offset,
                "deferred record dropped without ack or fail; marking it failed"
            );
            c.fail("dropped without ack or fail".into());
        }
    }
}
