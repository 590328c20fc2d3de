//! The group consumer's public face: [`GroupConsumerBuilder`] (settings and
//! their checks) and [`GroupConsumer`] (handles, and `run`, which drives the
//! session in `session.rs`).
//!
//! Delivery is at least once. Per partition, records reach the handler in
//! offset order, one at a time (or, with `key_concurrency`, in order per
//! key); partitions are processed concurrently. The
//! committed offset of a partition is the lowest offset not yet completed,
//! so a record that fails (or is deferred and never acknowledged) holds the
//! partition's commits back instead of being skipped, and is redelivered to
//! whichever member owns the partition after a restart or rebalance.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::assignor::{Assignor, CooperativeStickyAssignor, RangeAssignor};
use super::events::{ConsumerError, ConsumerErrors, Reporter};
use super::handler::{DynHandler, Handler};
use super::session::Session;
use super::status::{self, ConsumerStatus, GroupState, StatusHandle};
use super::tracking::Tracking;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::StartOffset;

/// Builds a [`GroupConsumer`]. Made with [`Client::group_consumer`].
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use std::time::Duration;
/// use kastellan::StartOffset;
///
/// let consumer = client
///     .group_consumer("billing")
///     .topics(["orders", "refunds"])
///     .offset_reset(StartOffset::Earliest)
///     .session_timeout(Duration::from_secs(30))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build()` is called"]
pub struct GroupConsumerBuilder {
    client: Client,
    settings: ConsumerSettings,
}

/// Every setting of a group consumer; fixed once built, shared read-only.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    pub group_id: String,
    /// Sorted, without duplicates.
    pub topics: Vec<String>,
    pub instance_id: Option<String>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub assignors: Vec<Arc<dyn Assignor>>,
    pub offset_reset: StartOffset,
    pub commit_interval: Duration,
    pub max_pending_per_partition: usize,
    pub max_window_per_partition: usize,
    pub revoke_timeout: Duration,
    pub stall_threshold: Duration,
    pub max_wait: Duration,
    pub max_partition_bytes: i32,
    /// Bound of fetched bytes waiting for handlers, over all partitions.
    pub fetch_buffer_bytes: usize,
    pub rack: Option<String>,
    pub metadata_max_age: Duration,
    pub require_topics: bool,
    /// Glob patterns of topic names to subscribe to, besides `topics`.
    pub patterns: Vec<String>,
    /// Records of one partition handled at once when their keys differ.
    pub key_concurrency: usize,
    /// Records handled at once across all partitions (`None`: no bound
    /// beyond the per-partition ones).
    pub max_in_flight: Option<usize>,
    /// Told of assignments, revocations and losses.
    pub rebalance_listener: Option<Arc<dyn super::rebalance::DynRebalanceListener>>,
    /// How long a partition may make no progress before the watchdog
    /// reports it.
    pub watchdog_threshold: Duration,
}

impl GroupConsumerBuilder {
    pub(crate) fn new(client: Client, group_id: String) -> Self {
        Self {
            client,
            settings: ConsumerSettings {
                group_id,
                topics: Vec::new(),
                instance_id: None,
                session_timeout: Duration::from_secs(45),
                rebalance_timeout: Duration::from_secs(300),
                heartbeat_interval: Duration::from_secs(3),
                assignors: vec![Arc::new(RangeAssignor), Arc::new(CooperativeStickyAssignor)],
                offset_reset: StartOffset::Latest,
                commit_interval: Duration::from_secs(5),
                max_pending_per_partition: 1000,
                max_window_per_partition: 10_000,
                revoke_timeout: Duration::from_secs(30),
                stall_threshold: Duration::from_secs(60),
                max_wait: Duration::from_millis(500),
                max_partition_bytes: 1024 * 1024,
                fetch_buffer_bytes: crate::fetch::DEFAULT_BUFFER_BYTES,
                rack: None,
                metadata_max_age: Duration::from_secs(300),
                require_topics: false,
                patterns: Vec::new(),
                key_concurrency: 1,
                max_in_flight: None,
                rebalance_listener: None,
                watchdog_threshold: Duration::from_secs(60),
            },
        }
    }

