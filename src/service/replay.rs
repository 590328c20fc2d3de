//! [`Replay`]: move dead-lettered records back to their origin topics.
//!
//! Progress is kept as committed offsets of a *replay group* (a consumer
//! group used only for its offsets, never joined), so a replay that is run
//! again — or resumed after a crash — starts where the last one stopped.
//! Each run ends at the end offsets it saw when it started: records
//! dead-lettered again while it runs (a replayed record that fails once
//! more) wait for the next run instead of looping.
//!
//! The offsets are committed the way Kafka's own tools reset a group's
//! offsets: OffsetCommit with generation -1 and no member id, accepted by
//! the coordinator while the group has no members.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::headers::{self, without_ours, FailureInfo};
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::producer::{DeliveryFuture, ProducerRecord};
use crate::protocol::connection::BrokerConnection;
use crate::StartOffset;

/// Records produced before their acknowledgements are awaited and the
/// progress committed.
const BATCH: usize = 500;

/// Moves records of a dead-letter topic back to their origin topics: all
/// of them, or those of one origin topic or one group.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use kastellan::service::Replay;
///
/// // The bug is fixed: give the orders that failed in `billing` another go.
/// let report = Replay::new(&client, "dlq")
///     .origin_topic("orders")
///     .origin_group("billing")
///     .run()
///     .await?;
/// println!("{} replayed, {} left alone", report.replayed, report.skipped);
///
/// // Running it again replays nothing twice: only records dead-lettered since.
/// let again = Replay::new(&client, "dlq").origin_topic("orders").origin_group("billing").run().await?;
/// assert_eq!(again.replayed, 0);
/// # Ok(()) }
/// ```
///
/// Each record goes to its origin topic (the `kastellan-origin-topic`
/// header) and, while that partition exists, to its origin partition, with
/// its key, value and own headers; kastellan's failure headers are dropped
/// (so it gets its full retries again) and
/// [`kastellan-replayed-from`](headers::REPLAYED_FROM) names the
/// dead-letter copy. Records without failure headers are left where they
/// are (counted in [`ReplayReport::unreadable`]).
///
/// Progress is committed to the **replay group** every 500 records, once
/// their copies are acknowledged, and at the end; by default the group is
/// named after the topic and the filters
/// (`kastellan-replay.<dlq>[.topic-<origin topic>][.group-<origin group>]`)
/// because records left alone by one filter are done for that group. A
/// second run with the same settings starts where the first ended; a run
/// that crashed re-sends at most the records since its last commit (they
/// may then be in the origin topic twice). Do not run two replays with the
/// same replay group at once.
#[derive(Debug, Clone)]
#[must_use = "a replay does nothing until `run()`"]
pub struct Replay {
    client: Client,
    dead_letter_topic: String,
    origin_topic: Option<String>,
    origin_group: Option<String>,
    replay_group: Option<String>,
}

/// What a [`Replay`] did.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// let report = kastellan::service::Replay::new(&client, "dlq").run().await?;
/// println!(
///     "{} replayed, {} filtered out, {} without failure headers; progress in group {}",
///     report.replayed, report.skipped, report.unreadable, report.replay_group
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The replay group its progress was committed to.
    pub replay_group: String,
    /// Records produced back to their origin topics (and acknowledged).
    pub replayed: u64,
    /// Records left alone by the filters.
    pub skipped: u64,
    /// Records without (valid) failure headers, left alone.
    pub unreadable: u64,
    /// Per partition of the dead-letter topic, the end offset the run
    /// stopped at (the high watermark when it started).
    pub ends: BTreeMap<i32, i64>,
}

