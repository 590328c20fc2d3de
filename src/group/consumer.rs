//! The group consumer: joins a consumer group, processes the records of the
//! partitions it is assigned with a [`Handler`], and commits the offsets of
//! completed records.
//!
//! Delivery is at least once. Per partition, records reach the handler in
//! offset order, one at a time; partitions are processed concurrently. The
//! committed offset of a partition is the lowest offset not yet completed,
//! so a record that fails (or is deferred and never acknowledged) holds the
//! partition's commits back instead of being skipped, and is redelivered to
//! whichever member owns the partition after a restart or rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::ack_tracker::{PartitionKey, StallReport};
use super::assignor::{Assignor, CooperativeStickyAssignor, RangeAssignor, RebalanceProtocol};
use super::handler::{Completion, ConsumerRecord, Handler};
use super::membership::{GroupError, Joined, MemberSettings, Membership};
use super::subscription::TopicPartition;
use super::tracking::Tracking;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::fetch::{Fetcher, OutOfRange};

/// Where a group starts reading a partition that has no committed offset.
/// A committed offset always wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest stored record (Kaffe's `start_with_earliest_message`).
    Earliest,
    /// Only records produced after the group first reads the partition (the Java default).
    #[default]
    Latest,
}

/// Builds a [`GroupConsumer`]. Made with [`Client::group_consumer`].
#[derive(Debug, Clone)]
pub struct GroupConsumerBuilder {
    client: Client,
    settings: ConsumerSettings,
}

#[derive(Debug, Clone)]
struct ConsumerSettings {
    group_id: String,
    topics: Vec<String>,
    instance_id: Option<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    heartbeat_interval: Duration,
    assignors: Vec<Arc<dyn Assignor>>,
    offset_reset: OffsetReset,
    commit_interval: Duration,
    max_pending_per_partition: usize,
    revoke_timeout: Duration,
    stall_threshold: Duration,
    max_wait: Duration,
    max_partition_bytes: i32,
    rack: Option<String>,
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
                offset_reset: OffsetReset::Latest,
                commit_interval: Duration::from_secs(5),
                max_pending_per_partition: 1000,
                revoke_timeout: Duration::from_secs(30),
                stall_threshold: Duration::from_secs(60),
                max_wait: Duration::from_millis(500),
                max_partition_bytes: 1024 * 1024,
                rack: None,
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

    /// How long a rebalance may take (Java's `max.poll.interval.ms`, default 5 min).
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

    /// Start position for partitions without a committed offset (default latest).
    pub fn offset_reset(mut self, reset: OffsetReset) -> Self {
        self.settings.offset_reset = reset;
        self
    }

    /// Shorthand for `offset_reset(OffsetReset::Earliest)`.
    pub fn start_with_earliest(self) -> Self {
        self.offset_reset(OffsetReset::Earliest)
    }

    /// How often completed offsets are committed (default 5 s).
    pub fn commit_interval(mut self, t: Duration) -> Self {
        self.settings.commit_interval = t;
        self
    }

    /// Most records of one partition dispatched but not yet completed
    /// (deferred acks) before the partition waits (default 1000). Memory
    /// stays bounded whatever the backlog.
    pub fn max_pending_per_partition(mut self, n: usize) -> Self {
        self.settings.max_pending_per_partition = n.max(1);
        self
    }

    /// On revocation or shutdown, how long to wait for in-flight records
    /// before giving the partition up anyway (default 30 s).
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

    /// Rack id sent in subscriptions (KIP-881).
    pub fn rack(mut self, rack: impl Into<String>) -> Self {
        self.settings.rack = Some(rack.into());
        self
    }

    /// How long the broker may hold a fetch open (default 500 ms).
    pub fn max_wait(mut self, t: Duration) -> Self {
        self.settings.max_wait = t;
        self
    }

