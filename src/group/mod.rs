//! Consumer groups: membership in a classic Kafka consumer group, partition
//! assignment, and committing offsets of completed records.
//!
//! - [`subscription`]: the standard `consumer` protocol encoding of
//!   subscriptions and assignments (interoperable with the Java client).
//! - [`assignor`]: `range`, `roundrobin` and `cooperative-sticky`.
//! - [`ack_tracker`]: per-partition completion tracking; the commit point is
//!   the lowest incomplete offset.
//! - [`GroupConsumer`]: joins the group and drives a [`Handler`].

pub mod ack_tracker;
pub mod assignor;
mod consumer;
mod handler;
mod membership;
pub mod subscription;
mod tracking;

pub use consumer::{
    ConsumerStatus, GroupConsumer, GroupConsumerBuilder, OffsetReset, ShutdownHandle, StatusHandle,
};
pub use handler::{AckHandle, ConsumerRecord, Handler, HandlerError};
