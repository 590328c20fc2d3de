//! The producer: send records and learn when the broker acknowledged them.
//!
//! Records are buffered per partition and sent in batches (after `linger`,
//! or as soon as a batch is full). Every record resolves to a [`Delivery`]
//! (partition and offset) once the partition leader acknowledged it with
//! `acks=all`, or to the error that stopped it. Nothing is reported
//! delivered that was not acknowledged.
//!
//! Each partition has its own worker task, which keeps the partition's
//! batches in sequence order on the wire also while it resends after a
//! failure (a broker restart, a leader change), and is supervised: a worker
//! that panics fails the records it held with [`Error::WorkerFailed`] and a
//! new one takes over the partition. The workers hand their batches to one
//! pipeline per broker, which carries the batches of many partitions in
//! each produce request. [`Producer::close`] stops the producer
//! with a deadline.

mod idempotence;
mod limits;
mod line;
#[cfg(test)]
mod loopback;
mod partitioner;
mod pending;
mod pipeline;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use idempotence::ProducerIds;
use partitioner::RoundRobin;
pub use partitioner::{java_partition, murmur2, PartitionFn, Partitioner};
use pending::{Destination, Pending};
use pipeline::Pipelines;
use worker::PartitionWorker;

use crate::admin::{IfExists, NewTopic};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::records::{Codec, OutgoingRecord};

/// Compression codec for produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// No compression (default).
    #[default]
    None,
    /// gzip (pure Rust).
    Gzip,
    /// Snappy (pure Rust), Java-compatible framing.
    Snappy,
    /// LZ4 frame format (pure Rust).
    Lz4,
    /// Zstandard (pure Rust; fastest level).
    Zstd,
}

impl Compression {
    fn codec(self) -> Codec {
        match self {
            Compression::None => Codec::None,
            Compression::Gzip => Codec::Gzip,
            Compression::Snappy => Codec::Snappy,
            Compression::Lz4 => Codec::Lz4,
            Compression::Zstd => Codec::Zstd,
        }
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition the record went to.
    pub partition: i32,
    /// Offset the broker assigned; -1 in the rare case of a resent batch the
    /// broker had stored long before and no longer remembers the offset of
    /// (`DUPLICATE_SEQUENCE_NUMBER`): stored once, offset unknown.
    pub offset: i64,
}

/// Outcome of one record, sent on the delivery-report stream.
///
/// A report holds its record's share of the producer's buffer memory
/// ([`ProducerBuilder::buffer_bytes`]) until it is dropped, so unread
/// reports hold back new records: see
/// [`ProducerBuilder::with_delivery_reports`].
#[derive(Debug)]
pub struct DeliveryReport {
    /// Topic the record was for.
    pub topic: Arc<str>,
    /// Partition chosen for it.
    pub partition: i32,
    /// The record's key, if any (to correlate reports with records).
    pub key: Option<Bytes>,
    /// Offset on success, the error otherwise.
    pub result: Result<i64>,
    /// The record's buffer memory, released when the report is dropped.
    _memory: Option<OwnedSemaphorePermit>,
}

/// Buffer memory a delivery report takes besides its record's key: the
/// report itself and its place in the stream's queue.
const REPORT_OVERHEAD: usize = std::mem::size_of::<DeliveryReport>() + 32;

/// A record to produce.
///
/// ```
/// use kastellan::ProducerRecord;
/// let r = ProducerRecord::to("orders").key("o-1").value("created").header("source", "web");
/// assert_eq!(r.topic(), Some("orders"));
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until it is used"]
pub struct ProducerRecord {
    topic: Option<String>,
    partition: Option<i32>,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
    timestamp: Option<i64>,
}

impl From<&crate::Record> for ProducerRecord {
    fn from(record: &crate::Record) -> Self {
        Self::from_record(record)
    }
}

impl ProducerRecord {
    /// A copy of a consumed record to produce again: same topic, key, value,
    /// headers and timestamp, no fixed partition (the partitioner picks one
    /// from the key, as for the original). Change the topic with
    /// [`topic_name`](Self::topic_name), add headers with
    /// [`header`](Self::header): for retry and dead-letter topics, or for
    /// moving records between topics.
    ///
    /// ```
    /// use kastellan::{ProducerRecord, Record};
    ///
    /// let consumed = Record::new("orders", 3, 41).with_key("k").with_value("v").with_header("trace", "t1");
    /// let copy = ProducerRecord::from_record(&consumed).topic_name("orders.audit").header("seen", "1");
    /// assert_eq!(copy.topic(), Some("orders.audit"));
    /// ```
    pub fn from_record(record: &crate::Record) -> Self {
        Self {
            topic: Some(record.topic.to_string()),
            partition: None,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            timestamp: (record.timestamp >= 0).then_some(record.timestamp),
        }
    }

