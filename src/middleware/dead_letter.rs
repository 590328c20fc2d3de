//! [`DeadLetter`]: park failed records in a dead-letter topic.

use std::future::Future;

use super::{Middleware, Next};
use crate::group::{ConsumerRecord, HandlerError, Outcome};
use crate::producer::Producer;
use crate::service::handoff::send_until_acked;
use crate::service::headers::FailureInfo;

/// Produces every record the rest of the chain fails — either
/// [`FailureKind`](crate::group::FailureKind) — to a dead-letter topic,
/// then completes it (Kefka's `DeadLetter`). Put a [`Retry`](super::Retry)
/// inside it for transient failures.
///
/// The copy keeps the record's key, value and headers and carries the
/// [failure headers](crate::service::headers): origin topic, partition and
/// offset, group (when set with [`group`](Self::group)), attempt, reason,
/// failure kind, first-failure time. The record is completed only once the
/// broker acknowledged the copy (`acks=all`). A produce that fails is tried
/// again with backoff (200 ms growing to 10 s, each failure logged) until
/// it is acknowledged, or until the record's partition is revoked or the
/// consumer shuts down: then the record stays incomplete and is redelivered
/// to the partition's next owner — never lost. A record whose partition was
/// revoked before it failed is not dead-lettered either, for the same
/// reason.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::middleware::{DeadLetter, Retry, Stack};
///
/// let producer = client.producer().build()?;
/// let handler = Stack::new()
///     .layer(DeadLetter::new(producer, "payments.dlq").group("payments"))
///     .layer(Retry::new(5))
///     .handler(|record: ConsumerRecord| async move {
///         let _amount: u64 = record.json()?;
///         Ok::<(), HandlerError>(())
///     });
/// client.group_consumer("payments").topic("payments").build()?.run(handler).await
/// # }
/// ```
///
/// A [`Service`](crate::service::Service) with a dead-letter topic does this
/// for every route that allows it; this middleware is for a bare
/// [`GroupConsumer`](crate::group::GroupConsumer), or for a route that
/// parks its failures somewhere else.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    producer: Producer,
    topic: String,
    group: Option<String>,
}

impl DeadLetter {
    /// Dead-letter failed records to `topic` with `producer`.
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
            group: None,
        }
    }

    /// The consumer group named in the copies' `kastellan-group` header.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Middleware for DeadLetter {
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send {
        let this = self.clone();
        async move {
            let error = match next.run(record.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if record.is_revoked() {
                return Err(error);
            }
            let attempt = FailureInfo::of(&record).map_or(1, |i| i.attempt.saturating_add(1));
            let info = FailureInfo::for_failure(
                &record,
                this.group.as_deref(),
                attempt,
                &error.reason(),
                error.kind(),
                std::time::Duration::ZERO,
            );
            let copy = info.copy_of(&record, &this.topic);
            let stored = send_until_acked(&this.producer, copy, &record, |e, pause| {
                tracing::warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    dead_letter_topic = %this.topic, error = %e, retry_in = ?pause,
                    "dead-lettering failed; the record stays incomplete until it succeeds"
                );
            })
            .await;
            match stored {
                Ok(delivery) => {
                    tracing::info!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        dead_letter = %format!("{}/{}@{}", delivery.topic, delivery.partition, delivery.offset),
                        reason = %info.reason, "record dead-lettered"
                    );
                    Ok(())
                }
                Err(_) => Err(HandlerError::retry(format!(
                    "not dead-lettered: partition revoked before `{}` acknowledged the copy; \
                     last failure: {}",
                    this.topic,
                    error.reason()
                ))
                .with_kind(error.kind())),
            }
        }
    }
}
