//! [`Client`]: the shared entry point that owns broker connections.
//!
//! One `Client` holds our own wire-layer connections (metadata, admin, group
//! APIs) and the data-path client (`rskafka`) used for produce and fetch.
//! Producers, readers and admin handles made from it share both.

use std::collections::HashMap;
use std::sync::Arc;

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use tokio::sync::OnceCell;

use crate::admin::Admin;
use crate::config::ClientConfig;
use crate::error::{BrokerError, Error, Result};
use crate::group::GroupConsumerBuilder;
use crate::producer::ProducerBuilder;
use crate::protocol::cluster::Cluster;
use crate::protocol::{BrokerInfo, TopicMetadata};
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
    data: OnceCell<rskafka::client::Client>,
    partitions: tokio::sync::Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
}

impl Client {
    /// Connect: checks the settings and reads cluster metadata, so an
    /// unreachable cluster is reported here (after retrying until the retry
    /// deadline) rather than on first use.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        config.validate()?;
        let client = Client {
            inner: Arc::new(ClientInner {
                cluster: Cluster::new(config),
                data: OnceCell::new(),
                partitions: tokio::sync::Mutex::new(HashMap::new()),
            }),
        };
        client.inner.cluster.refresh_metadata(&[]).await?;
        Ok(client)
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

    pub(crate) fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Metadata of one topic; `Ok(None)` if it does not exist.
    pub async fn topic_metadata(
        &self,
        topic: &str,
        refresh: bool,
    ) -> Result<Option<Arc<TopicMetadata>>> {
        if refresh {
            self.inner.cluster.invalidate(topic);
        }
        self.inner.cluster.topic(topic).await
    }

    async fn data(&self) -> Result<&rskafka::client::Client> {
        self.inner
            .data
            .get_or_try_init(|| async {
                let config = self.config();
                rskafka::client::ClientBuilder::new(config.bootstrap.clone())
                    .client_id(config.client_id.clone())
                    .backoff_config(rskafka::BackoffConfig {
                        init_backoff: config.retry_backoff,
                        max_backoff: config.retry_backoff_max,
                        base: 2.0,
                        deadline: Some(config.retry_deadline),
                    })
                    .build()
                    .await
                    .map_err(|e| map_data_error("connecting the data-path client", e))
            })
            .await
    }

    /// The data-path handle for one partition, cached.
    pub(crate) async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>> {
        let key = (topic.to_string(), partition);
        if let Some(pc) = self.inner.partitions.lock().await.get(&key) {
            return Ok(Arc::clone(pc));
        }
        let data = self.data().await?;
        let pc = data
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| map_data_error(&format!("locating leader of {topic}/{partition}"), e))?;
        let pc = Arc::new(pc);
        self.inner
            .partitions
            .lock()
            .await
            .insert(key, Arc::clone(&pc));
        Ok(pc)
    }
}

/// Turn a data-path error into ours, keeping the Kafka error code when there is one.
pub(crate) fn map_data_error(context: &str, e: rskafka::client::error::Error) -> Error {
    use rskafka::client::error::Error as E;
    match e {
        E::ServerError {
            protocol_error,
            error_message,
            ..
        } => {
            let code = rskafka_code(protocol_error);
            Error::Broker(BrokerError::new(
                "partition leader",
                api_of(context),
                code,
                error_message.or_else(|| Some(context.to_string())),
            ))
        }
        E::Request(rskafka::client::error::RequestError::ReadError(r)) => Error::Client {
            context: context.to_string(),
            message: format!(
                "cannot decode the broker's answer: {r} (records compressed with lz4 or zstd \
                 cannot be read by this build)"
            ),
            retriable: false,
        },
        E::RetryFailed(b) => Error::Client {
            context: context.to_string(),
            message: format!("gave up after retrying: {b}"),
            retriable: true,
        },
        other => {
            let retriable = matches!(other, E::Connection(_) | E::Request(_) | E::Timeout);
            Error::Client {
                context: context.to_string(),
                message: other.to_string(),
                retriable,
            }
        }
    }
}

fn api_of(context: &str) -> &'static str {
    if context.starts_with("produc") {
        "Produce"
    } else if context.starts_with("fetch") {
        "Fetch"
    } else if context.starts_with("list") {
        "ListOffsets"
    } else {
        "Metadata"
    }
}

/// rskafka's error enum mirrors Kafka's error table by variant name; find the
/// code with the same name in `kafka-protocol`'s table.
fn rskafka_code(e: rskafka::client::error::ProtocolError) -> i16 {
    let name = format!("{e:?}");
    if let Some(code) = name
        .strip_prefix("Unknown(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|c| c.parse::<i16>().ok())
    {
        return code;
    }
    (-1..=200)
        .find(|code| {
            kafka_protocol::error::ResponseError::try_from_code(*code)
                .is_some_and(|k| k.to_string() == name)
        })
        .unwrap_or(-1)
}
