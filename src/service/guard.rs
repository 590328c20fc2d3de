//! The per-key order guard: which keys of which origin partitions have a
//! record waiting in the retry topic, so that later records with the key
//! follow it there instead of overtaking it.
//!
//! Shared by the origin consumer (which adds entries when it sends a record
//! to the retry topic and asks whether a key is waiting) and the retry
//! consumer (which asks whether an earlier record of the key is still
//! waiting, moves entries when it retries again, and removes them when a
//! record is done). One mutex guards it all; every operation is a few map
//! lookups.
//!
//! Memory: at most `capacity` entries per origin partition (a key, its
//! record's offset and two times each). An entry leaves when this instance
//! finishes the record (handled, dead-lettered), or at the latest
//! [`GRACE`] after the record was due: when another instance handles the
//! retry, this one never hears of it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::TopicPartition;

/// How long after its due time an entry is kept at most.
pub(crate) const GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The record's offset in its origin partition.
    offset: i64,
    /// When it is due (ms since the epoch).
    not_before_ms: i64,
}

#[derive(Debug, Default)]
struct PartitionGuard {
    /// Per key, its waiting records by origin offset.
    keys: HashMap<Bytes, VecDeque<Entry>>,
    entries: usize,
}

impl PartitionGuard {
    /// Drop entries whose grace has passed.
    fn purge(&mut self, now_ms: i64) {
        let grace = GRACE.as_millis() as i64;
        let mut removed = 0;
        self.keys.retain(|_, entries| {
            let before = entries.len();
            entries.retain(|e| e.not_before_ms.saturating_add(grace) > now_ms);
            removed += before - entries.len();
            !entries.is_empty()
        });
        self.entries -= removed;
    }
}

/// The guard of a service instance; see the module docs.
#[derive(Debug)]
pub(crate) struct OrderGuard {
    partitions: Mutex<HashMap<TopicPartition, PartitionGuard>>,
    capacity: usize,
    /// Woken when entries leave (for records waiting for room).
    freed: Notify,
}

/// What [`OrderGuard::upsert`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upsert {
    Done,
    /// The partition's guard is full; wait for [`OrderGuard::freed`].
    Full,
}

impl OrderGuard {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            partitions: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TopicPartition, PartitionGuard>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Resolves when entries leave some partition's guard.
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// When the last waiting record of `key` in `tp` is due, if one waits.
    pub(crate) fn waiting(&self, tp: &TopicPartition, key: &Bytes, now_ms: i64) -> Option<i64> {
        let mut all = self.lock();
        let guard = all.get_mut(tp)?;
        guard.purge(now_ms);
        guard
            .keys
            .get(key)
            .and_then(|e| e.iter().map(|e| e.not_before_ms).max())
    }

    /// When the latest waiting record of `key` in `tp` *before* `offset` is
    /// due, if one waits: the record at `offset` must not overtake it.
    pub(crate) fn predecessor(
        &self,
        tp: &TopicPartition,
        key: &Bytes,
        offset: i64,
        now_ms: i64,
    ) -> Option<i64> {
        let mut all = self.lock();
        let guard = all.get_mut(tp)?;
        guard.purge(now_ms);
        guard
            .keys
            .get(key)?
            .iter()
            .filter(|e| e.offset < offset)
            .map(|e| e.not_before_ms)
            .max()
    }

    /// Record that the record at `offset` waits in the retry topic until
    /// `not_before_ms` (a new entry, or a new due time for an old one).
    pub(crate) fn upsert(
        &self,
        tp: &TopicPartition,
        key: &Bytes,
        offset: i64,
        not_before_ms: i64,
        now_ms: i64,
    ) -> Upsert {
        let mut all = self.lock();
        let guard = all.entry(tp.clone()).or_default();
        if let Some(entry) = guard
            .keys
            .get_mut(key)
            .and_then(|es| es.iter_mut().find(|e| e.offset == offset))
        {
            entry.not_before_ms = not_before_ms;
            return Upsert::Done;
        }
        if guard.entries >= self.capacity {
            guard.purge(now_ms);
            if guard.entries >= self.capacity {
                return Upsert::Full;
            }
        }
        let entries = guard.keys.entry(key.clone()).or_default();
        let at = entries.partition_point(|e| e.offset < offset);
        entries.insert(
            at,
            Entry {
                offset,
                not_before_ms,
            },
        );
        guard.entries += 1;
        Upsert::Done
    }

    /// The record at `offset` is done (or was never stored in the retry
    /// topic).
    pub(crate) fn remove(&self, tp: &TopicPartition, key: &Bytes, offset: i64) {
        let mut all = self.lock();
        let Some(guard) = all.get_mut(tp) else { return };
        let Some(entries) = guard.keys.get_mut(key) else {
            return;
        };
        let before = entries.len();
        entries.retain(|e| e.offset != offset);
        let removed = before - entries.len();
        if entries.is_empty() {
            guard.keys.remove(key);
        }
        guard.entries -= removed;
        if guard.entries == 0 {
            all.remove(tp);
        }
        drop(all);
        if removed > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Entries now, for tests.
    #[cfg(test)]
    fn len(&self, tp: &TopicPartition) -> usize {
        self.lock().get(tp).map_or(0, |g| g.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_wait_behind_their_earlier_records() {
        let g = OrderGuard::new(10);
        let tp = TopicPartition::new("orders", 0);
        let k = Bytes::from("k");
        assert_eq!(g.waiting(&tp, &k, 0), None);
        assert_eq!(g.upsert(&tp, &k, 5, 1_000, 0), Upsert::Done);
        assert_eq!(g.waiting(&tp, &k, 0), Some(1_000));
        assert_eq!(g.waiting(&tp, &Bytes::from("other"), 0), None);
        // A follower at offset 9.
        assert_eq!(g.upsert(&tp, &k, 9, 1_000, 0), Upsert::Done);
        assert_eq!(g.predecessor(&tp, &k, 9, 0), Some(1_000));
        assert_eq!(g.predecessor(&tp, &k, 5, 0), None);
        // Offset 5 is retried again, later.
        assert_eq!(g.upsert(&tp, &k, 5, 4_000, 0), Upsert::Done);
        assert_eq!(g.predecessor(&tp, &k, 9, 0), Some(4_000));
        assert_eq!(g.len(&tp), 2);
        g.remove(&tp, &k, 5);
        assert_eq!(g.predecessor(&tp, &k, 9, 0), None);
        g.remove(&tp, &k, 9);
        assert_eq!(g.waiting(&tp, &k, 0), None);
        assert_eq!(g.len(&tp), 0);
    }

    #[test]
    fn capacity_and_expiry() {
        let g = OrderGuard::new(2);
        let tp = TopicPartition::new("orders", 1);
        let (a, b, c) = (Bytes::from("a"), Bytes::from("b"), Bytes::from("c"));
        assert_eq!(g.upsert(&tp, &a, 1, 100, 0), Upsert::Done);
        assert_eq!(g.upsert(&tp, &b, 2, 200, 0), Upsert::Done);
        assert_eq!(g.upsert(&tp, &c, 3, 300, 0), Upsert::Full);
        // Updating an entry needs no room.
        assert_eq!(g.upsert(&tp, &a, 1, 150, 0), Upsert::Done);
        // Past the grace, entries expire and make room.
        let later = 200 + GRACE.as_millis() as i64;
        assert_eq!(g.upsert(&tp, &c, 3, later + 5, later), Upsert::Done);
        assert_eq!(g.waiting(&tp, &a, later), None);
        assert_eq!(g.waiting(&tp, &c, later), Some(later + 5));
    }
}
