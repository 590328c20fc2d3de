//! Cluster view: broker connections by address and the metadata cache.
//!
//! Connections are opened lazily and replaced when they fail. Metadata is
//! cached per topic and refreshed on demand, for instance after a
//! NOT_LEADER_OR_FOLLOWER or UNKNOWN_TOPIC_OR_PARTITION answer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use backon::Retryable;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::connection::{BrokerConnection, ConnectionSettings, SecurityContext};
use super::error_codes;
use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// One partition as the last metadata answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition index.
    pub id: i32,
    /// Broker id of the leader, or -1 while there is none.
    pub leader: i32,
    /// Broker ids of all replicas.
    pub replicas: Vec<i32>,
    /// Broker ids of the in-sync replicas.
    pub isr: Vec<i32>,
}

/// A topic as the last metadata answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// Whether Kafka marks the topic internal (`__consumer_offsets`).
    pub internal: bool,
    /// Partitions, sorted by index.
    pub partitions: Vec<PartitionMetadata>,
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub id: i32,
    /// `host:port` it advertises.
    pub addr: String,
    /// Rack, if configured.
    pub rack: Option<String>,
}

#[derive(Debug, Default)]
struct MetadataCache {
    brokers: HashMap<i32, BrokerInfo>,
    controller: Option<i32>,
    topics: HashMap<String, Arc<TopicMetadata>>,
}

/// Shared cluster state for one client.
#[derive(Debug)]
pub(crate) struct Cluster {
    config: ClientConfig,
    settings: ConnectionSettings,
    connections: tokio::sync::Mutex<HashMap<String, Arc<BrokerConnection>>>,
    metadata: RwLock<MetadataCache>,
}