impl Replay {
    /// Replay records of `dead_letter_topic`.
    pub fn new(client: &Client, dead_letter_topic: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            dead_letter_topic: dead_letter_topic.into(),
            origin_topic: None,
            origin_group: None,
            replay_group: None,
        }
    }

    /// Only records that came from this topic.
    pub fn origin_topic(mut self, topic: impl Into<String>) -> Self {
        self.origin_topic = Some(topic.into());
        self
    }

    /// Only records that this consumer group dead-lettered.
    pub fn origin_group(mut self, group: impl Into<String>) -> Self {
        self.origin_group = Some(group.into());
        self
    }

    /// The group to keep progress in (default: named after the topic and
    /// the filters; see the type's docs).
    pub fn replay_group(mut self, group: impl Into<String>) -> Self {
        self.replay_group = Some(group.into());
        self
    }

    /// The replay group this replay commits its progress to.
    ///
    /// ```
    /// # async fn demo(client: kastellan::Client) {
    /// use kastellan::service::Replay;
    /// let replay = Replay::new(&client, "dlq").origin_topic("orders");
    /// assert_eq!(replay.replay_group_id(), "kastellan-replay.dlq.topic-orders");
    /// # }
    /// ```
    pub fn replay_group_id(&self) -> String {
        if let Some(g) = &self.replay_group {
            return g.clone();
        }
        let mut name = format!("kastellan-replay.{}", self.dead_letter_topic);
        if let Some(t) = &self.origin_topic {
            name.push_str(&format!(".topic-{t}"));
        }
        if let Some(g) = &self.origin_group {
            name.push_str(&format!(".group-{g}"));
        }
        name
    }

    /// Replay up to the end offsets of now; see the type's docs.
    pub async fn run(self) -> Result<ReplayReport> {
        let group = self.replay_group_id();
        let dlq = self.dead_letter_topic.as_str();
        let meta = self
            .client
            .topic_metadata(dlq, true)
            .await?
            .ok_or_else(|| Error::UnknownTopic(dlq.to_string()))?;
        let partitions: Vec<i32> = meta.partitions.iter().map(|p| p.id).collect();
        let committed = self
            .client
            .cluster()
            .with_retries("OffsetFetch", |_| {
                fetch_offsets(&self.client, &group, dlq, &partitions)
            })
            .await?;
        let mut reader = self.client.reader().topic(dlq).start(StartOffset::Earliest);
        for (p, offset) in &committed {
            reader = reader.start_partition_at(dlq, *p, *offset);
        }
        let reader = reader.build().await?;
        let mut report = ReplayReport {
            replay_group: group.clone(),
            replayed: 0,
            skipped: 0,
            unreadable: 0,
            ends: BTreeMap::new(),
        };
        // Partitions with something to read, and where they start.
        let mut progress: BTreeMap<i32, i64> = BTreeMap::new();
        for (_, p, start, end) in reader.assignment() {
            report.ends.insert(p, end);
            if start < end {
                progress.insert(p, start);
            }
        }
        if progress.is_empty() {
            return Ok(report);
        }
        let producer = self.client.producer().build()?;
        let mut stream = reader.stream_to_end();
        let mut pending: Vec<DeliveryFuture> = Vec::new();
        let mut partition_counts: BTreeMap<String, i32> = BTreeMap::new();
        let result: Result<()> = async {
            while let Some(record) = stream.next().await {
                let record = record?;
                let info = match FailureInfo::parse(&record) {
                    Ok(Some(info)) => Some(info),
                    _ => None,
                };
                progress.insert(record.partition, record.offset + 1);
                let Some(info) = info else {
                    report.unreadable += 1;
                    continue;
                };
                let wanted = self
                    .origin_topic
                    .as_ref()
                    .is_none_or(|t| *t == info.origin_topic)
                    && self
                        .origin_group
                        .as_ref()
                        .is_none_or(|g| info.group.as_ref() == Some(g));
                if !wanted {
                    report.skipped += 1;
                    continue;
                }
                let partitions = match partition_counts.get(&info.origin_topic) {
                    Some(n) => *n,
                    None => {
                        let n = self
                            .client
                            .topic_metadata(&info.origin_topic, false)
                            .await?
                            .map(|m| i32::try_from(m.partitions.len()).unwrap_or(i32::MAX))
                            .ok_or_else(|| {
                                Error::Config(format!(
                                    "{dlq}/{}@{} came from topic `{}`, which does not exist \
                                     any more; recreate it, or replay with a filter that \
                                     leaves it out",
                                    record.partition, record.offset, info.origin_topic
                                ))
                            })?;
                        partition_counts.insert(info.origin_topic.clone(), n);
                        n
                    }
                };
                let mut copy = ProducerRecord::from_record(&without_ours(&record))
                    .topic_name(info.origin_topic.clone())
                    .timestamp(headers::now_ms())
                    .header(
                        headers::REPLAYED_FROM,
                        format!("{dlq}/{}@{}", record.partition, record.offset),
                    );
                if info.origin_partition >= 0 && info.origin_partition < partitions {
                    copy = copy.partition(info.origin_partition);
                }
                pending.push(producer.enqueue(copy).await?);
                report.replayed += 1;
                if pending.len() >= BATCH {
                    settle(&mut pending).await?;
                    commit(&self.client, &group, dlq, &progress).await?;
                }
            }
            settle(&mut pending).await?;
            // Every partition was read to its end.
            for (p, next) in progress.iter_mut() {
                if let Some(end) = report.ends.get(p) {
                    *next = (*next).max(*end);
                }
            }
            commit(&self.client, &group, dlq, &progress).await
        }
        .await;
        let closed = producer.close(std::time::Duration::from_secs(30)).await;
        result?;
        closed?;
        tracing::info!(
            dead_letter_topic = dlq, replay_group = %group, replayed = report.replayed,
            skipped = report.skipped, unreadable = report.unreadable, "replay done"
        );
        Ok(report)
    }
}