    /// A record for `topic`.
    pub fn to(topic: impl Into<String>) -> Self {
        Self {
            topic: Some(topic.into()),
            ..Self::default()
        }
    }

    /// A record for the producer's default topic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the topic.
    pub fn topic_name(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Send to this partition instead of asking the partitioner.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Set the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Set the value.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Set the value to `value` serialized as JSON and add a
    /// `content-type: application/json` header.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.value = Some(Bytes::from(serde_json::to_vec(value)?));
        self.headers.push((
            "content-type".into(),
            Bytes::from_static(b"application/json"),
        ));
        Ok(self)
    }

    /// Add a header. Kafka keeps headers in order and allows repeated names.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Set the timestamp (milliseconds since the epoch); default is the send time.
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// The topic, if set.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }
}

/// Builds a [`Producer`]. Made with [`Client::producer`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until it is used"]
pub struct ProducerBuilder {
    client: Client,
    settings: ProducerSettings,
    reports: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct ProducerSettings {
    pub default_topic: Option<String>,
    pub partitioner: Partitioner,
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub buffer_bytes: usize,
    pub compression: Compression,
    pub max_in_flight: usize,
    pub idempotent: bool,
    pub auto_create: Option<(i32, i16)>,
    pub metadata_max_age: Duration,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            settings: ProducerSettings {
                default_topic: None,
                partitioner: Partitioner::default(),
                linger: Duration::from_millis(5),
                max_batch_bytes: 1024 * 1024,
                buffer_bytes: 32 * 1024 * 1024,
                compression: Compression::None,
                max_in_flight: 5,
                idempotent: true,
                auto_create: None,
                metadata_max_age: Duration::from_secs(300),
            },
            reports: false,
        }
    }

    /// Topic used by records that name none (Kaffe's configured topic).
    pub fn default_topic(mut self, topic: impl Into<String>) -> Self {
        self.settings.default_topic = Some(topic.into());
        self
    }

    /// How partitions are chosen (default [`Partitioner::KeyHash`]).
    pub fn partitioner(mut self, p: Partitioner) -> Self {
        self.settings.partitioner = p;
        self
    }

