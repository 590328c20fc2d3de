//! The ack tracker shared between partition workers, deferred acks, the
//! committer and status readers, with an assignment epoch per partition
//! and the pause state of each partition.
//!
//! Partitions are spread over [`SHARDS`] shards, each an [`AckTracker`]
//! behind its own mutex: every record takes a shard's lock two or three
//! times (room, dispatch, completion), and with one lock for the whole
//! consumer the workers of different partitions, on different threads,
//! queued for it (the most expensive line of a bare consumer's profile).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ack_tracker::{AckOutcome, AckTracker, KeyHasher};
use super::status::{PauseReason, PausedPartition, StallReport};
use crate::TopicPartition;

/// How many shards the partitions are spread over.
const SHARDS: usize = 16;

/// Everything behind one shard's mutex, for the partitions of that shard.
#[derive(Debug, Default)]
struct Inner {
    /// Completion state per partition. Written by partition workers
    /// (dispatch), completions (ack/fail, from handlers and `AckHandle`s),
    /// the session (assign, revoke, mark committed); read by the committer
    /// and status readers.
    tracker: AckTracker,
    /// Which assignment of each partition is current. Written by the
    /// session (assign, revoke); read on every dispatch and completion, so
    /// that a late ack from before a revocation never completes a record
    /// dispatched again after it.
    epochs: HashMap<TopicPartition, u64, BuildHasherDefault<KeyHasher>>,
    /// Partitions paused at a limit. Written by their partition worker
    /// (set when it pauses, cleared when it resumes) and by `revoke`; read
    /// by status readers.
    paused: BTreeMap<TopicPartition, PausedPartition>,
}

/// Whether a partition worker may dispatch its next record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Room {
    /// Dispatch; `idle` when nothing of the partition is incomplete.
    Free { idle: bool },
    /// Wait for a completion: deferred records are in flight up to the
    /// limit (ordinary backpressure, not reported).
    Wait,
    /// Wait, and report: nothing in flight is pending, or the window is
    /// full behind an incomplete head.
    Paused(PausedPartition),
}

/// Thread-safe completion tracking for one consumer: [`AckTracker`]s
/// behind one mutex per shard, which every user locks briefly (never
/// across an `.await`). A partition's state lives in one shard; what spans
/// partitions (commits to send, stalls, pauses) is gathered shard by shard.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    shards: [Mutex<Inner>; SHARDS],
    /// Source of epochs; incremented by `assign`.
    next_epoch: AtomicU64,
    /// Woken on every completion (workers waiting for room, revocations
    /// waiting for in-flight records).
    pub completed: Notify,
}