/// Wait for every pending copy's acknowledgement.
async fn settle(pending: &mut Vec<DeliveryFuture>) -> Result<()> {
    for delivery in pending.drain(..) {
        delivery.await?;
    }
    Ok(())
}

/// The coordinator of `group`.
async fn coordinator(client: &Client, group: &str) -> Result<Arc<BrokerConnection>> {
    let conn = client.cluster().any_broker().await?;
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let response = conn.request(&request).await?;
    if response.error_code != 0 {
        return Err(BrokerError::new(
            conn.addr(),
            "FindCoordinator",
            response.error_code,
            response.error_message.map(|m| m.to_string()),
        )
        .into());
    }
    let addr = format!("{}:{}", response.host.as_str(), response.port);
    client.cluster().connection(&addr).await
}

/// Committed offsets of `group` in `topic`, where it has any.
async fn fetch_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>> {
    let conn = coordinator(client, group).await?;
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_require_stable(true)
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_indexes(partitions.to_vec())]));
    let response = conn.request(&request).await?;
    if response.error_code != 0 {
        return Err(BrokerError::new(conn.addr(), "OffsetFetch", response.error_code, None).into());
    }
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(BrokerError::new(
                    conn.addr(),
                    "OffsetFetch",
                    p.error_code,
                    Some(format!("{topic}/{}", p.partition_index)),
                )
                .into());
            }
            if p.committed_offset >= 0 {
                out.insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// Commit `offsets` (next offset per partition) for `group`, outside any
/// generation, retrying until the client's retry deadline.
async fn commit(
    client: &Client,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    client
        .cluster()
        .with_retries("OffsetCommit", |_| {
            commit_once(client, group, topic, offsets)
        })
        .await
}

async fn commit_once(
    client: &Client,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<()> {
    let conn = coordinator(client, group).await?;
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                            .with_committed_leader_epoch(-1)
                    })
                    .collect(),
            )]);
    let response = conn.request(&request).await?;
    for t in response.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(BrokerError::new(
                    conn.addr(),
                    "OffsetCommit",
                    p.error_code,
                    Some(format!(
                        "committing replay progress of group `{group}` on {topic}/{} (does \
                         the group have active members? a replay group must not be consumed \
                         by anything else)",
                        p.partition_index
                    )),
                )
                .into());
            }
        }
    }
    Ok(())
}
