//! One produce pipeline per broker address: the batches that partition
//! workers hand over for a broker leave in shared, multi-partition
//! ProduceRequests instead of one request per batch.
//!
//! A producer spread over many partitions would otherwise send many tiny
//! requests, each costing a round of framing, a broker request-handler
//! turn and an answer. Here a partition worker [submits](Pipelines::submit)
//! its encoded batch and gets back a future of that partition's own answer;
//! everything about retries, sequence order and failures stays in the
//! worker and its [`Line`](super::line::Line).
//!
//! # How submissions become requests
//!
//! Each broker address has one task ([`Pipeline`]) fed by one channel. The
//! task sends a request as soon as it has a submission and fewer than
//! [`MAX_REQUESTS_IN_FLIGHT`] requests unanswered, so a lone batch under low
//! load leaves at once. While that many are in flight, submissions wait in
//! the queue, and the next request takes all of them it may: this is where
//! requests fill up under load. A request carries
//!
//! - at most one batch per partition: Kafka refuses a v3+ produce request
//!   with two batches for one partition. A partition's next batch waits
//!   for the next request;
//! - up to [`MAX_REQUEST_BYTES`] of batches (the limit the Java client
//!   uses by default for `max.request.size`; brokers accept far larger
//!   requests, but a bounded request keeps one broker turn short). A
//!   batch bigger than that goes alone.
//!
//! # Invariants
//!
//! - **Order.** A partition's submissions reach the socket in submission
//!   order: they enter one channel in order (each partition has one
//!   worker, which submits from one task), the queue keeps that order,
//!   a request takes only the oldest queued batch of each partition, and
//!   requests are handed to the connection one after the other from this
//!   one task ([`BrokerConnection::send`] writes frames in the order of its
//!   calls). The idempotent [`Line`](super::line::Line) relies on this.
//! - **Every submission is answered once**, through its oneshot: with its
//!   partition's response, or with the error of its whole request. When
//!   the connection fails, every request in flight on it fails with the
//!   connection's error (written: the leader may have stored the batch),
//!   and so does everything queued at that moment (not written); the
//!   workers' resend logic takes over, as it does for any failed write.
//!
//! # Who owns what
//!
//! - [`Pipelines::routes`] (a `std` mutex, never held across an `.await`)
//!   maps addresses to the channel of their task. `submit` adds a route
//!   on first use; [`Pipelines::close`] clears them all.
//! - Everything else ([`Pipeline`]'s queue, its requests in flight, the
//!   connection it uses) belongs to the task alone: no locks.
//! - A task ends once its channel is closed (the routes are cleared at
//!   `close`, or dropped with the producer and its last worker) and every
//!   queued submission is sent and every answer delivered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::connection::BrokerConnection;
use crate::protocol::stats::WireCounters;

/// Produce requests one pipeline keeps unanswered at a time (Kafka's
/// default `max.in.flight.requests.per.connection`). Per partition, the
/// worker's own `max_in_flight` still applies.
pub(crate) const MAX_REQUESTS_IN_FLIGHT: usize = 5;

/// How many bytes of batches one request takes at most, unless a single
/// batch is bigger (then it goes alone).
pub(crate) const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What a request costs per partition besides the batch: the partition
/// index, the records' length prefix and tagged fields.
const PARTITION_OVERHEAD: usize = 16;

/// The answer for one submitted batch.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The partition's response, or the error of the whole request.
    pub result: Result<PartitionProduceResponse>,
    /// The request was handed to the connection, so the leader may have
    /// stored the batch even if `result` is an error.
    pub written: bool,
}

impl Outcome {
    fn failed(e: Error, written: bool) -> Self {
        Self {
            result: Err(e),
            written,
        }
    }
}

/// How many of one partition's batches wait in a pipeline's queue, not
/// yet written in a request. While any do, the partition's worker keeps
/// its open batch open, filling it, instead of closing it at its linger:
/// when the connection is the bottleneck, batches grow instead of queueing
/// up small (the Java client keeps a batch open until its sender drains
/// it, to the same effect). Added to by the worker at each submission,
/// taken from when the batch leaves the queue (written, or failed).
#[derive(Debug, Default)]
pub(crate) struct Unsent {
    count: AtomicUsize,
    /// Woken each time one of them leaves the queue.
    left: Notify,
}