    /// Subscribe to a topic (call once per topic).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.settings.topics.push(topic.into());
        self
    }

    /// Subscribe to several topics.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings
            .topics
            .extend(topics.into_iter().map(Into::into));
        self
    }

    /// Subscribe to every topic whose name matches a glob pattern: `*`
    /// matches any run of characters, `?` one character (kafkaesk's
    /// `content.*`). Topics created later that match are consumed without
    /// a restart, once a metadata refresh sees them (see
    /// [`metadata_max_age`](Self::metadata_max_age)). Internal topics
    /// (`__consumer_offsets`) never match.
    ///
    /// The member's subscription is the topics named with
    /// [`topic`](Self::topic) plus every existing topic a pattern matches
    /// ([`ConsumerStatus::subscribed`]). Each metadata refresh lists all
    /// topics; when the matching set changes (a topic created, deleted), the
    /// member rejoins the group with its new subscription and the leader
    /// assigns accordingly. So a new matching topic is consumed within
    /// `metadata_max_age` (5 minutes by default; lower it for faster
    /// pick-up, at the cost of one all-topics Metadata request per refresh).
    /// With [`offset_reset`](Self::offset_reset) at `Latest` (the default),
    /// records written to a new topic before the member picked it up are
    /// skipped, as in the Java client: use `Earliest` to read them.
    ///
    /// ```no_run
    /// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
    /// let consumer = client
    ///     .group_consumer("indexer")
    ///     .topic_pattern("content.*")
    ///     .start_with_earliest()
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn topic_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.settings.patterns.push(pattern.into());
        self
    }

    /// How many records of one partition are handled at once when their
    /// keys differ (default 1: one at a time, in offset order). Records
    /// with the same key, and records without a key, stay in offset order;
    /// commits never pass an incomplete record.
    ///
    /// Per key, a record is handed to the handler only once the handler
    /// call of the previous record of that key has *returned*; records of
    /// other keys go ahead meanwhile. A deferred record
    /// ([`ConsumerRecord::defer`](super::ConsumerRecord::defer)) frees its
    /// key when its handler returns, not when it is acked (waiting for acks
    /// would deadlock handlers that ack in batches). A failed record frees
    /// its key too, as one-at-a-time dispatch goes on past a failed record:
    /// it holds the partition's commit point and is redelivered after a
    /// rebalance or restart. Retry inside the handler call (in-process
    /// retry) when a later record of the key must not overtake a failure.
    ///
    /// Records waiting behind a busy key count against
    /// [`max_pending_per_partition`](Self::max_pending_per_partition) (which
    /// must be at least `n`) and the window, so memory stays bounded; they
    /// are held in memory until handed over, so with large records and one
    /// hot key, a lower `max_pending_per_partition` keeps that small.
    ///
    /// ```no_run
    /// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
    /// // Up to 8 accounts of a partition at once; each account's records in order.
    /// let consumer = client
    ///     .group_consumer("ledger")
    ///     .topic("transfers")
    ///     .key_concurrency(8)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn key_concurrency(mut self, n: usize) -> Self {
        self.settings.key_concurrency = n.max(1);
        self
    }

    /// Most records handled at once across all partitions of this consumer
    /// (KaufmannEx's `max_demand`; default: no bound beyond the
    /// per-partition ones). A slow handler then slows fetching; memory does
    /// not grow with the backlog.
    ///
    /// Each handler call holds one of `n` permits shared by all partitions
    /// (first come, first served, so no partition starves). A partition
    /// waiting for a permit takes no more records: its two fetched batches
    /// fill and its fetching pauses. A deferred record stops counting when
    /// its handler returns (its pending ack counts against
    /// [`max_pending_per_partition`](Self::max_pending_per_partition)).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = Some(n.max(1));
        self
    }

    /// Be told when partitions are assigned, revoked (before their final
    /// commit) and lost. See [`RebalanceListener`](super::RebalanceListener)
    /// for when each hook runs and how long it may take (at most
    /// [`revoke_timeout`](Self::revoke_timeout) per call; a hook that panics
    /// or hangs is reported and the consumer goes on).
    pub fn on_rebalance(mut self, listener: impl super::RebalanceListener) -> Self {
        self.settings.rebalance_listener = Some(Arc::new(listener));
        self
    }

    /// Static membership (`group.instance.id`, KIP-345): a member that
    /// restarts within the session timeout gets its partitions back without
    /// a rebalance. Must be unique within the group.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.settings.instance_id = Some(id.into());
        self
    }

    /// How long the coordinator waits for heartbeats before evicting the
    /// member (default 45 s; the broker allows 6 s..30 min by default).
    pub fn session_timeout(mut self, t: Duration) -> Self {
        self.settings.session_timeout = t;
        self
    }

    /// How long a rebalance may take (Java's `max.poll.interval.ms`,
    /// default 5 min): the coordinator waits this long for every member to
    /// rejoin, and removes members that do not. Must exceed
    /// [`revoke_timeout`](Self::revoke_timeout).
    pub fn rebalance_timeout(mut self, t: Duration) -> Self {
        self.settings.rebalance_timeout = t;
        self
    }

    /// Time between heartbeats (default 3 s); keep it under a third of the session timeout.
    pub fn heartbeat_interval(mut self, t: Duration) -> Self {
        self.settings.heartbeat_interval = t;
        self
    }

    /// Assignors offered, by preference. Default: `range` then
    /// `cooperative-sticky`, as the Java client.
    pub fn assignors(mut self, assignors: Vec<Arc<dyn Assignor>>) -> Self {
        self.settings.assignors = assignors;
        self
    }

    /// Where to start in partitions the group has no committed offset for,
    /// and where to go when the position is no longer stored (default
    /// [`StartOffset::Latest`], as the Java client). A committed offset
    /// always wins.
    pub fn offset_reset(mut self, reset: StartOffset) -> Self {
        self.settings.offset_reset = reset;
        self
    }

    /// Shorthand for `offset_reset(StartOffset::Earliest)`.
    pub fn start_with_earliest(self) -> Self {
        self.offset_reset(StartOffset::Earliest)
    }

    /// How often completed offsets are committed (default 5 s).
    pub fn commit_interval(mut self, t: Duration) -> Self {
        self.settings.commit_interval = t;
        self
    }

    /// Most records of one partition dispatched but not yet completed
    /// (deferred, or failed) before the partition waits (default 1000).
    /// When all of them failed, nothing can make room: the partition pauses
    /// and says so ([`ConsumerError::PartitionPaused`], and
    /// [`ConsumerStatus::paused`]).
    pub fn max_pending_per_partition(mut self, n: usize) -> Self {
        self.settings.max_pending_per_partition = n.max(1);
        self
    }

    /// Most records the ack tracker keeps per partition, from the oldest
    /// incomplete record to the newest dispatched one (default 10,000, 32
    /// bytes each: about 320 KiB per partition). A record that stays
    /// incomplete at the head while later ones complete makes this window
    /// grow; at the limit the partition pauses (fetching too) until the
    /// head completes, and the pause is reported. With the in-flight limit
    /// and the two fetched batches buffered per partition, this bounds a
    /// partition's memory. At least `max_pending_per_partition`.
    pub fn max_window_per_partition(mut self, n: usize) -> Self {
        self.settings.max_window_per_partition = n.max(1);
        self
    }

    /// On revocation or shutdown, how long to wait for in-flight records
    /// before giving the partition up anyway (default 30 s).
    ///
    /// Heartbeats go on while partitions are revoked, so the session
    /// timeout does not limit this. The rebalance timeout does: when a
    /// rebalance is under way the coordinator waits at most
    /// [`rebalance_timeout`](Self::rebalance_timeout) for each member to
    /// rejoin, and a member revokes *before* rejoining (eager protocol), or
    /// before its follow-up join (cooperative). A revocation, and its commit,
    /// must therefore end within the rebalance timeout: `build()` refuses a
    /// `revoke_timeout` that is not below it.
    pub fn revoke_timeout(mut self, t: Duration) -> Self {
        self.settings.revoke_timeout = t;
        self
    }

    /// Report a partition as stalled when its oldest incomplete record is
    /// older than this (default 60 s).
    pub fn stall_threshold(mut self, t: Duration) -> Self {
        self.settings.stall_threshold = t;
        self
    }

    /// How long an assigned partition may make no progress before the
    /// watchdog reports it (default 60 s): it has not fetched successfully
    /// for that long, or its commit point has not moved for that long while
    /// records wait. An idle partition (nothing new to fetch, nothing
    /// waiting) is never reported. Reports go to the log,
    /// [`ConsumerError::PartitionStuck`] and [`ConsumerStatus::stuck`]; the
    /// watchdog checks four times per threshold (at most every 5 s).
    pub fn watchdog_threshold(mut self, t: Duration) -> Self {
        self.settings.watchdog_threshold = t;
        self
    }

    /// The member's rack: sent in subscriptions for rack-aware assignment
    /// (KIP-881), and in fetches, so that a cluster configured with a rack-
    /// aware replica selector serves this member from a replica in its rack
    /// (KIP-392) instead of the leader.
    pub fn rack(mut self, rack: impl Into<String>) -> Self {
        self.settings.rack = Some(rack.into());
        self
    }

    /// Most bytes of fetched records waiting for the handler, over all
    /// partitions of this member (default 32 MiB).
    ///
    /// Records are fetched ahead of the handler, one request per broker
    /// for every partition that broker leads. The bytes of fetched batches
    /// not yet handled, plus what the requests in flight may return, stay
    /// within this bound (exceeded by at most one batch: a broker always
    /// returns a partition's first batch however large, so that fetching
    /// moves on). Each partition also holds at most two batches of up to
    /// 1 MiB each, so a slow
    /// handler on one partition does not take the whole budget from the
    /// others; at 1,000 assigned partitions memory stays at this bound.
    pub fn fetch_buffer_bytes(mut self, bytes: usize) -> Self {
        self.settings.fetch_buffer_bytes = bytes.max(1);
        self
    }

    /// How long the broker may hold a fetch open (default 500 ms).
    pub fn max_wait(mut self, t: Duration) -> Self {
        self.settings.max_wait = t;
        self
    }

    /// How often metadata of the subscribed topics is refreshed (Java's
    /// `metadata.max.age.ms`, default 5 min). A refresh that finds a topic
    /// created or partitions added triggers a rebalance (by the leader, or
    /// by a member whose missing topic appeared), so new partitions are
    /// consumed within this time. While a subscribed topic is missing,
    /// metadata is refreshed every few seconds instead (1 s, backing off to
    /// 8 s).
    pub fn metadata_max_age(mut self, t: Duration) -> Self {
        self.settings.metadata_max_age = t;
        self
    }

    /// Strict mode: every subscribed topic must exist. A missing topic (at
    /// start, or deleted later) ends [`GroupConsumer::run`] with
    /// [`Error::UnknownTopic`]. By default a missing topic is reported
    /// ([`ConsumerError::MissingTopic`], [`ConsumerStatus::missing_topics`],
    /// a warning) and consumed once it is created.
    pub fn require_topics(mut self) -> Self {
        self.settings.require_topics = true;
        self
    }

    /// Check the settings and build the consumer (it joins when it runs).
    ///
    /// Refused with [`Error::Config`]: no group id, no topic or pattern, an
    /// empty topic name or pattern, no assignor; a zero commit interval,
    /// heartbeat interval, metadata age or watchdog threshold; a heartbeat
    /// interval not below the session timeout; a `revoke_timeout` not below
    /// the rebalance timeout (see [`revoke_timeout`](Self::revoke_timeout));
    /// a window limit below the in-flight limit; a `key_concurrency` above
    /// `max_pending_per_partition`.
    ///
    /// ```
    /// # async fn demo(client: kastellan::Client) {
    /// use std::time::Duration;
    /// let refused = client
    ///     .group_consumer("billing")
    ///     .topic("orders")
    ///     .rebalance_timeout(Duration::from_secs(20))
    ///     .revoke_timeout(Duration::from_secs(30))
    ///     .build();
    /// assert!(matches!(refused, Err(kastellan::Error::Config(_))));
    /// # }
    /// ```
    pub fn build(self) -> Result<GroupConsumer> {
        let s = &self.settings;
        let refuse = |m: String| Err(Error::Config(m));
        if s.group_id.is_empty() {
            return refuse("group id must not be empty".into());
        }
        if s.topics.is_empty() && s.patterns.is_empty() {
            return refuse(
                "the consumer subscribes to no topic; call .topic(..) or .topic_pattern(..)".into(),
            );
        }
        if s.patterns.iter().any(String::is_empty) || s.topics.iter().any(String::is_empty) {
            return refuse("topic names and topic patterns must not be empty".into());
        }
        if s.key_concurrency > s.max_pending_per_partition {
            return refuse(format!(
                "key_concurrency {} must not exceed max_pending_per_partition {}",
                s.key_concurrency, s.max_pending_per_partition
            ));
        }
        if s.watchdog_threshold.is_zero() {
            return refuse("watchdog_threshold must be above zero".into());
        }
        if s.assignors.is_empty() {
            return refuse("at least one assignor is needed".into());
        }
        if s.commit_interval.is_zero() || s.heartbeat_interval.is_zero() {
            return refuse("commit_interval and heartbeat_interval must be above zero".into());
        }
        if s.metadata_max_age.is_zero() {
            return refuse("metadata_max_age must be above zero".into());
        }
        if s.heartbeat_interval >= s.session_timeout {
            return refuse(format!(
                "heartbeat interval {:?} must be below the session timeout {:?}",
                s.heartbeat_interval, s.session_timeout
            ));
        }
        if s.revoke_timeout >= s.rebalance_timeout {
            return refuse(format!(
                "revoke_timeout {:?} must be below rebalance_timeout {:?}: during a rebalance \
                 the coordinator waits at most the rebalance timeout for a member to rejoin, \
                 and a member revokes partitions before it rejoins; lower revoke_timeout or \
                 raise rebalance_timeout",
                s.revoke_timeout, s.rebalance_timeout
            ));
        }
        if s.max_window_per_partition < s.max_pending_per_partition {
            return refuse(format!(
                "max_window_per_partition {} must be at least max_pending_per_partition {}",
                s.max_window_per_partition, s.max_pending_per_partition
            ));
        }
        let mut settings = self.settings;
        settings.topics.sort();
        settings.topics.dedup();
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        Ok(GroupConsumer {
            client: self.client,
            settings: Arc::new(settings),
            shutdown_tx: Arc::new(shutdown_tx),
            shutdown_rx,
            reporter: Reporter::default(),
            errors_taken: false,
            status: Arc::new(Mutex::new(ConsumerStatus::default())),
            tracking: Arc::new(Tracking::default()),
        })
    }
}

