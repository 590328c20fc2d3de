//! [`Client`]: the shared entry point that owns broker connections.
//!
//! One `Client` holds the wire-layer state (broker connections, metadata
//! cache). Producers, readers, group consumers and admin handles made from
//! it share that state.

use std::sync::Arc;

use crate::admin::Admin;
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::group::GroupConsumerBuilder;
use crate::producer::ProducerBuilder;
use crate::protocol::cluster::Cluster;
use crate::protocol::{BrokerInfo, ClientStatus, TopicMetadata};
use crate::reader::ReaderBuilder;

/// A connection to a Kafka cluster, cheap to clone.
///
/// ```no_run
/// # async fn demo() -> kastellan::Result<()> {
/// use kastellan::{Client, ClientConfig};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:9092")).await?;
/// let topics = client.admin().list_topics().await?;
/// println!("{} topics", topics.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    cluster: Cluster,
}

impl Client {
    /// Connect: checks the settings and reads cluster metadata, so an
    /// unreachable cluster is reported here rather than on first use.
    ///
    /// Retries until the retry deadline
    /// ([`ClientConfig::retry_deadline`], 60 s by default), in wall-clock
    /// time; a cluster still unreachable then is [`Error::Unreachable`]
    /// with the real time waited and the last cause. Errors no retry can
    /// fix (TLS, authentication, a peer that is not a Kafka broker) return
    /// at once.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        config.validate()?;
        let client = Client {
            inner: Arc::new(ClientInner {
                cluster: Cluster::new(config)?,
            }),
        };
        match client.inner.cluster.refresh_metadata(&[]).await {
            Ok(_) => Ok(client),
            // One error for "could not reach the cluster", with the whole wait.
            Err(Error::RetriesExhausted { elapsed, last, .. }) => Err(match *last {
                Error::Unreachable { brokers, last, .. } => Error::Unreachable {
                    brokers,
                    elapsed,
                    last,
                },
                other => Error::Unreachable {
                    brokers: client.config().bootstrap_servers().join(","),
                    elapsed,
                    last: other.to_string(),
                },
            }),
            Err(e) => Err(e),
        }
    }

    /// Shorthand for `Client::connect(ClientConfig::new(bootstrap))`.
    pub async fn bootstrap(bootstrap: impl AsRef<str>) -> Result<Self> {
        Self::connect(ClientConfig::new(bootstrap)).await
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        self.inner.cluster.config()
    }

    /// Topic administration (create, delete, list, offsets).
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// Start building a [`Producer`](crate::Producer).
    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder::new(self.clone())
    }

    /// Start building a [`Reader`](crate::Reader).
    pub fn reader(&self) -> ReaderBuilder {
        ReaderBuilder::new(self.clone())
    }

    /// Start building a member of consumer group `group_id`.
    pub fn group_consumer(&self, group_id: impl Into<String>) -> GroupConsumerBuilder {
        GroupConsumerBuilder::new(self.clone(), group_id.into())
    }

    /// Brokers of the cluster as the last metadata answer listed them.
    pub fn brokers(&self) -> Vec<BrokerInfo> {
        self.inner.cluster.brokers()
    }

    /// Connections and request counts of this client and everything made
    /// from it (producers, readers, group consumers, admin handles).
    pub fn status(&self) -> ClientStatus {
        self.inner.cluster.counters().snapshot()
    }

    pub(crate) fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Metadata of one topic; `Ok(None)` if it does not exist. With
    /// `refresh`, asks a broker even if the topic is cached. Retries until
    /// the retry deadline.
    pub async fn topic_metadata(
        &self,
        topic: &str,
        refresh: bool,
    ) -> Result<Option<Arc<TopicMetadata>>> {
        if refresh {
            self.inner.cluster.invalidate(topic);
        }
        let cluster = &self.inner.cluster;
        cluster
            .with_retries("Metadata", |_| cluster.topic(topic))
            .await
    }
}