impl Unsent {
    /// Whether a batch of the partition waits to be written.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Until a queued batch of the partition leaves the queue (or at once,
    /// if one left since the last wait).
    pub(crate) async fn left(&self) {
        self.left.notified().await
    }
}

/// Counts a submission in its partition's [`Unsent`] until dropped (when
/// the batch leaves the queue).
struct Queued(Arc<Unsent>);

impl Queued {
    fn new(unsent: &Arc<Unsent>) -> Self {
        unsent.count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(unsent))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.left.notify_one();
    }
}

/// One batch on its way into a request.
struct Submission {
    topic: Arc<str>,
    partition: i32,
    records: Bytes,
    reply: oneshot::Sender<Outcome>,
    /// Dropped when the batch is taken into a request or fails.
    _queued: Queued,
}

/// The produce pipelines of one producer, by broker address.
pub(crate) struct Pipelines {
    client: Client,
    /// The channel into each address's task (see the module docs).
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<Submission>>>,
}

impl Pipelines {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Hand `records`, the encoded batch of `topic`/`partition`, to the
    /// pipeline of `addr` (started on first use). The batch is queued at
    /// once, behind the partition's earlier submissions; the returned
    /// future brings its answer.
    pub(crate) fn submit(
        &self,
        addr: &str,
        topic: Arc<str>,
        partition: i32,
        records: Bytes,
        unsent: &Arc<Unsent>,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let mut submission = Submission {
            topic,
            partition,
            records,
            reply,
            _queued: Queued::new(unsent),
        };
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = routes.get(addr) {
            match route.send(submission) {
                Ok(()) => return answer_of(addr.to_string(), answer),
                // The task is gone (it panicked): a new one takes over the
                // address. What the old one held was answered with an
                // error when its oneshots dropped.
                Err(mpsc::error::SendError(s)) => submission = s,
            }
        }
        let route = self.start(addr);
        // The task was just started, so its channel is open.
        let _ = route.send(submission);
        routes.insert(addr.to_string(), route);
        answer_of(addr.to_string(), answer)
    }

    fn start(&self, addr: &str) -> mpsc::UnboundedSender<Submission> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pipeline = Pipeline {
            client: self.client.clone(),
            addr: addr.to_string(),
            rx,
            queue: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            conn: None,
        };
        tokio::spawn(pipeline.run());
        tx
    }

    /// Close every route: each task ends once it has sent what it holds
    /// and delivered the answers. For `Producer::close`, after the workers
    /// have finished.
    pub(crate) fn close(&self) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The answer future of a submission to `addr`.
async fn answer_of(addr: String, answer: oneshot::Receiver<Outcome>) -> Outcome {
    answer.await.unwrap_or_else(|_| {
        // The task ended without answering: it panicked. The request may
        // have been written, so the batch may be stored.
        Outcome::failed(
            Error::ConnectionLost {
                broker: addr,
                reason: "the produce pipeline stopped before the answer came".into(),
            },
            true,
        )
    })
}

/// The batches of one request, grouped by topic in the request's order,
/// and who waits for each.
struct Waiters {
    topics: Vec<(Arc<str>, PartitionWaiters)>,
}

/// Partitions of one topic in a request, with the reply of each.
type PartitionWaiters = Vec<(i32, oneshot::Sender<Outcome>)>;

impl Waiters {
    fn fail(self, e: &Error, written: bool) {
        for (_, partitions) in self.topics {
            for (_, reply) in partitions {
                let _ = reply.send(Outcome::failed(e.duplicate(), written));
            }
        }
    }

