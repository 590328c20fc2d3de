//! Fetching one partition in a loop, shared by the reader and the group
//! consumer, on our own wire layer (zero-copy record decoding). Batches go
//! into a bounded channel, so a slow consumer holds at most a few batches
//! per partition in memory: when the channel is full, fetching for that
//! partition waits.

use std::sync::Arc;

use tokio::sync::mpsc;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::offsets::{self, OffsetQuery, StartOffset};
use crate::protocol::connection::BrokerConnection;
use crate::protocol::error_codes::OFFSET_OUT_OF_RANGE;
use crate::protocol::records::decode_batches;
use crate::record::Record;

/// Fetches one partition from its leader into a bounded channel.
///
/// Owned by one task (a reader's fetch task, or a group partition's fetch
/// task); nothing in it is shared except the channel.
pub(crate) struct Fetcher {
    pub client: Client,
    pub topic: Arc<str>,
    pub partition: i32,
    /// The next offset to fetch: one past the last record sent.
    pub next: i64,
    /// Stop before this offset (`read_to_end`); `None` reads forever.
    pub end: Option<i64>,
    /// How long the broker may hold a fetch open.
    pub max_wait_ms: i32,
    /// Most bytes per fetch for this partition.
    pub max_bytes: i32,
    /// Where to go when the next offset is no longer (or not yet) stored:
    /// records were lost to retention, or the log was truncated.
    pub out_of_range: StartOffset,
    /// Fetched batches for the consumer; bounded, so a slow consumer pauses
    /// fetching.
    pub tx: mpsc::Sender<Result<Vec<Record>>>,
}

impl Fetcher {
    /// Fetch until the end (if any), the receiver is dropped, or an error,
    /// which is sent to the receiver before returning.
    pub(crate) async fn run(mut self) {
        if let Err(e) = self.fetch_loop().await {
            let _ = self.tx.send(Err(e)).await;
        }
    }

    /// Fetch until the end (if any) or the receiver is dropped (`Ok`), or
    /// until an error that retrying until the retry deadline did not fix.
    /// `next` stays at the first offset not yet sent, so calling this again
    /// after an error resumes where it stopped.
    pub(crate) async fn fetch_loop(&mut self) -> Result<()> {
        let topic = Arc::clone(&self.topic);
        let partition = self.partition;
        let client = self.client.clone();
        let cluster = client.cluster();
        let mut conn: Option<Arc<BrokerConnection>> = None;
        let mut backoff = Backoff::for_client(client.config());
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            if self.end.is_some_and(|end| self.next >= end) {
                return Ok(());
            }
            let attempt = self.fetch_once(&mut conn).await;
            let (records, next) = match attempt {
                Ok(r) => {
                    backoff.reset();
                    failing_since = None;
                    r
                }
                Err(e) if e.broker_code() == Some(OFFSET_OUT_OF_RANGE) => {
                    self.recover_out_of_range(&e).await?;
                    continue;
                }
                Err(e) if e.is_retriable() => {
                    // Leader moved, broker restarting, connection lost: look
                    // the leader up again and retry until the retry deadline.
                    conn = None;
                    cluster.invalidate(&topic);
                    let deadline = self.client.config().retry_policy().deadline();
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > deadline {
                        return Err(e);
                    }
                    tracing::debug!(topic = %topic, partition, error = %e, "fetch failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(next) = next {
                self.next = self.next.max(next);
            }
            let records = match self.end {
                Some(end) => records.into_iter().take_while(|r| r.offset < end).collect(),
                None => records,
            };
            if !records.is_empty() && self.tx.send(Ok(records)).await.is_err() {
                return Ok(()); // receiver gone
            }
        }
    }

    /// One Fetch request for this partition to its leader, on a connection
    /// of its own: the broker answers one request per connection at a time,
    /// and a fetch may wait `max_wait` for data.
    async fn fetch_once(
        &self,
        conn: &mut Option<Arc<BrokerConnection>>,
    ) -> Result<(Vec<Record>, Option<i64>)> {
        let cluster = self.client.cluster();
        let c = match conn {
            Some(c) if !c.is_closed() => Arc::clone(c),
            _ => {
                let addr = cluster.leader_addr(&self.topic, self.partition).await?;
                let c = cluster.dedicated_connection(&addr).await?;
                *conn = Some(Arc::clone(&c));
                c
            }
        };
        let request = FetchRequest::default()
            .with_max_wait_ms(self.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(self.max_bytes.max(1))
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(self.topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(self.partition)
                    .with_fetch_offset(self.next)
                    .with_partition_max_bytes(self.max_bytes.max(1))])]);
        let response = c.request(&request).await?;
        if response.error_code != 0 {
            return Err(BrokerError::new(c.addr(), "Fetch", response.error_code, None).into());
        }
        let data = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition)
            .ok_or_else(|| Error::Protocol {
                broker: c.addr().to_string(),
                reason: format!("fetch answer lacks {}/{}", self.topic, self.partition),
            })?;
        if data.error_code != 0 {
            return Err(BrokerError::new(
                c.addr(),
                "Fetch",
                data.error_code,
                Some(format!(
                    "{}/{} at offset {}",
                    self.topic, self.partition, self.next
                )),
            )
            .into());
        }
        let Some(bytes) = data.records else {
            return Ok((Vec::new(), None));
        };
        let decoded =
            decode_batches(bytes, &self.topic, self.partition, self.next).map_err(|e| {
                Error::Decode {
                    topic: self.topic.to_string(),
                    partition: self.partition,
                    offset: self.next,
                    reason: e.to_string(),
                }
            })?;
        Ok((decoded.records, decoded.next_offset))
    }

    async fn recover_out_of_range(&mut self, e: &Error) -> Result<()> {
        let marks = offsets::watermarks(&self.client, &self.topic).await?;
        let Some(m) = marks.iter().find(|m| m.partition == self.partition) else {
            return Err(e.duplicate());
        };
        if self.next >= m.low && self.next <= m.high {
            return Ok(()); // the range moved back meanwhile; fetch again
        }
        let by_time = match self.out_of_range {
            StartOffset::Timestamp(ms) => {
                offsets::list_offsets(&self.client, &self.topic, OffsetQuery::Timestamp(ms))
                    .await?
                    .get(&self.partition)
                    .copied()
                    .flatten()
            }
            _ => None,
        };
        let target = self.out_of_range.position(m, by_time);
        tracing::warn!(
            topic = %self.topic,
            partition = self.partition,
            from = self.next,
            to = target,
            low = m.low,
            high = m.high,
            "offset out of range; resetting"
        );
        self.next = target;
        Ok(())
    }
}
