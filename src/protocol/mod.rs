//! Wire layer: our own broker connections (framing, correlation ids,
//! ApiVersions negotiation), cluster metadata, record-batch encoding and
//! decoding, and the error-code table. Message codecs come from
//! `kafka-protocol`; record batches are encoded and decoded here so the
//! data path is zero-copy and every compression codec is pure Rust.

pub(crate) mod api;
pub(crate) mod cluster;
pub(crate) mod connection;
pub mod error_codes;
pub(crate) mod records;
pub(crate) mod sasl;
pub(crate) mod scram;
#[cfg(test)]
pub(crate) mod test_peer;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub(crate) mod validate;

pub use cluster::{BrokerInfo, PartitionMetadata, TopicMetadata};
