//! What a group consumer is doing right now: [`ConsumerStatus`], read with a
//! [`StatusHandle`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::tracking::Tracking;
use crate::TopicPartition;

/// Where the member is in its group session. See the
/// [`group` module docs](crate::group#the-group-session) for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupState {
    /// Finding the coordinator and waiting for JoinGroup (also between
    /// retries of a failed join, which keep the partitions a cooperative
    /// member may keep).
    #[default]
    Joining,
    /// Joined; the leader computes the assignment, everyone waits for
    /// SyncGroup.
    Syncing,
    /// The assignment arrived: giving up revoked partitions, looking up start
    /// positions, starting the new partitions. Heartbeats run.
    Assigning,
    /// Consuming; heartbeats and periodic commits run.
    Stable,
    /// Giving partitions up before rejoining (eager rebalance) or shutting
    /// down: waiting for in-flight records, committing.
    Revoking,
    /// Sending LeaveGroup on shutdown.
    Leaving,
    /// `run()` has returned.
    Stopped,
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupState::Joining => "joining",
            GroupState::Syncing => "syncing",
            GroupState::Assigning => "assigning",
            GroupState::Stable => "stable",
            GroupState::Revoking => "revoking",
            GroupState::Leaving => "leaving",
            GroupState::Stopped => "stopped",
        })
    }
}

/// A snapshot of what the consumer is doing.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// let consumer = client.group_consumer("billing").topic("orders").build()?;
/// let status = consumer.status_handle();
/// // ... run the consumer on a task, then, for a health endpoint:
/// let now = status.get();
/// println!("{} in generation {}: {:?}", now.state, now.generation, now.assignment);
/// for paused in &now.paused {
///     eprintln!("{paused}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// Where the member is in its group session.
    pub state: GroupState,
    /// Member id given by the coordinator (empty before the first join).
    pub member_id: String,
    /// Current generation; -1 before the first join and whenever the member
    /// is outside a generation (after its membership was lost).
    pub generation: i32,
    /// Assignor chosen by the group (empty before the first join).
    pub protocol: String,
    /// Whether this member led the last rebalance.
    pub leader: bool,
    /// Partitions owned now, sorted.
    pub assignment: Vec<TopicPartition>,
    /// How many times this member has joined the group (successful
    /// JoinGroup and SyncGroup).
    pub joins: u64,
    /// Partitions whose oldest incomplete record is older than the stall
    /// threshold.
    pub stalled: Vec<StallReport>,
    /// Partitions whose fetching and dispatching is paused because a limit
    /// was reached and nothing in flight can free room (see [`PauseReason`]).
    pub paused: Vec<PausedPartition>,
    /// Subscribed topics that do not exist (as of the last metadata refresh).
    /// They are consumed once they are created.
    pub missing_topics: Vec<String>,
    /// Partitions the leader assigned to this member that it does not take:
    /// they do not exist, or belong to a topic it does not subscribe to.
    pub ignored_partitions: Vec<TopicPartition>,
    /// The topics this member subscribes to now, sorted: the topics named
    /// with [`topic`](super::GroupConsumerBuilder::topic), and every
    /// existing topic matching a
    /// [`topic_pattern`](super::GroupConsumerBuilder::topic_pattern) (as of
    /// the last metadata refresh).
    pub subscribed: Vec<String>,
    /// Partitions the watchdog finds making no progress for longer than
    /// its threshold (see [`StuckPartition`]), as of its last check.
    pub stuck: Vec<StuckPartition>,
}

impl Default for ConsumerStatus {
    fn default() -> Self {
        Self {
            state: GroupState::Joining,
            member_id: String::new(),
            generation: -1,
            protocol: String::new(),
            leader: false,
            assignment: Vec::new(),
            joins: 0,
            stalled: Vec::new(),
            paused: Vec::new(),
            missing_topics: Vec::new(),
            ignored_partitions: Vec::new(),
            subscribed: Vec::new(),
            stuck: Vec::new(),
        }
    }
}

/// A partition whose commits are held back by a record that has not
/// completed for longer than the stall threshold.
///
/// Its [`Display`](fmt::Display) form is meant for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StallReport {
    /// The stalled partition.
    pub partition: TopicPartition,
    /// Offset of the oldest incomplete record, which is also the commit point.
    pub offset: i64,
    /// How long ago that record was dispatched.
    pub age: Duration,
    /// The last failure reason recorded for that record, if it failed.
    pub failed: Option<String>,
    /// Number of incomplete records of the partition (including this one).
    pub in_flight: usize,
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} commits stalled at offset {} for {:.1}s ({} in flight)",
            self.partition,
            self.offset,
            self.age.as_secs_f64(),
            self.in_flight
        )?;
        match &self.failed {
            Some(reason) => write!(f, "; record failed: {reason}"),
            None => write!(f, "; record not yet acked by its handler"),
        }
    }
}

/// Why a partition stopped fetching and dispatching records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PauseReason {
    /// `max_pending_per_partition` records are incomplete and every one of
    /// them failed: nothing in flight can complete and make room, so the
    /// partition makes no more progress until it is reassigned (a rebalance
    /// or restart redelivers from the commit point).
    FailedRecords {
        /// Failed records of the partition.
        failed: usize,
        /// The in-flight limit (`max_pending_per_partition`).
        limit: usize,
    },
    /// The ack tracker's window (every record from the oldest incomplete one
    /// to the newest dispatched one) reached `max_window_per_partition`: the
    /// record at the head has not completed while many after it did.
    /// Dispatching resumes when the head completes.
    Window {
        /// Records in the window.
        window: usize,
        /// The window limit (`max_window_per_partition`).
        limit: usize,
    },
}

