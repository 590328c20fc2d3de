//! What a running service reports: [`ServiceError`]s on the bounded
//! [`ServiceErrors`] stream, and its [`ServiceStatus`].

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;

use crate::error::Error;
use crate::group::{ConsumerError, ConsumerStatus, StatusHandle};
use crate::report_queue::{ReportQueue, Reports};
use crate::TopicPartition;

/// Which of the service's two consumers reported a problem.
///
/// ```
/// use kastellan::service::ConsumerRole;
/// assert_eq!(ConsumerRole::Retry.to_string(), "retry consumer");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerRole {
    /// The consumer of the routed (origin) topics, in the service's group.
    Origin,
    /// The consumer of the retry topic, in the retry group.
    Retry,
}

impl fmt::Display for ConsumerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsumerRole::Origin => "origin consumer",
            ConsumerRole::Retry => "retry consumer",
        })
    }
}

/// A problem a [`Service`](super::Service) reports on its error stream.
///
/// Only a fatal [`ServiceError::Consumer`] ends the service (see
/// [`is_fatal`](Self::is_fatal)); everything else is reported while the
/// service goes on. Each is logged too.
///
/// ```no_run
/// # async fn demo(mut running: kastellan::service::ServiceHandle) {
/// use kastellan::service::ServiceError;
///
/// let mut problems = running.errors().expect("taken once");
/// while let Some(problem) = problems.recv().await {
///     match &problem {
///         ServiceError::Failed { partition, offset, .. } => {
///             eprintln!("alert: {partition}@{offset} holds its partition: {problem}")
///         }
///         ServiceError::HandOff { destination, .. } => {
///             eprintln!("cannot write to {destination}, retrying: {problem}")
///         }
///         _ if problem.is_fatal() => eprintln!("service stopped: {problem}"),
///         _ => eprintln!("{problem}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceError {
    /// One of the service's group consumers reported a problem (see
    /// [`ConsumerError`]); a fatal one stops the service.
    Consumer {
        /// Which consumer.
        role: ConsumerRole,
        /// What it reported.
        error: ConsumerError,
    },
    /// Producing a record's copy to the retry or dead-letter topic failed;
    /// it is tried again after `retry_in`. Until it is acknowledged the
    /// record stays incomplete and holds its partition.
    HandOff {
        /// The retry or dead-letter topic.
        destination: String,
        /// Where the record was consumed (the retry topic, for a record
        /// being retried).
        partition: TopicPartition,
        /// Its offset there.
        offset: i64,
        /// Why the produce failed.
        error: Error,
        /// Pause before the next attempt.
        retry_in: Duration,
    },
    /// A record failed with no retries left and no dead-letter topic for
    /// it: it stays incomplete and holds its partition's commits (the
    /// partition goes on; the record is redelivered after a restart or
    /// rebalance). Give the route a dead-letter topic to avoid this.
    Failed {
        /// Where the record was consumed.
        partition: TopicPartition,
        /// Its offset there.
        offset: i64,
        /// The handler's reason.
        reason: String,
    },
    /// A topic that two or more patterns match, and no exact route names:
    /// its records are not routed (each fails and holds its partition).
    /// Reported once per topic.
    AmbiguousRoute {
        /// The topic.
        topic: String,
        /// The patterns that match it.
        patterns: Vec<String>,
    },
    /// A record (from the retry topic: of a route that no longer exists)
    /// whose topic no route covers. It goes to the dead-letter topic when
    /// the service has one; otherwise it fails and holds its partition.
    /// Reported once per topic.
    NoRoute {
        /// The topic.
        topic: String,
    },
    /// A record in the retry topic without valid failure headers (written
    /// by something else): skipped.
    MalformedRetryRecord {
        /// Where it is.
        partition: TopicPartition,
        /// Its offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// A partition's [order guard](super::Route::order_guard) is full: its
    /// records that would follow a key into the retry topic wait until
    /// guarded records leave it. Reported once each time it fills.
    OrderGuardFull {
        /// The origin partition.
        partition: TopicPartition,
        /// The guard's capacity.
        capacity: usize,
    },
}

