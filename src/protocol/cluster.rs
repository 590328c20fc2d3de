//! Cluster view: broker connections by address and the metadata cache.
//!
//! Connections are opened lazily and replaced when they fail. Metadata is
//! cached per topic and refreshed on demand, for instance after a
//! NOT_LEADER_OR_FOLLOWER or UNKNOWN_TOPIC_OR_PARTITION answer.
//!
//! Every method here makes one attempt and reports; the retrying happens in
//! the callers' loops ([`crate::retry`], the producer's and fetchers'
//! loops), so retries never nest and every deadline is one deadline.
//! [`Cluster::refresh_metadata`] and [`Cluster::with_retries`] are the
//! retrying entry points for operations that have no loop of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::connection::{BrokerConnection, ConnectionSettings, SecurityContext};
use super::error_codes;
use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// One partition as the last metadata answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionMetadata {
    /// Partition index.
    pub id: i32,
    /// Broker id of the leader, or -1 while there is none.
    pub leader: i32,
    /// The leader's epoch (KIP-320), or -1 if the broker did not say.
    /// Fetches carry it so that a deposed leader refuses them.
    pub leader_epoch: i32,
    /// Broker ids of all replicas.
    pub replicas: Vec<i32>,
    /// Broker ids of the in-sync replicas.
    pub isr: Vec<i32>,
}

/// A topic as the last metadata answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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

/// The pooled connection to one address. Its async lock is held while the
/// connection is opened, so at most one connect per address runs at a time
/// and the callers that need that broker wait for it, while callers of
/// other brokers never do.
type Slot = tokio::sync::Mutex<Option<Arc<BrokerConnection>>>;

/// What a pooled connection carries. Brokers answer one connection's
/// requests in order, and an acks=all Produce may wait for replicas for a
/// long time (a follower that died stays in the in-sync set until the
/// controller fences it); metadata and other short requests on the same
/// connection would wait behind it, just when the producer needs fresh
/// metadata to find the new leader. So produce requests get connections of
/// their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// Metadata, admin, ListOffsets, InitProducerId: short requests.
    Control,
    /// Produce requests, pipelined.
    Produce,
}

/// Shared cluster state for one client.
#[derive(Debug)]
pub(crate) struct Cluster {
    config: ClientConfig,
    settings: ConnectionSettings,
    /// Pooled connections by `host:port` and lane. The map's lock is held
    /// only to find or add a slot, never across an `.await`.
    pool: Mutex<HashMap<(String, Lane), Arc<Slot>>>,
    metadata: RwLock<MetadataCache>,
    /// Where [`Cluster::any_broker`] starts among its candidates; moved on
    /// after a failure so a dead first entry does not cost every pass.
    rotation: AtomicUsize,
}