    /// Check the settings and build the consumer (it joins when it runs).
    pub fn build(self) -> Result<GroupConsumer> {
        let s = &self.settings;
        if s.group_id.is_empty() {
            return Err(Error::Config("group id must not be empty".into()));
        }
        if s.topics.is_empty() {
            return Err(Error::Config(
                "the consumer subscribes to no topic; call .topic(..)".into(),
            ));
        }
        if s.assignors.is_empty() {
            return Err(Error::Config("at least one assignor is needed".into()));
        }
        if s.heartbeat_interval >= s.session_timeout {
            return Err(Error::Config(format!(
                "heartbeat interval {:?} must be below the session timeout {:?}",
                s.heartbeat_interval, s.session_timeout
            )));
        }
        let mut settings = self.settings;
        settings.topics.sort();
        settings.topics.dedup();
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let (errors_tx, errors_rx) = mpsc::unbounded_channel();
        Ok(GroupConsumer {
            client: self.client,
            settings,
            shutdown_tx: Arc::new(shutdown_tx),
            shutdown_rx,
            errors_tx,
            errors_rx: Some(errors_rx),
            status: Arc::new(Mutex::new(ConsumerStatus::default())),
            tracking: Arc::new(Tracking::default()),
        })
    }
}

/// A snapshot of what the consumer is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// Member id given by the coordinator (empty before the first join).
    pub member_id: String,
    /// Current generation (-1 outside one).
    pub generation: i32,
    /// Assignor chosen by the group.
    pub protocol: String,
    /// Whether this member led the last rebalance.
    pub leader: bool,
    /// Partitions owned now, sorted.
    pub assignment: Vec<(String, i32)>,
    /// How many times this member has joined the group.
    pub joins: u64,
    /// Partitions whose oldest incomplete record is older than the stall threshold.
    pub stalled: Vec<StallReport>,
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

/// Reads the current [`ConsumerStatus`].
#[derive(Debug, Clone)]
pub struct StatusHandle {
    status: Arc<Mutex<ConsumerStatus>>,
    tracking: Arc<Tracking>,
    threshold: Duration,
}

impl StatusHandle {
    /// The current status, with fresh stall information.
    pub fn get(&self) -> ConsumerStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.stalled = self.tracking.stalled(self.threshold);
        s
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
    settings: ConsumerSettings,
    shutdown_tx: Arc<watch::Sender<Option<Duration>>>,
    shutdown_rx: watch::Receiver<Option<Duration>>,
    errors_tx: mpsc::UnboundedSender<Error>,
    errors_rx: Option<mpsc::UnboundedReceiver<Error>>,
    status: Arc<Mutex<ConsumerStatus>>,
    tracking: Arc<Tracking>,
}

/// A partition being processed.
struct PartitionTask {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<()>,
    fetcher: JoinHandle<()>,
}

impl Drop for PartitionTask {
    // If `run` is dropped (cancelled) the partition tasks must not outlive it.
    fn drop(&mut self) {
        self.fetcher.abort();
        self.worker.abort();
    }
}

/// Aborts a task when dropped, so a cancelled `run` stops heartbeating.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events from the heartbeat task.
#[derive(Debug)]
enum Beat {
    Failed(GroupError),
}

