//! Per-partition completion tracking behind the group consumer's offset
//! commits.
//!
//! Records of a partition are handed to handlers in offset order, but they may
//! complete out of order: handlers run concurrently, or acknowledge later (for
//! example once a retry or dead-letter produce was acknowledged by the
//! broker). The [`AckTracker`] remembers, per partition, which dispatched
//! records are still incomplete and derives the *commit point*: the lowest
//! offset not yet completed. Following the Kafka convention, that is the
//! offset to commit (the next offset a new owner reads), so a commit never
//! passes a record that has not completed, and everything that was not
//! completed is redelivered after a rebalance or restart (at-least-once).
//!
//! A failed record stays incomplete and blocks the commit point until it is
//! acked (after a successful retry, or after it was durably handed off to a
//! retry or dead-letter topic). Such a stall is reported by
//! [`AckTracker::stalled`] with the partition, offset and last failure reason,
//! so it can be logged and exported as a metric.
//!
//! Offsets within a partition may have gaps (compacted topics, transaction
//! markers), so the tracker never assumes that `offset + 1` is the next
//! record: the commit point after the last record is one past the last
//! *dispatched* offset.
//!
//! # Costs
//!
//! Each partition keeps a window (a ring buffer) of the records from its
//! lowest incomplete offset up to the last dispatched one, 32 bytes per
//! record. Completed records are dropped from the front as soon as nothing
//! incomplete precedes them, so with in-order completion the window stays as
//! small as the number of records in flight, and its buffer is reused: the
//! per-record path does not allocate once the buffer has grown to that size.
//! `dispatched` is O(1) amortised; `ack` and `fail` are O(1) for gap-free
//! offsets and O(log window) with gaps; `commit_point`, `in_flight` and
//! `total_in_flight` are O(1). A record that never completes makes its
//! partition's window grow with every record dispatched after it; the group
//! consumer watches [`AckTracker::window_len`] and pauses a partition whose
//! window reaches its limit (see `runtime.rs`), so memory stays bounded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::status::StallReport;
use crate::TopicPartition;

/// What [`AckTracker::ack`] or [`AckTracker::fail`] did with an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckOutcome {
    /// The record was incomplete. For `ack` it is now completed; for `fail`
    /// the failure was recorded and the record stays incomplete.
    Completed,
    /// The record had already completed; nothing changed. A completed record
    /// is never reopened, so a `fail` after an `ack` is ignored.
    AlreadyCompleted,
    /// The partition is not tracked (never assigned, or revoked meanwhile),
    /// or the offset was not dispatched in the current assignment.
    NotTracked,
}

/// Completion state of one dispatched record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to a handler, no outcome yet.
    Pending,
    /// The handler failed it; the reason sits in `Partition::failures`.
    Failed,
    /// Acked; waits in the window only until everything before it completes.
    Done,
}

/// One dispatched record in a partition's window.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    state: State,
    dispatched_at: Instant,
}

/// Tracking state of one assigned partition.
#[derive(Debug)]
struct Partition {
    /// Dispatched records from the lowest incomplete one to the last
    /// dispatched one, in strictly increasing offset order. Invariant: the
    /// front entry, if any, is incomplete, which makes the commit point O(1).
    window: VecDeque<Entry>,
    /// One past the last dispatched offset, or the assigned position if
    /// nothing was dispatched yet. The next dispatch must be at or above it,
    /// and it is the commit point whenever the window is empty.
    end: i64,
    /// First offset dispatched in this assignment (the assigned position
    /// until then). Offsets below it were never dispatched by us.
    floor: i64,
    /// Incomplete records in the window (pending or failed).
    incomplete: usize,
    /// Last offset noted as committed.
    committed: i64,
    /// Failure reasons of records in the `Failed` state. Failures are rare,
    /// so keeping reasons out of `Entry` keeps the window compact.
    failures: BTreeMap<i64, String>,
}

impl Partition {
    fn new(position: i64) -> Self {
        Self {
            window: VecDeque::new(),
            end: position,
            floor: position,
            incomplete: 0,
            committed: position,
            failures: BTreeMap::new(),
        }
    }

    fn commit_point(&self) -> i64 {
        match self.window.front() {
            Some(entry) => entry.offset,
            None => self.end,
        }
    }

    /// Index of `offset` in the window, if it is there.
    fn locate(&self, offset: i64) -> Option<usize> {
        let front = self.window.front()?.offset;
        if offset < front || offset >= self.end {
            return None;
        }
        // Offsets strictly increase, so the entry for `offset` can sit at
        // most `offset - front` places from the front; without gaps it sits
        // exactly there, which is the common case and needs no search.
        let distance = usize::try_from(offset - front).unwrap_or(usize::MAX);
        if let Some(entry) = self.window.get(distance) {
            if entry.offset == offset {
                return Some(distance);
            }
        }
        let upper = distance.min(self.window.len() - 1);
        let (head, tail) = self.window.as_slices();
        if upper < head.len() {
            head[..=upper]
                .binary_search_by_key(&offset, |e| e.offset)
                .ok()
        } else {
            match head.binary_search_by_key(&offset, |e| e.offset) {
                Ok(index) => Some(index),
                Err(_) => tail[..=upper - head.len()]
                    .binary_search_by_key(&offset, |e| e.offset)
                    .ok()
                    .map(|index| head.len() + index),
            }
        }
    }

