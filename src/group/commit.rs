//! When and how offsets are committed. Every commit goes through
//! [`Committer::commit`]; the session calls it at three moments:
//!
//! 1. **On the interval** (`commit_interval`, 5 s by default), in the stable
//!    phase only: every partition whose commit point moved since the last
//!    commit ([`Committer::commit_progress`]).
//! 2. **On revocation**, for the partitions given up: after a cooperative
//!    SyncGroup took them away, before an eager rejoin, and when the leader's
//!    assignment could not be decoded. Their in-flight records get up to
//!    `revoke_timeout` to finish first; the commit then gets what is left of
//!    the rebalance timeout (at most the request timeout).
//! 3. **On shutdown**, before LeaveGroup, after in-flight records had up to
//!    the shutdown deadline to finish.
//!
//! What is committed per partition is the ack tracker's commit point: the
//! lowest offset not yet completed (Kafka's "next offset to read"), so a
//! commit never passes an incomplete record.
//!
//! Never committed: partitions that were *lost* (evicted member, stale
//! generation: another member may own them already), and anything while the
//! member has no generation (before its first join, after its membership was
//! lost) — such a commit could only be refused, and the records are
//! redelivered to whoever owns the partition next (at-least-once).
//! Commits are not heartbeats and do not keep the member alive (KAFKA-9246).

use std::sync::Arc;
use std::time::Duration;

use super::coordinator::{Coordinator, GroupError};
use super::tracking::Tracking;
use crate::TopicPartition;

/// Why a commit is made (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitReason {
    /// The periodic commit.
    Interval,
    /// Partitions given up in a rebalance.
    Revocation,
    /// The consumer is shutting down.
    Shutdown,
}

/// The one path from completed records to OffsetCommit. Owned by the
/// session task.
#[derive(Debug)]
pub(crate) struct Committer {
    /// Shared with partition workers and completions; read for commit
    /// points, written to note what was committed.
    tracking: Arc<Tracking>,
    /// The client's request timeout: the longest a commit may take.
    request_timeout: Duration,
}

impl Committer {
    pub(super) fn new(tracking: Arc<Tracking>, request_timeout: Duration) -> Self {
        Self {
            tracking,
            request_timeout,
        }
    }

    /// The periodic commit: every tracked partition whose commit point
    /// moved.
    pub(super) async fn commit_progress(
        &self,
        coordinator: &mut Coordinator,
    ) -> Result<(), GroupError> {
        let pending = self.tracking.pending_commits();
        self.commit(
            coordinator,
            &pending,
            CommitReason::Interval,
            self.request_timeout,
        )
        .await
    }

    /// Commit `offsets` in the member's current generation, waiting at most
    /// `timeout` (capped at the request timeout), and note what was
    /// committed. Without a generation nothing is sent.
    pub(super) async fn commit(
        &self,
        coordinator: &mut Coordinator,
        offsets: &[(TopicPartition, i64)],
        reason: CommitReason,
        timeout: Duration,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        if coordinator.generation < 0 {
            tracing::debug!(
                ?reason,
                partitions = offsets.len(),
                "no generation: not committing; the records are redelivered to the next owner"
            );
            return Ok(());
        }
        let timeout = timeout
            .min(self.request_timeout)
            .max(Duration::from_millis(1));
        coordinator.commit(offsets, timeout).await?;
        for (tp, offset) in offsets {
            self.tracking.mark_committed(tp, *offset);
        }
        tracing::debug!(?reason, partitions = offsets.len(), "committed offsets");
        Ok(())
    }
}