impl GroupConsumer {
    /// A handle to stop [`run`](Self::run) gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: Arc::clone(&self.shutdown_tx),
        }
    }

    /// A handle to read the consumer's status (assignment, generation, stalls).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            status: Arc::clone(&self.status),
            tracking: Arc::clone(&self.tracking),
            threshold: self.settings.stall_threshold,
        }
    }

    /// The stream of errors that stopped the consumer (MiKa's `Start()`
    /// channel); `run` also returns the error. Can be taken once.
    pub fn errors(&mut self) -> Option<mpsc::UnboundedReceiver<Error>> {
        self.errors_rx.take()
    }

    /// Join the group and process records until shut down or a fatal error.
    pub async fn run<H: Handler>(mut self, handler: H) -> Result<()> {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let result = self.run_inner(handler).await;
        if let Err(e) = &result {
            tracing::error!(group = %self.settings.group_id, error = %e, "consumer stopped");
            let _ = self.errors_tx.send(e.duplicate());
        }
        result
    }

    async fn run_inner(&mut self, handler: Arc<dyn Handler>) -> Result<()> {
        let s = self.settings.clone();
        let mut membership = Membership::new(
            self.client.clone(),
            MemberSettings {
                group_id: s.group_id.clone(),
                instance_id: s.instance_id.clone(),
                session_timeout: s.session_timeout,
                rebalance_timeout: s.rebalance_timeout,
                rack: s.rack.clone(),
            },
        );
        let mut owned: BTreeMap<TopicPartition, PartitionTask> = BTreeMap::new();
        let mut reason = String::from("joining");
        let mut backoff = self.client.config().retry_backoff;
        let mut shutdown = self.shutdown_rx.clone();

        'membership: loop {
            if shutdown.borrow().is_some() {
                break 'membership;
            }
            let cooperative = self.cooperative();
            if !cooperative {
                // Eager protocol: give everything up before rejoining.
                self.revoke(&mut membership, &mut owned, None, s.revoke_timeout)
                    .await;
            }
            let owned_list: Vec<TopicPartition> = owned.keys().cloned().collect();
            let joined = tokio::select! {
                j = membership.join_and_sync(&s.topics, &owned_list, &s.assignors, &reason) => j,
                _ = shutdown.changed() => break 'membership,
            };
            let joined = match joined {
                Ok(j) => j,
                Err(e) => {
                    match self.react(&mut membership, &mut owned, e).await? {
                        Reaction::Retry => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(self.client.config().retry_backoff_max);
                        }
                        Reaction::Rejoin => {}
                    }
                    reason = "retrying join".into();
                    continue 'membership;
                }
            };
            backoff = self.client.config().retry_backoff;
            let rejoin_now = self
                .apply_assignment(&mut membership, &mut owned, &joined, &handler)
                .await?;
            if rejoin_now {
                // KIP-429: after revoking, rejoin at once so the partitions
                // can go to their new owner in the next generation.
                reason = "revoked partitions for a cooperative rebalance".into();
                continue 'membership;
            }

            let (beat_tx, mut beat_rx) = mpsc::unbounded_channel();
            let heartbeat = AbortOnDrop(
                self.spawn_heartbeat(&mut membership, beat_tx, cooperative)
                    .await,
            );
            let mut commit_tick = tokio::time::interval(s.commit_interval);
            commit_tick.tick().await;
            let mut stall_tick =
                tokio::time::interval(s.stall_threshold.max(Duration::from_secs(1)));
            stall_tick.tick().await;
            let next = loop {
                tokio::select! {
                    _ = shutdown.changed() => break Next::Shutdown,
                    Some(Beat::Failed(e)) = beat_rx.recv() => break Next::Error(e),
                    _ = commit_tick.tick() => {
                        if let Err(e) = self.commit(&mut membership).await {
                            break Next::Error(e);
                        }
                    }
                    _ = stall_tick.tick() => {
                        for stall in self.tracking.stalled(s.stall_threshold) {
                            tracing::warn!(
                                topic = %stall.topic,
                                partition = stall.partition,
                                offset = stall.offset,
                                age = ?stall.age,
                                failed = ?stall.failed,
                                "partition stalled: commits wait for this record"
                            );
                        }
                    }
                }
            };
            drop(heartbeat);
            match next {
                Next::Shutdown => break 'membership,
                Next::Error(e) => {
                    reason = format!("{}", DisplayGroupError(&e));
                    if let Reaction::Retry = self.react(&mut membership, &mut owned, e).await? {
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }

        // Graceful shutdown: stop fetching, finish in-flight, commit, leave.
        let deadline = shutdown.borrow().unwrap_or(self.settings.revoke_timeout);
        self.revoke(&mut membership, &mut owned, None, deadline)
            .await;
        if let Err(e) = membership.leave("consumer shutting down").await {
            tracing::warn!(error = %DisplayGroupError(&e), "leaving the group failed; the coordinator will evict this member after the session timeout");
        }
        Ok(())
    }

    fn cooperative(&self) -> bool {
        // The client runs the eager protocol if any assignor it offers is
        // eager, as the Java client does (the group may pick either).
        self.settings
            .assignors
            .iter()
            .all(|a| a.rebalance_protocol() == RebalanceProtocol::Cooperative)
    }

    /// React to a group error: returns whether to back off before the next attempt.
    async fn react(
        &mut self,
        membership: &mut Membership,
        owned: &mut BTreeMap<TopicPartition, PartitionTask>,
        e: GroupError,
    ) -> Result<Reaction> {
        match e {
            GroupError::Rediscover(e) => {
                tracing::info!(error = %e, "group coordinator unavailable; finding it again");
                membership.forget_coordinator();
                Ok(Reaction::Retry)
            }
            GroupError::Retry(e) => {
                tracing::info!(error = %e, "group request failed; retrying");
                Ok(Reaction::Retry)
            }
            GroupError::Rejoin(e) => {
                tracing::info!(error = %e, "rebalance: rejoining the group");
                Ok(Reaction::Rejoin)
            }
            GroupError::Reset(e) => {
                tracing::warn!(error = %e, "member id or generation no longer valid: partitions lost, rejoining");
                self.lose(owned).await;
                membership.reset();
                Ok(Reaction::Rejoin)
            }
            GroupError::Fatal(e) => {
                self.lose(owned).await;
                Err(e)
            }
        }
    }

    /// Start and stop partitions after a join. Returns whether to rejoin at
    /// once (cooperative revocation).
    async fn apply_assignment(
        &mut self,
        membership: &mut Membership,
        owned: &mut BTreeMap<TopicPartition, PartitionTask>,
        joined: &Joined,
        handler: &Arc<dyn Handler>,
    ) -> Result<bool> {
        let subscribed: BTreeSet<&str> = self.settings.topics.iter().map(String::as_str).collect();
        let mut assigned: BTreeSet<TopicPartition> = BTreeSet::new();
        for tp in &joined.assignment.partitions {
            if subscribed.contains(tp.topic.as_str()) {
                assigned.insert(tp.clone());
            } else {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, "assigned a partition of a topic we do not subscribe to; ignoring it");
            }
        }
        let revoked: Vec<TopicPartition> = owned
            .keys()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        let rejoin = !revoked.is_empty() && self.cooperative();
        if !revoked.is_empty() {
            let timeout = self.settings.revoke_timeout;
            self.revoke(membership, owned, Some(revoked), timeout).await;
        }
        let added: Vec<TopicPartition> = assigned
            .iter()
            .filter(|tp| !owned.contains_key(*tp))
            .cloned()
            .collect();
        if !added.is_empty() {
            let positions = self.positions(membership, &added).await?;
            for (tp, position) in positions {
                let task = self.start_partition(&tp, position, handler);
                owned.insert(tp, task);
            }
        }
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.member_id = joined.member_id.clone();
            status.generation = joined.generation;
            status.protocol = joined.protocol.clone();
            status.leader = joined.leader;
            status.joins += 1;
            status.assignment = owned
                .keys()
                .map(|tp| (tp.topic.clone(), tp.partition))
                .collect();
        }
        tracing::info!(
            group = %self.settings.group_id,
            member = %joined.member_id,
            generation = joined.generation,
            protocol = %joined.protocol,
            leader = joined.leader,
            partitions = owned.len(),
            "joined group"
        );
        Ok(rejoin)
    }
}