    /// How long a batch waits for more records before it is sent (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger;
        self
    }

    /// Largest batch sent to one partition in one request (default 1 MiB).
    /// A single record larger than this is refused with [`Error::RecordTooLarge`].
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_batch_bytes = bytes;
        self
    }

    /// Memory for records waiting to be sent (default 32 MiB). When it is
    /// full, `send` waits: backpressure instead of unbounded growth.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.settings.buffer_bytes = bytes;
        self
    }

    /// Compression of batches (default none).
    pub fn compression(mut self, c: Compression) -> Self {
        self.settings.compression = c;
        self
    }

    /// Batches in flight per partition (default 5, at most 5 when
    /// idempotent). An idempotent producer keeps a partition's records in
    /// the order they were sent whatever the setting; without idempotence
    /// only 1 does, as a retried batch may otherwise land after a later one.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = n.max(1);
        self
    }

    /// Idempotent delivery (default on, as in the Java client): batches carry
    /// a producer id and sequence numbers, so the partition leader stores
    /// each batch once even when a retry resends it, and stores a
    /// partition's batches in order even with several in flight.
    ///
    /// Turn it off only for clusters that refuse producer ids (it needs the
    /// `IDEMPOTENT_WRITE` cluster permission on brokers before Kafka 2.8
    /// when ACLs are on).
    ///
    /// ```no_run
    /// # async fn demo() -> kastellan::Result<()> {
    /// let client = kastellan::Client::bootstrap("127.0.0.1:9092").await?;
    /// let producer = client.producer().idempotent(false).max_in_flight(1).build()?;
    /// # Ok(()) }
    /// ```
    pub fn idempotent(mut self, on: bool) -> Self {
        self.settings.idempotent = on;
        self
    }

    /// Create unknown topics on first use with this many partitions and replicas,
    /// instead of failing with [`Error::UnknownTopic`].
    pub fn auto_create_topics(mut self, partitions: i32, replication_factor: i16) -> Self {
        self.settings.auto_create = Some((partitions, replication_factor));
        self
    }

    /// Send every record's outcome to a stream as well; take it with
    /// [`Producer::delivery_reports`].
    ///
    /// The stream is bounded by the producer's buffer memory
    /// ([`buffer_bytes`](Self::buffer_bytes)), with back-pressure: a record
    /// keeps its share of that memory (its size plus about 100 bytes for
    /// the report) until its report is received and dropped. So reports
    /// nobody reads take at most `buffer_bytes` of memory; once they fill
    /// it, `send` and `enqueue` wait, as they do when the broker is slow,
    /// until reports are read. No report is ever dropped. Read the stream
    /// from its own task, or do not enable it.
    ///
    /// ```no_run
    /// # async fn demo() -> kastellan::Result<()> {
    /// let client = kastellan::Client::bootstrap("127.0.0.1:9092").await?;
    /// let producer = client.producer().with_delivery_reports().build()?;
    /// let mut reports = producer.delivery_reports().expect("enabled");
    /// tokio::spawn(async move {
    ///     while let Some(report) = reports.recv().await {
    ///         if let Err(e) = &report.result {
    ///             eprintln!("{}/{}: {e}", report.topic, report.partition);
    ///         }
    ///     }
    /// });
    /// producer.to("events").value("fire and forget").enqueue().await?;
    /// # Ok(()) }
    /// ```
    pub fn with_delivery_reports(mut self) -> Self {
        self.reports = true;
        self
    }

    /// Build the producer. Checks the settings; connects lazily.
    pub fn build(self) -> Result<Producer> {
        let s = &self.settings;
        if s.max_batch_bytes < 1024 || s.max_batch_bytes > i32::MAX as usize {
            return Err(Error::Config(format!(
                "max_batch_bytes {} is outside 1 KiB..2 GiB",
                s.max_batch_bytes
            )));
        }
        if s.buffer_bytes < s.max_batch_bytes {
            return Err(Error::Config(format!(
                "buffer_bytes ({}) must be at least max_batch_bytes ({})",
                s.buffer_bytes, s.max_batch_bytes
            )));
        }
        if s.idempotent && s.max_in_flight > 5 {
            return Err(Error::Config(format!(
                "max_in_flight {} is more than an idempotent producer may use (5); \
                 lower it or turn idempotence off",
                s.max_in_flight
            )));
        }
        if let Some((p, r)) = s.auto_create {
            if p < 1 || r < 1 {
                return Err(Error::Config(
                    "auto_create_topics needs at least 1 partition and 1 replica".into(),
                ));
            }
        }
        let (reports_tx, reports_rx) = if self.reports {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let permits = s.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let ids = s
            .idempotent
            .then(|| Arc::new(ProducerIds::new(self.client.clone())));
        let (closing, _) = watch::channel(None);
        let pipelines = Arc::new(Pipelines::new(self.client.clone()));
        Ok(Producer {
            inner: Arc::new(ProducerInner {
                client: self.client,
                settings: self.settings,
                topics: Mutex::new(HashMap::new()),
                memory: Arc::new(Semaphore::new(permits)),
                outstanding: Arc::new(Outstanding::default()),
                ids,
                reports: reports_tx,
                reports_rx: Mutex::new(reports_rx),
                closed: RwLock::new(false),
                closing,
                tasks: Mutex::new(Vec::new()),
                aborted: Arc::new(AtomicUsize::new(0)),
                pipelines,
            }),
        })
    }
}

/// Counts records accepted but not yet resolved, for [`Producer::flush`].
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
    count: AtomicUsize,
    idle: Notify,
}