impl ServiceError {
    /// Whether this problem stopped the service.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ServiceError::Consumer { error, .. } if error.is_fatal())
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Consumer { role, error } => write!(f, "{role}: {error}"),
            ServiceError::HandOff {
                destination,
                partition,
                offset,
                error,
                retry_in,
            } => write!(
                f,
                "producing the copy of {partition}@{offset} to `{destination}` failed \
                 (retrying in {retry_in:?}; the record holds its partition until then): {error}"
            ),
            ServiceError::Failed {
                partition,
                offset,
                reason,
            } => write!(
                f,
                "{partition}@{offset} failed with no retries left and no dead-letter topic; it \
                 holds the partition's commits: {reason}"
            ),
            ServiceError::AmbiguousRoute { topic, patterns } => write!(
                f,
                "topic `{topic}` matches the patterns {}; its records are not routed (add an \
                 exact route for it)",
                patterns
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            ServiceError::NoRoute { topic } => write!(f, "no route for topic `{topic}`"),
            ServiceError::MalformedRetryRecord {
                partition,
                offset,
                reason,
            } => write!(
                f,
                "retry record {partition}@{offset} skipped, its failure headers are malformed: \
                 {reason}"
            ),
            ServiceError::OrderGuardFull {
                partition,
                capacity,
            } => write!(
                f,
                "the order guard of {partition} is full ({capacity} records): records of keys \
                 waiting in the retry topic wait until some leave it"
            ),
        }
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Consumer { error, .. } => Some(error),
            ServiceError::HandOff { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Writes reported problems (the service's side of the stream); clones go
/// to the service's tasks and its two consumers' forwarders.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reporter {
    queue: ReportQueue<ServiceError>,
}

impl Reporter {
    /// Queue a problem (also logged); when full, the oldest is dropped.
    pub(crate) fn report(&self, problem: ServiceError) {
        if problem.is_fatal() {
            tracing::error!("{problem}");
        } else {
            tracing::warn!("{problem}");
        }
        self.queue.push(problem);
    }

    /// End the stream after what is queued.
    pub(crate) fn close(&self) {
        self.queue.close();
    }

    pub(crate) fn stream(&self) -> ServiceErrors {
        ServiceErrors {
            reports: self.queue.reader(),
        }
    }
}

/// The problems a running service reports ([`ServiceError`]); taken once
/// with [`ServiceHandle::errors`](super::ServiceHandle::errors).
///
/// Bounded: at most 256 unread problems wait, older ones are dropped
/// (counted by [`dropped`](Self::dropped)). It ends once the service has
/// stopped and everything queued was read. It is also a
/// [`Stream`](futures::Stream).
///
/// ```no_run
/// # async fn demo(mut running: kastellan::service::ServiceHandle) {
/// use futures::StreamExt;
///
/// let problems = running.errors().expect("taken once");
/// tokio::spawn(problems.for_each(|problem| async move { eprintln!("{problem}") }));
/// # }
/// ```
pub struct ServiceErrors {
    reports: Reports<ServiceError>,
}

impl fmt::Debug for ServiceErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reports.debug("ServiceErrors", f)
    }
}

impl ServiceErrors {
    /// The next problem; `None` once the service has stopped and everything
    /// was read.
    pub async fn recv(&mut self) -> Option<ServiceError> {
        futures::StreamExt::next(self).await
    }

    /// The next problem if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<ServiceError> {
        self.reports.try_recv()
    }

    /// How many problems were dropped unread.
    pub fn dropped(&self) -> u64 {
        self.reports.dropped()
    }
}

impl Stream for ServiceErrors {
    type Item = ServiceError;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServiceError>> {
        Pin::new(&mut self.get_mut().reports).poll_next(cx)
    }
}

/// Counts of what the service did with records; shared by both consumers'
/// handlers (atomics: written per record, read by status readers).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Bumped for almost every record, by workers on every thread: striped.
    pub handled: StripedCount,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub followed: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A counter bumped from many threads at once: one atomic per stripe, each
/// on its own cache line, so that workers of different partitions do not
/// take the same line from each other on every record. Read as the sum.
#[derive(Debug, Default)]
pub(crate) struct StripedCount([Stripe; 8]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl StripedCount {
    /// Count one, in the stripe of `partition`.
    pub(crate) fn bump(&self, partition: i32) {
        let index = partition.unsigned_abs() as usize % self.0.len();
        self.0[index].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// A snapshot of a running service: its consumers' status and what it did
/// with records so far.
///
/// ```no_run
/// # async fn demo(handle: &kastellan::service::ServiceHandle) {
/// let status = handle.status();
/// println!(
///     "{} handled, {} retried, {} dead-lettered, {} failed; origin group {}",
///     status.handled, status.retried, status.dead_lettered, status.failed, status.origin.state
/// );
/// for stall in status.origin.stalled.iter().chain(status.retry.iter().flat_map(|r| &r.stalled)) {
///     eprintln!("{stall}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// The origin consumer (the service's group).
    pub origin: ConsumerStatus,
    /// The retry-topic consumer, when the service has a retry topic.
    pub retry: Option<ConsumerStatus>,
    /// Records whose handler chain returned `Ok` (first attempts and
    /// retries).
    pub handled: u64,
    /// Copies stored in the retry topic (failures to retry).
    pub retried: u64,
    /// Copies stored in the dead-letter topic.
    pub dead_lettered: u64,
    /// Records that failed with neither retries nor a dead-letter topic
    /// left (each holds its partition; see [`ServiceError::Failed`]).
    pub failed: u64,
    /// Retry-topic records skipped: of other groups, or malformed.
    pub skipped: u64,
    /// Records sent to the retry topic unhandled by the order guard, to
    /// follow an earlier record with their key.
    pub followed: u64,
}

/// Reads a running service's [`ServiceStatus`]; cheap to clone (for a
/// health endpoint on another task).
///
/// ```no_run
/// # async fn demo(running: kastellan::service::ServiceHandle) {
/// let status = running.status_handle();
/// tokio::spawn(async move {
///     loop {
///         let now = status.get();
///         let healthy = now.origin.stalled.is_empty() && now.failed == 0;
///         println!("healthy: {healthy}");
///         tokio::time::sleep(std::time::Duration::from_secs(10)).await;
///     }
/// });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServiceStatusHandle {
    pub(crate) origin: StatusHandle,
    pub(crate) retry: Option<StatusHandle>,
    pub(crate) counters: Arc<Counters>,
}

impl ServiceStatusHandle {
    /// The status now.
    pub fn get(&self) -> ServiceStatus {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServiceStatus {
            origin: self.origin.get(),
            retry: self.retry.as_ref().map(StatusHandle::get),
            handled: c.handled.get(),
            retried: n(&c.retried),
            dead_lettered: n(&c.dead_lettered),
            failed: n(&c.failed),
            skipped: n(&c.skipped),
            followed: n(&c.followed),
        }
    }
}
