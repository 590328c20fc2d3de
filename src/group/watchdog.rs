//! The watchdog: which assigned partitions make no progress.
//!
//! The session samples every assigned partition a few times per threshold
//! (`watchdog_threshold`, 60 s by default) and reports a partition, once
//! per episode, when
//!
//! - it has not fetched successfully for longer than the threshold (also
//!   when its start position cannot be looked up). A fetch that finds
//!   nothing new is a success (nothing to fetch is not "not fetching"), and
//!   time the fetch pool spends waiting for the handler to catch up does
//!   not count: that is backpressure, not a failure; or
//! - its commit point has not moved for longer than the threshold while
//!   records wait: incomplete ones (with the handler, deferred, failed) or
//!   fetched ones not yet handed to the handler. An idle partition has
//!   nothing waiting and is never reported.
//!
//! Reports go to the log (a warning naming the partition), the error stream
//! ([`ConsumerError::PartitionStuck`](super::ConsumerError::PartitionStuck))
//! and [`ConsumerStatus::stuck`](super::ConsumerStatus::stuck); recovery is
//! logged too. The sampling is cheap (a few atomics and one tracker lookup
//! per partition), and nothing is added to the per-record path.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::status::{StuckPartition, StuckReason};
use crate::TopicPartition;

/// One partition's progress at a sampling moment.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub partition: TopicPartition,
    /// How long the fetch pool has been trying to fetch without success;
    /// `None` while it waits for the handler to catch up.
    pub fetch_failing_for: Option<Duration>,
    /// The next offset to fetch.
    pub next_fetch: i64,
    /// The commit point.
    pub commit_point: i64,
    /// Records waiting: incomplete, or fetched and not yet dispatched.
    pub waiting: usize,
}

/// What one check found.
#[derive(Debug, Default)]
pub(crate) struct Check {
    /// Every partition stuck now, sorted.
    pub stuck: Vec<StuckPartition>,
    /// Those not stuck (for that reason) at the previous check.
    pub started: Vec<StuckPartition>,
    /// Partitions stuck at the previous check that are still assigned and
    /// no longer stuck.
    pub recovered: Vec<TopicPartition>,
}

/// Watchdog state. Owned by the session task.
#[derive(Debug)]
pub(crate) struct Watchdog {
    threshold: Duration,
    /// Per partition with records waiting: the commit point seen, and since
    /// when it has been that while records waited.
    commits: HashMap<TopicPartition, (i64, Instant)>,
    /// Partitions stuck at the last check, with the kind (0: not fetching,
    /// 1: commit point not moving).
    reported: BTreeSet<(TopicPartition, u8)>,
}