    /// Hand each waiter its partition's response. Kafka need not answer
    /// in the request's order (brokers collect the answers in a hash map),
    /// so each lookup tries the request's position first and otherwise
    /// goes through an index of the topic's answers, made once.
    fn deliver(self, addr: &str, mut response: ProduceResponse) {
        for (i, (topic, partitions)) in self.topics.into_iter().enumerate() {
            let found = match response.responses.get(i) {
                Some(t) if *t.name.0 == *topic => Some(i),
                _ => response.responses.iter().position(|t| *t.name.0 == *topic),
            };
            let mut answers = found.map(|i| {
                std::mem::take(&mut response.responses[i].partition_responses)
                    .into_iter()
                    .map(Some)
                    .collect::<Vec<_>>()
            });
            let mut index: Option<HashMap<i32, usize>> = None;
            for (j, (partition, reply)) in partitions.into_iter().enumerate() {
                let answer = answers.as_mut().and_then(|answers| {
                    let at = match answers.get(j) {
                        Some(Some(p)) if p.index == partition => Some(j),
                        _ => index
                            .get_or_insert_with(|| {
                                answers
                                    .iter()
                                    .enumerate()
                                    .filter_map(|(at, p)| p.as_ref().map(|p| (p.index, at)))
                                    .collect()
                            })
                            .get(&partition)
                            .copied(),
                    };
                    // Taken out, so a partition named twice in an answer
                    // cannot hand one answer to two batches.
                    at.and_then(|at| answers[at].take())
                });
                let result = answer.ok_or_else(|| Error::Protocol {
                    broker: addr.to_string(),
                    reason: format!("produce answer lacks {topic}/{partition}"),
                });
                let _ = reply.send(Outcome {
                    result,
                    written: true,
                });
            }
        }
    }
}

/// A request in flight: resolves, once its answers are delivered, to the
/// connection and its error if the connection failed under it.
type InFlight = Pin<Box<dyn Future<Output = Option<(Arc<BrokerConnection>, Error)>> + Send>>;

/// The task of one broker address (see the module docs).
struct Pipeline {
    client: Client,
    addr: String,
    rx: mpsc::UnboundedReceiver<Submission>,
    /// Submissions not yet in a request, in submission order.
    queue: VecDeque<Submission>,
    in_flight: FuturesUnordered<InFlight>,
    /// The connection requests go to; replaced from the client's pool
    /// once it fails.
    conn: Option<Arc<BrokerConnection>>,
}

