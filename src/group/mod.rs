//! Consumer groups: membership in a classic Kafka consumer group, partition
//! assignment, and committing offsets of completed records.
//!
//! A [`GroupConsumer`] (made with [`Client::group_consumer`](crate::Client::group_consumer))
//! joins a group, receives partitions from the group's leader, hands their
//! records to a [`Handler`] and commits the offsets of completed records.
//! Members of other clients (Java, librdkafka, franz-go) can share the group:
//! subscriptions and assignments use the standard `consumer` protocol, and
//! the [`assignor`]s compute what the Java client's assignors compute.
//!
//! ```no_run
//! # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
//! use kastellan::group::{ConsumerRecord, HandlerError};
//!
//! let mut consumer = client.group_consumer("billing").topic("orders").build()?;
//! let mut problems = consumer.errors().expect("first call");
//! tokio::spawn(async move {
//!     while let Some(problem) = problems.recv().await {
//!         eprintln!("{problem}");
//!     }
//! });
//! consumer
//!     .run(|record: ConsumerRecord| async move {
//!         println!("{}/{}@{}", record.topic, record.partition, record.offset);
//!         Ok::<(), HandlerError>(())
//!     })
//!     .await
//! # }
//! ```
//!
//! # Delivery
//!
//! At least once. Per partition, records reach the handler in offset order,
//! one at a time; partitions are processed concurrently. With
//! [`key_concurrency(n)`](GroupConsumerBuilder::key_concurrency), up to `n`
//! records of a partition are in the handler at once when their keys
//! differ, and order holds per key: a record is handed over once the
//! handler call of the previous record of its key has returned (records
//! without a key count as one key; a deferred or failed record frees its
//! key when its handler returns, as one-at-a-time dispatch goes on past
//! it). [`max_in_flight(n)`](GroupConsumerBuilder::max_in_flight) bounds
//! the handler calls of all partitions together; when it is reached,
//! partitions wait, their fetched batches fill and fetching pauses. A
//! record is
//! *completed* when its handler returns `Ok`, or later through an
//! [`AckHandle`] ([`ConsumerRecord::defer`]). The committed offset of a
//! partition is its lowest incomplete offset, so a failed record holds the
//! partition's commits back (a *stall*, in [`ConsumerStatus::stalled`] and
//! the log) and is redelivered after a rebalance or restart.
//!
//! Memory is bounded per partition: two fetched batches, at most
//! `max_pending_per_partition` incomplete records, and an ack-tracker window
//! of at most `max_window_per_partition` records. A partition that reaches a
//! limit with nothing in flight able to free room *pauses* (fetching too):
//! reported as [`ConsumerError::PartitionPaused`] and listed in
//! [`ConsumerStatus::paused`] while it lasts.
//!
//! # The group session
//!
//! The member moves through the [`GroupState`]s: **joining** (JoinGroup),
//! **syncing** (the leader assigns, SyncGroup delivers), **assigning**
//! (revoke what was taken away, look up start positions, start new
//! partitions), **stable** (consume, heartbeat, commit), and on shutdown
//! **revoking** and **leaving**. Heartbeats run from the moment SyncGroup
//! succeeds, through assigning, the stable phase and revoking, on their own
//! task (so slow handlers never cost the membership); they stop only when
//! the member sends its next JoinGroup, which the broker holds until the
//! rebalance completes (as the Java client does). Offsets are committed on an interval, when
//! partitions are revoked, and on shutdown; never for partitions that were
//! lost. The code: `session.rs` (how we join), `commit.rs` (when we commit),
//! `runtime.rs` (fetching and dispatching), `coordinator.rs` (the requests),
//! `topics.rs` (what we subscribe to), `rebalance.rs` (the hooks),
//! `watchdog.rs` (partitions that make no progress).
//!
//! Every member refreshes metadata of its topics every `metadata_max_age`
//! (5 minutes by default) and every few seconds while one is missing. A
//! missing topic is reported ([`ConsumerError::MissingTopic`],
//! [`ConsumerStatus::missing_topics`], a warning) and consumed once it is
//! created; the leader rebalances the group when any subscribed topic
//! appears or gets more partitions.
//!
//! # Topic patterns
//!
//! [`topic_pattern`](GroupConsumerBuilder::topic_pattern) subscribes to
//! every existing, non-internal topic whose name matches a glob (`*`, `?`),
//! besides the topics named with [`topic`](GroupConsumerBuilder::topic).
//! With a pattern, each metadata refresh lists all topics; when the
//! matching set changes the member rejoins with its new subscription (its
//! JoinGroup metadata carries the topic list, and the leader assigns the
//! union of the group's subscriptions). A matching topic created later is
//! consumed within `metadata_max_age`, without a restart.
//! [`ConsumerStatus::subscribed`] shows the current subscription.
//!
//! # Rebalance hooks
//!
//! A [`RebalanceListener`] ([`on_rebalance`](GroupConsumerBuilder::on_rebalance))
//! hears of partitions `assigned` (start positions known, before the first
//! record), `revoked` (in-flight records finished or timed out, before the
//! final commit; also at shutdown) and `lost` (given up without a commit).
//! Each call is bounded by `revoke_timeout` (see the trait for the exact
//! bounds); a hook that panics or hangs is reported
//! ([`ConsumerError::RebalanceHook`]) and the session goes on. Records in
//! flight learn of a revocation themselves through
//! [`ConsumerRecord::revoked`].
//!
//! # Watchdog
//!
//! The consumer reports a partition that is assigned but makes no progress
//! for longer than [`watchdog_threshold`](GroupConsumerBuilder::watchdog_threshold)
//! (60 s by default): it has not fetched successfully (a fetch that finds
//! nothing is a success; waiting for the handler to catch up does not
//! count), or its commit point has not moved while records wait. An idle
//! partition is never reported. Reports name topic and partition in the
//! log, on the error stream ([`ConsumerError::PartitionStuck`]) and in
//! [`ConsumerStatus::stuck`].
//!
//! # When `run()` ends
//!
//! [`GroupConsumer::run`] ends by itself only for errors that no retry can
//! fix and that need your action:
//!
//! - **bad configuration**: [`Error::Config`](crate::Error::Config), and the
//!   broker answers `INVALID_SESSION_TIMEOUT`, `INVALID_GROUP_ID`,
//!   `INCONSISTENT_GROUP_PROTOCOL` (no assignor in common with the group's
//!   other members) and `GROUP_MAX_SIZE_REACHED`;
//! - **authentication or authorization**: [`Error::Tls`](crate::Error::Tls),
//!   [`Error::Authentication`](crate::Error::Authentication),
//!   `GROUP_AUTHORIZATION_FAILED`, `TOPIC_AUTHORIZATION_FAILED`,
//!   `CLUSTER_AUTHORIZATION_FAILED`, `SASL_AUTHENTICATION_FAILED`;
//! - **a fenced static member**: `FENCED_INSTANCE_ID`;
//! - **an unsupported broker**:
//!   [`Error::UnsupportedVersion`](crate::Error::UnsupportedVersion),
//!   `UNSUPPORTED_VERSION`;
//! - **a missing topic in strict mode**
//!   ([`GroupConsumerBuilder::require_topics`]):
//!   [`Error::UnknownTopic`](crate::Error::UnknownTopic).
//!
//! Everything else — an unreachable or moving coordinator, a restarting
//! broker, unexpected answers (`UNKNOWN_SERVER_ERROR`, which a Kafka 4.x
//! coordinator gives every join while a member with malformed metadata is in
//! the group), another member's malformed subscription, an assignment that
//! cannot be decoded or names partitions that do not exist, fetch failures,
//! failed commits — is reported on the [`errors`](GroupConsumer::errors)
//! stream ([`ConsumerError`]) and in the log, retried with backoff, and the
//! member keeps what it may keep: a cooperative member keeps processing its
//! partitions while its join is retried. A coordinator that is loading or
//! moving (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR,
//! COORDINATOR_LOAD_IN_PROGRESS: routine while a new group's offsets topic
//! is created or a broker restarts) is only logged until it has failed
//! three times in a row. Partitions are given up without a
//! commit only when an answer from the coordinator says the membership is
//! lost (UNKNOWN_MEMBER_ID: evicted; ILLEGAL_GENERATION: the group moved on
//! without this member), since another member may own them by then
//! ([`ConsumerError::PartitionsLost`]).

