//! How we join: the group session as an explicit state machine. It owns
//! the membership (the [`Coordinator`]: member id, generation, coordinator
//! connection), the heartbeat task, the partition runtime, the committer and
//! the metadata watch, and runs on the task that called
//! [`GroupConsumer::run`](super::GroupConsumer::run).
//!
//! ```text
//!            +-------------------------- rejoin (heartbeat: rebalance; cooperative
//!            |                           revocation; topic metadata changed)
//!            v                                                   |
//!   -> Joining --JoinGroup--> Syncing --SyncGroup--> Assigning --> Stable
//!       ^  |  (eager: Revoking first)     | heartbeats start      |
//!       |  | error: report, back off      | here                  | shutdown
//!       +--+ (a cooperative member keeps  |                       v
//!            processing its partitions)   |              Revoking -> Leaving -> Stopped
//! ```
//!
//! - **Joining**: before an eager rejoin, every partition is revoked first
//!   (heartbeats still run for the old generation, so a slow revocation
//!   does not cost the membership). Heartbeats stop for the JoinGroup
//!   itself: the broker answers it only when the rebalance completes and
//!   holds the connection meanwhile, as in the Java client.
//! - **Syncing**: the leader computes the assignment over the whole group's
//!   subscriptions with fresh metadata; SyncGroup delivers everyone's.
//! - **Assigning**: heartbeats run from the moment SyncGroup succeeds. The
//!   assignment is checked against metadata (partitions that do not exist
//!   or topics we do not subscribe to are ignored, with a warning);
//!   partitions taken away are revoked and committed (cooperative: then
//!   rejoin at once, KIP-429); new ones get their start positions (one
//!   attempt here, retried from the stable phase with backoff) and start.
//! - **Stable**: heartbeats, periodic commits, stall reports, metadata
//!   refreshes; a heartbeat saying a rebalance is under way, or metadata
//!   showing a change that needs one, leads back to Joining.
//! - **Revoking / Leaving**: on shutdown, partitions are revoked (in-flight
//!   records finish up to the shutdown deadline, then a commit) and the
//!   member leaves (dynamic members only, KIP-345).
//!
//! Errors go through one reaction ([`Session::react`]): fatal ones end the
//! session; everything else is reported on the error stream and retried
//! with backoff, and the member keeps what it may keep: a cooperative member
//! keeps processing its partitions while its join is retried, until an
//! answer from the coordinator (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION) says
//! its membership is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::assignor::{GroupAssignment, RebalanceProtocol};
use super::commit::{CommitReason, Committer};
use super::consumer::ConsumerSettings;
use super::coordinator::{
    is_coordinator_loading, is_fatal, Coordinator, GroupError, MemberSettings,
};
use super::events::{ConsumerError, GroupStep, Reporter};
use super::handler::DynHandler;
use super::heartbeat::{Beat, Heartbeat};
use super::rebalance::{call_hook, DynRebalanceListener, RebalanceEvent};
use super::runtime::{PartitionRuntime, RuntimeSettings};
use super::status::{self, ConsumerStatus, GroupState};
use super::subscription::MemberAssignment;
use super::topics::TopicWatch;
use super::tracking::Tracking;
use super::watchdog::{Sample, Watchdog};
use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::offsets;
use crate::TopicPartition;

/// A cooperative rebalance takes two generations: members that gave up
/// partitions rejoin at once, and everyone else learns of the second round
/// from a heartbeat. Two early heartbeats after each join let them learn
/// within milliseconds instead of a full interval.
const EARLY_BEATS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(150)];

/// Consecutive routine coordinator failures before one is reported on the
/// error stream: a coordinator loading a new group or moving after a
/// broker restart answers a few times with COORDINATOR_NOT_AVAILABLE,
/// NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS, which is no problem.
const REDISCOVERIES_BEFORE_REPORT: u32 = 3;

/// Where the state machine goes next.
#[derive(Debug)]
enum Next {
    /// (Re)join, for this reason.
    Join(String),
    /// Consume.
    Stable,
    /// Revoke everything, leave, stop.
    Shutdown,
    /// Stop with this error.
    Fatal(Error),
}