    /// Outcome for an offset that is not in the window.
    ///
    /// Everything dispatched below the window's front has completed, but
    /// completed records are forgotten to keep memory bounded, so an offset
    /// there that was skipped over by a gap cannot be told apart from a
    /// completed one; both are reported as already completed.
    fn outside_window(&self, offset: i64) -> AckOutcome {
        if offset >= self.floor && offset < self.commit_point() {
            AckOutcome::AlreadyCompleted
        } else {
            AckOutcome::NotTracked
        }
    }

    /// Drops completed entries from the front so that the front is
    /// incomplete again.
    fn trim_front(&mut self) {
        while self
            .window
            .front()
            .is_some_and(|entry| entry.state == State::Done)
        {
            self.window.pop_front();
        }
    }
}

/// Per-partition completion tracker: which dispatched records are still
/// incomplete, and up to which offset each partition may be committed.
///
/// See the [module documentation](self) for the contract. The tracker is
/// plain data with no locking of its own: the group consumer keeps one per
/// shard of [`Tracking`](super::tracking::Tracking), each behind that
/// shard's mutex, shared by partition workers, deferred acks, the committer
/// and status readers.
#[derive(Debug, Default)]
pub(super) struct AckTracker {
    partitions: HashMap<TopicPartition, Partition, BuildHasherDefault<KeyHasher>>,
    /// Sum of `Partition::incomplete` over all partitions.
    total_incomplete: usize,
}

impl AckTracker {
    /// Creates a tracker with no partitions.
    #[cfg(test)]
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a partition; `position` is the next offset that will
    /// be dispatched (the committed offset, or the reset position).
    ///
    /// Until something completes, the commit point is `position`, and
    /// nothing is reported by [`pending_commits`](Self::pending_commits).
    ///
    /// If the partition is already tracked, its state is replaced as if it
    /// were revoked first (a seek): its incomplete records are forgotten.
    /// Acks that arrive later for offsets dispatched again in the new
    /// assignment complete them; that is sound, since the ack means the
    /// record at that offset was processed.
    pub(super) fn assign(&mut self, key: TopicPartition, position: i64) {
        if let Some(old) = self.partitions.insert(key, Partition::new(position)) {
            self.total_incomplete -= old.incomplete;
        }
    }

    /// Stops tracking a partition and returns its commit point at that
    /// moment (the offset that may be committed for it), or `None` if it was
    /// not tracked.
    ///
    /// Records still incomplete are forgotten; later acks for them return
    /// [`AckOutcome::NotTracked`], and they are redelivered to the next owner.
    /// To give in-flight records a chance first, wait until
    /// [`in_flight`](Self::in_flight) reaches zero (or a deadline passes)
    /// before revoking.
    pub(super) fn revoke(&mut self, key: &TopicPartition) -> Option<i64> {
        let partition = self.partitions.remove(key)?;
        self.total_incomplete -= partition.incomplete;
        Some(partition.commit_point())
    }

    /// Whether the partition is tracked.
    #[cfg(test)]
    pub(super) fn is_assigned(&self, key: &TopicPartition) -> bool {
        self.partitions.contains_key(key)
    }

    /// Records that the record at `offset` was handed to a handler at `now`.
    ///
    /// Offsets of a partition must strictly increase and start at or above
    /// the assigned position; gaps are fine. Returns `false`, changing
    /// nothing, when the partition is not tracked, when `offset` is not above
    /// the last dispatched offset, when it is below the assigned position,
    /// or when it is not a valid record offset (negative, or `i64::MAX`).
    pub(super) fn dispatched(&mut self, key: &TopicPartition, offset: i64, now: Instant) -> bool {
        let Some(partition) = self.partitions.get_mut(key) else {
            return false;
        };
        // i64::MAX is refused so that `offset + 1` below cannot overflow.
        if offset < partition.end || offset < 0 || offset == i64::MAX {
            return false;
        }
        if partition.window.is_empty() && partition.end == partition.floor {
            // First dispatch of this assignment: offsets between the
            // assigned position and this one were never ours to complete.
            partition.floor = offset;
        }
        partition.window.push_back(Entry {
            offset,
            state: State::Pending,
            dispatched_at: now,
        });
        partition.end = offset + 1;
        partition.incomplete += 1;
        self.total_incomplete += 1;
        true
    }

    /// Records below `next` were handed to the handler one at a time and
    /// completed, without being dispatched here one by one (the partition
    /// worker's fast path): with nothing incomplete, the commit point moves
    /// to `next`. With records incomplete it stays (the worker leaves its
    /// fast path before anything is incomplete, so this does not happen).
    pub(super) fn advance(&mut self, key: &TopicPartition, next: i64) {
        let Some(partition) = self.partitions.get_mut(key) else {
            return;
        };
        if partition.window.is_empty() && next > partition.end {
            partition.end = next;
        }
    }

