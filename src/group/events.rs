//! The problems a group consumer reports: [`ConsumerError`], delivered on
//! the bounded [`ConsumerErrors`] stream taken with
//! [`GroupConsumer::errors`](super::GroupConsumer::errors).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::rebalance::RebalanceEvent;
use super::status::{PauseReason, StuckPartition};
use crate::error::Error;
use crate::report_queue::{ReportQueue, Reports};
use crate::TopicPartition;

/// Which step of group membership failed; see [`ConsumerError::Group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupStep {
    /// Finding the group coordinator (FindCoordinator, connecting to it).
    FindCoordinator,
    /// JoinGroup.
    Join,
    /// Computing the assignment (as leader) or SyncGroup, or decoding the
    /// assignment the leader sent.
    Sync,
    /// Heartbeat.
    Heartbeat,
    /// Looking up where newly assigned partitions start: OffsetFetch for the
    /// committed offsets, ListOffsets for the reset position.
    StartPosition,
    /// OffsetCommit.
    Commit,
    /// Refreshing metadata of the subscribed topics.
    Metadata,
    /// LeaveGroup.
    Leave,
}

impl fmt::Display for GroupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupStep::FindCoordinator => "finding the group coordinator",
            GroupStep::Join => "joining the group",
            GroupStep::Sync => "syncing the group",
            GroupStep::Heartbeat => "heartbeating",
            GroupStep::StartPosition => "looking up start positions",
            GroupStep::Commit => "committing offsets",
            GroupStep::Metadata => "refreshing topic metadata",
            GroupStep::Leave => "leaving the group",
        })
    }
}

/// A problem a group consumer reports on its error stream.
///
/// Only [`ConsumerError::Fatal`] ends [`GroupConsumer::run`]; it is always
/// the last item of the stream, and `run` returns the same error. Every
/// other variant is reported while the consumer goes on: it retries with
/// backoff and keeps the partitions it may keep. Each is also logged.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use futures::StreamExt;
/// use kastellan::group::ConsumerError;
///
/// let mut consumer = client.group_consumer("billing").topic("orders").build()?;
/// let mut errors = consumer.errors().expect("taken once");
/// tokio::spawn(async move {
///     while let Some(problem) = errors.next().await {
///         match &problem {
///             ConsumerError::PartitionPaused { partition, .. } => {
///                 eprintln!("alert: {partition} needs attention: {problem}")
///             }
///             _ if problem.is_fatal() => eprintln!("consumer stopped: {problem}"),
///             _ => eprintln!("consumer problem (retrying): {problem}"),
///         }
///     }
/// });
/// # Ok(()) }
/// ```
///
/// [`GroupConsumer::run`]: super::GroupConsumer::run
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The consumer stopped: no retry can fix this error and it needs your
    /// action (configuration, credentials, permissions, a fenced static
    /// member, an unsupported broker, a missing topic in strict mode). See
    /// the [`group` module docs](crate::group#when-run-ends).
    Fatal(Error),
    /// A step of group membership failed; it is retried with backoff.
    Group {
        /// What the consumer was doing.
        step: GroupStep,
        /// What went wrong.
        error: Error,
    },
    /// The membership was lost (evicted by the coordinator, or its
    /// generation moved on without this member): these partitions were
    /// stopped without a commit, since another member may own them now. The
    /// consumer rejoins.
    PartitionsLost {
        /// The partitions given up.
        partitions: Vec<TopicPartition>,
        /// Why the membership was lost.
        error: Error,
    },
    /// A subscribed topic does not exist. The consumer keeps refreshing
    /// metadata (every few seconds while a topic is missing) and consumes
    /// the topic once it is created. Reported when the topic goes missing,
    /// not on every refresh.
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// The leader assigned partitions this member does not take: they do
    /// not exist (as fresh metadata shows), or belong to a topic this member
    /// does not subscribe to.
    AssignmentIgnored {
        /// The partitions not taken.
        partitions: Vec<TopicPartition>,
        /// Why.
        reason: &'static str,
    },
    /// Fetching a partition failed even after retrying until the retry
    /// deadline; fetching resumes after a backoff.
    Fetch {
        /// The partition.
        partition: TopicPartition,
        /// The last error.
        error: Error,
    },
    /// A partition paused: it makes no progress until what blocks it
    /// completes (or, for failed records, until it is reassigned). Also in
    /// [`ConsumerStatus::paused`](super::ConsumerStatus::paused) while it
    /// lasts.
    PartitionPaused {
        /// The partition.
        partition: TopicPartition,
        /// Offset of the oldest incomplete record (the commit point).
        offset: i64,
        /// The failure recorded for that record, if it failed.
        failed: Option<String>,
        /// Which limit was reached.
        reason: PauseReason,
    },
    /// The watchdog found a partition making no progress for longer than
    /// the watchdog threshold: it has not fetched successfully, or its
    /// commit point has not moved while records wait. Reported once when it
    /// starts; also in [`ConsumerStatus::stuck`](super::ConsumerStatus::stuck)
    /// while it lasts.
    PartitionStuck(StuckPartition),
    /// A rebalance hook ([`RebalanceListener`](super::RebalanceListener))
    /// panicked, or did not return within its bound and was abandoned. The
    /// consumer went on as if it had returned.
    RebalanceHook {
        /// Which hook.
        event: RebalanceEvent,
        /// The partitions it was called with.
        partitions: Vec<TopicPartition>,
        /// What went wrong: the panic message, or the bound it exceeded.
        reason: String,
    },
}

