//! The ack tracker shared between partition workers, deferred acks and the
//! committer, with an assignment epoch per partition.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ack_tracker::{AckOutcome, AckTracker, PartitionKey, StallReport};

#[derive(Debug, Default)]
struct Inner {
    tracker: AckTracker,
    epochs: HashMap<PartitionKey, u64>,
    next_epoch: u64,
}

/// Thread-safe completion tracking for one consumer.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    inner: Mutex<Inner>,
    /// Woken on every completion (workers waiting for room, revocations
    /// waiting for in-flight records).
    pub completed: Notify,
}

impl Tracking {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start tracking a partition at `position`; returns its new epoch.
    pub fn assign(&self, key: PartitionKey, position: i64) -> u64 {
        let mut inner = self.lock();
        inner.next_epoch += 1;
        let epoch = inner.next_epoch;
        inner.epochs.insert(key.clone(), epoch);
        inner.tracker.assign(key, position);
        epoch
    }

    /// Stop tracking; returns the commit point.
    pub fn revoke(&self, key: &PartitionKey) -> Option<i64> {
        let mut inner = self.lock();
        inner.epochs.remove(key);
        inner.tracker.revoke(key)
    }

    pub fn dispatched(&self, key: &PartitionKey, offset: i64, epoch: u64) -> bool {
        let mut inner = self.lock();
        if inner.epochs.get(key) != Some(&epoch) {
            return false;
        }
        inner.tracker.dispatched(key, offset, Instant::now())
    }

    pub fn ack(&self, key: &PartitionKey, offset: i64, epoch: u64) {
        let outcome = {
            let mut inner = self.lock();
            if inner.epochs.get(key) != Some(&epoch) {
                AckOutcome::NotTracked
            } else {
                inner.tracker.ack(key, offset)
            }
        };
        if outcome == AckOutcome::NotTracked {
            tracing::debug!(topic = %key.topic, partition = key.partition, offset, "ack for a partition no longer assigned; ignored");
        }
        self.completed.notify_waiters();
    }

    pub fn fail(&self, key: &PartitionKey, offset: i64, epoch: u64, reason: String) {
        {
            let mut inner = self.lock();
            if inner.epochs.get(key) == Some(&epoch) {
                inner.tracker.fail(key, offset, reason);
            }
        }
        self.completed.notify_waiters();
    }

    pub fn in_flight(&self, key: &PartitionKey) -> usize {
        self.lock().tracker.in_flight(key)
    }

    pub fn pending_commits(&self) -> Vec<(PartitionKey, i64)> {
        self.lock().tracker.pending_commits()
    }

    pub fn mark_committed(&self, key: &PartitionKey, offset: i64) {
        self.lock().tracker.mark_committed(key, offset)
    }

    pub fn stalled(&self, threshold: Duration) -> Vec<StallReport> {
        self.lock().tracker.stalled(Instant::now(), threshold)
    }
}