    /// Marks the record at `offset` completed.
    ///
    /// Completes a pending record as well as a failed one (the retry
    /// succeeded, or the record was durably handed off to a retry or
    /// dead-letter topic). If it was the oldest incomplete record, the commit
    /// point advances past every completed record that follows it.
    ///
    /// An offset below the commit point that was skipped over by a gap is
    /// reported as [`AckOutcome::AlreadyCompleted`]: completed records are
    /// forgotten to keep memory bounded, so it cannot be told apart from one
    /// that was dispatched and completed. Offsets that were never dispatched
    /// at or above the commit point are reported as
    /// [`AckOutcome::NotTracked`].
    pub(super) fn ack(&mut self, key: &TopicPartition, offset: i64) -> AckOutcome {
        let Some(partition) = self.partitions.get_mut(key) else {
            return AckOutcome::NotTracked;
        };
        let Some(index) = partition.locate(offset) else {
            return partition.outside_window(offset);
        };
        let Some(entry) = partition.window.get_mut(index) else {
            return AckOutcome::NotTracked;
        };
        match entry.state {
            State::Done => return AckOutcome::AlreadyCompleted,
            State::Failed => {
                partition.failures.remove(&offset);
            }
            State::Pending => {}
        }
        entry.state = State::Done;
        partition.incomplete -= 1;
        self.total_incomplete -= 1;
        if index == 0 {
            partition.trim_front();
        }
        AckOutcome::Completed
    }

    /// Marks the record at `offset` failed with `reason`.
    ///
    /// The record stays incomplete and keeps blocking the commit point; the
    /// reason (the latest one, if it fails again) appears in
    /// [`stalled`](Self::stalled) reports. A later [`ack`](Self::ack)
    /// completes it. Returns [`AckOutcome::Completed`] when the failure was
    /// recorded, and otherwise the same outcomes as `ack`; a record that
    /// already completed is never reopened.
    pub(super) fn fail(
        &mut self,
        key: &TopicPartition,
        offset: i64,
        reason: impl Into<String>,
    ) -> AckOutcome {
        let Some(partition) = self.partitions.get_mut(key) else {
            return AckOutcome::NotTracked;
        };
        let Some(index) = partition.locate(offset) else {
            return partition.outside_window(offset);
        };
        let Some(entry) = partition.window.get_mut(index) else {
            return AckOutcome::NotTracked;
        };
        if entry.state == State::Done {
            return AckOutcome::AlreadyCompleted;
        }
        entry.state = State::Failed;
        partition.failures.insert(offset, reason.into());
        AckOutcome::Completed
    }

    /// The offset that may be committed for the partition: the lowest
    /// incomplete dispatched offset; or one past the last dispatched offset
    /// if none is incomplete; or the assigned position if nothing was
    /// dispatched. `None` if the partition is not tracked. O(1).
    ///
    /// Within one assignment the commit point never decreases.
    pub(super) fn commit_point(&self, key: &TopicPartition) -> Option<i64> {
        self.partitions.get(key).map(Partition::commit_point)
    }

    /// Partitions whose commit point moved past what was last noted with
    /// [`mark_committed`](Self::mark_committed) (or past the assigned
    /// position), with the offset to commit; sorted by partition.
    pub(super) fn pending_commits(&self) -> Vec<(TopicPartition, i64)> {
        let mut pending: Vec<(TopicPartition, i64)> = self
            .partitions
            .iter()
            .filter_map(|(key, partition)| {
                let point = partition.commit_point();
                (point > partition.committed).then(|| (key.clone(), point))
            })
            .collect();
        pending.sort_unstable();
        pending
    }

    /// Notes that `offset` was committed for the partition.
    ///
    /// Ignored if the partition is no longer tracked (it was revoked while
    /// the commit was in flight) or if `offset` is not newer than what was
    /// already noted (an older commit response arriving late).
    pub(super) fn mark_committed(&mut self, key: &TopicPartition, offset: i64) {
        if let Some(partition) = self.partitions.get_mut(key) {
            if offset > partition.committed {
                partition.committed = offset;
            }
        }
    }

    /// The last offset noted as committed for the partition (initially the
    /// assigned position), or `None` if it is not tracked.
    #[cfg(test)]
    pub(super) fn committed(&self, key: &TopicPartition) -> Option<i64> {
        self.partitions.get(key).map(|p| p.committed)
    }

    /// Number of incomplete (pending or failed) records of the partition;
    /// 0 if it is not tracked.
    pub(super) fn in_flight(&self, key: &TopicPartition) -> usize {
        self.partitions.get(key).map_or(0, |p| p.incomplete)
    }

    /// Number of incomplete records over all tracked partitions. O(1).
    #[cfg(test)]
    pub(super) fn total_in_flight(&self) -> usize {
        self.total_incomplete
    }

    /// Number of failed records of the partition (incomplete, with a
    /// failure recorded); 0 if it is not tracked. `in_flight - failed` is the
    /// number still pending with a handler or a deferred ack.
    pub(super) fn failed(&self, key: &TopicPartition) -> usize {
        self.partitions.get(key).map_or(0, |p| p.failures.len())
    }

    /// Offset and recorded failure of the oldest incomplete record, if any.
    pub(super) fn head(&self, key: &TopicPartition) -> Option<(i64, Option<&str>)> {
        let partition = self.partitions.get(key)?;
        let front = partition.window.front()?;
        Some((
            front.offset,
            partition.failures.get(&front.offset).map(String::as_str),
        ))
    }

    /// Number of records the partition's window holds: every record
    /// dispatched from the commit point on, completed or not; 0 if it is not
    /// tracked.
    ///
    /// This is what the partition costs in memory (32 bytes per record). It
    /// grows while the oldest incomplete record blocks the partition, so a
    /// consumer can pause fetching a partition when it gets too large.
    pub(super) fn window_len(&self, key: &TopicPartition) -> usize {
        self.partitions.get(key).map_or(0, |p| p.window.len())
    }