impl Pipeline {
    async fn run(mut self) {
        let mut open = true;
        loop {
            while self.in_flight.len() < MAX_REQUESTS_IN_FLIGHT && !self.queue.is_empty() {
                self.send_next().await;
            }
            if !open && self.queue.is_empty() && self.in_flight.is_empty() {
                return;
            }
            tokio::select! {
                // Answers first: they free room for the next request.
                biased;
                Some(failed) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if let Some((conn, e)) = failed {
                        self.connection_failed(&conn, &e);
                    }
                }
                next = self.rx.recv(), if open => match next {
                    Some(s) => {
                        self.queue.push_back(s);
                        // Take what is queued already in one go.
                        while let Ok(s) = self.rx.try_recv() {
                            self.queue.push_back(s);
                        }
                    }
                    None => open = false,
                },
            }
        }
    }

    /// Build the next request from the queue and hand it to the connection.
    async fn send_next(&mut self) {
        let conn = match self.conn.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => Arc::clone(c),
            None => match self.client.cluster().produce_connection(&self.addr).await {
                Ok(c) => {
                    self.conn = Some(Arc::clone(&c));
                    c
                }
                Err(e) => {
                    // Nothing of the queue can be written now; the workers
                    // retry after their backoff (and look the leader up
                    // again).
                    self.fail_queued(&e);
                    return;
                }
            },
        };
        let (request, waiters, batches) = self.take_request();
        match conn.send(&request).await {
            Ok(answer) => {
                let counters = self.client.cluster().counters();
                WireCounters::add(&counters.produce_requests, 1);
                WireCounters::add(&counters.produce_batches, batches as u64);
                let addr = self.addr.clone();
                self.in_flight.push(Box::pin(async move {
                    match answer.await {
                        Ok(response) => {
                            waiters.deliver(&addr, response);
                            None
                        }
                        Err(e) => {
                            waiters.fail(&e, true);
                            conn.is_closed().then_some((conn, e))
                        }
                    }
                }));
            }
            Err(e) => {
                waiters.fail(&e, false);
                if conn.is_closed() {
                    self.connection_failed(&conn, &e);
                }
            }
        }
    }

    /// `conn` failed with `e`: what is queued fails too (it would have gone
    /// to that connection), once per connection; the next request opens a
    /// new one.
    fn connection_failed(&mut self, conn: &Arc<BrokerConnection>, e: &Error) {
        if self.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.conn = None;
            self.fail_queued(e);
        }
    }

    fn fail_queued(&mut self, e: &Error) {
        for s in self.queue.drain(..) {
            let _ = s.reply.send(Outcome::failed(e.duplicate(), false));
        }
    }

    /// Take the next request's batches off the queue: the oldest batch of
    /// each partition, in queue order, up to [`MAX_REQUEST_BYTES`] (at
    /// least one batch). Returns the request, its waiters and how many
    /// batches it carries.
    fn take_request(&mut self) -> (ProduceRequest, Waiters, usize) {
        let mut taken: HashSet<(Arc<str>, i32)> = HashSet::new();
        let mut topic_index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut topics: Vec<TopicProduceData> = Vec::new();
        let mut waiters = Waiters { topics: Vec::new() };
        let mut bytes = 0;
        let mut batches = 0;
        let queued = std::mem::take(&mut self.queue);
        let mut rest = queued.into_iter();
        for s in rest.by_ref() {
            let key = (Arc::clone(&s.topic), s.partition);
            if taken.contains(&key) {
                // The partition's next batch: it waits for the next request.
                self.queue.push_back(s);
                continue;
            }
            let new_topic = !topic_index.contains_key(&s.topic);
            let size = s.records.len()
                + PARTITION_OVERHEAD
                + if new_topic { s.topic.len() + 8 } else { 0 };
            if batches > 0 && bytes + size > MAX_REQUEST_BYTES {
                self.queue.push_back(s);
                break;
            }
            bytes += size;
            batches += 1;
            taken.insert(key);
            let i = *topic_index.entry(Arc::clone(&s.topic)).or_insert_with(|| {
                topics.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(s.topic.to_string()))),
                );
                waiters.topics.push((Arc::clone(&s.topic), Vec::new()));
                topics.len() - 1
            });
            topics[i].partition_data.push(
                PartitionProduceData::default()
                    .with_index(s.partition)
                    .with_records(Some(s.records)),
            );
            waiters.topics[i].1.push((s.partition, s.reply));
        }
        // What did not fit stays, in order, behind what was skipped.
        self.queue.extend(rest);
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(
                i32::try_from(self.client.config().request_timeout.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topic_data(topics);
        (request, waiters, batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::TopicProduceResponse;

    fn answer(partition: i32, code: i16, base: i64) -> PartitionProduceResponse {
        PartitionProduceResponse::default()
            .with_index(partition)
            .with_error_code(code)
            .with_base_offset(base)
    }

    /// Brokers answer partitions in hash order: each batch still gets its
    /// own partition's answer, and a partition missing from the answer is
    /// an error, never another partition's success.
    #[test]
    fn answers_reach_their_partitions_in_any_order() {
        let topic: Arc<str> = Arc::from("t");
        let mut receivers = Vec::new();
        let mut partitions = Vec::new();
        // Partition 0 after another: a lookup must not mistake what is
        // left of an answer taken out for partition 0's.
        for p in [1, 0, 2, 3] {
            let (tx, rx) = oneshot::channel();
            partitions.push((p, tx));
            receivers.push((p, rx));
        }
        let waiters = Waiters {
            topics: vec![(Arc::clone(&topic), partitions)],
        };
        // Partition 3 is missing; partition 0 was refused.
        let response =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![
                    answer(2, 0, 200),
                    answer(1, 0, 100),
                    answer(0, 6, -1),
                ])]);
        waiters.deliver("broker:9092", response);
        for (p, mut rx) in receivers {
            let outcome = rx.try_recv().expect("answered");
            assert!(outcome.written);
            match (p, outcome.result) {
                (0, Ok(r)) => assert_eq!((r.index, r.error_code), (0, 6)),
                (1, Ok(r)) => assert_eq!((r.index, r.base_offset), (1, 100)),
                (2, Ok(r)) => assert_eq!((r.index, r.base_offset), (2, 200)),
                (3, Err(Error::Protocol { reason, .. })) => {
                    assert!(reason.contains("t/3"), "{reason}")
                }
                (p, other) => panic!("partition {p}: {other:?}"),
            }
        }
    }
}