/// A partition that is paused, with why and where; see
/// [`ConsumerStatus::paused`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PausedPartition {
    /// The paused partition.
    pub partition: TopicPartition,
    /// The commit point: offset of the oldest incomplete record.
    pub offset: i64,
    /// The failure recorded for that record, if it failed.
    pub failed: Option<String>,
    /// Which limit was reached.
    pub reason: PauseReason,
}

impl fmt::Display for PausedPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} paused at offset {}: ",
            self.partition, self.offset
        )?;
        match self.reason {
            PauseReason::FailedRecords { failed, limit } => write!(
                f,
                "{failed} failed records fill the in-flight limit of {limit}; \
                 it makes no more progress until reassigned"
            )?,
            PauseReason::Window { window, limit } => write!(
                f,
                "{window} records wait behind the oldest incomplete one (window limit {limit})"
            )?,
        }
        if let Some(reason) = &self.failed {
            write!(f, "; oldest record failed: {reason}")?;
        }
        Ok(())
    }
}

/// Why the watchdog reports a partition; see [`StuckPartition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StuckReason {
    /// The partition is assigned but has not fetched successfully (the
    /// broker may be unreachable, the leader unavailable, the fetch refused,
    /// or its start position could not be looked up yet).
    /// A fetch that finds nothing new is a success, and time spent waiting
    /// for the handler to catch up does not count.
    NotFetching,
    /// The partition's commit point has not moved while records wait:
    /// incomplete records (with the handler, deferred, or failed) or fetched
    /// records not yet handed to the handler.
    CommitNotMoving {
        /// Records waiting: incomplete, or fetched and not yet dispatched.
        waiting: usize,
    },
}

/// A partition the watchdog reports: assigned, yet making no progress for
/// longer than the
/// [`watchdog_threshold`](super::GroupConsumerBuilder::watchdog_threshold).
/// An idle partition (nothing to fetch, nothing waiting) is never reported.
///
/// Its [`Display`](fmt::Display) form is meant for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StuckPartition {
    /// The partition.
    pub partition: TopicPartition,
    /// What does not move.
    pub reason: StuckReason,
    /// For [`StuckReason::NotFetching`], the next offset to fetch (-1 while
    /// the partition's start position could not be looked up yet); for
    /// [`StuckReason::CommitNotMoving`], the commit point.
    pub offset: i64,
    /// For how long (as of the watchdog's last check, which runs a few
    /// times per threshold).
    pub duration: Duration,
}

impl fmt::Display for StuckPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.duration.as_secs_f64();
        match self.reason {
            StuckReason::NotFetching if self.offset < 0 => write!(
                f,
                "partition {} has not fetched for {secs:.1}s: its start position is not known yet",
                self.partition
            ),
            StuckReason::NotFetching => write!(
                f,
                "partition {} has not fetched successfully for {secs:.1}s (next offset {})",
                self.partition, self.offset
            ),
            StuckReason::CommitNotMoving { waiting } => write!(
                f,
                "partition {} commit point stuck at offset {} for {secs:.1}s while {waiting} \
                 records wait",
                self.partition, self.offset
            ),
        }
    }
}

/// Reads the current [`ConsumerStatus`]. Made with
/// [`GroupConsumer::status_handle`](super::GroupConsumer::status_handle);
/// cheap to clone, usable from any task or thread.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    /// Written by the session; read here, under its mutex.
    pub(crate) status: Arc<Mutex<ConsumerStatus>>,
    /// Stalls and pauses are read fresh from the tracker (its own mutex).
    pub(crate) tracking: Arc<Tracking>,
    /// The stall threshold.
    pub(crate) threshold: Duration,
}

impl StatusHandle {
    /// The current status, with fresh stall and pause information.
    pub fn get(&self) -> ConsumerStatus {
        let mut s = lock(&self.status).clone();
        s.stalled = self.tracking.stalled(self.threshold);
        s.paused = self.tracking.paused();
        s
    }
}

/// Locks the shared status; a panic elsewhere never makes it unreadable.
pub(crate) fn lock(status: &Mutex<ConsumerStatus>) -> MutexGuard<'_, ConsumerStatus> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_first_join_there_is_no_generation() {
        let s = ConsumerStatus::default();
        assert_eq!(s.generation, -1);
        assert_eq!(s.state, GroupState::Joining);
        assert!(s.member_id.is_empty() && s.assignment.is_empty());
    }

    #[test]
    fn pauses_and_stalls_read_well() {
        let paused = PausedPartition {
            partition: TopicPartition::new("orders", 2),
            offset: 40,
            failed: Some("schema mismatch".into()),
            reason: PauseReason::FailedRecords {
                failed: 1000,
                limit: 1000,
            },
        };
        let line = paused.to_string();
        assert!(
            line.starts_with("partition orders/2 paused at offset 40"),
            "{line}"
        );
        assert!(
            line.contains("no more progress") && line.contains("schema mismatch"),
            "{line}"
        );
        let window = PausedPartition {
            reason: PauseReason::Window {
                window: 10_000,
                limit: 10_000,
            },
            failed: None,
            ..paused
        };
        assert!(
            window.to_string().contains("window limit 10000"),
            "{window}"
        );
    }
}
