//! # kastellan
//!
//! A pure-Rust Kafka library for event-driven services: a [`Producer`] with
//! batching and delivery acknowledgements, a [`Reader`] that reads partitions
//! without a consumer group, and an [`Admin`] for topics and offsets. Built on
//! our own wire layer (message codecs from `kafka-protocol`, record batches
//! encoded and decoded in-crate). No C toolchain is needed: gzip, snappy,
//! lz4 and zstd are all pure Rust.
//!
//! ```no_run
//! # async fn demo() -> kastellan::Result<()> {
//! use kastellan::{admin::NewTopic, Client, StartOffset};
//!
//! let client = Client::bootstrap("127.0.0.1:9092").await?;
//! client.admin().create_topic(NewTopic::new("greetings", 3, 1)).await?;
//!
//! let producer = client.producer().build()?;
//! producer.to("greetings").key("en").value("hello").send().await?;
//!
//! let reader = client.reader().topic("greetings").start(StartOffset::Earliest).build().await?;
//! for record in reader.read_to_end().await? {
//!     println!("{}: {:?}", record.offset, record.value_str());
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

pub mod admin;
#[cfg(feature = "avro")]
pub mod avro;
mod backoff;
mod client;
pub mod config;
pub mod error;
mod fetch;
pub mod group;
pub mod middleware;
pub mod oauthbearer;
mod offsets;
pub mod producer;
pub mod protocol;
pub mod reader;
mod record;
mod report_queue;
mod retry;
#[cfg(feature = "schema-registry")]
pub mod schema_registry;
pub mod security;
pub mod service;
mod topic_partition;

/// Entry points for the fuzz targets; not part of the API (feature
/// `unstable-fuzz`, no stability promise).
#[cfg(feature = "unstable-fuzz")]
#[doc(hidden)]
pub mod __fuzz;

/// The attribute that implements kastellan's async traits (such as
/// [`OAuthBearerTokenProvider`]), re-exported so an implementation needs no
/// extra dependency: `#[kastellan::async_trait]`.
pub use async_trait::async_trait;

pub use admin::Admin;
pub use client::Client;
pub use config::{ClientConfig, RetryPolicy};
pub use error::{BrokerError, Error, Result};
pub use oauthbearer::{OAuthBearerToken, OAuthBearerTokenProvider, TokenError, UnsecuredJwt};
pub use offsets::StartOffset;
pub use producer::{
    Compression, Delivery, DeliveryFuture, DeliveryReport, MessageBuilder, Partitioner, Producer,
    ProducerBuilder, ProducerRecord,
};
pub use protocol::ClientStatus;
pub use reader::{Reader, ReaderBuilder, RecordStream};
pub use record::{Header, Record};
pub use security::{SaslConfig, SaslMechanism, Secret, TlsConfig, TlsProvider, TrustedRoots};
pub use topic_partition::TopicPartition;

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
