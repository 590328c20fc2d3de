//! Where to start reading: [`StartOffset`], and the ListOffsets lookups that
//! turn it into offsets. Used by the reader, the group consumer (partitions
//! without a committed offset) and the fetch pool (an offset out of range),
//! and by [`Admin`](crate::Admin), whose public methods delegate here. The
//! data path calls this module directly instead of going through the public
//! admin facade.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::error_codes;

/// Where to start reading a partition.
///
/// The [`Reader`](crate::Reader) starts every partition here; a group
/// consumer starts here only in partitions its group has no committed
/// offset for (a committed offset always wins), and also returns here when
/// its position is no longer stored (removed by retention).
///
/// ```
/// use kastellan::StartOffset;
/// assert_eq!(StartOffset::default(), StartOffset::Earliest);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartOffset {
    /// The oldest record still stored.
    #[default]
    Earliest,
    /// After the newest record: only records produced from now on.
    Latest,
    /// This offset in every partition (clamped into the stored range).
    Offset(i64),
    /// The first record at or after this time (milliseconds since the epoch);
    /// partitions with no such record start at their end.
    Timestamp(i64),
}

/// Low and high watermark of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Watermarks {
    /// Partition index.
    pub partition: i32,
    /// First offset still stored (log start offset).
    pub low: i64,
    /// Offset the next produced record will get (high watermark).
    pub high: i64,
}

/// What one ListOffsets request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetQuery {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// The first offset whose record timestamp is at or after this time (ms).
    Timestamp(i64),
}

impl OffsetQuery {
    /// The `timestamp` field of the request: Kafka's special values -2 and -1
    /// stand for earliest and latest.
    fn wire_timestamp(self) -> i64 {
        match self {
            OffsetQuery::Earliest => -2,
            OffsetQuery::Latest => -1,
            OffsetQuery::Timestamp(ms) => ms,
        }
    }
}

impl StartOffset {
    /// The position for one partition with watermarks `marks`; `by_time` is
    /// the partition's answer to a timestamp query, when this is
    /// [`StartOffset::Timestamp`].
    pub(crate) fn position(self, marks: &Watermarks, by_time: Option<i64>) -> i64 {
        match self {
            StartOffset::Earliest => marks.low,
            StartOffset::Latest => marks.high,
            StartOffset::Offset(o) => o.clamp(marks.low, marks.high.max(marks.low)),
            StartOffset::Timestamp(_) => by_time.unwrap_or(marks.high),
        }
    }
}

/// ListOffsets for every partition of `topic`, grouped per leader; `None`
/// where the broker has no such offset (a timestamp after the last record).
pub(crate) async fn list_offsets(
    client: &Client,
    topic: &str,
    query: OffsetQuery,
) -> Result<BTreeMap<i32, Option<i64>>> {
    let cluster = client.cluster();
    let timestamp = query.wire_timestamp();
    cluster
        .with_retries("ListOffsets", |_| async {
            // One metadata attempt: this loop is the one that retries.
            let meta = cluster
                .topic(topic)
                .await?
                .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
            let mut by_leader: HashMap<i32, Vec<i32>> = HashMap::new();
            for p in &meta.partitions {
                by_leader.entry(p.leader).or_default().push(p.id);
            }
            let mut out = BTreeMap::new();
            for (leader, partitions) in by_leader {
                if leader < 0 {
                    cluster.invalidate(topic);
                    return Err(BrokerError::new(
                        "metadata",
                        "ListOffsets",
                        error_codes::LEADER_NOT_AVAILABLE,
                        None,
                    )
                    .into());
                }
                let conn = cluster.broker(leader).await?;
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(*p)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        )]);
                let response = conn.request(&request).await?;
                for t in response.topics {
                    for p in t.partitions {
                        if p.error_code != 0 {
                            if error_codes::needs_metadata_refresh(p.error_code) {
                                cluster.invalidate(topic);
                            }
                            return Err(BrokerError::new(
                                conn.addr(),
                                "ListOffsets",
                                p.error_code,
                                Some(format!("{topic}/{}", p.partition_index)),
                            )
                            .into());
                        }
                        out.insert(p.partition_index, (p.offset >= 0).then_some(p.offset));
                    }
                }
            }
            Ok(out)
        })
        .await
}

/// Low and high watermark of every partition of `topic`, by partition.
pub(crate) async fn watermarks(client: &Client, topic: &str) -> Result<Vec<Watermarks>> {
    let low = list_offsets(client, topic, OffsetQuery::Earliest).await?;
    let high = list_offsets(client, topic, OffsetQuery::Latest).await?;
    Ok(low
        .into_iter()
        .map(|(partition, low)| Watermarks {
            partition,
            low: low.unwrap_or(0),
            high: high.get(&partition).copied().flatten().unwrap_or(0),
        })
        .collect())
}

/// Where `start` puts each partition of `topic`, by partition. Asks only
/// what `start` needs: one ListOffsets round for earliest or latest, the
/// watermarks for an explicit offset, a timestamp query (and the high
/// watermarks as fallback) for a time.
pub(crate) async fn start_positions(
    client: &Client,
    topic: &str,
    start: StartOffset,
) -> Result<BTreeMap<i32, i64>> {
    let simple = |query| async move {
        Ok::<_, Error>(
            list_offsets(client, topic, query)
                .await?
                .into_iter()
                .map(|(p, o)| (p, o.unwrap_or(0)))
                .collect(),
        )
    };
    match start {
        StartOffset::Earliest => simple(OffsetQuery::Earliest).await,
        StartOffset::Latest => simple(OffsetQuery::Latest).await,
        StartOffset::Offset(_) => Ok(watermarks(client, topic)
            .await?
            .iter()
            .map(|m| (m.partition, start.position(m, None)))
            .collect()),
        StartOffset::Timestamp(ms) => {
            let by_time = list_offsets(client, topic, OffsetQuery::Timestamp(ms)).await?;
            let high = list_offsets(client, topic, OffsetQuery::Latest).await?;
            Ok(high
                .into_iter()
                .map(|(p, h)| {
                    let at = by_time.get(&p).copied().flatten();
                    (p, at.or(h).unwrap_or(0))
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_watermarks() {
        let m = Watermarks {
            partition: 0,
            low: 10,
            high: 20,
        };
        assert_eq!(StartOffset::Earliest.position(&m, None), 10);
        assert_eq!(StartOffset::Latest.position(&m, None), 20);
        assert_eq!(StartOffset::Offset(5).position(&m, None), 10);
        assert_eq!(StartOffset::Offset(15).position(&m, None), 15);
        assert_eq!(StartOffset::Offset(99).position(&m, None), 20);
        assert_eq!(StartOffset::Timestamp(1).position(&m, Some(12)), 12);
        assert_eq!(StartOffset::Timestamp(1).position(&m, None), 20);
        assert_eq!(OffsetQuery::Earliest.wire_timestamp(), -2);
        assert_eq!(OffsetQuery::Latest.wire_timestamp(), -1);
    }
}
