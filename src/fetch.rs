//! Fetching one partition in a loop, shared by the reader and the group
//! consumer, on our own wire layer (zero-copy record decoding). Batches go
//! into a bounded channel, so a slow consumer holds at most a few batches
//! per partition in memory: when the channel is full, fetching for that
//! partition waits.
//!
//! A group partition's fetch loop also keeps a [`FetchProgress`]: when it
//! last fetched successfully (an empty answer is a success: nothing to
//! fetch is not "not fetching"), whether it is waiting for the consumer,
//! and how many fetched records the consumer has not taken yet. The group
//! consumer's watchdog reads it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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
    /// Progress for a watchdog (group partitions); `None` for readers.
    pub progress: Option<Arc<FetchProgress>>,
}

/// How one partition's fetching is going, shared between its fetch loop
/// (writer), its consumer (which takes fetched records) and a watchdog
/// (reader). Lock-free: a few atomics written once per fetch or batch.
#[derive(Debug)]
pub(crate) struct FetchProgress {
    /// Time base of `last_ok`.
    origin: Instant,
    /// Milliseconds from `origin` to the last successful fetch (empty
    /// answers count), or to the end of the last wait for the consumer;
    /// the partition's start until then.
    last_ok: AtomicU64,
    /// Set while the fetch loop waits for room in its channel: the consumer
    /// is behind. Not fetching, but not failing to fetch either.
    waiting: AtomicBool,
    /// Records fetched (handed to the channel, or waiting to be) that the
    /// consumer has not finished taking.
    buffered: AtomicUsize,
    /// The next offset to fetch.
    next: AtomicI64,
}

impl FetchProgress {
    /// Progress of a partition whose fetching starts now at `next`.
    pub(crate) fn new(next: i64) -> Self {
        Self {
            origin: Instant::now(),
            last_ok: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            buffered: AtomicUsize::new(0),
            next: AtomicI64::new(next),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A fetch succeeded (with or without records); `next` is the next
    /// offset to fetch.
    fn fetched(&self, next: i64) {
        self.last_ok.store(self.now_ms(), Ordering::Relaxed);
        self.next.store(next, Ordering::Relaxed);
    }

    /// `records` fetched records go to the consumer; the loop may wait for
    /// room from here until [`resumed`](Self::resumed).
    fn handing_over(&self, records: usize) {
        self.buffered.fetch_add(records, Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// The consumer took the batch into its channel: fetching resumes, and
    /// the time waited does not count as time without a fetch.
    fn resumed(&self) {
        self.last_ok.store(self.now_ms(), Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// The consumer is done with `records` fetched records.
    pub(crate) fn taken(&self, records: usize) {
        let _ = self
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(records))
            });
    }

    /// How long the loop has been trying to fetch without success; `None`
    /// while it waits for the consumer.
    pub(crate) fn failing_for(&self) -> Option<Duration> {
        if self.waiting.load(Ordering::Relaxed) {
            return None;
        }
        let since = self.last_ok.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Fetched records the consumer has not finished taking.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// The next offset to fetch.
    pub(crate) fn next_offset(&self) -> i64 {
        self.next.load(Ordering::Relaxed)
    }
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
            if let Some(progress) = &self.progress {
                progress.fetched(self.next);
            }
            let records: Vec<Record> = match self.end {
                Some(end) => records.into_iter().take_while(|r| r.offset < end).collect(),
                None => records,
            };
            if records.is_empty() {
                continue;
            }
            if let Some(progress) = &self.progress {
                progress.handing_over(records.len());
            }
            if self.tx.send(Ok(records)).await.is_err() {
                return Ok(()); // receiver gone
            }
            if let Some(progress) = &self.progress {
                progress.resumed();
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