impl GroupConsumer {
    /// Committed offsets of newly assigned partitions, or the reset position.
    async fn positions(
        &self,
        membership: &mut Membership,
        added: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, i64)>> {
        let committed = loop {
            match membership.fetch_offsets(added).await {
                Ok(c) => break c,
                Err(GroupError::Fatal(e)) => return Err(e),
                Err(GroupError::Rediscover(e)) => {
                    tracing::info!(error = %e, "offset fetch: finding the coordinator again");
                    membership.forget_coordinator();
                }
                Err(e) => {
                    tracing::info!(error = %DisplayGroupError(&e), "offset fetch failed; retrying")
                }
            }
            tokio::time::sleep(self.client.config().retry_backoff).await;
        };
        let admin = self.client.admin();
        let reset_at = match self.settings.offset_reset {
            OffsetReset::Earliest => -2,
            OffsetReset::Latest => -1,
        };
        let mut resets: BTreeMap<String, BTreeMap<i32, Option<i64>>> = BTreeMap::new();
        let mut out = Vec::with_capacity(added.len());
        for tp in added {
            let position = match committed.get(tp).copied().flatten() {
                Some(offset) => offset,
                None => {
                    if !resets.contains_key(&tp.topic) {
                        let offsets = admin.list_offsets(&tp.topic, reset_at).await?;
                        resets.insert(tp.topic.clone(), offsets);
                    }
                    resets
                        .get(&tp.topic)
                        .and_then(|m| m.get(&tp.partition).copied().flatten())
                        .unwrap_or(0)
                }
            };
            out.push((tp.clone(), position));
        }
        Ok(out)
    }