/// One member's group session. Every field is owned by the session task
/// (the task running `GroupConsumer::run`) unless it says otherwise.
pub(crate) struct Session {
    client: Client,
    settings: Arc<ConsumerSettings>,
    /// Shared with workers, completions, the committer and status readers.
    tracking: Arc<Tracking>,
    /// Whether the member runs the cooperative protocol: only if every
    /// assignor it offers is cooperative, as in the Java client.
    cooperative: bool,
    /// Member id, generation and the coordinator connection.
    coordinator: Coordinator,
    /// Heartbeats of the current generation; `None` while a JoinGroup or
    /// SyncGroup is in flight, and outside a generation.
    heartbeat: Option<Heartbeat>,
    /// When to try again to restart heartbeats that stopped because the
    /// coordinator went away (stable phase).
    heartbeat_retry: Option<Instant>,
    /// Running partitions.
    runtime: PartitionRuntime,
    /// Assigned partitions whose start position is not known yet, with when
    /// they were assigned; started as soon as a lookup succeeds.
    unstarted: BTreeMap<TopicPartition, Instant>,
    /// When to look start positions up again.
    position_retry: Option<Instant>,
    committer: Committer,
    topics: TopicWatch,
    /// Pauses between failed attempts to join (reset by a successful sync).
    join_backoff: Backoff,
    /// Routine coordinator failures (look-ups, a coordinator still
    /// loading) in a row since the last successful sync. A coordinator that is loading or moving is routine (a new
    /// group's offsets topic being created, a broker restarting), so it is
    /// reported on the error stream only once it persists
    /// ([`REDISCOVERIES_BEFORE_REPORT`]); the log always has it.
    rediscoveries: u32,
    /// Pauses between failed start-position lookups and heartbeat restarts.
    retry_backoff: Backoff,
    /// Written by the session; read by status readers (`StatusHandle`)
    /// under this mutex.
    status: Arc<Mutex<ConsumerStatus>>,
    /// Shared with workers and the fetch pool: the error stream.
    reporter: Reporter,
    /// Set by `ShutdownHandle::shutdown`; read here.
    shutdown: watch::Receiver<Option<Duration>>,
    /// Poked by the fetch pool when a topic or partition seems gone.
    metadata_hint: Arc<Notify>,
    /// The application's rebalance hooks, if any.
    listener: Option<Arc<dyn DynRebalanceListener>>,
    /// Finds partitions that make no progress.
    watchdog: Watchdog,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        client: Client,
        settings: Arc<ConsumerSettings>,
        handler: Arc<dyn DynHandler>,
        tracking: Arc<Tracking>,
        status: Arc<Mutex<ConsumerStatus>>,
        reporter: Reporter,
        shutdown: watch::Receiver<Option<Duration>>,
    ) -> Self {
        let s = &settings;
        let coordinator = Coordinator::new(
            client.clone(),
            MemberSettings {
                group_id: s.group_id.clone(),
                instance_id: s.instance_id.clone(),
                session_timeout: s.session_timeout,
                rebalance_timeout: s.rebalance_timeout,
                rack: s.rack.clone(),
            },
        );
        let metadata_hint = Arc::new(Notify::new());
        let runtime = PartitionRuntime::new(
            client.clone(),
            RuntimeSettings {
                max_wait: s.max_wait,
                max_partition_bytes: s.max_partition_bytes,
                fetch_buffer_bytes: s.fetch_buffer_bytes,
                rack: s.rack.clone(),
                max_pending: s.max_pending_per_partition,
                max_window: s.max_window_per_partition,
                offset_reset: s.offset_reset,
                key_concurrency: s.key_concurrency,
                max_in_flight: s
                    .max_in_flight
                    .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            },
            handler,
            Arc::clone(&tracking),
            reporter.clone(),
            Arc::clone(&metadata_hint),
        );
        let cooperative = s
            .assignors
            .iter()
            .all(|a| a.rebalance_protocol() == RebalanceProtocol::Cooperative);
        Self {
            client: client.clone(),
            tracking: Arc::clone(&tracking),
            cooperative,
            heartbeat: None,
            heartbeat_retry: None,
            runtime,
            unstarted: BTreeMap::new(),
            position_retry: None,
            committer: Committer::new(Arc::clone(&tracking), client.config().request_timeout),
            topics: TopicWatch::new(
                client.clone(),
                s.topics.clone(),
                &s.patterns,
                s.metadata_max_age,
            ),
            listener: s.rebalance_listener.clone(),
            watchdog: Watchdog::new(s.watchdog_threshold),
            join_backoff: Backoff::for_client(client.config()),
            rediscoveries: 0,
            retry_backoff: Backoff::for_client(client.config()),
            coordinator,
            settings,
            status,
            reporter,
            shutdown,
            metadata_hint,
        }
    }

    /// Run the state machine until shutdown (`Ok`) or a fatal error.
    pub(super) async fn run(mut self) -> Result<()> {
        let mut next = match self.refresh_topics().await {
            Ok(_) => Next::Join("joining".into()),
            Err(e) => Next::Fatal(e),
        };
        loop {
            next = match next {
                Next::Join(reason) => self.join(reason).await,
                Next::Stable => self.stable().await,
                Next::Shutdown => return self.shut_down().await,
                Next::Fatal(e) => {
                    self.heartbeat = None;
                    self.lose_all(None).await;
                    return Err(e);
                }
            };
        }
    }

    fn set_state(&self, state: GroupState) {
        status::lock(&self.status).state = state;
    }

    fn shutdown_requested(&self) -> bool {
        self.shutdown.borrow().is_some()
    }

    /// Every partition this member holds: running, or waiting for its start
    /// position.
    fn held(&self) -> Vec<TopicPartition> {
        let mut held: BTreeSet<TopicPartition> = self.runtime.owned().cloned().collect();
        held.extend(self.unstarted.keys().cloned());
        held.into_iter().collect()
    }

    fn publish_assignment(&self) {
        let held = self.held();
        let mut s = status::lock(&self.status);
        s.stuck.retain(|stuck| held.contains(&stuck.partition));
        s.assignment = held;
    }

    /// Show a membership that was lost or reset: the generation (and, after
    /// a reset, the member id) are no longer valid.
    fn publish_membership(&self) {
        let mut s = status::lock(&self.status);
        s.generation = self.coordinator.generation;
        s.member_id = self.coordinator.member_id.clone();
    }

    // ---------------------------------------------------------------------
    // Joining, Syncing, Assigning.

    async fn join(&mut self, reason: String) -> Next {
        if self.shutdown_requested() {
            return Next::Shutdown;
        }
        if !self.cooperative {
            // Eager protocol: give everything up before rejoining, while
            // the old generation's heartbeats keep the session.
            let all = self.held();
            if !all.is_empty() {
                self.set_state(GroupState::Revoking);
                self.revoke(&all, self.settings.revoke_timeout, CommitReason::Revocation)
                    .await;
            }
        }
        // The broker holds the connection until the join completes.
        self.heartbeat = None;
        self.set_state(GroupState::Joining);
        tracing::debug!(group = %self.settings.group_id, %reason, "joining the group");
        let owned = self.held();
        let mut shutdown = self.shutdown.clone();
        let joined = tokio::select! {
            j = self.coordinator.join_group(self.topics.subscription(), &owned, &self.settings.assignors, &reason) => j,
            _ = shutdown.changed() => return self.abandon_rebalance(),
        };
        let joined = match joined {
            Ok(j) => j,
            Err(e) => return self.react(GroupStep::Join, e).await,
        };

        self.set_state(GroupState::Syncing);
        let Some(assignor) = self
            .settings
            .assignors
            .iter()
            .find(|a| a.name() == joined.protocol)
            .cloned()
        else {
            let e = Error::Protocol {
                broker: "group coordinator".into(),
                reason: format!(
                    "the coordinator chose protocol `{}`, which this member did not offer",
                    joined.protocol
                ),
            };
            return self.react(GroupStep::Sync, GroupError::Retry(e)).await;
        };
        let mut leader_view = None;
        let mut assignments = GroupAssignment::new();
        if joined.leader && !joined.members.is_empty() {
            // The leader assigns every topic any member subscribed to.
            let topics: BTreeSet<String> = joined
                .members
                .iter()
                .flat_map(|m| m.subscription.topics.iter().cloned())
                .collect();
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let counts = match self.topics.counts(&names).await {
                Ok(c) => c,
                Err(e) => {
                    let e = if is_fatal(&e) {
                        GroupError::Fatal(e)
                    } else {
                        GroupError::Retry(e)
                    };
                    return self.react(GroupStep::Sync, e).await;
                }
            };
            assignments = assignor.assign(&joined.members, &counts);
            leader_view = Some((topics, counts));
        }
        let synced = tokio::select! {
            s = self.coordinator.sync_group(&joined.protocol, &assignments) => s,
            _ = shutdown.changed() => return self.abandon_rebalance(),
        };
        let assignment = match synced {
            Ok(a) => a,
            Err(e) => return self.react(GroupStep::Sync, e).await,
        };

        // In the group from here on: heartbeat at once, whatever follows
        // (revocations and offset lookups may take long).
        if let Err(e) = self.start_heartbeat().await {
            return self.react(GroupStep::Heartbeat, e).await;
        }
        let assignment = match assignment {
            Ok(a) => a,
            Err(e) => {
                // We cannot tell what the leader meant; another member may
                // have been given what we hold. Give it up properly (the
                // generation is valid, so the commit counts) and rejoin.
                tracing::warn!(error = %e, "cannot decode the assignment from the group leader; rejoining");
                self.reporter.report(ConsumerError::Group {
                    step: GroupStep::Sync,
                    error: e,
                });
                let all = self.held();
                self.set_state(GroupState::Revoking);
                self.revoke(&all, self.settings.revoke_timeout, CommitReason::Revocation)
                    .await;
                if let Err(next) = self.back_off().await {
                    return next;
                }
                return Next::Join("the leader's assignment could not be decoded".into());
            }
        };
        self.topics.assigned(leader_view);
        self.set_state(GroupState::Assigning);
        let rejoin = match self.apply(assignment).await {
            Ok(r) => r,
            Err(e) => return Next::Fatal(e),
        };
        self.join_backoff.reset();
        self.rediscoveries = 0;
        let held = self.held();
        {
            let mut s = status::lock(&self.status);
            s.member_id = self.coordinator.member_id.clone();
            s.generation = self.coordinator.generation;
            s.protocol = joined.protocol.clone();
            s.leader = joined.leader;
            s.joins += 1;
            s.assignment = held.clone();
            s.state = if rejoin.is_some() {
                GroupState::Joining
            } else {
                GroupState::Stable
            };
        }
        tracing::info!(
            group = %self.settings.group_id,
            member = %self.coordinator.member_id,
            generation = self.coordinator.generation,
            protocol = %joined.protocol,
            leader = joined.leader,
            partitions = held.len(),
            "joined group"
        );
        match rejoin {
            // KIP-429: after revoking, rejoin at once so the partitions can
            // go to their new owner in the next generation.
            Some(reason) => Next::Join(reason),
            None => Next::Stable,
        }
    }

    /// Shutdown while a JoinGroup or SyncGroup is in flight: the broker
    /// holds that connection until the rebalance completes, so drop it and
    /// let the commit and LeaveGroup of the shutdown use a new one.
    fn abandon_rebalance(&mut self) -> Next {
        self.coordinator.forget_coordinator();
        Next::Shutdown
    }

    /// Apply an assignment: ignore what does not exist, revoke what was
    /// taken away, start what is new. Returns why to rejoin at once, if so.
    async fn apply(&mut self, assignment: MemberAssignment) -> Result<Option<String>> {
        let assigned = self.check_assignment(assignment.partitions).await;
        let held = self.held();
        let revoked: Vec<TopicPartition> = held
            .iter()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            tracing::info!(partitions = ?revoked.iter().map(ToString::to_string).collect::<Vec<_>>(), "revoking partitions");
            self.revoke(
                &revoked,
                self.settings.revoke_timeout,
                CommitReason::Revocation,
            )
            .await;
        }
        for tp in assigned {
            if !self.runtime.contains(&tp) {
                self.unstarted.insert(tp, Instant::now());
            }
        }
        self.position_retry = None;
        self.start_unstarted().await?;
        Ok((!revoked.is_empty() && self.cooperative)
            .then(|| "revoked partitions for a cooperative rebalance".to_string()))
    }

    /// The partitions of an assignment this member takes: of subscribed
    /// topics, and existing (as fresh metadata shows). The rest is ignored,
    /// with a warning and a report.
    async fn check_assignment(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> BTreeSet<TopicPartition> {
        // The subscription this member joined with (it changes only in the
        // stable phase, which then rejoins).
        let subscribed: BTreeSet<&str> = self
            .topics
            .subscription()
            .iter()
            .map(String::as_str)
            .collect();
        let mut by_topic: BTreeMap<Arc<str>, Vec<TopicPartition>> = BTreeMap::new();
        let mut unsubscribed = Vec::new();
        for tp in partitions {
            if subscribed.contains(tp.topic()) {
                by_topic.entry(Arc::clone(&tp.topic)).or_default().push(tp);
            } else {
                unsubscribed.push(tp);
            }
        }
        let mut taken = BTreeSet::new();
        let mut missing = Vec::new();
        let client = self.client.clone();
        for (topic, tps) in by_topic {
            let exists = |meta: &crate::protocol::TopicMetadata, tp: &TopicPartition| {
                meta.partitions.iter().any(|p| p.id == tp.partition)
            };
            // The cached metadata first; fresh metadata when it lacks some.
            let mut meta = client.topic_metadata(&topic, false).await;
            let stale = match &meta {
                Ok(Some(m)) => tps.iter().any(|tp| !exists(m, tp)),
                Ok(None) => true,
                Err(_) => false,
            };
            if stale {
                meta = client.topic_metadata(&topic, true).await;
            }
            match meta {
                Ok(Some(m)) => {
                    for tp in tps {
                        if exists(&m, &tp) {
                            taken.insert(tp);
                        } else {
                            missing.push(tp);
                        }
                    }
                }
                Ok(None) => missing.extend(tps),
                // Cannot check now: take them; a fetch that fails is
                // reported and retried.
                Err(e) => {
                    tracing::debug!(topic = %topic, error = %e, "cannot check the assignment against metadata");
                    taken.extend(tps);
                }
            }
        }
        let mut ignored = Vec::new();
        for (partitions, reason) in [
            (
                unsubscribed,
                "this member does not subscribe to their topic",
            ),
            (missing, "they do not exist"),
        ] {
            if partitions.is_empty() {
                continue;
            }
            tracing::warn!(
                partitions = ?partitions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                reason,
                "the group leader assigned partitions this member does not take"
            );
            ignored.extend(partitions.iter().cloned());
            self.reporter
                .report(ConsumerError::AssignmentIgnored { partitions, reason });
        }
        ignored.sort();
        status::lock(&self.status).ignored_partitions = ignored;
        taken
    }

    /// Look start positions up for the partitions waiting for one and
    /// start them. A failure is reported and retried later (stable phase);
    /// only a fatal error comes back.
    async fn start_unstarted(&mut self) -> Result<()> {
        if self.unstarted.is_empty() {
            return Ok(());
        }
        let wanted: Vec<TopicPartition> = self.unstarted.keys().cloned().collect();
        match self.positions(&wanted).await {
            Ok(positions) => {
                // The application hears of them once their start positions
                // are known, before their first record is handled.
                let new: Vec<TopicPartition> = positions.iter().map(|(tp, _)| tp.clone()).collect();
                self.hook(RebalanceEvent::Assigned, &new, self.settings.revoke_timeout)
                    .await;
                for (tp, _) in &positions {
                    self.unstarted.remove(tp);
                }
                self.runtime.start(positions);
                self.retry_backoff.reset();
                self.position_retry = None;
                self.publish_assignment();
                Ok(())
            }
            Err(GroupError::Fatal(e)) => Err(e),
            Err(e) => {
                if let GroupError::Rediscover(_) = e {
                    self.coordinator.forget_coordinator();
                }
                let delay = self.retry_backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot look up start positions; retrying");
                self.reporter.report(ConsumerError::Group {
                    step: GroupStep::StartPosition,
                    error: e.into_error(),
                });
                self.position_retry = Some(Instant::now() + delay);
                Ok(())
            }
        }
    }

    /// Committed offsets of `partitions`, or where `offset_reset` puts
    /// those without one. One attempt (each request has its deadline).
    async fn positions(
        &mut self,
        partitions: &[TopicPartition],
    ) -> std::result::Result<Vec<(TopicPartition, i64)>, GroupError> {
        let committed = self.coordinator.fetch_offsets(partitions).await?;
        let client = self.client.clone();
        let mut resets: BTreeMap<Arc<str>, BTreeMap<i32, i64>> = BTreeMap::new();
        let mut out = Vec::with_capacity(partitions.len());
        for tp in partitions {
            let position = match committed.get(tp).copied().flatten() {
                Some(offset) => offset,
                None => {
                    if !resets.contains_key(&tp.topic) {
                        let at = offsets::start_positions(
                            &client,
                            tp.topic(),
                            self.settings.offset_reset,
                        )
                        .await
                        .map_err(|e| {
                            if is_fatal(&e) {
                                GroupError::Fatal(e)
                            } else {
                                GroupError::Retry(e)
                            }
                        })?;
                        resets.insert(Arc::clone(&tp.topic), at);
                    }
                    resets
                        .get(&tp.topic)
                        .and_then(|m| m.get(&tp.partition).copied())
                        .unwrap_or(0)
                }
            };
            out.push((tp.clone(), position));
        }
        Ok(out)
    }

    // ---------------------------------------------------------------------
    // Stable.

    async fn stable(&mut self) -> Next {
        self.set_state(GroupState::Stable);
        let s = Arc::clone(&self.settings);
        let mut commit_tick = tokio::time::interval(s.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        commit_tick.tick().await;
        let mut stall_tick = tokio::time::interval(s.stall_threshold.max(Duration::from_secs(1)));
        stall_tick.tick().await;
        let mut watchdog_tick = tokio::time::interval(self.watchdog.interval());
        watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        watchdog_tick.tick().await;
        let mut shutdown = self.shutdown.clone();
        let hint = Arc::clone(&self.metadata_hint);
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let position_retry = self.position_retry.unwrap_or(far);
            let heartbeat_retry = self.heartbeat_retry.unwrap_or(far);
            let topics_due = self.topics.due();
            tokio::select! {
                _ = shutdown.changed() => return Next::Shutdown,
                beat = next_beat(&mut self.heartbeat) => match beat {
                    Beat::Rebalance(e) => {
                        tracing::info!(error = %e, "rebalance: rejoining the group");
                        return Next::Join("the group is rebalancing".into());
                    }
                    Beat::Failed(GroupError::Rediscover(e)) => {
                        // The coordinator moved or its connection broke: find
                        // it again and go on heartbeating, without a rebalance.
                        self.heartbeat = None;
                        self.coordinator.forget_coordinator();
                        let delay = self.retry_backoff.next_delay();
                        tracing::info!(error = %e, retry_in = ?delay, "group coordinator lost; finding it again");
                        self.reporter.report(ConsumerError::Group { step: GroupStep::Heartbeat, error: e });
                        self.heartbeat_retry = Some(Instant::now() + delay);
                    }
                    Beat::Failed(e) => {
                        self.heartbeat = None;
                        return self.react(GroupStep::Heartbeat, e).await;
                    }
                },
                _ = tokio::time::sleep_until(heartbeat_retry), if self.heartbeat.is_none() => {
                    match self.start_heartbeat().await {
                        Ok(()) => {
                            self.heartbeat_retry = None;
                            self.retry_backoff.reset();
                        }
                        Err(GroupError::Fatal(e)) => return Next::Fatal(e),
                        Err(e) => {
                            if let GroupError::Rediscover(_) = e {
                                self.coordinator.forget_coordinator();
                            }
                            let delay = self.retry_backoff.next_delay();
                            self.reporter.report(ConsumerError::Group { step: GroupStep::FindCoordinator, error: e.into_error() });
                            self.heartbeat_retry = Some(Instant::now() + delay);
                        }
                    }
                }
                _ = commit_tick.tick() => {
                    if let Err(e) = self.committer.commit_progress(&mut self.coordinator).await {
                        match e {
                            GroupError::Retry(e) => {
                                tracing::info!(error = %e, "commit failed; retrying at the next interval");
                                self.reporter.report(ConsumerError::Group { step: GroupStep::Commit, error: e });
                            }
                            GroupError::Rediscover(e) => {
                                tracing::info!(error = %e, "commit failed; finding the coordinator again");
                                self.coordinator.forget_coordinator();
                                self.reporter.report(ConsumerError::Group { step: GroupStep::Commit, error: e });
                            }
                            e => return self.react(GroupStep::Commit, e).await,
                        }
                    }
                }
                _ = stall_tick.tick() => {
                    for stall in self.tracking.stalled(s.stall_threshold) {
                        tracing::warn!("{stall}");
                    }
                }
                _ = watchdog_tick.tick() => self.check_progress(),
                _ = tokio::time::sleep_until(topics_due) => {
                    match self.refresh_topics().await {
                        Ok(Some(reason)) => {
                            tracing::info!(%reason, "subscribed topics changed; rejoining the group");
                            return Next::Join(reason);
                        }
                        Ok(None) => {}
                        Err(e) => return Next::Fatal(e),
                    }
                }
                _ = hint.notified() => self.topics.refresh_soon(),
                _ = tokio::time::sleep_until(position_retry), if self.position_retry.is_some() => {
                    if let Err(e) = self.start_unstarted().await {
                        return Next::Fatal(e);
                    }
                }
            }
        }
    }

    /// Refresh metadata of the subscribed topics: report newly missing
    /// ones, fail in strict mode, and say whether to rejoin.
    async fn refresh_topics(&mut self) -> Result<Option<String>> {
        let refresh = match self.topics.refresh().await {
            Ok(r) => r,
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "refreshing topic metadata failed; retrying");
                self.reporter.report(ConsumerError::Group {
                    step: GroupStep::Metadata,
                    error: e,
                });
                return Ok(None);
            }
        };
        for topic in &refresh.newly_missing {
            tracing::warn!(group = %self.settings.group_id, %topic, "subscribed topic does not exist; it is consumed once created");
            self.reporter.report(ConsumerError::MissingTopic {
                topic: topic.clone(),
            });
        }
        if let (true, Some(topic)) = (self.settings.require_topics, refresh.missing.first()) {
            return Err(Error::UnknownTopic(topic.clone()));
        }
        {
            let mut s = status::lock(&self.status);
            s.missing_topics = refresh.missing;
            s.subscribed = self.topics.subscription().to_vec();
        }
        Ok(refresh.rejoin)
    }

    /// The watchdog's check: report partitions that started making no
    /// progress, note those that recovered, and publish the current list.
    fn check_progress(&mut self) {
        let mut samples = self.runtime.progress();
        // Assigned, but not fetching yet: the start position is unknown.
        let now = Instant::now();
        samples.extend(self.unstarted.iter().map(|(tp, since)| Sample {
            partition: tp.clone(),
            fetch_failing_for: Some(now.saturating_duration_since(*since)),
            next_fetch: -1,
            commit_point: -1,
            waiting: 0,
        }));
        let check = self.watchdog.check(Instant::now(), samples);
        for stuck in &check.started {
            tracing::warn!(partition = %stuck.partition, "{stuck}");
            self.reporter
                .report(ConsumerError::PartitionStuck(stuck.clone()));
        }
        for tp in &check.recovered {
            tracing::info!(partition = %tp, "partition makes progress again");
        }
        status::lock(&self.status).stuck = check.stuck;
    }

    /// Call a rebalance hook, if the application installed a listener.
    async fn hook(&self, event: RebalanceEvent, partitions: &[TopicPartition], bound: Duration) {
        if let Some(listener) = &self.listener {
            call_hook(listener, event, partitions, bound, &self.reporter).await;
        }
    }

    // ---------------------------------------------------------------------
    // Heartbeats, revocation, loss, errors.

    async fn start_heartbeat(&mut self) -> std::result::Result<(), GroupError> {
        let beat = self.coordinator.heartbeat_sender().await?;
        let early: &[Duration] = if self.cooperative { &EARLY_BEATS } else { &[] };
        self.heartbeat = Some(Heartbeat::start(
            beat,
            self.settings.heartbeat_interval,
            self.settings.session_timeout,
            early,
        ));
        Ok(())
    }

    /// Give partitions up properly: in-flight records get up to `wait`,
    /// then the completed prefix is committed.
    async fn revoke(&mut self, which: &[TopicPartition], wait: Duration, reason: CommitReason) {
        if which.is_empty() {
            return;
        }
        // Only running partitions were announced as assigned.
        let running: Vec<TopicPartition> = which
            .iter()
            .filter(|tp| self.runtime.contains(tp))
            .cloned()
            .collect();
        for tp in which {
            self.unstarted.remove(tp);
        }
        let started = Instant::now();
        let offsets = self.runtime.stop(which, started + wait).await;
        // During a rebalance the whole revocation must fit the rebalance
        // timeout (`build()` checks that `revoke_timeout` leaves room): the
        // hook gets at most what is left of it, the commit what is left then.
        let rebalance_timeout = self.settings.rebalance_timeout;
        let left = move || match reason {
            CommitReason::Revocation => rebalance_timeout.saturating_sub(started.elapsed()),
            _ => Duration::MAX,
        };
        let hook_bound = wait.min(self.settings.revoke_timeout).min(left());
        self.hook(RebalanceEvent::Revoked, &running, hook_bound)
            .await;
        let commit_timeout = left();
        if let Err(e) = self
            .committer
            .commit(&mut self.coordinator, &offsets, reason, commit_timeout)
            .await
        {
            tracing::warn!(error = %e, "commit of revoked partitions failed; their next owner will see some records again");
            self.reporter.report(ConsumerError::Group {
                step: GroupStep::Commit,
                error: e.into_error(),
            });
        }
        self.publish_assignment();
    }

    /// The membership was lost (or the consumer stops for a fatal error):
    /// drop every partition without committing, then tell the application.
    async fn lose_all(&mut self, why: Option<&Error>) {
        let held = self.held();
        if held.is_empty() {
            return;
        }
        let running: Vec<TopicPartition> = self.runtime.owned().cloned().collect();
        self.runtime.lose(&held);
        self.unstarted.clear();
        self.position_retry = None;
        self.publish_assignment();
        if let Some(e) = why {
            tracing::warn!(error = %e, partitions = held.len(), "membership lost: partitions given up without commit");
            self.reporter.report(ConsumerError::PartitionsLost {
                partitions: held,
                error: e.duplicate(),
            });
        }
        self.hook(RebalanceEvent::Lost, &running, self.settings.revoke_timeout)
            .await;
    }

    /// The one reaction to a failed group request.
    async fn react(&mut self, step: GroupStep, e: GroupError) -> Next {
        match e {
            GroupError::Fatal(e) => Next::Fatal(e),
            GroupError::Rejoin(e) => {
                tracing::info!(error = %e, %step, "rebalance under way: rejoining");
                Next::Join(format!("{step}: {e}"))
            }
            GroupError::Rediscover(e) => {
                tracing::info!(error = %e, %step, "group coordinator unavailable; finding it again");
                self.coordinator.forget_coordinator();
                self.retry_routine(step, e).await
            }
            GroupError::Retry(e) if is_coordinator_loading(&e) => {
                // The coordinator is right, only not ready yet: as routine
                // as one that is moving, so the same grace applies.
                tracing::info!(error = %e, %step, "group coordinator still loading; retrying");
                self.retry_routine(step, e).await
            }
            GroupError::Retry(e) => {
                tracing::warn!(error = %e, %step, "group request failed; retrying");
                self.retry(step, e).await
            }
            GroupError::Lost(e) => {
                self.heartbeat = None;
                self.lose_all(Some(&e)).await;
                self.coordinator.forget_generation();
                self.publish_membership();
                self.retry(step, e).await
            }
            GroupError::Reset(e) => {
                self.heartbeat = None;
                self.lose_all(Some(&e)).await;
                self.coordinator.reset();
                self.publish_membership();
                self.retry(step, e).await
            }
        }
    }

    /// Retry after a failure that is routine while a coordinator loads or
    /// moves: reported on the error stream only once it has happened
    /// [`REDISCOVERIES_BEFORE_REPORT`] times in a row (the log has each).
    async fn retry_routine(&mut self, step: GroupStep, e: Error) -> Next {
        self.rediscoveries += 1;
        if self.rediscoveries < REDISCOVERIES_BEFORE_REPORT {
            let reason = format!("retrying after {step} failed: {e}");
            return match self.back_off().await {
                Ok(()) => Next::Join(reason),
                Err(next) => next,
            };
        }
        self.retry(step, e).await
    }

    async fn retry(&mut self, step: GroupStep, e: Error) -> Next {
        let reason = format!("retrying after {step} failed: {e}");
        self.reporter
            .report(ConsumerError::Group { step, error: e });
        match self.back_off().await {
            Ok(()) => Next::Join(reason),
            Err(next) => next,
        }
    }

    /// Wait before the next attempt to join. Partitions are kept (a
    /// cooperative member goes on processing them) until an answer says the
    /// membership is lost. No heartbeats are started for the wait: like the
    /// Java client and librdkafka, a member that is rejoining does not
    /// heartbeat (a failed join may already have moved the group to a
    /// generation this member is not in, and heartbeats would only report
    /// that while the join is still being retried). A heartbeat task still
    /// running from the current generation goes on, and is listened to.
    async fn back_off(&mut self) -> std::result::Result<(), Next> {
        let delay = self.join_backoff.next_delay();
        let until = Instant::now() + delay;
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = shutdown.changed() => return Err(Next::Shutdown),
                beat = next_beat(&mut self.heartbeat) => match beat {
                    Beat::Rebalance(_) => {} // rejoining anyway
                    Beat::Failed(GroupError::Fatal(e)) => return Err(Next::Fatal(e)),
                    Beat::Failed(GroupError::Lost(e)) => {
                        self.heartbeat = None;
                        self.lose_all(Some(&e)).await;
                        self.coordinator.forget_generation();
                        self.publish_membership();
                    }
                    Beat::Failed(GroupError::Reset(e)) => {
                        self.heartbeat = None;
                        self.lose_all(Some(&e)).await;
                        self.coordinator.reset();
                        self.publish_membership();
                    }
                    Beat::Failed(_) => {
                        self.heartbeat = None;
                        self.coordinator.forget_coordinator();
                    }
                },
            }
        }
    }

    // ---------------------------------------------------------------------
    // Revoking, Leaving.

    async fn shut_down(&mut self) -> Result<()> {
        let deadline = self
            .shutdown
            .borrow()
            .unwrap_or(self.settings.revoke_timeout);
        self.set_state(GroupState::Revoking);
        let all = self.held();
        self.revoke(&all, deadline, CommitReason::Shutdown).await;
        self.set_state(GroupState::Leaving);
        self.heartbeat = None;
        if let Err(e) = self.coordinator.leave("consumer shutting down").await {
            tracing::warn!(error = %e, "leaving the group failed; the coordinator will evict this member after the session timeout");
            self.reporter.report(ConsumerError::Group {
                step: GroupStep::Leave,
                error: e.into_error(),
            });
        }
        Ok(())
    }
}

/// The next heartbeat event; pending forever without a heartbeat task.
async fn next_beat(heartbeat: &mut Option<Heartbeat>) -> Beat {
    match heartbeat {
        Some(h) => h.next().await,
        None => std::future::pending().await,
    }
}
