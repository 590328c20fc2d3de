//! Topic administration: create, delete, list, watermarks and offsets by time.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreateTopicsRequest, DeleteTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::offsets::{self, OffsetQuery};
use crate::protocol::error_codes;
use crate::protocol::TopicMetadata;

/// A topic to create.
///
/// ```
/// use kastellan::admin::NewTopic;
/// let t = NewTopic::new("orders", 6, 1).config("retention.ms", "86400000");
/// assert_eq!(t.name(), "orders");
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until it is used"]
pub struct NewTopic {
    name: String,
    partitions: i32,
    replication_factor: i16,
    configs: Vec<(String, String)>,
}

impl NewTopic {
    /// A topic with `partitions` partitions, each stored on `replication_factor` brokers.
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i16) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            configs: Vec::new(),
        }
    }

    /// Set a topic-level config, e.g. `retention.ms` or `cleanup.policy`.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What [`Admin::create_topic_with`] does when the topic exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IfExists {
    /// Fail with [`Error::TopicAlreadyExists`].
    #[default]
    Fail,
    /// Succeed without changing the existing topic.
    Ignore,
}

pub use crate::offsets::Watermarks;

/// Administrative operations. Made with [`Client::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// Create a topic; fails with [`Error::TopicAlreadyExists`] if it exists.
    ///
    /// Returns once every partition has a leader, so the topic can be used at once.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        self.create_topic_with(topic, IfExists::Fail)
            .await
            .map(|_| ())
    }

    /// Create a topic, choosing what happens when it exists. Returns whether it was created.
    pub async fn create_topic_with(&self, topic: NewTopic, if_exists: IfExists) -> Result<bool> {
        if topic.partitions < 1 || topic.replication_factor < 1 {
            return Err(Error::Config(format!(
                "topic `{}` needs at least one partition and a replication factor of at least 1",
                topic.name
            )));
        }
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(self.timeout_ms())
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                .with_num_partitions(topic.partitions)
                .with_replication_factor(topic.replication_factor)
                .with_configs(
                    topic
                        .configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                )]);
        let cluster = self.client.cluster();
        let (broker, response) = cluster
            .with_retries("CreateTopics", |_| async {
                let conn = self.controller_or_any().await?;
                let r = conn.request(&request).await?;
                Ok((conn.addr().to_string(), r))
            })
            .await?;
        for result in response.topics {
            match result.error_code {
                0 => {}
                error_codes::TOPIC_ALREADY_EXISTS => {
                    return match if_exists {
                        IfExists::Fail => Err(Error::TopicAlreadyExists(topic.name)),
                        IfExists::Ignore => Ok(false),
                    }
                }
                code => {
                    return Err(BrokerError::new(
                        broker,
                        "CreateTopics",
                        code,
                        result.error_message.map(|m| m.to_string()),
                    )
                    .into())
                }
            }
        }
        self.wait_for_leaders(&topic.name, topic.partitions).await?;
        Ok(true)
    }

    /// Delete a topic; fails with [`Error::UnknownTopic`] if it does not exist.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(self.timeout_ms())
            .with_topic_names(vec![TopicName(StrBytes::from_string(topic.to_string()))]);
        let cluster = self.client.cluster();
        let (broker, response) = cluster
            .with_retries("DeleteTopics", |_| async {
                let conn = self.controller_or_any().await?;
                let r = conn.request(&request).await?;
                Ok((conn.addr().to_string(), r))
            })
            .await?;
        cluster.invalidate(topic);
        for result in response.responses {
            match result.error_code {
                0 => {}
                error_codes::UNKNOWN_TOPIC_OR_PARTITION => {
                    return Err(Error::UnknownTopic(topic.to_string()))
                }
                code => {
                    return Err(BrokerError::new(
                        broker,
                        "DeleteTopics",
                        code,
                        result.error_message.map(|m| m.to_string()),
                    )
                    .into())
                }
            }
        }
        Ok(())
    }

    /// All non-internal topics with their partitions, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicMetadata>> {
        let mut topics: Vec<TopicMetadata> = self
            .client
            .cluster()
            .refresh_metadata(&[])
            .await?
            .into_iter()
            .filter(|t| !t.internal)
            .map(|t| (*t).clone())
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Fresh metadata of one topic; [`Error::UnknownTopic`] if it does not exist.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicMetadata> {
        self.client
            .topic_metadata(topic, true)
            .await?
            .map(|t| (*t).clone())
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))
    }

    /// Low and high watermark of every partition of `topic`, by partition.
    pub async fn watermarks(&self, topic: &str) -> Result<Vec<Watermarks>> {
        offsets::watermarks(&self.client, topic).await
    }

    /// For each partition, the first offset whose record timestamp is at or
    /// after `timestamp_ms` (milliseconds since the epoch); `None` when no
    /// such record exists yet.
    pub async fn offsets_for_timestamp(
        &self,
        topic: &str,
        timestamp_ms: i64,
    ) -> Result<BTreeMap<i32, Option<i64>>> {
        if timestamp_ms < 0 {
            return Err(Error::Config(format!(
                "timestamp {timestamp_ms} is negative; give milliseconds since the Unix epoch"
            )));
        }
        offsets::list_offsets(&self.client, topic, OffsetQuery::Timestamp(timestamp_ms)).await
    }

    async fn controller_or_any(
        &self,
    ) -> Result<std::sync::Arc<crate::protocol::connection::BrokerConnection>> {
        let cluster = self.client.cluster();
        match cluster.controller() {
            // In KRaft mode the advertised "controller" is a broker that
            // forwards to the quorum; any broker would do, this one saves a hop.
            Some(id) => match cluster.broker(id).await {
                Ok(c) => Ok(c),
                Err(_) => cluster.any_broker().await,
            },
            None => cluster.any_broker().await,
        }
    }

    /// Poll metadata until every partition of a new topic has a leader,
    /// pausing as the retry policy says, until the retry deadline.
    async fn wait_for_leaders(&self, topic: &str, partitions: i32) -> Result<()> {
        let cluster = self.client.cluster();
        let mut attempts = crate::retry::Attempts::new(self.client.config().retry_policy());
        loop {
            cluster.invalidate(topic);
            match cluster.topic(topic).await {
                Ok(Some(meta))
                    if meta.partitions.len() as i32 >= partitions
                        && meta.partitions.iter().all(|p| p.leader >= 0) =>
                {
                    return Ok(())
                }
                Ok(_) => {}
                Err(e) if e.is_retriable() => {
                    tracing::debug!(topic, error = %e, "metadata of a new topic: retrying")
                }
                Err(e) => return Err(e),
            }
            if !attempts.pause().await {
                return Err(Error::Client {
                    context: format!("creating topic `{topic}`"),
                    message: format!(
                        "the topic was created but not all partitions had a leader within {:?}",
                        attempts.elapsed()
                    ),
                    retriable: true,
                });
            }
        }
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.client.config().request_timeout.as_millis()).unwrap_or(i32::MAX)
    }
}