pub mod assignor;
mod commit;
mod consumer;
mod coordinator;
mod events;
mod handler;
mod heartbeat;
mod rebalance;
mod runtime;
mod session;
mod status;
// Its codec is `pub` for the fuzz entry points below, which exist only
// with the `unstable-fuzz` feature.
#[cfg_attr(not(feature = "unstable-fuzz"), allow(unreachable_pub))]
mod subscription;
pub mod testing;
mod topics;
mod tracking;
mod watchdog;

mod ack_tracker;

pub use consumer::{GroupConsumer, GroupConsumerBuilder, ShutdownHandle};
pub use events::{ConsumerError, ConsumerErrors, GroupStep};
pub use handler::{
    with_state, AckHandle, ConsumerRecord, FailureKind, Handler, HandlerError, Outcome, WithState,
};
pub(crate) use handler::{BoxOutcome, DynHandler};
pub use rebalance::{RebalanceEvent, RebalanceListener};
pub use status::{
    ConsumerStatus, GroupState, PauseReason, PausedPartition, StallReport, StatusHandle,
    StuckPartition, StuckReason,
};

/// Entry points for the fuzz targets in `fuzz/` (the consumer-protocol
/// decoders and encoders). Not a public API: only with the unstable
/// `unstable-fuzz` feature, and it may change in any release.
#[cfg(feature = "unstable-fuzz")]
#[doc(hidden)]
pub mod __fuzz {
    pub use super::subscription::{
        decode_assignment, decode_subscription, encode_assignment, encode_subscription,
        DecodeError, MemberAssignment, Subscription, ASSIGNMENT_VERSION, SUBSCRIPTION_VERSION,
    };
}
