//! Wire layer: our own broker connections for the APIs the data-path client
//! (`rskafka`) does not cover (metadata details, admin, group coordination).
//! Message codecs come from `kafka-protocol`.

pub(crate) mod api;
pub(crate) mod cluster;
pub(crate) mod connection;
pub mod error_codes;
pub(crate) mod records;

pub use cluster::{BrokerInfo, PartitionMetadata, TopicMetadata};
