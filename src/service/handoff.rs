//! Handing a failed record to a retry or dead-letter topic: produce its copy
//! and wait for the broker's acknowledgement, trying again with backoff
//! until it is acknowledged or the record's partition is revoked.
//!
//! This is the commit rule's half on the producing side: the caller
//! completes the record (returns `Ok`) only after this returned `Ok`, so a
//! record's offset is never committed before its copy is stored. A copy
//! whose produce fails keeps its record incomplete, holding the partition
//! where everyone can see it (the error stream, stall reports), and is
//! never lost.

use std::time::Duration;

use crate::config::RetryPolicy;
use crate::error::Error;
use crate::group::ConsumerRecord;
use crate::middleware::unless_revoked;
use crate::producer::{Delivery, Producer, ProducerRecord};

/// Pauses between produce attempts of one copy.
pub(crate) const HANDOFF_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(10));

/// The copy could not be stored before the record's partition was revoked.
#[derive(Debug)]
pub(crate) struct Revoked {
    /// The last produce error, if an attempt failed.
    pub last: Option<Error>,
}

/// Produce `copy` until the broker acknowledges it. Each failed attempt is
/// shown to `on_error` (with the pause before the next one). Ends with
/// [`Revoked`] only when `record`'s partition is revoked (or the consumer
/// shuts down) while waiting to try again; an attempt under way is always
/// waited for, so a stored copy is never mistaken for a lost one.
pub(crate) async fn send_until_acked(
    producer: &Producer,
    copy: ProducerRecord,
    record: &ConsumerRecord,
    mut on_error: impl FnMut(&Error, Duration),
) -> Result<Delivery, Revoked> {
    let policy = RetryPolicy::between(HANDOFF_BACKOFF.0, HANDOFF_BACKOFF.1);
    let mut pauses = policy.pauses();
    loop {
        let error = match producer.send(copy.clone()).await {
            Ok(delivery) => return Ok(delivery),
            Err(e) => e,
        };
        let pause = pauses.next().unwrap_or(policy.max());
        on_error(&error, pause);
        if record.is_revoked()
            || unless_revoked(record, tokio::time::sleep(pause))
                .await
                .is_none()
        {
            return Err(Revoked { last: Some(error) });
        }
    }
}
