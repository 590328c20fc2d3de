//! A record on its way through the producer, and how it resolves.
//!
//! Every record handed to the producer resolves exactly once: its
//! [`DeliveryFuture`](super::DeliveryFuture) gets the outcome, the
//! delivery-report stream (if enabled) gets a report, and the producer's
//! count of outstanding records goes down. [`Pending::resolve`] does all
//! three; a record dropped without being resolved (its worker panicked, or
//! its runtime shut down) resolves itself with an error on drop, so no
//! caller waits forever and [`Producer::flush`](super::Producer::flush)
//! never hangs on a record nobody holds.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::{Delivery, DeliveryReport, Outstanding};
use crate::error::{Error, Result};
use crate::protocol::records::OutgoingRecord;

/// Where a partition's records resolve: shared by its records and its worker.
#[derive(Debug)]
pub(crate) struct Destination {
    pub topic: Arc<str>,
    pub partition: i32,
    pub outstanding: Arc<Outstanding>,
    pub reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
}

/// A record waiting in a partition queue or batch.
pub(crate) struct Pending {
    pub record: OutgoingRecord,
    /// Upper bound of the record's encoded size.
    pub size: usize,
    /// Buffer memory held until the record is resolved, and then by its
    /// delivery report until that is received.
    memory: Option<OwnedSemaphorePermit>,
    done: Option<oneshot::Sender<Result<Delivery>>>,
    dest: Arc<Destination>,
}

impl Pending {
    pub(super) fn new(
        record: OutgoingRecord,
        size: usize,
        memory: OwnedSemaphorePermit,
        done: oneshot::Sender<Result<Delivery>>,
        dest: Arc<Destination>,
    ) -> Self {
        dest.outstanding.add();
        Self {
            record,
            size,
            memory: Some(memory),
            done: Some(done),
            dest,
        }
    }

    /// Resolve with the record's offset or the error that stopped it.
    pub(super) fn resolve(mut self, outcome: Result<i64>) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Result<i64>) {
        let Some(done) = self.done.take() else {
            return;
        };
        let dest = &self.dest;
        if let Some(reports) = &dest.reports {
            let result = match &outcome {
                Ok(offset) => Ok(*offset),
                Err(e) => Err(e.duplicate()),
            };
            let _ = reports.send(DeliveryReport {
                topic: Arc::clone(&dest.topic),
                partition: dest.partition,
                key: self.record.key.clone(),
                result,
                _memory: self.memory.take(),
            });
        }
        let _ = done.send(outcome.map(|offset| Delivery {
            topic: Arc::clone(&dest.topic),
            partition: dest.partition,
            offset,
        }));
        dest.outstanding.done(1);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done.is_none() {
            return;
        }
        let reason = if std::thread::panicking() {
            "the partition worker panicked while it held the record (the error log has the cause)"
        } else {
            "the partition worker stopped before the record was resolved \
             (was the producer's Tokio runtime shut down?)"
        };
        let e = Error::WorkerFailed {
            topic: self.dest.topic.to_string(),
            partition: self.dest.partition,
            reason: reason.into(),
        };
        self.finish(Err(e));
    }
}