impl Cluster {
    pub(crate) fn new(config: ClientConfig) -> Result<Self> {
        let settings = ConnectionSettings {
            client_id: config.client_id.clone(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            security: Arc::new(SecurityContext::new(&config)?),
            counters: Arc::default(),
        };
        Ok(Self {
            config,
            settings,
            pool: Mutex::new(HashMap::new()),
            metadata: RwLock::new(MetadataCache::default()),
            rotation: AtomicUsize::new(0),
        })
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The client's wire counters (see [`super::stats`]).
    pub(crate) fn counters(&self) -> &Arc<super::stats::WireCounters> {
        &self.settings.counters
    }

    /// A live connection to `addr` for short requests, opened if needed.
    pub(crate) async fn connection(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        self.connection_within(addr, Lane::Control, self.settings.connect_timeout)
            .await
    }

    /// A live connection to `addr` for produce requests (see [`Lane`]).
    pub(crate) async fn produce_connection(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        self.connection_within(addr, Lane::Produce, self.settings.connect_timeout)
            .await
    }

    /// A live connection to `addr` in `lane`; opening one may take the
    /// connect timeout or `within`, whichever is shorter.
    pub(crate) async fn connection_within(
        &self,
        addr: &str,
        lane: Lane,
        within: Duration,
    ) -> Result<Arc<BrokerConnection>> {
        let slot = Arc::clone(
            self.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((addr.to_string(), lane))
                .or_default(),
        );
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
        }
        *slot = None;
        let conn = BrokerConnection::connect(addr, self.settings.clone(), within).await?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// A new connection to `addr` that is not shared through the pool.
    ///
    /// Brokers handle one request per connection at a time, in order, so a
    /// request that blocks on the broker (JoinGroup waits for the whole
    /// rebalance) would hold up every other user of a shared connection. Each
    /// group member therefore talks to its coordinator on its own connection.
    pub(crate) async fn dedicated_connection(&self, addr: &str) -> Result<Arc<BrokerConnection>> {
        BrokerConnection::connect(addr, self.settings.clone(), self.settings.connect_timeout).await
    }

    /// A live connection to the broker with node id `id` (one metadata
    /// request if the id is not known yet).
    pub(crate) async fn broker(&self, id: i32) -> Result<Arc<BrokerConnection>> {
        let addr = match self.broker_addr(id) {
            Some(a) => a,
            None => {
                self.metadata_once(&[], self.settings.request_timeout)
                    .await?;
                self.broker_addr(id).ok_or_else(|| Error::Protocol {
                    broker: "cluster".into(),
                    reason: format!("metadata lists no broker with node id {id}"),
                })?
            }
        };
        self.connection(&addr).await
    }

    /// `host:port` of the broker with node id `id`, from cached metadata.
    pub(crate) fn broker_addr(&self, id: i32) -> Option<String> {
        self.read().brokers.get(&id).map(|b| b.addr.clone())
    }

    /// Any open pooled connection for short requests, without waiting for
    /// a slot being opened.
    fn any_open(&self) -> Option<Arc<BrokerConnection>> {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.iter()
            .filter(|((_, lane), _)| *lane == Lane::Control)
            .find_map(|(_, slot)| {
                let slot = slot.try_lock().ok()?;
                slot.as_ref().filter(|c| !c.is_closed()).map(Arc::clone)
            })
    }

    /// Any reachable broker, within the connect timeout: an open connection
    /// if there is one, else one pass over the known brokers and the
    /// bootstrap list. No retries; see [`Cluster::any_broker_within`].
    pub(crate) async fn any_broker(&self) -> Result<Arc<BrokerConnection>> {
        self.any_broker_within(self.settings.connect_timeout).await
    }

    /// One pass over the candidates within `within`. Fails with
    /// [`Error::Unreachable`] (retriable) when no candidate answered and at
    /// least one failure may go away; with the failure itself when a
    /// candidate refused us in a way no retry or other broker fixes (TLS,
    /// authentication), or when every candidate answered with something
    /// that is not Kafka.
    pub(crate) async fn any_broker_within(
        &self,
        within: Duration,
    ) -> Result<Arc<BrokerConnection>> {
        if let Some(c) = self.any_open() {
            return Ok(c);
        }
        let started = Instant::now();
        let mut candidates: Vec<String> = {
            let cache = self.read();
            let mut known: Vec<&BrokerInfo> = cache.brokers.values().collect();
            known.sort_by_key(|b| b.id);
            known.into_iter().map(|b| b.addr.clone()).collect()
        };
        for b in &self.config.bootstrap {
            if !candidates.contains(b) {
                candidates.push(b.clone());
            }
        }
        if candidates.is_empty() {
            return Err(Error::Config("no bootstrap servers".into()));
        }
        let start = self.rotation.load(Ordering::Relaxed) % candidates.len();
        candidates.rotate_left(start);
        let mut last: Option<Error> = None;
        let mut may_recover = false;
        for addr in &candidates {
            let left = within.saturating_sub(started.elapsed());
            if left.is_zero() {
                may_recover = true;
                break;
            }
            match self.connection_within(addr, Lane::Control, left).await {
                Ok(c) => return Ok(c),
                // Wrong credentials or certificates: trying again, or
                // another broker, will not help.
                Err(e @ (Error::Tls { .. } | Error::Authentication { .. } | Error::Config(_))) => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::debug!(broker = %addr, error = %e, "broker not reachable");
                    self.rotation.fetch_add(1, Ordering::Relaxed);
                    may_recover |= e.is_retriable();
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) if !may_recover => Err(e),
            last => Err(Error::Unreachable {
                brokers: candidates.join(","),
                elapsed: started.elapsed(),
                last: last.map_or_else(
                    || format!("no time left to try within {within:?}"),
                    |e| e.to_string(),
                ),
            }),
        }
    }

    /// Metadata of `topics` (all topics when empty), retried until the
    /// retry deadline; updates the cache. Topics that do not exist are
    /// absent from the result.
    pub(crate) async fn refresh_metadata(
        &self,
        topics: &[&str],
    ) -> Result<Vec<Arc<TopicMetadata>>> {
        self.with_retries("Metadata", |left| self.metadata_once(topics, left))
            .await
    }

    /// One Metadata request to any broker, within `within`; updates the cache.
    pub(crate) async fn metadata_once(
        &self,
        topics: &[&str],
        within: Duration,
    ) -> Result<Vec<Arc<TopicMetadata>>> {
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
        let started = Instant::now();
        let conn = self.any_broker_within(within).await?;
        let left = within.saturating_sub(started.elapsed());
        let version = conn.version_for::<MetadataRequest>()?;
        let timeout = self
            .settings
            .request_timeout
            .min(left.max(Duration::from_millis(1)));
        // A failed request closes its connection (timeouts included), so the
        // next attempt goes to another broker or a fresh connection.
        let response = conn
            .request_with_timeout(&request, version, timeout)
            .await?;
        Ok(self.apply(response))
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
                    leader_epoch: p.leader_epoch,
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

    /// Cached metadata of a topic, if there is any; never asks a broker.
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<Arc<TopicMetadata>> {
        self.read().topics.get(topic).cloned()
    }

    /// Cached metadata of a topic, fetched (one attempt) if missing.
    /// `Ok(None)` when the topic does not exist.
    pub(crate) async fn topic(&self, topic: &str) -> Result<Option<Arc<TopicMetadata>>> {
        if let Some(t) = self.read().topics.get(topic) {
            return Ok(Some(Arc::clone(t)));
        }
        let found = self
            .metadata_once(
                &[topic],
                self.settings.connect_timeout + self.settings.request_timeout,
            )
            .await?;
        Ok(found.into_iter().find(|t| t.name == topic))
    }

    /// Known brokers from the last metadata answer.
    pub(crate) fn brokers(&self) -> Vec<BrokerInfo> {
        let mut b: Vec<_> = self.read().brokers.values().cloned().collect();
        b.sort_by_key(|b| b.id);
        b
    }

    /// The controller id from the last metadata answer.
    pub(crate) fn controller(&self) -> Option<i32> {
        self.read().controller
    }

    /// `host:port` of the leader of a partition, from cached metadata.
    pub(crate) async fn leader_addr(&self, topic: &str, partition: i32) -> Result<String> {
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
    pub(crate) fn invalidate(&self, topic: &str) {
        self.metadata
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .topics
            .remove(topic);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        self.metadata.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `op` until it succeeds, fails with an error retrying cannot fix,
    /// or the retry deadline passes ([`crate::retry::retry`]); `op` gets
    /// the time left.
    pub(crate) async fn with_retries<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        crate::retry::retry(self.config.retry_policy(), what, op).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_peer;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_broker_that_does_not_answer_holds_up_only_its_own_callers() {
        // A peer that accepts connections and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent_addr = silent.local_addr().expect("addr").to_string();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
                let _ = accepted_tx.send(());
            }
        });
        let good = test_peer::start().await;
        let cluster = Arc::new(
            Cluster::new(ClientConfig::new(&good.addr).connect_timeout(Duration::from_secs(20)))
                .expect("cluster"),
        );
        let stuck = tokio::spawn({
            let cluster = Arc::clone(&cluster);
            async move { cluster.connection(&silent_addr).await.map(|_| ()) }
        });
        accepted.recv().await.expect("the silent peer was reached");
        // While that connect waits for its ApiVersions answer, another
        // broker's connection opens at once.
        cluster.connection(&good.addr).await.expect("good broker");
        assert!(
            !stuck.is_finished(),
            "the silent broker's connect ended first: the pool serialised them"
        );
        stuck.abort();
    }
}