impl Watchdog {
    pub(crate) fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            commits: HashMap::new(),
            reported: BTreeSet::new(),
        }
    }

    /// How often to check: four times per threshold, between 50 ms and 5 s.
    pub(crate) fn interval(&self) -> Duration {
        (self.threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Check the running partitions' `samples` taken at `now`.
    pub(crate) fn check(&mut self, now: Instant, samples: Vec<Sample>) -> Check {
        let mut stuck = Vec::new();
        let mut sampled = BTreeSet::new();
        for s in samples {
            sampled.insert(s.partition.clone());
            if let Some(failing) = s.fetch_failing_for {
                if failing > self.threshold {
                    stuck.push(StuckPartition {
                        partition: s.partition.clone(),
                        reason: StuckReason::NotFetching,
                        offset: s.next_fetch,
                        duration: failing,
                    });
                }
            }
            if s.waiting == 0 {
                self.commits.remove(&s.partition);
                continue;
            }
            let seen = self
                .commits
                .entry(s.partition.clone())
                .or_insert((s.commit_point, now));
            if seen.0 != s.commit_point {
                *seen = (s.commit_point, now);
            }
            let still = now.saturating_duration_since(seen.1);
            if still > self.threshold {
                stuck.push(StuckPartition {
                    partition: s.partition,
                    reason: StuckReason::CommitNotMoving { waiting: s.waiting },
                    offset: s.commit_point,
                    duration: still,
                });
            }
        }
        self.commits.retain(|tp, _| sampled.contains(tp));
        stuck.sort_by(|a, b| a.partition.cmp(&b.partition));

        let now_reported: BTreeSet<(TopicPartition, u8)> = stuck
            .iter()
            .map(|s| (s.partition.clone(), kind(s)))
            .collect();
        let started = stuck
            .iter()
            .filter(|s| !self.reported.contains(&(s.partition.clone(), kind(s))))
            .cloned()
            .collect();
        let mut recovered: Vec<TopicPartition> = self
            .reported
            .iter()
            .filter(|(tp, _)| sampled.contains(tp) && !stuck.iter().any(|s| &s.partition == tp))
            .map(|(tp, _)| tp.clone())
            .collect();
        recovered.dedup();
        self.reported = now_reported;
        Check {
            stuck,
            started,
            recovered,
        }
    }
}

fn kind(s: &StuckPartition) -> u8 {
    match s.reason {
        StuckReason::NotFetching => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(p: i32, failing: Option<u64>, point: i64, waiting: usize) -> Sample {
        Sample {
            partition: TopicPartition::new("t", p),
            fetch_failing_for: failing.map(Duration::from_secs),
            next_fetch: 100,
            commit_point: point,
            waiting,
        }
    }

    #[test]
    fn a_partition_that_does_not_fetch_is_reported_once_and_recovers() {
        let mut w = Watchdog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let c = w.check(t0, vec![sample(0, Some(5), 0, 0)]);
        assert!(c.stuck.is_empty());
        let c = w.check(t0, vec![sample(0, Some(11), 0, 0)]);
        assert_eq!(c.started.len(), 1);
        assert_eq!(c.stuck[0].reason, StuckReason::NotFetching);
        assert_eq!(c.stuck[0].offset, 100, "the next offset to fetch");
        assert!(c.stuck[0]
            .to_string()
            .contains("has not fetched successfully"));
        let c = w.check(t0, vec![sample(0, Some(12), 0, 0)]);
        assert_eq!((c.stuck.len(), c.started.len()), (1, 0), "reported once");
        // Waiting for the handler is not failing to fetch.
        let c = w.check(t0, vec![sample(0, None, 0, 0)]);
        assert!(c.stuck.is_empty());
        assert_eq!(c.recovered, vec![TopicPartition::new("t", 0)]);
        // Not started: no start position yet.
        let c = w.check(
            t0,
            vec![Sample {
                next_fetch: -1,
                ..sample(1, Some(11), -1, 0)
            }],
        );
        assert!(
            c.started[0]
                .to_string()
                .contains("start position is not known"),
            "{}",
            c.started[0]
        );
    }

    #[test]
    fn a_commit_point_that_does_not_move_while_records_wait_is_reported() {
        let mut w = Watchdog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Idle: nothing waiting, however long: never reported.
        for i in 0..5 {
            let c = w.check(t0 + s(i * 20), vec![sample(1, Some(0), 7, 0)]);
            assert!(c.stuck.is_empty());
        }
        // Records wait at 7; the point moves to 9 at t0+8; stuck from there.
        assert!(w.check(t0, vec![sample(1, Some(0), 7, 3)]).stuck.is_empty());
        assert!(w
            .check(t0 + s(8), vec![sample(1, Some(0), 9, 3)])
            .stuck
            .is_empty());
        assert!(w
            .check(t0 + s(17), vec![sample(1, Some(0), 9, 3)])
            .stuck
            .is_empty());
        let c = w.check(t0 + s(19), vec![sample(1, Some(0), 9, 4)]);
        assert_eq!(c.started.len(), 1);
        assert_eq!(
            c.stuck[0].reason,
            StuckReason::CommitNotMoving { waiting: 4 }
        );
        assert_eq!((c.stuck[0].offset, c.stuck[0].duration), (9, s(11)));
        // Revoked: forgotten, not "recovered".
        let c = w.check(t0 + s(20), vec![]);
        assert!(c.stuck.is_empty() && c.recovered.is_empty());
        assert!(w.commits.is_empty());
    }
}
