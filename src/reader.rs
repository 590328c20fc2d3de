//! The reader: reads partitions directly, without a consumer group, and never
//! commits offsets (Kefka's Reader). For browsing topics and for services that
//! rebuild an in-memory view from a topic at start-up ([`Reader::read_to_end`]).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::fetch::{FetchPool, FetchSettings, Fetched, Lease, OnFailure, PartitionFetch};
use crate::offsets::{self, OffsetQuery};
use crate::record::Record;
use crate::TopicPartition;

pub use crate::offsets::StartOffset;

/// Builds a [`Reader`]. Made with [`Client::reader`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until it is used"]
pub struct ReaderBuilder {
    client: Client,
    assignments: Vec<(String, Option<Vec<i32>>)>,
    start: StartOffset,
    overrides: BTreeMap<(String, i32), i64>,
    max_wait: Duration,
    max_partition_bytes: i32,
    buffered_batches: usize,
    fetch_buffer_bytes: usize,
}

impl ReaderBuilder {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            assignments: Vec::new(),
            start: StartOffset::Earliest,
            overrides: BTreeMap::new(),
            max_wait: Duration::from_millis(500),
            max_partition_bytes: 1024 * 1024,
            buffered_batches: 4,
            fetch_buffer_bytes: crate::fetch::DEFAULT_BUFFER_BYTES,
        }
    }

    /// Read every partition of `topic`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.assignments.push((topic.into(), None));
        self
    }

    /// Read only these partitions of `topic`.
    pub fn partitions(mut self, topic: impl Into<String>, partitions: &[i32]) -> Self {
        self.assignments
            .push((topic.into(), Some(partitions.to_vec())));
        self
    }

    /// Where to start (default [`StartOffset::Earliest`]).
    pub fn start(mut self, start: StartOffset) -> Self {
        self.start = start;
        self
    }

    /// Start one partition at an explicit offset, whatever `start` says.
    pub fn start_partition_at(
        mut self,
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
    ) -> Self {
        self.overrides.insert((topic.into(), partition), offset);
        self
    }

    /// How long the broker may hold a fetch open waiting for new records (default 500 ms).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Most bytes fetched from one partition per request (default 1 MiB). A
    /// record batch larger than this is still returned whole by the broker.
    pub fn max_partition_bytes(mut self, bytes: i32) -> Self {
        self.max_partition_bytes = bytes;
        self
    }

    /// Fetched batches buffered ahead of the consumer, per partition read
    /// (default 4): the reader's queue holds up to this many batches times
    /// the number of partitions, shared by all of them.
    pub fn buffered_batches(mut self, n: usize) -> Self {
        self.buffered_batches = n.max(1);
        self
    }

    /// Most bytes of fetched records waiting for the consumer, over all
    /// partitions (default 32 MiB). Partitions are fetched one request per
    /// broker; the bytes of batches not yet consumed, plus what requests
    /// in flight may return, stay within this bound (exceeded by at most
    /// one batch, which a broker always returns whole).
    pub fn fetch_buffer_bytes(mut self, bytes: usize) -> Self {
        self.fetch_buffer_bytes = bytes.max(1);
        self
    }

    /// Resolve partitions and start offsets.
    pub async fn build(self) -> Result<Reader> {
        if self.assignments.is_empty() {
            return Err(Error::Config(
                "the reader has no topic; call .topic(..) or .partitions(..)".into(),
            ));
        }
        if self.max_partition_bytes < 1 {
            return Err(Error::Config("max_partition_bytes must be positive".into()));
        }
        let mut positions = Vec::new();
        for (topic, wanted) in &self.assignments {
            let meta = self
                .client
                .topic_metadata(topic, true)
                .await?
                .ok_or_else(|| Error::UnknownTopic(topic.clone()))?;
            let all: Vec<i32> = meta.partitions.iter().map(|p| p.id).collect();
            let chosen = match wanted {
                None => all.clone(),
                Some(w) => {
                    for p in w {
                        if !all.contains(p) {
                            return Err(Error::UnknownPartition {
                                topic: topic.clone(),
                                partition: *p,
                                count: all.len() as i32,
                            });
                        }
                    }
                    w.clone()
                }
            };
            let marks = offsets::watermarks(&self.client, topic).await?;
            let by_time = match self.start {
                StartOffset::Timestamp(ts) => Some(
                    offsets::list_offsets(&self.client, topic, OffsetQuery::Timestamp(ts)).await?,
                ),
                _ => None,
            };
            for p in chosen {
                let Some(m) = marks.iter().find(|m| m.partition == p) else {
                    return Err(Error::UnknownPartition {
                        topic: topic.clone(),
                        partition: p,
                        count: all.len() as i32,
                    });
                };
                let start = match self.overrides.get(&(topic.clone(), p)) {
                    Some(o) => *o,
                    None => self.start.position(
                        m,
                        by_time.as_ref().and_then(|t| t.get(&p).copied().flatten()),
                    ),
                };
                positions.push(PartitionPosition {
                    topic: Arc::from(topic.as_str()),
                    partition: p,
                    next: start,
                    end: m.high,
                });
            }
        }
        Ok(Reader {
            client: self.client,
            positions,
            max_wait: self.max_wait,
            max_partition_bytes: self.max_partition_bytes,
            buffered_batches: self.buffered_batches,
            fetch_buffer_bytes: self.fetch_buffer_bytes,
        })
    }
}