/// Asks a running consumer to stop gracefully.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<Option<Duration>>>,
}

impl ShutdownHandle {
    /// Stop fetching, let in-flight records finish (up to `deadline`),
    /// commit, and leave the group. `run` returns once done.
    pub fn shutdown(&self, deadline: Duration) {
        let _ = self.tx.send(Some(deadline));
    }
}

/// A member of a consumer group. See the [`group` module docs](crate::group).
///
/// ```no_run
/// # async fn demo() -> kastellan::Result<()> {
/// use std::time::Duration;
/// use kastellan::Client;
/// use kastellan::group::{ConsumerRecord, HandlerError};
///
/// let client = Client::bootstrap("127.0.0.1:9092").await?;
/// let consumer = client.group_consumer("billing").topic("orders").start_with_earliest().build()?;
/// let stop = consumer.shutdown_handle();
/// tokio::spawn(async move {
///     tokio::signal::ctrl_c().await.ok();
///     stop.shutdown(Duration::from_secs(10));
/// });
/// consumer
///     .run(|record: ConsumerRecord| async move {
///         println!("{}@{}: {:?}", record.partition, record.offset, record.value_str());
///         Ok::<(), HandlerError>(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    settings: Arc<ConsumerSettings>,
    shutdown_tx: Arc<watch::Sender<Option<Duration>>>,
    shutdown_rx: watch::Receiver<Option<Duration>>,
    /// The writing side of the error stream; clones go to the session,
    /// workers and the fetch pool.
    reporter: Reporter,
    /// Whether `errors()` was called.
    errors_taken: bool,
    /// Written by the session, read by `StatusHandle`s.
    status: Arc<Mutex<ConsumerStatus>>,
    /// Shared by the session, workers, completions and `StatusHandle`s.
    tracking: Arc<Tracking>,
}