impl Outstanding {
    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What the producer knows about a topic: partition count, round-robin
/// position and the queue of each partition's worker (started on first use).
#[derive(Debug)]
struct TopicState {
    name: Arc<str>,
    partitions: i32,
    fetched: Instant,
    round_robin: RoundRobin,
    /// One slot per partition, shared by every version of this state (each
    /// metadata refresh makes one), so a partition never gets two workers.
    workers: Vec<Arc<OnceLock<WorkerQueue>>>,
}

/// The queue feeding one partition's batching worker, and where its
/// records resolve.
#[derive(Debug, Clone)]
struct WorkerQueue {
    tx: mpsc::UnboundedSender<Pending>,
    dest: Arc<Destination>,
}

struct ProducerInner {
    client: Client,
    settings: ProducerSettings,
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
    memory: Arc<Semaphore>,
    outstanding: Arc<Outstanding>,
    /// Producer ids, when idempotent.
    ids: Option<Arc<ProducerIds>>,
    reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
    reports_rx: Mutex<Option<mpsc::UnboundedReceiver<DeliveryReport>>>,
    /// Set by `close`; records are handed to workers under its read lock,
    /// so none slips in after it is set.
    closed: RwLock<bool>,
    /// Tells the workers to finish, with the deadline of `close`.
    closing: watch::Sender<Option<tokio::time::Instant>>,
    /// The workers' tasks, for `close` to wait on.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Records failed at `close`'s deadline.
    aborted: Arc<AtomicUsize>,
    /// One produce pipeline per broker, shared by the workers.
    pipelines: Arc<Pipelines>,
}

/// The error of a record handed to a closed producer.
const CLOSED: &str = "the producer is closed (Producer::close was called); build a new one to send";

/// Sends records to Kafka. Cheap to clone; clones share buffers and connections.
///
/// Before a service stops, [`close`](Self::close) it with a deadline: it
/// sends what is buffered and waits for the answers. A producer that is
/// just dropped still delivers what it holds, but nobody waits for that.
///
/// ```no_run
/// # async fn demo() -> kastellan::Result<()> {
/// use kastellan::Client;
///
/// let client = Client::bootstrap("127.0.0.1:9092").await?;
/// let producer = client.producer().build()?;
/// let delivery = producer
///     .to("orders")
///     .key("order-7")
///     .header("source", "checkout")
///     .json(&serde_json::json!({"id": 7, "total": 12.5}))?
///     .send()
///     .await?;
/// println!("stored at {}/{}", delivery.partition, delivery.offset);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Resolves to the delivery of one record. Dropping it does not cancel the
/// send (fire and forget).
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<Delivery>>,
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed("producer dropped before delivery"))))
    }
}