impl ConsumerError {
    /// Whether this error ended the consumer (only [`ConsumerError::Fatal`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, ConsumerError::Fatal(_))
    }

    /// The underlying client error, for the variants that carry one.
    pub fn error(&self) -> Option<&Error> {
        match self {
            ConsumerError::Fatal(e)
            | ConsumerError::Group { error: e, .. }
            | ConsumerError::PartitionsLost { error: e, .. }
            | ConsumerError::Fetch { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumerError::Fatal(e) => write!(f, "consumer stopped: {e}"),
            ConsumerError::Group { step, error } => {
                write!(f, "{step} failed (retrying): {error}")
            }
            ConsumerError::PartitionsLost { partitions, error } => {
                write!(f, "membership lost, partitions ")?;
                write_list(f, partitions)?;
                write!(f, " given up without commit (rejoining): {error}")
            }
            ConsumerError::MissingTopic { topic } => write!(
                f,
                "subscribed topic `{topic}` does not exist; it is consumed once created"
            ),
            ConsumerError::AssignmentIgnored { partitions, reason } => {
                write!(f, "assigned partitions ")?;
                write_list(f, partitions)?;
                write!(f, " ignored: {reason}")
            }
            ConsumerError::Fetch { partition, error } => {
                write!(f, "fetching {partition} failed (retrying): {error}")
            }
            ConsumerError::PartitionPaused {
                partition,
                offset,
                failed,
                reason,
            } => {
                let paused = super::status::PausedPartition {
                    partition: partition.clone(),
                    offset: *offset,
                    failed: failed.clone(),
                    reason: *reason,
                };
                fmt::Display::fmt(&paused, f)
            }
            ConsumerError::PartitionStuck(stuck) => fmt::Display::fmt(stuck, f),
            ConsumerError::RebalanceHook {
                event,
                partitions,
                reason,
            } => {
                write!(f, "rebalance hook `{event}` for ")?;
                write_list(f, partitions)?;
                write!(f, " {reason} (the consumer went on)")
            }
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, partitions: &[TopicPartition]) -> fmt::Result {
    f.write_str("[")?;
    for (i, tp) in partitions.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{tp}")?;
    }
    f.write_str("]")
}

impl std::error::Error for ConsumerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error().map(|e| e as _)
    }
}

/// Writes reported problems (crate-internal side of the error stream);
/// clones go to the session, partition workers and the fetch pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reporter {
    queue: ReportQueue<ConsumerError>,
}

impl Reporter {
    /// Queue a problem; when the queue is full the oldest one is dropped,
    /// so memory stays bounded if nobody reads.
    pub(super) fn report(&self, problem: ConsumerError) {
        self.queue.push(problem);
    }

    /// End the stream after what is queued.
    pub(super) fn close(&self) {
        self.queue.close();
    }

    /// The reading side (one per consumer).
    pub(super) fn stream(&self) -> ConsumerErrors {
        ConsumerErrors {
            reports: self.queue.reader(),
        }
    }
}

/// The stream of problems a group consumer reports, fatal or not: see
/// [`ConsumerError`]. Taken once with
/// [`GroupConsumer::errors`](super::GroupConsumer::errors).
///
/// Bounded: if nobody reads, at most 256 problems wait and older ones are
/// dropped (counted by [`dropped`](Self::dropped)), so an unread stream
/// never grows. It ends after `run` has returned and everything queued was
/// read; a fatal error is then the last item.
pub struct ConsumerErrors {
    reports: Reports<ConsumerError>,
}

impl fmt::Debug for ConsumerErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reports.debug("ConsumerErrors", f)
    }
}

impl ConsumerErrors {
    /// The next reported problem; `None` once the consumer has stopped and
    /// everything was read.
    pub async fn recv(&mut self) -> Option<ConsumerError> {
        futures::StreamExt::next(self).await
    }

    /// The next reported problem if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<ConsumerError> {
        self.reports.try_recv()
    }

    /// How many problems were dropped unread because the stream was full.
    pub fn dropped(&self) -> u64 {
        self.reports.dropped()
    }
}

impl Stream for ConsumerErrors {
    type Item = ConsumerError;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConsumerError>> {
        Pin::new(&mut self.get_mut().reports).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report_queue::CAPACITY;

    fn missing(n: usize) -> ConsumerError {
        ConsumerError::MissingTopic {
            topic: format!("t{n}"),
        }
    }

    #[tokio::test]
    async fn stream_is_bounded_and_ends_with_the_fatal_error() {
        let reporter = Reporter::default();
        let mut stream = reporter.stream();
        for n in 0..CAPACITY + 10 {
            reporter.report(missing(n));
        }
        reporter.report(ConsumerError::Fatal(Error::Config("bad".into())));
        reporter.close();
        reporter.report(missing(0)); // after close: ignored
        assert_eq!(stream.dropped(), 11);
        let mut items = Vec::new();
        while let Some(item) = stream.recv().await {
            items.push(item);
        }
        assert_eq!(items.len(), CAPACITY);
        assert!(matches!(&items[0], ConsumerError::MissingTopic { topic } if topic == "t11"));
        assert!(items.last().is_some_and(ConsumerError::is_fatal));
        assert!(items[..CAPACITY - 1].iter().all(|e| !e.is_fatal()));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken() {
        let reporter = Reporter::default();
        let mut stream = reporter.stream();
        let writer = reporter.clone();
        let task = tokio::spawn(async move { stream.recv().await });
        tokio::task::yield_now().await;
        writer.report(missing(1));
        let got = task.await.unwrap();
        assert!(matches!(got, Some(ConsumerError::MissingTopic { .. })));
        assert!(got.unwrap().to_string().contains("`t1` does not exist"));
    }
}