impl Tracking {
    /// The shard holding `key`'s state, locked.
    fn lock(&self, key: &TopicPartition) -> MutexGuard<'_, Inner> {
        let hash = BuildHasherDefault::<KeyHasher>::default().hash_one(key);
        // SHARDS is a power of two; the hash's high bits are well mixed.
        let index = (hash >> 32) as usize % SHARDS;
        Self::lock_shard(&self.shards[index])
    }

    fn lock_shard(shard: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start tracking a partition at `position`; returns its new epoch.
    pub(crate) fn assign(&self, key: TopicPartition, position: i64) -> u64 {
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.lock(&key);
        inner.epochs.insert(key.clone(), epoch);
        inner.paused.remove(&key);
        inner.tracker.assign(key, position);
        epoch
    }

    /// Stop tracking; returns the commit point.
    pub(crate) fn revoke(&self, key: &TopicPartition) -> Option<i64> {
        let mut inner = self.lock(key);
        inner.epochs.remove(key);
        inner.paused.remove(key);
        inner.tracker.revoke(key)
    }

    pub(crate) fn dispatched(&self, key: &TopicPartition, offset: i64, epoch: u64) -> bool {
        let mut inner = self.lock(key);
        if inner.epochs.get(key) != Some(&epoch) {
            return false;
        }
        inner.tracker.dispatched(key, offset, Instant::now())
    }

    /// Records below `next` completed on the worker's fast path (see
    /// [`AckTracker::advance`]).
    pub(crate) fn advance(&self, key: &TopicPartition, next: i64, epoch: u64) {
        let mut inner = self.lock(key);
        if inner.epochs.get(key) == Some(&epoch) {
            inner.tracker.advance(key, next);
        }
    }

    pub(crate) fn ack(&self, key: &TopicPartition, offset: i64, epoch: u64) {
        let outcome = {
            let mut inner = self.lock(key);
            if inner.epochs.get(key) != Some(&epoch) {
                AckOutcome::NotTracked
            } else {
                inner.tracker.ack(key, offset)
            }
        };
        if outcome == AckOutcome::NotTracked {
            tracing::debug!(partition = %key, offset, "ack for a partition no longer assigned; ignored");
        }
        self.completed.notify_waiters();
    }

    pub(crate) fn fail(&self, key: &TopicPartition, offset: i64, epoch: u64, reason: String) {
        {
            let mut inner = self.lock(key);
            if inner.epochs.get(key) == Some(&epoch) {
                inner.tracker.fail(key, offset, reason);
            }
        }
        self.completed.notify_waiters();
    }

    /// Records of the partition still pending (with a handler, or deferred
    /// and not yet acked or failed): those that may still complete.
    pub(crate) fn pending(&self, key: &TopicPartition) -> usize {
        let inner = self.lock(key);
        inner
            .tracker
            .in_flight(key)
            .saturating_sub(inner.tracker.failed(key))
    }

    /// Whether the partition's worker may dispatch another record, given
    /// the in-flight limit and the window limit. A pause is recorded for
    /// status readers; room clears it.
    pub(crate) fn room(
        &self,
        key: &TopicPartition,
        max_in_flight: usize,
        max_window: usize,
    ) -> Room {
        let mut inner = self.lock(key);
        let in_flight = inner.tracker.in_flight(key);
        let window = inner.tracker.window_len(key);
        let failed = inner.tracker.failed(key);
        let reason = if window >= max_window {
            Some(PauseReason::Window {
                window,
                limit: max_window,
            })
        } else if in_flight >= max_in_flight && failed >= in_flight {
            Some(PauseReason::FailedRecords {
                failed,
                limit: max_in_flight,
            })
        } else if in_flight >= max_in_flight {
            inner.paused.remove(key);
            return Room::Wait;
        } else {
            None
        };
        let Some(reason) = reason else {
            inner.paused.remove(key);
            return Room::Free {
                idle: in_flight == 0,
            };
        };
        let (offset, head_failure) = inner
            .tracker
            .head(key)
            .map(|(o, f)| (o, f.map(str::to_owned)))
            .unwrap_or((0, None));
        let paused = PausedPartition {
            partition: key.clone(),
            offset,
            failed: head_failure,
            reason,
        };
        inner.paused.insert(key.clone(), paused.clone());
        Room::Paused(paused)
    }

    /// Forget a pause (the worker stopped waiting).
    pub(crate) fn clear_pause(&self, key: &TopicPartition) {
        self.lock(key).paused.remove(key);
    }

    pub(crate) fn pending_commits(&self) -> Vec<(TopicPartition, i64)> {
        let mut commits: Vec<(TopicPartition, i64)> = self
            .shards
            .iter()
            .flat_map(|shard| Self::lock_shard(shard).tracker.pending_commits())
            .collect();
        commits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        commits
    }

    pub(crate) fn mark_committed(&self, key: &TopicPartition, offset: i64) {
        self.lock(key).tracker.mark_committed(key, offset)
    }

    /// The partition's commit point and its incomplete records (pending or
    /// failed); `None` if it is not tracked.
    pub(crate) fn progress(&self, key: &TopicPartition) -> Option<(i64, usize)> {
        let inner = self.lock(key);
        let point = inner.tracker.commit_point(key)?;
        Some((point, inner.tracker.in_flight(key)))
    }

    /// Stalled partitions, sorted by partition.
    pub(crate) fn stalled(&self, threshold: Duration) -> Vec<StallReport> {
        let now = Instant::now();
        let mut reports: Vec<StallReport> = self
            .shards
            .iter()
            .flat_map(|shard| Self::lock_shard(shard).tracker.stalled(now, threshold))
            .collect();
        reports.sort_unstable_by(|a, b| a.partition.cmp(&b.partition));
        reports
    }

    /// Paused partitions, sorted by partition.
    pub(crate) fn paused(&self) -> Vec<PausedPartition> {
        let mut paused: Vec<PausedPartition> = self
            .shards
            .iter()
            .flat_map(|shard| {
                Self::lock_shard(shard)
                    .paused
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        paused.sort_unstable_by(|a, b| a.partition.cmp(&b.partition));
        paused
    }
}