    /// Spawn the fetcher and the worker of one partition.
    fn start_partition(
        &self,
        tp: &TopicPartition,
        position: i64,
        handler: &Arc<dyn Handler>,
    ) -> PartitionTask {
        let key = PartitionKey {
            topic: Arc::from(tp.topic.as_str()),
            partition: tp.partition,
        };
        let epoch = self.tracking.assign(key.clone(), position);
        // Two fetched batches ahead of the handler: enough to hide fetch
        // latency, small enough to keep memory flat.
        let (tx, rx) = mpsc::channel(2);
        let fetcher = Fetcher {
            client: self.client.clone(),
            topic: Arc::clone(&key.topic),
            partition: tp.partition,
            next: position,
            end: None,
            max_wait_ms: i32::try_from(self.settings.max_wait.as_millis()).unwrap_or(i32::MAX),
            max_bytes: self.settings.max_partition_bytes,
            out_of_range: match self.settings.offset_reset {
                OffsetReset::Earliest => OutOfRange::Earliest,
                OffsetReset::Latest => OutOfRange::Latest,
            },
            tx,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let worker = PartitionWorker {
            key,
            epoch,
            rx,
            handler: Arc::clone(handler),
            tracking: Arc::clone(&self.tracking),
            stop: Arc::clone(&stop),
            max_pending: self.settings.max_pending_per_partition,
            errors: self.errors_tx.clone(),
        };
        PartitionTask {
            stop,
            worker: tokio::spawn(worker.run()),
            fetcher: tokio::spawn(fetcher.run()),
        }
    }

    /// Give partitions up (all of them when `which` is `None`): stop
    /// dispatching, wait for in-flight records until `deadline`, commit the
    /// completed prefix, stop tracking. What was not completed is redelivered
    /// to the next owner.
    async fn revoke(
        &self,
        membership: &mut Membership,
        owned: &mut BTreeMap<TopicPartition, PartitionTask>,
        which: Option<Vec<TopicPartition>>,
        deadline: Duration,
    ) {
        let which: Vec<TopicPartition> = which.unwrap_or_else(|| owned.keys().cloned().collect());
        if which.is_empty() {
            return;
        }
        let until = tokio::time::Instant::now() + deadline;
        let mut tasks = Vec::new();
        for tp in &which {
            if let Some(task) = owned.remove(tp) {
                task.stop.store(true, std::sync::atomic::Ordering::Release);
                task.fetcher.abort();
                tasks.push((tp.clone(), task));
            }
        }
        for (tp, task) in &mut tasks {
            if tokio::time::timeout_at(until, &mut task.worker)
                .await
                .is_err()
            {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, "handler still running at the revocation deadline; giving the partition up");
                task.worker.abort();
            }
        }
        // Deferred records may still be completed by the application.
        let keys: Vec<PartitionKey> = which
            .iter()
            .map(|tp| PartitionKey {
                topic: Arc::from(tp.topic.as_str()),
                partition: tp.partition,
            })
            .collect();
        loop {
            let notified = self.tracking.completed.notified();
            if keys.iter().all(|k| self.tracking.in_flight(k) == 0) {
                break;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
        let mut commits = Vec::new();
        for key in &keys {
            if let Some(offset) = self.tracking.revoke(key) {
                commits.push((
                    TopicPartition {
                        topic: key.topic.to_string(),
                        partition: key.partition,
                    },
                    offset,
                ));
            }
        }
        if membership.generation >= 0 {
            if let Err(e) = membership.commit(&commits).await {
                tracing::warn!(error = %DisplayGroupError(&e), "commit on revocation failed; the next owner will see some records again");
            }
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status
            .assignment
            .retain(|(t, p)| !which.iter().any(|tp| &tp.topic == t && tp.partition == *p));
    }

    /// Partitions lost (not revoked): stop at once and commit nothing, since
    /// another member may own them already.
    async fn lose(&self, owned: &mut BTreeMap<TopicPartition, PartitionTask>) {
        for (tp, task) in std::mem::take(owned) {
            task.stop.store(true, std::sync::atomic::Ordering::Release);
            task.fetcher.abort();
            task.worker.abort();
            self.tracking.revoke(&PartitionKey {
                topic: Arc::from(tp.topic.as_str()),
                partition: tp.partition,
            });
        }
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assignment
            .clear();
    }

    /// Commit every partition whose commit point moved.
    async fn commit(&self, membership: &mut Membership) -> Result<(), GroupError> {
        let pending = self.tracking.pending_commits();
        if pending.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, i64)> = pending
            .iter()
            .map(|(k, o)| {
                (
                    TopicPartition {
                        topic: k.topic.to_string(),
                        partition: k.partition,
                    },
                    *o,
                )
            })
            .collect();
        match membership.commit(&offsets).await {
            Ok(()) => {
                for (k, o) in &pending {
                    self.tracking.mark_committed(k, *o);
                }
                Ok(())
            }
            // A failed periodic commit is retried at the next tick.
            Err(GroupError::Retry(e)) => {
                tracing::info!(error = %e, "commit failed; retrying at the next interval");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Heartbeats on their own task, so slow handlers never cost the membership (KIP-62).
    async fn spawn_heartbeat(
        &self,
        membership: &mut Membership,
        events: mpsc::UnboundedSender<Beat>,
        cooperative: bool,
    ) -> JoinHandle<()> {
        let beat = membership.heartbeat_sender().await;
        let interval = self.settings.heartbeat_interval;
        // A cooperative rebalance takes two generations: members that gave
        // up partitions rejoin at once, and everyone else learns of the
        // second round from a heartbeat. Two early heartbeats after each join
        // let them learn within milliseconds instead of a full interval.
        const EARLY: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(150)];
        let early = if cooperative { &EARLY[..] } else { &[] };
        let delays = early
            .iter()
            .copied()
            .filter(move |d| *d < interval)
            .chain(std::iter::repeat(interval));
        let session = self.settings.session_timeout;
        tokio::spawn(async move {
            let beat = match beat {
                Ok(b) => b,
                Err(e) => {
                    let _ = events.send(Beat::Failed(e));
                    return;
                }
            };
            let mut last_ok = Instant::now();
            for delay in delays {
                tokio::time::sleep(delay).await;
                match beat.beat().await {
                    Ok(()) => last_ok = Instant::now(),
                    Err(GroupError::Retry(e)) if last_ok.elapsed() < session => {
                        tracing::debug!(error = %e, "heartbeat failed; retrying");
                    }
                    Err(e) => {
                        let _ = events.send(Beat::Failed(e));
                        return;
                    }
                }
            }
        })
    }
}

/// Hands one partition's records to the handler, in order.
struct PartitionWorker {
    key: PartitionKey,
    epoch: u64,
    rx: mpsc::Receiver<Result<Vec<crate::Record>>>,
    handler: Arc<dyn Handler>,
    tracking: Arc<Tracking>,
    stop: Arc<AtomicBool>,
    max_pending: usize,
    errors: mpsc::UnboundedSender<Error>,
}

impl PartitionWorker {
    async fn run(mut self) {
        use std::sync::atomic::Ordering;
        while let Some(batch) = self.rx.recv().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(topic = %self.key.topic, partition = self.key.partition, error = %e, "fetching failed; the partition stops until the next rebalance");
                    let _ = self.errors.send(e);
                    return;
                }
            };
            for record in batch {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                // Bounded in-flight: wait for deferred acks to make room.
                loop {
                    let notified = self.tracking.completed.notified();
                    if self.tracking.in_flight(&self.key) < self.max_pending {
                        break;
                    }
                    notified.await;
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                }
                let offset = record.offset;
                if !self.tracking.dispatched(&self.key, offset, self.epoch) {
                    return; // revoked meanwhile
                }
                let completion = Completion {
                    tracking: Arc::clone(&self.tracking),
                    key: self.key.clone(),
                    offset,
                    epoch: self.epoch,
                    deferred: Arc::new(AtomicBool::new(false)),
                };
                let outcome = std::panic::AssertUnwindSafe(
                    self.handler
                        .handle(ConsumerRecord::new(record, completion.clone())),
                )
                .catch_unwind()
                .await;
                if completion.is_deferred() {
                    continue;
                }
                match outcome {
                    Ok(Ok(())) => completion.ack(),
                    Ok(Err(e)) => {
                        tracing::warn!(topic = %self.key.topic, partition = self.key.partition, offset, error = %e, "handler failed; the record holds the partition's commits");
                        completion.fail(e.to_string());
                    }
                    Err(_) => {
                        tracing::error!(topic = %self.key.topic, partition = self.key.partition, offset, "handler panicked; the record holds the partition's commits");
                        completion.fail("handler panicked".into());
                    }
                }
            }
        }
    }
}

enum Next {
    Shutdown,
    Error(GroupError),
}

enum Reaction {
    Retry,
    Rejoin,
}

struct DisplayGroupError<'a>(&'a GroupError);

impl std::fmt::Display for DisplayGroupError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            GroupError::Rediscover(e)
            | GroupError::Retry(e)
            | GroupError::Rejoin(e)
            | GroupError::Reset(e)
            | GroupError::Fatal(e) => write!(f, "{e}"),
        }
    }
}