impl Producer {
    /// Start a record for `topic` (message-builder style).
    pub fn to(&self, topic: impl Into<String>) -> MessageBuilder<'_> {
        MessageBuilder {
            producer: self,
            record: ProducerRecord::to(topic),
        }
    }

    /// Start a record for the default topic.
    pub fn message(&self) -> MessageBuilder<'_> {
        MessageBuilder {
            producer: self,
            record: ProducerRecord::new(),
        }
    }

    /// Send a record and wait until the broker acknowledged it.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        self.enqueue(record).await?.await
    }

    /// Hand a record to the producer and return once it is buffered. The
    /// returned future resolves when it is acknowledged; drop it for fire and
    /// forget (outcomes still reach the delivery-report stream, if enabled).
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let inner = &self.inner;
        if self.is_closed() {
            return Err(Error::Closed(CLOSED));
        }
        // Borrowed: the topic is looked up per record, never copied.
        let topic = match record
            .topic
            .as_deref()
            .or(inner.settings.default_topic.as_deref())
        {
            Some(t) => t,
            None => {
                return Err(Error::Config(
                    "record has no topic and the producer has no default topic".into(),
                ))
            }
        };
        let timestamp = match record.timestamp {
            Some(ms) if ms >= 0 => ms,
            Some(ms) => {
                return Err(Error::Config(format!(
                    "timestamp {ms} is negative; give milliseconds since the Unix epoch"
                )))
            }
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        };
        let outgoing = OutgoingRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp,
        };
        let size = outgoing.max_encoded_size();
        if size > inner.settings.max_batch_bytes {
            return Err(Error::RecordTooLarge {
                size,
                limit: inner.settings.max_batch_bytes,
                which: "producer max_batch_bytes",
            });
        }
        let state = self.topic_state(topic).await?;
        let partitions = state.partitions;
        let partition = match record.partition {
            Some(p) => p,
            None => inner.settings.partitioner.pick(
                topic,
                outgoing.key.as_deref(),
                partitions,
                state.round_robin.next(),
            ),
        };
        if partition < 0 || partition >= partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: partitions,
            });
        }
        // Unread delivery reports keep their record's memory (see
        // `with_delivery_reports`), so count the report too.
        let memory = match inner.reports {
            Some(_) => size + REPORT_OVERHEAD + outgoing.key.as_ref().map_or(0, |k| k.len()),
            None => size,
        };
        let permit = Arc::clone(&inner.memory)
            .acquire_many_owned(memory.min(inner.settings.buffer_bytes) as u32)
            .await
            .map_err(|_| Error::Closed(CLOSED))?;
        let (tx, rx) = oneshot::channel();
        // Hand over under the read lock: `close` cannot slip in between its
        // check and the send, so a worker that saw `close` has every record.
        let closed = inner.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(Error::Closed(CLOSED));
        }
        let worker = self.worker(&state, partition);
        let pending = Pending::new(outgoing, size, permit, tx, Arc::clone(&worker.dest));
        if let Err(mpsc::error::SendError(p)) = worker.tx.send(pending) {
            // The worker's supervisor never ends while the producer is open,
            // unless its runtime shut down.
            p.resolve(Err(Error::WorkerFailed {
                topic: topic.to_string(),
                partition,
                reason: "the partition's worker task has ended \
                         (was the runtime it was started on shut down?)"
                    .into(),
            }));
        }
        drop(closed);
        Ok(DeliveryFuture { rx })
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop the producer: refuse new records, send what is buffered
    /// without waiting for `linger`, wait for the broker's answers, and
    /// return once every partition worker has finished. Applies to all
    /// clones of this producer.
    ///
    /// Records still unacknowledged after `timeout` (the broker is
    /// unreachable, or slow) are failed with [`Error::Closed`]: they may or
    /// may not have been stored, and `close` returns
    /// [`Error::CloseTimeout`] with their number. Records refused by the
    /// broker before that resolve with their own error as usual, and
    /// `close` still returns `Ok`: it reports on the shutdown, not on each
    /// record. `close` itself takes at most `timeout` plus the time to
    /// finish a write already under way (bounded by the client's request
    /// timeout).
    ///
    /// After `close`, `send` and `enqueue` fail at once with
    /// [`Error::Closed`]. Calling `close` again returns `Ok` at once.
    ///
    /// ```no_run
    /// # async fn demo() -> kastellan::Result<()> {
    /// use std::time::Duration;
    ///
    /// let client = kastellan::Client::bootstrap("127.0.0.1:9092").await?;
    /// let producer = client.producer().build()?;
    /// let pending = producer.to("events").value("last words").enqueue().await?;
    /// producer.close(Duration::from_secs(10)).await?;
    /// assert!(pending.await.is_ok(), "delivered before close returned");
    /// # Ok(()) }
    /// ```
    pub async fn close(&self, timeout: std::time::Duration) -> Result<()> {
        let inner = &self.inner;
        {
            let mut closed = inner.closed.write().unwrap_or_else(|p| p.into_inner());
            if *closed {
                return Ok(());
            }
            *closed = true;
        }
        // Wake `send`s waiting for buffer memory: they fail as closed.
        inner.memory.close();
        inner
            .closing
            .send_replace(Some(tokio::time::Instant::now() + timeout));
        let tasks = std::mem::take(&mut *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            // A task that panicked outside its supervision, or was
            // cancelled, has nothing left to wait for.
            let _ = task.await;
        }
        // The workers are done: nothing more will be submitted. The
        // pipelines end once they have delivered what they hold.
        inner.pipelines.close();
        match inner.aborted.load(Ordering::Acquire) {
            0 => Ok(()),
            unresolved => Err(Error::CloseTimeout {
                timeout,
                unresolved,
            }),
        }
    }

    /// Wait until every record handed to this producer so far is acknowledged or failed.
    pub async fn flush(&self) {
        self.inner.outstanding.wait_idle().await;
    }

    /// The delivery-report stream, if enabled with
    /// [`ProducerBuilder::with_delivery_reports`]. Can be taken once. Its
    /// reports hold buffer memory until dropped: read it, or `send` will
    /// eventually wait for it.
    pub fn delivery_reports(&self) -> Option<mpsc::UnboundedReceiver<DeliveryReport>> {
        self.inner
            .reports_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    async fn topic_state(&self, topic: &str) -> Result<Arc<TopicState>> {
        let inner = &self.inner;
        let cached = inner
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned();
        if let Some(t) = &cached {
            if t.fetched.elapsed() < inner.settings.metadata_max_age {
                return Ok(Arc::clone(t));
            }
        }
        let meta = match inner.client.topic_metadata(topic, true).await? {
            Some(m) => m,
            None => match inner.settings.auto_create {
                Some((p, r)) => {
                    inner
                        .client
                        .admin()
                        .create_topic_with(NewTopic::new(topic, p, r), IfExists::Ignore)
                        .await?;
                    inner
                        .client
                        .topic_metadata(topic, true)
                        .await?
                        .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?
                }
                None => return Err(Error::UnknownTopic(topic.to_string())),
            },
        };
        let count = meta.partitions.len() as i32;
        if count == 0 {
            return Err(Error::UnknownTopic(topic.to_string()));
        }
        let mut topics = inner.topics.lock().unwrap_or_else(|p| p.into_inner());
        let previous = topics.get(topic);
        // Share the worker slots with the previous state, started or not:
        // records enqueued through either state reach the same worker. (Two
        // first sends racing each fetch metadata and make a state; the
        // second shares the first's slots.) Keep the round-robin position.
        let workers = (0..count as usize)
            .map(|i| {
                previous
                    .and_then(|p| p.workers.get(i))
                    .map_or_else(|| Arc::new(OnceLock::new()), Arc::clone)
            })
            .collect();
        let state = Arc::new(TopicState {
            name: Arc::from(topic),
            partitions: count,
            fetched: Instant::now(),
            round_robin: RoundRobin::starting_at(previous.map_or(0, |p| p.round_robin.next())),
            workers,
        });
        topics.insert(topic.to_string(), Arc::clone(&state));
        Ok(state)
    }

    fn worker(&self, topic: &TopicState, partition: i32) -> WorkerQueue {
        let inner = &self.inner;
        let slot = &topic.workers[partition as usize];
        slot.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let dest = Arc::new(Destination {
                topic: Arc::clone(&topic.name),
                partition,
                outstanding: Arc::clone(&inner.outstanding),
                reports: inner.reports.clone(),
            });
            let worker = PartitionWorker {
                client: inner.client.clone(),
                dest: Arc::clone(&dest),
                linger: inner.settings.linger,
                max_batch_bytes: inner.settings.max_batch_bytes,
                compression: inner.settings.compression.codec(),
                max_in_flight: inner.settings.max_in_flight,
                ids: inner.ids.clone(),
                aborted: Arc::clone(&inner.aborted),
                pipelines: Arc::clone(&inner.pipelines),
                unsent: Arc::default(),
            };
            let task = tokio::spawn(worker.run(rx, inner.closing.subscribe()));
            let mut tasks = inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget tasks that have ended (none do while the producer is open).
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
            WorkerQueue { tx, dest }
        })
        .clone()
    }
}

/// Fluent construction of one record, ending in [`send`](Self::send) or
/// [`enqueue`](Self::enqueue).
#[derive(Debug)]
#[must_use = "a builder does nothing until it is used"]
pub struct MessageBuilder<'a> {
    producer: &'a Producer,
    record: ProducerRecord,
}

impl MessageBuilder<'_> {
    /// Send to this partition instead of asking the partitioner.
    pub fn partition(mut self, partition: i32) -> Self {
        self.record = self.record.partition(partition);
        self
    }

    /// Set the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.record = self.record.key(key);
        self
    }

    /// Set the value bytes.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.record = self.record.value(value);
        self
    }

    /// Serialize `value` as JSON into the record value.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.record = self.record.json(value)?;
        Ok(self)
    }

    /// Add a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.record = self.record.header(key, value);
        self
    }

    /// Set the record timestamp (milliseconds since the epoch).
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.record = self.record.timestamp(millis);
        self
    }

    /// Send and wait for the acknowledgement.
    pub async fn send(self) -> Result<Delivery> {
        self.producer.send(self.record).await
    }

    /// Buffer the record; see [`Producer::enqueue`].
    pub async fn enqueue(self) -> Result<DeliveryFuture> {
        self.producer.enqueue(self.record).await
    }
}
