//! One task per partition: gathers records into batches, keeps up to
//! `max_in_flight` batches in flight and retries failures in order.
//!
//! Batches of one partition are written to the leader's connection in order
//! and the broker handles one connection's requests in order, so pipelining
//! keeps them in order while nothing fails. When a batch fails, the worker
//! stops sending, lets the batches behind it come back (an idempotent
//! producer's leader refuses them as out of sequence), and resends from the
//! failed batch on, one at a time, until one succeeds; then it pipelines
//! again. With idempotence the leader also drops resent batches it already
//! stored, so retries write nothing twice.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::idempotence::{ProducerIdentity, ProducerIds};
use super::{Delivery, DeliveryReport, Outstanding};
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::error_codes::{
    needs_metadata_refresh, DUPLICATE_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, MESSAGE_TOO_LARGE,
    OUT_OF_ORDER_SEQUENCE_NUMBER, RECORD_LIST_TOO_LARGE, UNKNOWN_PRODUCER_ID,
};
use crate::protocol::records::{encode_batch, Codec, OutgoingRecord, ProducerFields};

/// A record waiting in a partition queue.
pub(crate) struct Pending {
    pub record: OutgoingRecord,
    pub size: usize,
    /// Buffer memory held until the record is resolved.
    pub _permit: OwnedSemaphorePermit,
    pub done: oneshot::Sender<Result<Delivery>>,
}

pub(crate) struct PartitionWorker {
    pub client: Client,
    pub topic: Arc<str>,
    pub partition: i32,
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub compression: Codec,
    pub max_in_flight: usize,
    /// Producer ids when idempotent; `None` sends batches without sequences.
    pub ids: Option<Arc<ProducerIds>>,
    pub outstanding: Arc<Outstanding>,
    pub reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
}

/// A closed batch: its records in order and, once sent, its encoding.
struct Batch {
    records: Vec<Pending>,
    /// Sequence number of the first record (-1 without idempotence).
    sequence: i32,
    /// Failed attempts so far, and when the first one failed.
    attempts: u32,
    first_failure: Option<Instant>,
    encoded: Option<(ProducerFields, bytes::Bytes)>,
}

impl Batch {
    fn new(records: Vec<Pending>, sequence: i32) -> Self {
        Self {
            records,
            sequence,
            attempts: 0,
            first_failure: None,
            encoded: None,
        }
    }
}

/// One attempt to produce a batch: resolves to the batch and its base offset
/// or the error of this attempt.
type Attempt = Pin<Box<dyn Future<Output = (Batch, Result<i64>)> + Send>>;

/// The worker's mutable state, owned by its task.
struct State {
    /// The batch being filled, and since when it holds records.
    open: Vec<Pending>,
    open_bytes: usize,
    open_since: Option<tokio::time::Instant>,
    /// Closed batches waiting to be sent, oldest first.
    queue: VecDeque<Batch>,
    /// Sent batches, in the order they were sent.
    in_flight: FuturesOrdered<Attempt>,
    /// Batches that failed in the current recovery, in order; they go back
    /// to the head of the queue once nothing is in flight.
    failed: Vec<Batch>,
    /// Sending one batch at a time until one succeeds (after failures, and
    /// for the first batch of a producer id).
    recovering: bool,
    /// The broker lost this partition's sequence state: get a fresh id.
    reset_identity: bool,
    /// A batch failed for good: later batches take over its sequence numbers.
    renumber_from: Option<i32>,
    identity: Option<ProducerIdentity>,
    next_sequence: i32,
    input_closed: bool,
}