    /// Partitions whose oldest incomplete record was dispatched more than
    /// `threshold` before `now`, sorted by partition.
    ///
    /// Such a record holds back the partition's commits; report it (a log
    /// line, a metric) so the stall is visible.
    pub(super) fn stalled(&self, now: Instant, threshold: Duration) -> Vec<StallReport> {
        let mut reports: Vec<StallReport> = self
            .partitions
            .iter()
            .filter_map(|(key, partition)| {
                let oldest = partition.window.front()?;
                let age = now.saturating_duration_since(oldest.dispatched_at);
                (age > threshold).then(|| StallReport {
                    partition: key.clone(),
                    offset: oldest.offset,
                    age,
                    failed: partition.failures.get(&oldest.offset).cloned(),
                    in_flight: partition.incomplete,
                })
            })
            .collect();
        reports.sort_unstable_by(|a, b| a.partition.cmp(&b.partition));
        reports
    }

    /// The tracked partitions, sorted.
    #[cfg(test)]
    pub(super) fn assigned(&self) -> Vec<TopicPartition> {
        let mut keys: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }
}

/// Hasher for partition keys.
///
/// The tracker looks a key up twice per record (dispatch and ack), and the
/// standard SipHash costs more than the rest of that work. Keys come from the
/// group's own assignment, not from untrusted input, so hash flooding is no
/// concern and a multiply-rotate hash over 8-byte words is enough.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct KeyHasher(u64);