impl Cluster {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let settings = ConnectionSettings {
            client_id: config.client_id.clone(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            security: Arc::new(SecurityContext::new(&config)?),
        };
        Ok(Self {
            config,
            settings,
            connections: tokio::sync::Mutex::new(HashMap::new()),
            metadata: RwLock::new(MetadataCache::default()),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// A live connection to `addr`, opened if needed.
    pub async fn connection(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(addr) {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        let conn = Arc::new(BrokerConnection::connect(addr, self.settings.clone()).await?);
        conns.insert(addr.to_string(), Arc::clone(&conn));
        Ok(conn)
    }

    /// A new connection to `addr` that is not shared through the pool.
    ///
    /// Brokers handle one request per connection at a time, in order, so a
    /// request that blocks on the broker (JoinGroup waits for the whole
    /// rebalance) would hold up every other user of a shared connection. Each
    /// group member therefore talks to its coordinator on its own connection.
    pub async fn dedicated_connection(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        Ok(Arc::new(
            BrokerConnection::connect(addr, self.settings.clone()).await?,
        ))
    }

    /// A live connection to the broker with node id `id`.
    pub async fn broker(&self, id: i32) -> Result<Arc<BrokerConnection>> {
        let addr = self.broker_addr(id);
        let addr = match addr {
            Some(a) => a,
            None => {
                self.refresh_metadata(&[]).await?;
                self.broker_addr(id).ok_or_else(|| Error::Protocol {
                    broker: "cluster".into(),
                    reason: format!("metadata lists no broker with node id {id}"),
                })?
            }
        };
        self.connection(&addr).await
    }

    fn broker_addr(&self, id: i32) -> Option<String> {
        self.read().brokers.get(&id).map(|b| b.addr.clone())
    }

    /// Any reachable broker: a known broker first, then the bootstrap list,
    /// retried with backoff until the retry deadline.
    pub async fn any_broker(&self) -> Result<Arc<BrokerConnection>> {
        {
            let conns = self.connections.lock().await;
            if let Some(c) = conns.values().find(|c| !c.is_closed()) {
                return Ok(Arc::clone(c));
            }
        }
        let started = Instant::now();
        let attempt = || async {
            let mut candidates: Vec<String> = self
                .read()
                .brokers
                .values()
                .map(|b| b.addr.clone())
                .collect();
            candidates.extend(self.config.bootstrap.iter().cloned());
            let mut last = None;
            for addr in &candidates {
                match self.connection(addr).await {
                    Ok(c) => return Ok(c),
                    // Wrong credentials or certificates: trying again, or
                    // another broker, will not help.
                    Err(e) if !e.is_retriable() => return Err(e),
                    Err(e) => {
                        tracing::debug!(broker = %addr, error = %e, "broker not reachable");
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or_else(|| Error::Config("no bootstrap servers".into())))
        };
        attempt
            .retry(self.config.backoff())
            .when(Error::is_retriable)
            .notify(
                |e, delay| tracing::warn!(error = %e, "no broker reachable, retrying in {delay:?}"),
            )
            .await
            .map_err(|last| {
                if last.is_retriable() {
                    Error::Unreachable {
                        brokers: self.config.bootstrap.join(","),
                        elapsed: started.elapsed(),
                        last: last.to_string(),
                    }
                } else {
                    last
                }
            })
    }

    /// Ask a broker for metadata of `topics` (all topics when empty) and
    /// update the cache. Topics that do not exist are absent from the result.
    pub async fn refresh_metadata(&self, topics: &[&str]) -> Result<Vec<Arc<TopicMetadata>>> {
        let request = MetadataRequest::default()
            .with_topics(if topics.is_empty() {
                None
            } else {
                Some(
                    topics
                        .iter()
                        .map(|t| {
                            MetadataRequestTopic::default()
                                .with_name(Some(TopicName(StrBytes::from_string((*t).to_string()))))
                        })
                        .collect(),
                )
            })
            .with_allow_auto_topic_creation(false);
        let response = self
            .with_retries("Metadata", || async {
                let conn = self.any_broker().await?;
                let r = conn.request(&request).await;
                if r.is_err() {
                    // Drop the failed connection so the next attempt tries another broker.
                    self.forget(conn.addr()).await;
                }
                r
            })
            .await?;
        Ok(self.apply(response))
    }

    async fn forget(&self, addr: &str) {
        let mut conns = self.connections.lock().await;
        if conns.get(addr).is_some_and(|c| c.is_closed()) {
            conns.remove(addr);
        }
    }

    fn apply(&self, response: MetadataResponse) -> Vec<Arc<TopicMetadata>> {
        let mut cache = self.metadata.write().unwrap_or_else(|p| p.into_inner());
        if !response.brokers.is_empty() {
            cache.brokers = response
                .brokers
                .iter()
                .map(|b| {
                    (
                        b.node_id.0,
                        BrokerInfo {
                            id: b.node_id.0,
                            addr: format!("{}:{}", b.host.as_str(), b.port),
                            rack: b.rack.as_ref().map(|r| r.to_string()),
                        },
                    )
                })
                .collect();
        }
        cache.controller = (response.controller_id.0 >= 0).then_some(response.controller_id.0);
        let mut out = Vec::new();
        for t in response.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            if t.error_code != 0 {
                if t.error_code == error_codes::UNKNOWN_TOPIC_OR_PARTITION {
                    cache.topics.remove(&name);
                }
                tracing::debug!(topic = %name, code = t.error_code, "metadata error for topic");
                continue;
            }
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .iter()
                .map(|p| PartitionMetadata {
                    id: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                    isr: p.isr_nodes.iter().map(|r| r.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.id);
            let meta = Arc::new(TopicMetadata {
                name: name.clone(),
                internal: t.is_internal,
                partitions,
            });
            cache.topics.insert(name, Arc::clone(&meta));
            out.push(meta);
        }
        out
    }

    /// Cached metadata of a topic, fetched if missing. `Ok(None)` when the topic does not exist.
    pub async fn topic(&self, topic: &str) -> Result<Option<Arc<TopicMetadata>>> {
        if let Some(t) = self.read().topics.get(topic) {
            return Ok(Some(Arc::clone(t)));
        }
        let found = self.refresh_metadata(&[topic]).await?;
        Ok(found.into_iter().find(|t| t.name == topic))
    }

    /// Known brokers from the last metadata answer.
    pub fn brokers(&self) -> Vec<BrokerInfo> {
        let mut b: Vec<_> = self.read().brokers.values().cloned().collect();
        b.sort_by_key(|b| b.id);
        b
    }

    /// The controller id from the last metadata answer.
    pub fn controller(&self) -> Option<i32> {
        self.read().controller
    }

    /// `host:port` of the leader of a partition, from cached metadata.
    pub async fn leader_addr(&self, topic: &str, partition: i32) -> Result<String> {
        let meta = self
            .topic(topic)
            .await?
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        let p = meta
            .partitions
            .iter()
            .find(|p| p.id == partition)
            .ok_or_else(|| Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: meta.partitions.len() as i32,
            })?;
        if p.leader >= 0 {
            if let Some(addr) = self.broker_addr(p.leader) {
                return Ok(addr);
            }
        }
        self.invalidate(topic);
        Err(crate::error::BrokerError::new(
            "metadata",
            "Metadata",
            super::error_codes::LEADER_NOT_AVAILABLE,
            Some(format!("{topic}/{partition} has no known leader")),
        )
        .into())
    }

    /// Drop cached metadata of a topic so the next use fetches it again.
    pub fn invalidate(&self, topic: &str) {
        self.metadata
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .topics
            .remove(topic);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        self.metadata.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `op` until it succeeds, fails with a non-retriable error, or the
    /// retry deadline passes.
    pub async fn with_retries<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        op.retry(self.config.backoff())
            .when(Error::is_retriable)
            .notify(|e, delay| tracing::debug!(error = %e, "{what} failed, retrying in {delay:?}"))
            .await
    }
}