#[derive(Debug, Clone)]
struct PartitionPosition {
    topic: Arc<str>,
    partition: i32,
    next: i64,
    /// High watermark when the reader was built.
    end: i64,
}

/// Reads assigned partitions from their start offsets. Records of one
/// partition arrive in offset order; partitions are interleaved.
///
/// ```no_run
/// # async fn demo() -> kastellan::Result<()> {
/// use kastellan::{Client, StartOffset};
///
/// let client = Client::bootstrap("127.0.0.1:9092").await?;
/// let reader = client.reader().topic("prices").start(StartOffset::Earliest).build().await?;
/// // Warm a cache with everything stored so far, then stop.
/// let records = reader.read_to_end().await?;
/// println!("{} records", records.len());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Reader {
    client: Client,
    positions: Vec<PartitionPosition>,
    max_wait: Duration,
    max_partition_bytes: i32,
    buffered_batches: usize,
    fetch_buffer_bytes: usize,
}

impl Reader {
    /// The assigned partitions with their start offset and the high watermark
    /// seen when the reader was built: `(topic, partition, start, end)`.
    pub fn assignment(&self) -> Vec<(String, i32, i64, i64)> {
        self.positions
            .iter()
            .map(|p| (p.topic.to_string(), p.partition, p.next, p.end))
            .collect()
    }

    /// Stream records forever (until dropped). Errors end the stream after
    /// being yielded once.
    pub fn stream(self) -> RecordStream {
        self.spawn(false)
    }

    /// Stream records up to the high watermarks seen when the reader was
    /// built, then end.
    pub fn stream_to_end(self) -> RecordStream {
        self.spawn(true)
    }

    /// Read everything up to the high watermarks seen at build time and return it.
    pub async fn read_to_end(self) -> Result<Vec<Record>> {
        use futures::StreamExt;
        let mut stream = self.stream_to_end();
        let mut out = Vec::new();
        while let Some(r) = stream.next().await {
            out.push(r?);
        }
        Ok(out)
    }

    /// Call `handler` for every record, in partition order, until it returns
    /// an error (which is returned) or, with `to_end`, the end is reached.
    pub async fn run<F, Fut, E>(self, to_end: bool, mut handler: F) -> Result<(), RunError<E>>
    where
        F: FnMut(Record) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        use futures::StreamExt;
        let mut stream = self.spawn(to_end);
        while let Some(r) = stream.next().await {
            handler(r.map_err(RunError::Kafka)?)
                .await
                .map_err(RunError::Handler)?;
        }
        Ok(())
    }

    fn spawn(self, to_end: bool) -> RecordStream {
        let (tx, rx) = mpsc::channel(self.buffered_batches * self.positions.len().max(1));
        let settings = FetchSettings {
            max_wait: self.max_wait,
            max_partition_bytes: self.max_partition_bytes,
            buffer_bytes: self.fetch_buffer_bytes,
            rack: None,
        };
        let pool = FetchPool::start(self.client.clone(), settings, OnFailure::EndStream);
        let fetches = self
            .positions
            .into_iter()
            .filter(|pos| !(to_end && pos.next >= pos.end))
            .map(|pos| PartitionFetch {
                tp: TopicPartition::new(pos.topic, pos.partition),
                next: pos.next,
                end: to_end.then_some(pos.end),
                out_of_range: StartOffset::Earliest,
                tx: tx.clone(),
                progress: None,
            })
            .collect();
        pool.add(fetches);
        // The stream ends when every partition reached its end: the pool
        // drops a partition's sender then, and this one goes now.
        drop(tx);
        RecordStream {
            rx,
            current: VecDeque::new(),
            lease: None,
            pool: Some(pool),
        }
    }
}

/// Error of [`Reader::run`]: from Kafka or from the handler.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    /// Reading failed.
    #[error("reading failed: {0}")]
    Kafka(Error),
    /// The handler returned an error.
    #[error("handler failed: {0}")]
    Handler(E),
}

/// A stream of records from a [`Reader`]. Dropping it stops fetching.
#[derive(Debug)]
pub struct RecordStream {
    rx: mpsc::Receiver<Result<Fetched>>,
    current: VecDeque<Record>,
    /// The current batch's bytes, counted against the fetch budget until
    /// the batch is consumed.
    lease: Option<Lease>,
    /// Stopped (dropped) at the first error.
    pool: Option<FetchPool>,
}

impl Stream for RecordStream {
    type Item = Result<Record>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(r) = self.current.pop_front() {
                return Poll::Ready(Some(Ok(r)));
            }
            self.lease = None;
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => {
                    self.current = VecDeque::from(batch.records);
                    self.lease = Some(batch.lease);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.pool = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