impl PartitionWorker {
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let this = Arc::new(self);
        let mut st = State {
            open: Vec::new(),
            open_bytes: 0,
            open_since: None,
            queue: VecDeque::new(),
            in_flight: FuturesOrdered::new(),
            failed: Vec::new(),
            // The first batch goes alone: a new producer id's first sequence
            // on a partition is whatever arrives first, so a pipelined second
            // batch must not overtake a first one that failed (for example on
            // a topic whose leader is not ready yet).
            recovering: true,
            reset_identity: false,
            renumber_from: None,
            identity: None,
            next_sequence: 0,
            input_closed: false,
        };
        loop {
            this.pump(&mut st).await;
            if st.input_closed
                && st.open.is_empty()
                && st.queue.is_empty()
                && st.in_flight.is_empty()
                && st.failed.is_empty()
            {
                break;
            }
            // The open batch waits for its linger only while it could be sent;
            // otherwise it keeps filling until it is full or capacity frees up.
            let linger_at = st
                .open_since
                .filter(|_| this.can_send(&st) && st.queue.is_empty())
                .map(|since| since + this.linger);
            tokio::select! {
                biased;
                Some((batch, result)) = st.in_flight.next(), if !st.in_flight.is_empty() => {
                    this.complete(&mut st, batch, result);
                }
                next = rx.recv(), if !st.input_closed => match next {
                    Some(p) => {
                        this.add(&mut st, p);
                        // Take what is queued already in one go.
                        while let Ok(p) = rx.try_recv() {
                            this.add(&mut st, p);
                        }
                    }
                    None => st.input_closed = true,
                },
                _ = tokio::time::sleep_until(linger_at.unwrap_or_else(far_future)), if linger_at.is_some() => {
                    this.close_open(&mut st);
                }
            }
        }
    }

    fn can_send(&self, st: &State) -> bool {
        let cap = if st.recovering { 1 } else { self.max_in_flight };
        st.in_flight.len() < cap
    }

    /// Append a record to the open batch, closing it first if it would overflow.
    fn add(&self, st: &mut State, p: Pending) {
        if !st.open.is_empty() && st.open_bytes + p.size > self.max_batch_bytes {
            self.close_open(st);
        }
        if st.open.is_empty() {
            st.open_since = Some(tokio::time::Instant::now());
        }
        st.open_bytes += p.size;
        st.open.push(p);
        if st.open_bytes >= self.max_batch_bytes {
            self.close_open(st);
        }
    }

    /// Close the open batch and give it the next sequence numbers.
    fn close_open(&self, st: &mut State) {
        if st.open.is_empty() {
            return;
        }
        let records = std::mem::take(&mut st.open);
        st.open_bytes = 0;
        st.open_since = None;
        let sequence = if self.ids.is_some() {
            let s = st.next_sequence;
            st.next_sequence = advance(s, records.len());
            s
        } else {
            -1
        };
        st.queue.push_back(Batch::new(records, sequence));
    }

    /// Send queued batches while the in-flight limit allows.
    async fn pump(self: &Arc<Self>, st: &mut State) {
        loop {
            if st.in_flight.is_empty() && (!st.failed.is_empty() || st.recovering) {
                self.settle(st).await;
            }
            if !self.can_send(st) {
                return;
            }
            if st.queue.is_empty() {
                let lingered = st
                    .open_since
                    .is_some_and(|since| since.elapsed() >= self.linger);
                if !st.open.is_empty() && (lingered || st.input_closed) {
                    self.close_open(st);
                } else {
                    return;
                }
            }
            let Some(batch) = st.queue.pop_front() else {
                return;
            };
            let attempt = self.start(st, batch).await;
            st.in_flight.push_back(attempt);
        }
    }

    /// With nothing in flight after failures: put the failed batches back at
    /// the head of the queue and repair sequence numbers before resending.
    async fn settle(&self, st: &mut State) {
        for batch in st.failed.drain(..).rev() {
            st.queue.push_front(batch);
        }
        let Some(ids) = &self.ids else { return };
        if st.reset_identity {
            match ids.fresh().await {
                Ok(identity) => {
                    tracing::warn!(topic = %self.topic, partition = self.partition,
                        "broker lost this producer's sequence state; continuing with a new producer id");
                    st.identity = Some(identity);
                    st.reset_identity = false;
                    st.renumber_from = Some(0);
                    st.recovering = true;
                }
                Err(e) => {
                    // Without an id nothing can be sent: fail the head batch
                    // and try again for the next one.
                    if let Some(batch) = st.queue.pop_front() {
                        self.resolve_err(batch, &e);
                    }
                    return;
                }
            }
        }
        if let Some(mut sequence) = st.renumber_from.take() {
            for batch in &mut st.queue {
                if batch.sequence != sequence {
                    batch.sequence = sequence;
                    batch.encoded = None;
                }
                sequence = advance(sequence, batch.records.len());
            }
            st.next_sequence = sequence;
        }
    }

    /// Encode a batch and start its request. In normal operation the request
    /// is written before this returns, so batches reach the broker in order;
    /// a resent batch waits for its backoff first (it is the only one in flight).
    async fn start(self: &Arc<Self>, st: &mut State, mut batch: Batch) -> Attempt {
        let fields = match self.fields(st, batch.sequence).await {
            Ok(f) => f,
            Err(e) => return ready(batch, Err(e)),
        };
        let encoded = match &batch.encoded {
            Some((f, bytes)) if *f == fields => bytes.clone(),
            _ => match encode_batch(
                batch.records.iter().map(|p| &p.record),
                self.compression,
                fields,
            ) {
                Ok(bytes) => {
                    batch.encoded = Some((fields, bytes.clone()));
                    bytes
                }
                Err(e) => {
                    let e = Error::Protocol {
                        broker: "local".into(),
                        reason: e.to_string(),
                    };
                    return ready(batch, Err(e));
                }
            },
        };
        let request = self.request(encoded);
        let this = Arc::clone(self);
        if batch.attempts > 0 {
            let delay = self.backoff(batch.attempts);
            return Box::pin(async move {
                tokio::time::sleep(delay).await;
                let result = match this.write(&request).await {
                    Ok((addr, answer)) => this.interpret(&addr, answer.await),
                    Err(e) => Err(e),
                };
                (batch, result)
            });
        }
        match self.write(&request).await {
            Ok((addr, answer)) => Box::pin(async move {
                let result = this.interpret(&addr, answer.await);
                (batch, result)
            }),
            Err(e) => ready(batch, Err(e)),
        }
    }

    /// The producer fields for a batch starting at `sequence`.
    async fn fields(&self, st: &mut State, sequence: i32) -> Result<ProducerFields> {
        let Some(ids) = &self.ids else {
            return Ok(ProducerFields::NONE);
        };
        let identity = match st.identity {
            Some(identity) => identity,
            None => {
                let identity = ids.shared().await?;
                st.identity = Some(identity);
                identity
            }
        };
        Ok(ProducerFields {
            id: identity.id,
            epoch: identity.epoch,
            base_sequence: sequence,
        })
    }

    fn request(&self, records: bytes::Bytes) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(
                i32::try_from(self.client.config().request_timeout.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(self.partition)
                    .with_records(Some(records))])])
    }

    /// Write the request to the partition leader; returns the leader's
    /// address and the future of its answer.
    async fn write(
        &self,
        request: &ProduceRequest,
    ) -> Result<(
        String,
        impl Future<Output = Result<ProduceResponse>> + Send + 'static,
    )> {
        let cluster = self.client.cluster();
        let written = async {
            let addr = cluster.leader_addr(&self.topic, self.partition).await?;
            let conn = cluster.produce_connection(&addr).await?;
            let answer = conn.send(request).await?;
            Ok::<_, Error>((addr, answer))
        }
        .await;
        if let Err(e) = &written {
            if e.is_retriable() {
                cluster.invalidate(&self.topic);
            }
        }
        written
    }

    /// This partition's outcome in a produce answer.
    fn interpret(&self, addr: &str, answer: Result<ProduceResponse>) -> Result<i64> {
        let cluster = self.client.cluster();
        let response = answer.inspect_err(|e| {
            if e.is_retriable() {
                cluster.invalidate(&self.topic);
            }
        })?;
        let p = response
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == self.partition)
            .ok_or_else(|| Error::Protocol {
                broker: addr.to_string(),
                reason: format!("produce answer lacks {}/{}", self.topic, self.partition),
            })?;
        if p.error_code != 0 {
            if needs_metadata_refresh(p.error_code) {
                cluster.invalidate(&self.topic);
            }
            return Err(BrokerError::new(
                addr,
                "Produce",
                p.error_code,
                p.error_message.as_ref().map(|m| m.to_string()),
            )
            .into());
        }
        Ok(p.base_offset)
    }

    /// Handle the outcome of the oldest batch in flight.
    fn complete(&self, st: &mut State, mut batch: Batch, result: Result<i64>) {
        let e = match result {
            Ok(base) => {
                self.resolve_ok(batch, base);
                if st.in_flight.is_empty() && st.failed.is_empty() {
                    st.recovering = false;
                }
                return;
            }
            Err(e) => e,
        };
        let code = e.broker_code();
        let idempotent = self.ids.is_some();
        if code == Some(DUPLICATE_SEQUENCE_NUMBER) {
            // Stored before, and too long ago for the broker to remember the
            // offset: delivered, offset unknown.
            self.resolve_ok_without_offsets(batch);
            return;
        }
        let too_large = matches!(code, Some(MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE));
        if too_large && batch.records.len() > 1 {
            // Halve and resend; the halves keep the batch's sequence range.
            let mut first = std::mem::take(&mut batch.records);
            let second = first.split_off(first.len() / 2);
            let second_sequence = if idempotent {
                advance(batch.sequence, first.len())
            } else {
                -1
            };
            st.failed.push(Batch::new(first, batch.sequence));
            st.failed.push(Batch::new(second, second_sequence));
            st.recovering = true;
            return;
        }
        let sequence_lost = idempotent
            && matches!(
                code,
                Some(OUT_OF_ORDER_SEQUENCE_NUMBER | UNKNOWN_PRODUCER_ID | INVALID_PRODUCER_EPOCH)
            );
        // Nothing older is unresolved or waiting for new sequence numbers.
        let alone = st.in_flight.is_empty() && st.failed.is_empty() && st.renumber_from.is_none();
        if sequence_lost && (!st.recovering || alone) {
            // A sequence complaint about the oldest unresolved batch, with
            // nothing failed before it: the broker's sequence state for this
            // partition is not ours (it lost it, or a later batch got in
            // first). Start over with a fresh producer id.
            st.reset_identity = true;
        }
        // Other sequence complaints follow an earlier failure and clear up
        // once the batches before them are resent.
        let retriable = e.is_retriable() || sequence_lost;
        let first_failure = *batch.first_failure.get_or_insert_with(Instant::now);
        let deadline = self.client.config().retry_deadline;
        if retriable && first_failure.elapsed() < deadline {
            batch.attempts += 1;
            tracing::debug!(topic = %self.topic, partition = self.partition,
                attempt = batch.attempts, error = %e, "produce failed; will resend");
            st.failed.push(batch);
            st.recovering = true;
            return;
        }
        let e = if too_large {
            Error::RecordTooLarge {
                size: batch.records.first().map_or(0, |p| p.size),
                limit: self.max_batch_bytes,
                which: "broker message.max.bytes (or the topic's max.message.bytes)",
            }
        } else if retriable {
            Error::DeliveryTimeout {
                topic: self.topic.to_string(),
                partition: self.partition,
                timeout: deadline,
                last: e.to_string(),
            }
        } else {
            e
        };
        if idempotent {
            // The broker never stored this batch: the batches after it take
            // over its sequence numbers.
            let from = st.renumber_from.unwrap_or(batch.sequence);
            st.renumber_from = Some(from);
            st.recovering = true;
        }
        self.resolve_err(batch, &e);
    }

    /// Pause before resending: exponential from the client's retry backoff,
    /// capped at its maximum.
    fn backoff(&self, attempts: u32) -> Duration {
        let config = self.client.config();
        let factor = 1u32 << attempts.saturating_sub(1).min(10);
        config
            .retry_backoff
            .saturating_mul(factor)
            .min(config.retry_backoff_max)
    }

    fn resolve_ok(&self, batch: Batch, base: i64) {
        self.resolve(batch, |i| Ok(base + i as i64));
    }

    fn resolve_ok_without_offsets(&self, batch: Batch) {
        self.resolve(batch, |_| Ok(-1));
    }

    fn resolve_err(&self, batch: Batch, e: &Error) {
        tracing::warn!(topic = %self.topic, partition = self.partition,
            records = batch.records.len(), error = %e, "produce failed");
        self.resolve(batch, |_| Err(e.duplicate()));
    }

    fn resolve(&self, batch: Batch, outcome: impl Fn(usize) -> Result<i64>) {
        let n = batch.records.len();
        for (i, p) in batch.records.into_iter().enumerate() {
            if let Some(r) = &self.reports {
                let _ = r.send(DeliveryReport {
                    topic: Arc::clone(&self.topic),
                    partition: self.partition,
                    key: p.record.key.clone(),
                    result: outcome(i),
                });
            }
            let _ = p.done.send(outcome(i).map(|offset| Delivery {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                offset,
            }));
        }
        self.outstanding.done(n);
    }
}

/// An attempt that has already failed (or succeeded) without a request.
fn ready(batch: Batch, result: Result<i64>) -> Attempt {
    Box::pin(std::future::ready((batch, result)))
}

/// The sequence number `n` records after `sequence`; wraps to 0 after
/// `i32::MAX` as Kafka's sequences do.
fn advance(sequence: i32, n: usize) -> i32 {
    ((i64::from(sequence) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::advance;

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(advance(0, 5), 5);
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 3), 1);
    }
}