impl Drop for GroupConsumer {
    /// Ends the error stream: when `run` returns, when its future is
    /// dropped, or when the consumer is dropped without running.
    fn drop(&mut self) {
        self.reporter.close();
    }
}

impl GroupConsumer {
    /// A handle to stop [`run`](Self::run) gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: Arc::clone(&self.shutdown_tx),
        }
    }

    /// A handle to read the consumer's status (state, assignment,
    /// generation, stalls, pauses, missing topics).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            status: Arc::clone(&self.status),
            tracking: Arc::clone(&self.tracking),
            threshold: self.settings.stall_threshold,
        }
    }

    /// The stream of problems the consumer reports, fatal or not (see
    /// [`ConsumerError`]); `None` when taken already. Bounded: unread
    /// problems beyond 256 are dropped, oldest first. Take it before
    /// calling [`run`](Self::run).
    pub fn errors(&mut self) -> Option<ConsumerErrors> {
        if self.errors_taken {
            return None;
        }
        self.errors_taken = true;
        Some(self.reporter.stream())
    }

    /// Join the group and process records with `handler` until shut down
    /// ([`ShutdownHandle::shutdown`]: `Ok(())`) or a fatal error.
    ///
    /// `run` ends by itself only for errors no retry can fix and that need
    /// your action (see the [`group` module docs](crate::group#when-run-ends)):
    /// - bad configuration the broker refuses: [`Error::Config`],
    ///   `INVALID_SESSION_TIMEOUT`, `INVALID_GROUP_ID`,
    ///   `INCONSISTENT_GROUP_PROTOCOL` (no assignor in common with the
    ///   group), `GROUP_MAX_SIZE_REACHED`;
    /// - authentication or authorization: [`Error::Tls`],
    ///   [`Error::Authentication`], `GROUP_AUTHORIZATION_FAILED`,
    ///   `TOPIC_AUTHORIZATION_FAILED`, `CLUSTER_AUTHORIZATION_FAILED`,
    ///   `SASL_AUTHENTICATION_FAILED`;
    /// - a fenced static member: `FENCED_INSTANCE_ID` (another instance with
    ///   the same `instance_id` took over);
    /// - an unsupported broker: [`Error::UnsupportedVersion`],
    ///   `UNSUPPORTED_VERSION`;
    /// - in strict mode ([`GroupConsumerBuilder::require_topics`]), a
    ///   missing topic: [`Error::UnknownTopic`].
    ///
    /// Everything else (an unreachable or moving coordinator, unexpected
    /// broker answers such as `UNKNOWN_SERVER_ERROR`, another member's
    /// malformed data, partitions that do not exist, fetch failures) is
    /// reported on the [`errors`](Self::errors) stream, retried with
    /// backoff, and the member keeps what it may keep. The error that ends
    /// `run` is also the last item of that stream.
    pub async fn run<H: Handler>(self, handler: H) -> Result<()> {
        let handler: Arc<dyn DynHandler> = Arc::new(handler);
        let session = Session::new(
            self.client.clone(),
            Arc::clone(&self.settings),
            handler,
            Arc::clone(&self.tracking),
            Arc::clone(&self.status),
            self.reporter.clone(),
            self.shutdown_rx.clone(),
        );
        let result = session.run().await;
        if let Err(e) = &result {
            tracing::error!(group = %self.settings.group_id, error = %e, "consumer stopped");
            self.reporter.report(ConsumerError::Fatal(e.duplicate()));
        }
        {
            let mut s = status::lock(&self.status);
            s.state = GroupState::Stopped;
            s.assignment.clear();
        }
        result
    }
}