impl KeyHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_i32(&mut self, value: i32) {
        // Reinterpreting the bits is intended: only equality matters.
        self.add(u64::from(value as u32));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        // The hash table picks buckets from the low bits and tags from the
        // high bits; the multiply leaves the low bits weak, so mix the high
        // bits down.
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn key(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    fn tracker_with(k: &TopicPartition, position: i64, offsets: &[i64]) -> (AckTracker, Instant) {
        let mut tracker = AckTracker::new();
        tracker.assign(k.clone(), position);
        let now = Instant::now();
        for &offset in offsets {
            assert!(tracker.dispatched(k, offset, now), "dispatch {offset}");
        }
        (tracker, now)
    }

    #[test]
    fn unassigned_partition_is_not_tracked() {
        let mut tracker = AckTracker::new();
        let k = key("t", 0);
        assert!(!tracker.is_assigned(&k));
        assert_eq!(tracker.commit_point(&k), None);
        assert!(!tracker.dispatched(&k, 0, Instant::now()));
        assert_eq!(tracker.ack(&k, 0), AckOutcome::NotTracked);
        assert_eq!(tracker.fail(&k, 0, "x"), AckOutcome::NotTracked);
        assert_eq!(tracker.revoke(&k), None);
        assert_eq!(tracker.in_flight(&k), 0);
        assert!(tracker.pending_commits().is_empty());
    }

    #[test]
    fn assigned_partition_starts_at_position() {
        let mut tracker = AckTracker::new();
        let k = key("t", 0);
        tracker.assign(k.clone(), 42);
        assert!(tracker.is_assigned(&k));
        assert_eq!(tracker.commit_point(&k), Some(42));
        assert_eq!(tracker.committed(&k), Some(42));
        assert!(tracker.pending_commits().is_empty());
        assert_eq!(tracker.assigned(), vec![k]);
    }

    #[test]
    fn in_order_acks_advance_one_by_one() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 0, &[0, 1, 2, 3]);
        assert_eq!(tracker.commit_point(&k), Some(0));
        assert_eq!(tracker.in_flight(&k), 4);
        for offset in 0..4 {
            assert_eq!(tracker.ack(&k, offset), AckOutcome::Completed);
            assert_eq!(tracker.commit_point(&k), Some(offset + 1));
            assert_eq!(tracker.window_len(&k), 3 - offset as usize);
        }
        assert_eq!(tracker.in_flight(&k), 0);
        assert_eq!(tracker.total_in_flight(), 0);
    }

    #[test]
    fn out_of_order_acks_wait_for_the_lowest() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 5, &[5, 6, 7]);
        assert_eq!(tracker.ack(&k, 5), AckOutcome::Completed);
        assert_eq!(tracker.ack(&k, 7), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(6));
        assert_eq!(tracker.in_flight(&k), 1);
        assert_eq!(tracker.ack(&k, 6), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(8));
        assert_eq!(tracker.window_len(&k), 0);
    }

    #[test]
    fn gaps_are_never_filled_with_offset_plus_one() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 10, &[10, 13, 20]);
        assert_eq!(tracker.ack(&k, 13), AckOutcome::Completed);
        assert_eq!(tracker.ack(&k, 20), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(10));
        assert_eq!(tracker.ack(&k, 10), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(21));
    }

    #[test]
    fn gap_offsets_inside_the_window_are_not_tracked() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 10, &[10, 13, 20]);
        assert_eq!(tracker.ack(&k, 11), AckOutcome::NotTracked);
        assert_eq!(tracker.ack(&k, 15), AckOutcome::NotTracked);
        assert_eq!(tracker.fail(&k, 19, "x"), AckOutcome::NotTracked);
        assert_eq!(tracker.in_flight(&k), 3);
    }

    #[test]
    fn first_dispatch_may_skip_ahead_of_position() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 10, &[15]);
        assert_eq!(tracker.commit_point(&k), Some(15));
        assert_eq!(tracker.ack(&k, 12), AckOutcome::NotTracked);
        assert_eq!(tracker.ack(&k, 15), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(16));
        assert_eq!(tracker.ack(&k, 12), AckOutcome::NotTracked);
    }

    #[test]
    fn failure_blocks_until_acked() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 0, &[0, 1, 2]);
        assert_eq!(tracker.fail(&k, 1, "boom"), AckOutcome::Completed);
        assert_eq!(tracker.ack(&k, 0), AckOutcome::Completed);
        assert_eq!(tracker.ack(&k, 2), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(1));
        assert_eq!(tracker.in_flight(&k), 1);
        // Failing again keeps it blocked.
        assert_eq!(tracker.fail(&k, 1, "boom again"), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(1));
        assert_eq!(tracker.ack(&k, 1), AckOutcome::Completed);
        assert_eq!(tracker.commit_point(&k), Some(3));
        assert_eq!(tracker.in_flight(&k), 0);
        assert!(tracker.partitions[&k].failures.is_empty());
    }

    #[test]
    fn completed_record_is_never_reopened_by_fail() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 0, &[0, 1]);
        assert_eq!(tracker.ack(&k, 1), AckOutcome::Completed);
        assert_eq!(tracker.fail(&k, 1, "late"), AckOutcome::AlreadyCompleted);
        assert_eq!(tracker.ack(&k, 0), AckOutcome::Completed);
        assert_eq!(tracker.fail(&k, 0, "late"), AckOutcome::AlreadyCompleted);
        assert_eq!(tracker.commit_point(&k), Some(2));
    }

    #[test]
    fn revoke_returns_commit_point_and_forgets() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 0, &[0, 1, 2]);
        tracker.ack(&k, 0);
        tracker.ack(&k, 2);
        assert_eq!(tracker.total_in_flight(), 1);
        assert_eq!(tracker.revoke(&k), Some(1));
        assert!(!tracker.is_assigned(&k));
        assert_eq!(tracker.total_in_flight(), 0);
        assert_eq!(tracker.ack(&k, 1), AckOutcome::NotTracked);
        assert_eq!(tracker.fail(&k, 1, "x"), AckOutcome::NotTracked);
        assert_eq!(tracker.commit_point(&k), None);
        assert_eq!(tracker.revoke(&k), None);
        assert!(tracker.assigned().is_empty());
    }

    #[test]
    fn reassign_after_revoke_starts_fresh() {
        let k = key("t", 0);
        let (mut tracker, now) = tracker_with(&k, 0, &[0, 1, 2]);
        tracker.ack(&k, 0);
        assert_eq!(tracker.revoke(&k), Some(1));
        tracker.assign(k.clone(), 1);
        assert_eq!(tracker.commit_point(&k), Some(1));
        // A stale ack from before the revocation, below the new position.
        assert_eq!(tracker.ack(&k, 0), AckOutcome::NotTracked);
        assert!(tracker.dispatched(&k, 1, now));
        assert_eq!(tracker.in_flight(&k), 1);
        assert_eq!(tracker.total_in_flight(), 1);
    }

    #[test]
    fn assign_over_tracked_partition_replaces_it() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 0, &[0, 1, 2]);
        tracker.assign(k.clone(), 100);
        assert_eq!(tracker.commit_point(&k), Some(100));
        assert_eq!(tracker.in_flight(&k), 0);
        assert_eq!(tracker.total_in_flight(), 0);
        assert_eq!(tracker.ack(&k, 1), AckOutcome::NotTracked);
    }

    #[test]
    fn advance_moves_an_idle_partition_only() {
        let k = key("t", 0);
        let mut t = AckTracker::new();
        t.assign(k.clone(), 10);
        t.advance(&k, 15);
        assert_eq!(t.commit_point(&k), Some(15));
        // Never backwards.
        t.advance(&k, 12);
        assert_eq!(t.commit_point(&k), Some(15));
        // With an incomplete record, the commit point stays with it.
        assert!(t.dispatched(&k, 20, Instant::now()));
        t.advance(&k, 30);
        assert_eq!(t.commit_point(&k), Some(20));
        assert_eq!(t.ack(&k, 20), AckOutcome::Completed);
        assert_eq!(t.commit_point(&k), Some(21));
    }

    #[test]
    fn double_ack_is_already_completed() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 0, &[0, 1, 2]);
        assert_eq!(tracker.ack(&k, 1), AckOutcome::Completed);
        // Still in the window (0 incomplete before it).
        assert_eq!(tracker.ack(&k, 1), AckOutcome::AlreadyCompleted);
        assert_eq!(tracker.ack(&k, 0), AckOutcome::Completed);
        // Now below the commit point, dropped from the window.
        assert_eq!(tracker.ack(&k, 0), AckOutcome::AlreadyCompleted);
        assert_eq!(tracker.ack(&k, 1), AckOutcome::AlreadyCompleted);
        assert_eq!(tracker.in_flight(&k), 1);
        assert_eq!(tracker.commit_point(&k), Some(2));
    }

    #[test]
    fn ack_of_never_dispatched_offset_is_not_tracked() {
        let k = key("t", 0);
        let (mut tracker, _) = tracker_with(&k, 5, &[5, 6]);
        assert_eq!(tracker.ack(&k, 7), AckOutcome::NotTracked);
        assert_eq!(tracker.ack(&k, 1000), AckOutcome::NotTracked);
        assert_eq!(tracker.ack(&k, 4), AckOutcome::NotTracked);
        assert_eq!(tracker.ack(&k, -1), AckOutcome::NotTracked);
        assert_eq!(tracker.in_flight(&k), 2);
        tracker.ack(&k, 5);
        tracker.ack(&k, 6);
        assert_eq!(tracker.ack(&k, 7), AckOutcome::NotTracked);
        assert_eq!(tracker.commit_point(&k), Some(7));
    }

    #[test]
    fn non_increasing_dispatch_is_refused() {
        let k = key("t", 0);
        let (mut tracker, now) = tracker_with(&k, 10, &[10, 12]);
        assert!(!tracker.dispatched(&k, 12, now));
        assert!(!tracker.dispatched(&k, 11, now));
        assert!(!tracker.dispatched(&k, 3, now));
        assert_eq!(tracker.in_flight(&k), 2);
        assert_eq!(tracker.window_len(&k), 2);
        tracker.ack(&k, 10);
        tracker.ack(&k, 12);
        // Empty window: the last dispatched offset still bounds the next.
        assert!(!tracker.dispatched(&k, 12, now));
        assert!(tracker.dispatched(&k, 13, now));
        assert_eq!(tracker.commit_point(&k), Some(13));
    }

    #[test]
    fn dispatch_below_position_or_invalid_is_refused() {
        let k = key("t", 0);
        let (mut tracker, now) = tracker_with(&k, 10, &[]);
        assert!(!tracker.dispatched(&k, 9, now));
        assert!(!tracker.dispatched(&k, -1, now));
        assert!(!tracker.dispatched(&k, i64::MAX, now));
        assert_eq!(tracker.commit_point(&k), Some(10));
        assert!(tracker.dispatched(&k, i64::MAX - 1, now));
        tracker.ack(&k, i64::MAX - 1);
        assert_eq!(tracker.commit_point(&k), Some(i64::MAX));
    }

    #[test]
    fn pending_commits_report_only_movement() {
        let a = key("a", 0);
        let b = key("b", 1);
        let mut tracker = AckTracker::new();
        tracker.assign(a.clone(), 0);
        tracker.assign(b.clone(), 100);
        let now = Instant::now();
        for offset in 0..3 {
            tracker.dispatched(&a, offset, now);
            tracker.dispatched(&b, 100 + offset, now);
        }
        assert!(tracker.pending_commits().is_empty());

        tracker.ack(&b, 100);
        tracker.ack(&a, 1); // does not move a: 0 is incomplete
        assert_eq!(tracker.pending_commits(), vec![(b.clone(), 101)]);

        tracker.ack(&a, 0);
        assert_eq!(
            tracker.pending_commits(),
            vec![(a.clone(), 2), (b.clone(), 101)]
        );

        tracker.mark_committed(&a, 2);
        tracker.mark_committed(&b, 101);
        assert!(tracker.pending_commits().is_empty());

        // A late response for an older commit is ignored.
        tracker.mark_committed(&b, 100);
        assert_eq!(tracker.committed(&b), Some(101));
        assert!(tracker.pending_commits().is_empty());

        tracker.ack(&b, 101);
        assert_eq!(tracker.pending_commits(), vec![(b.clone(), 102)]);

        // Revoked while the commit was in flight: ignored.
        tracker.revoke(&b);
        tracker.mark_committed(&b, 102);
        assert!(!tracker.is_assigned(&b));
        assert!(tracker.pending_commits().is_empty());
    }

    #[test]
    fn stalled_reports_oldest_incomplete_record() {
        let a = key("orders", 0);
        let b = key("orders", 1);
        let mut tracker = AckTracker::new();
        tracker.assign(a.clone(), 0);
        tracker.assign(b.clone(), 0);
        let start = Instant::now();
        tracker.dispatched(&a, 0, start);
        tracker.dispatched(&a, 1, start + Duration::from_secs(5));
        tracker.dispatched(&a, 2, start + Duration::from_secs(6));
        tracker.dispatched(&b, 0, start + Duration::from_secs(50));
        tracker.fail(&a, 1, "downstream unavailable");
        tracker.ack(&a, 0);

        let now = start + Duration::from_secs(65);
        let threshold = Duration::from_secs(30);
        let stalls = tracker.stalled(now, threshold);
        assert_eq!(
            stalls,
            vec![StallReport {
                partition: TopicPartition::new("orders", 0),
                offset: 1,
                age: Duration::from_secs(60),
                failed: Some("downstream unavailable".to_string()),
                in_flight: 2,
            }]
        );
        let line = stalls[0].to_string();
        assert!(line.contains("orders/0"), "{line}");
        assert!(line.contains("offset 1"), "{line}");
        assert!(line.contains("downstream unavailable"), "{line}");

        // Exactly the threshold is not a stall yet.
        assert!(tracker
            .stalled(start + Duration::from_secs(35), threshold)
            .is_empty());

        // Later, both partitions stall; b's record is pending, not failed.
        let stalls = tracker.stalled(start + Duration::from_secs(100), threshold);
        assert_eq!(stalls.len(), 2);
        assert_eq!(stalls[1].partition.partition(), 1);
        assert_eq!(stalls[1].offset, 0);
        assert_eq!(stalls[1].failed, None);
        assert_eq!(stalls[1].in_flight, 1);

        // Once the failed record is handed off, a's next record is the oldest.
        tracker.ack(&a, 1);
        let stalls = tracker.stalled(start + Duration::from_secs(100), threshold);
        assert_eq!(stalls[0].offset, 2);
        assert_eq!(stalls[0].age, Duration::from_secs(94));
        assert_eq!(stalls[0].failed, None);

        // A clock reading before dispatch gives zero age, never a panic.
        assert!(tracker.stalled(start, Duration::ZERO).is_empty());
    }

    #[test]
    fn total_in_flight_sums_partitions() {
        let mut tracker = AckTracker::new();
        let now = Instant::now();
        for partition in 0..4 {
            let k = key("t", partition);
            tracker.assign(k.clone(), 0);
            for offset in 0..=i64::from(partition) {
                tracker.dispatched(&k, offset, now);
            }
        }
        assert_eq!(tracker.total_in_flight(), 1 + 2 + 3 + 4);
        tracker.ack(&key("t", 3), 2);
        tracker.fail(&key("t", 2), 0, "x");
        assert_eq!(tracker.total_in_flight(), 9);
        tracker.revoke(&key("t", 1));
        assert_eq!(tracker.total_in_flight(), 7);
        assert_eq!(tracker.assigned().len(), 3);
    }

    #[test]
    fn lookups_work_across_ring_buffer_wraparound() {
        // Interleave dispatches and front acks so the ring buffer wraps, and
        // use gaps so that lookups need the binary search over both halves.
        let k = key("t", 0);
        let mut tracker = AckTracker::new();
        tracker.assign(k.clone(), 0);
        let now = Instant::now();
        let mut live = VecDeque::new();
        let mut next = 0;
        for round in 0..200 {
            let gap = 1 + (round % 3);
            next += gap;
            assert!(tracker.dispatched(&k, next, now));
            live.push_back(next);
            if live.len() > 6 {
                // Ack the second-oldest, then the oldest.
                let second = live[1];
                assert_eq!(tracker.ack(&k, second), AckOutcome::Completed);
                assert_eq!(tracker.ack(&k, second), AckOutcome::AlreadyCompleted);
                let first = live[0];
                assert_eq!(tracker.ack(&k, first), AckOutcome::Completed);
                live.pop_front();
                live.pop_front();
                assert_eq!(tracker.commit_point(&k), live.front().copied());
            }
            assert_eq!(tracker.ack(&k, next + 1), AckOutcome::NotTracked);
        }
        for &offset in &live {
            assert_eq!(tracker.ack(&k, offset), AckOutcome::Completed);
        }
        assert_eq!(tracker.commit_point(&k), Some(next + 1));
    }

    #[test]
    fn key_hasher_spreads_partitions() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHasher>::default();
        let mut buckets = BTreeSet::new();
        for partition in 0..64 {
            buckets.insert(build.hash_one(key("orders", partition)) & 63);
        }
        // 64 keys into 64 buckets by their low bits: a weak hash would
        // collapse them into a handful.
        assert!(buckets.len() > 30, "{}", buckets.len());
    }

    // ---- model test ----

    /// Reference model of one partition: plain sets, no cleverness.
    #[derive(Debug, Clone)]
    struct ModelPartition {
        position: i64,
        last: Option<i64>,
        first: Option<i64>,
        dispatched: BTreeSet<i64>,
        incomplete: BTreeSet<i64>,
        committed: i64,
    }

    impl ModelPartition {
        fn new(position: i64) -> Self {
            Self {
                position,
                last: None,
                first: None,
                dispatched: BTreeSet::new(),
                incomplete: BTreeSet::new(),
                committed: position,
            }
        }

        fn commit_point(&self) -> i64 {
            match (self.incomplete.first(), self.last) {
                (Some(&lowest), _) => lowest,
                (None, Some(last)) => last + 1,
                (None, None) => self.position,
            }
        }

        fn outcome(&self, offset: i64) -> AckOutcome {
            if self.incomplete.contains(&offset) {
                AckOutcome::Completed
            } else if self.dispatched.contains(&offset) {
                AckOutcome::AlreadyCompleted
            } else if self.first.is_some_and(|first| offset >= first)
                && offset < self.commit_point()
            {
                // Documented approximation: a gap offset below the commit
                // point cannot be told apart from a completed record.
                AckOutcome::AlreadyCompleted
            } else {
                AckOutcome::NotTracked
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Dispatch the next record of a partition, `gap` after the last.
        Dispatch { partition: usize, gap: i64 },
        /// Ack a dispatched record, picked by index among the dispatched.
        Ack { partition: usize, pick: usize },
        /// Fail a dispatched record, picked by index among the dispatched.
        Fail { partition: usize, pick: usize },
        /// Ack an arbitrary offset near the partition's range.
        AckAny { partition: usize, offset: i64 },
        /// Dispatch an arbitrary (possibly refused) offset.
        DispatchAny { partition: usize, offset: i64 },
        /// Commit what is pending for a partition.
        Commit { partition: usize },
        /// Revoke and immediately reassign at the returned commit point.
        Rebalance { partition: usize },
    }

    const PARTITIONS: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        let p = 0..PARTITIONS;
        prop_oneof![
            6 => (p.clone(), prop_oneof![3 => Just(1i64), 1 => 2i64..6])
                .prop_map(|(partition, gap)| Op::Dispatch { partition, gap }),
            6 => (p.clone(), any::<usize>()).prop_map(|(partition, pick)| Op::Ack { partition, pick }),
            2 => (p.clone(), any::<usize>()).prop_map(|(partition, pick)| Op::Fail { partition, pick }),
            1 => (p.clone(), -2i64..60).prop_map(|(partition, offset)| Op::AckAny { partition, offset }),
            1 => (p.clone(), -2i64..60)
                .prop_map(|(partition, offset)| Op::DispatchAny { partition, offset }),
            1 => p.clone().prop_map(|partition| Op::Commit { partition }),
            1 => p.prop_map(|partition| Op::Rebalance { partition }),
        ]
    }

    fn check(
        tracker: &AckTracker,
        keys: &[TopicPartition],
        models: &[ModelPartition],
        previous: &[i64],
    ) -> Result<(), TestCaseError> {
        let mut total = 0;
        let mut expected_pending = Vec::new();
        for ((k, model), &before) in keys.iter().zip(models).zip(previous) {
            let point = model.commit_point();
            prop_assert_eq!(tracker.commit_point(k), Some(point));
            prop_assert!(
                point >= before,
                "commit point went back: {} -> {}",
                before,
                point
            );
            if let Some(&lowest) = model.incomplete.first() {
                prop_assert!(point <= lowest, "passed incomplete offset {}", lowest);
            }
            prop_assert_eq!(tracker.in_flight(k), model.incomplete.len());
            prop_assert_eq!(
                tracker.window_len(k),
                model.dispatched.range(point..).count()
            );
            prop_assert_eq!(tracker.committed(k), Some(model.committed));
            if point > model.committed {
                expected_pending.push((k.clone(), point));
            }
            total += model.incomplete.len();
        }
        prop_assert_eq!(tracker.total_in_flight(), total);
        expected_pending.sort();
        prop_assert_eq!(tracker.pending_commits(), expected_pending);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
            let keys: Vec<TopicPartition> = (0..PARTITIONS)
                .map(|p| key(if p == 2 { "other" } else { "topic" }, p as i32))
                .collect();
            let mut tracker = AckTracker::new();
            let mut models = Vec::new();
            for (p, k) in keys.iter().enumerate() {
                let position = 3 * p as i64;
                tracker.assign(k.clone(), position);
                models.push(ModelPartition::new(position));
            }
            let mut points: Vec<i64> = models.iter().map(ModelPartition::commit_point).collect();
            let now = Instant::now();

            for op in ops {
                match op {
                    Op::Dispatch { partition, gap } => {
                        let model = &mut models[partition];
                        let offset = model.last.map_or(model.position, |last| last + gap);
                        prop_assert!(tracker.dispatched(&keys[partition], offset, now));
                        model.last = Some(offset);
                        model.first.get_or_insert(offset);
                        model.dispatched.insert(offset);
                        model.incomplete.insert(offset);
                    }
                    Op::DispatchAny { partition, offset } => {
                        let model = &mut models[partition];
                        let floor = model.last.map_or(model.position, |last| last + 1);
                        let accepted = offset >= floor && offset >= 0;
                        prop_assert_eq!(
                            tracker.dispatched(&keys[partition], offset, now),
                            accepted
                        );
                        if accepted {
                            model.last = Some(offset);
                            model.first.get_or_insert(offset);
                            model.dispatched.insert(offset);
                            model.incomplete.insert(offset);
                        }
                    }
                    Op::Ack { partition, pick } | Op::Fail { partition, pick } => {
                        let model = &mut models[partition];
                        if model.dispatched.is_empty() {
                            continue;
                        }
                        let index = pick % model.dispatched.len();
                        let Some(&offset) = model.dispatched.iter().nth(index) else {
                            continue;
                        };
                        let expected = model.outcome(offset);
                        let got = if matches!(op, Op::Ack { .. }) {
                            model.incomplete.remove(&offset);
                            tracker.ack(&keys[partition], offset)
                        } else {
                            tracker.fail(&keys[partition], offset, format!("failed {offset}"))
                        };
                        prop_assert_eq!(got, expected);
                    }
                    Op::AckAny { partition, offset } => {
                        let model = &mut models[partition];
                        let expected = model.outcome(offset);
                        model.incomplete.remove(&offset);
                        prop_assert_eq!(tracker.ack(&keys[partition], offset), expected);
                    }
                    Op::Commit { partition } => {
                        let model = &mut models[partition];
                        let point = model.commit_point();
                        tracker.mark_committed(&keys[partition], point);
                        model.committed = model.committed.max(point);
                    }
                    Op::Rebalance { partition } => {
                        let point = models[partition].commit_point();
                        prop_assert_eq!(tracker.revoke(&keys[partition]), Some(point));
                        tracker.assign(keys[partition].clone(), point);
                        models[partition] = ModelPartition::new(point);
                    }
                }
                check(&tracker, &keys, &models, &points)?;
                points = models.iter().map(ModelPartition::commit_point).collect();
            }

            // Failed records are reported with their latest reason while they
            // hold back the partition.
            let later = now + Duration::from_secs(1);
            for report in tracker.stalled(later, Duration::ZERO) {
                let p = keys
                    .iter()
                    .position(|k| *k == report.partition);
                let Some(p) = p else {
                    return Err(TestCaseError::fail("stall report for unknown partition"));
                };
                let model = &models[p];
                prop_assert_eq!(Some(&report.offset), model.incomplete.first());
                prop_assert_eq!(report.in_flight, model.incomplete.len());
                if let Some(reason) = &report.failed {
                    prop_assert_eq!(reason, &format!("failed {}", report.offset));
                }
            }
            let stalled = tracker.stalled(later, Duration::ZERO).len();
            let blocked = models.iter().filter(|m| !m.incomplete.is_empty()).count();
            prop_assert_eq!(stalled, blocked);
        }
    }
}
