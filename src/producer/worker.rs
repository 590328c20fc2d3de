//! One task per partition: gathers records into batches, sends them through
//! the partition's [`Line`] (up to `max_in_flight` pipelined, always in
//! sequence order) and decides what a failure means.
//!
//! After a failure the worker lets every answer of the round come back,
//! then resends from the oldest unacknowledged batch, alone, after a
//! backoff; nothing later is written meanwhile (the [`Line`] invariant).
//! What a failed answer means, as the Java client reads it:
//!
//! - Any error about a batch behind a failed one (typically
//!   `OUT_OF_ORDER_SEQUENCE_NUMBER`, or a lost connection) is the
//!   consequence of the earlier failure: it is simply resent in order.
//! - A retriable error about the oldest batch (connection lost, leader
//!   moving, broker restarting): resend it after a backoff, until the
//!   partition has made no progress for the client's retry deadline.
//! - `OUT_OF_ORDER_SEQUENCE_NUMBER` or `UNKNOWN_PRODUCER_ID` about the
//!   oldest batch, which was written in order after the last acknowledged
//!   one: the leader really lost this producer's state. Continue under the
//!   next epoch from sequence 0 (KIP-360); `INVALID_PRODUCER_EPOCH` takes a
//!   fresh producer id.
//!
//! A batch whose answer was lost may be stored: it is resent only with the
//! same id, epoch and sequence (the leader recognises the duplicate). If it
//! cannot be (the retry deadline passed, the leader lost the state), it
//! fails with an error that says it may have been stored, never resent
//! under new numbers.
//!
//! The task is supervised: if the worker panics, the records it held fail
//! with [`Error::WorkerFailed`] carrying the panic's message, the cause is
//! logged, and a new worker (under a new epoch, as its predecessor's last
//! batches may be stored) serves the partition's next records.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::idempotence::{ProducerIdentity, ProducerIds};
use super::limits;
use super::line::{Answer, Batch, Line};
use super::pending::{Destination, Pending};
use super::pipeline::{Outcome, Pipelines, Unsent};
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::error_codes::{
    needs_metadata_refresh, DUPLICATE_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, MESSAGE_TOO_LARGE,
    OUT_OF_ORDER_SEQUENCE_NUMBER, RECORD_LIST_TOO_LARGE, UNKNOWN_PRODUCER_ID,
};
use crate::protocol::records::{encode_batch, Codec, ProducerFields};

/// The close signal: `Some(deadline)` once [`Producer::close`](super::Producer::close)
/// was called; what is unresolved at the deadline fails.
pub(crate) type Closing = watch::Receiver<Option<Instant>>;

/// The error of records still unresolved at `close`'s deadline.
pub(crate) const CLOSED_UNACKNOWLEDGED: &str =
    "the producer was closed before the broker acknowledged the record; \
     it may or may not have been stored";

#[cfg(test)]
pub(crate) const TEST_PANIC_VALUE: &[u8] = b"kastellan-test: panic in the partition worker";

pub(crate) struct PartitionWorker {
    pub client: Client,
    pub dest: Arc<Destination>,
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub compression: Codec,
    pub max_in_flight: usize,
    /// Producer ids when idempotent; `None` sends batches without sequences.
    pub ids: Option<Arc<ProducerIds>>,
    /// Records failed at `close`'s deadline, over all workers.
    pub aborted: Arc<AtomicUsize>,
    /// The producer's per-broker pipelines, which carry the batches.
    pub pipelines: Arc<Pipelines>,
    /// This partition's batches queued in a pipeline and not yet written;
    /// while there are any, the open batch keeps filling past its linger.
    pub unsent: Arc<Unsent>,
}

/// The worker's state, owned by its supervisor so that a panic in the
/// worker leaves it behind for the supervisor to fail its records.
struct State {
    /// The batch being filled, and since when it holds records.
    open: Vec<Pending>,
    open_bytes: usize,
    open_since: Option<Instant>,
    line: Line,
    /// Since when the partition has made no progress (no acknowledgement
    /// since a failure); retries end once this is older than the deadline.
    failing_since: Option<std::time::Instant>,
    /// Take a fresh producer id at the next write.
    fresh_identity: bool,
    /// No more records will come.
    input_closed: bool,
    /// `close` was called: what is unresolved at this instant fails.
    abort_at: Option<Instant>,
    /// The close signal's sender is gone (the producer was dropped).
    closing_gone: bool,
}

impl State {
    fn new(idempotent: bool, identity: Option<ProducerIdentity>) -> Self {
        Self {
            open: Vec::new(),
            open_bytes: 0,
            open_since: None,
            line: Line::new(idempotent, identity),
            failing_since: None,
            fresh_identity: false,
            input_closed: false,
            abort_at: None,
            closing_gone: false,
        }
    }

    /// Records held: in the open batch and in the line.
    fn records(&self) -> usize {
        self.open.len() + self.line.records()
    }
}

impl PartitionWorker {
    /// Serve the partition until the producer is dropped or closed,
    /// starting the worker over after a panic.
    pub(super) async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>, mut closing: Closing) {
        let this = Arc::new(self);
        let idempotent = this.ids.is_some();
        let mut st = State::new(idempotent, None);
        loop {
            let served = AssertUnwindSafe(this.serve(&mut st, &mut rx, &mut closing))
                .catch_unwind()
                .await;
            let Err(panic) = served else { return };
            let cause = panic_message(panic.as_ref());
            tracing::error!(topic = %this.dest.topic, partition = this.dest.partition,
                records = st.records(), %cause,
                "producer partition worker panicked; the records it held fail, \
                 and a new worker serves the partition's next records");
            let e = Error::WorkerFailed {
                topic: this.dest.topic.to_string(),
                partition: this.dest.partition,
                reason: format!("the partition worker panicked: {cause}"),
            };
            this.fail_all(&mut st, &e);
            // The failed records may be stored under the old worker's
            // sequence numbers: its successor starts over at sequence 0
            // under the next epoch.
            let old = st.line.identity;
            let identity = old.and_then(ProducerIdentity::bumped);
            if let (Some(ids), Some(_)) = (&this.ids, old) {
                ids.count_reset();
            }
            let mut next = State::new(idempotent, identity);
            next.fresh_identity = st.fresh_identity || (old.is_some() && identity.is_none());
            next.input_closed = st.input_closed;
            next.abort_at = st.abort_at;
            next.closing_gone = st.closing_gone;
            st = next;
            // Never a tight loop, whatever made it panic.
            tokio::time::sleep(this.client.config().retry_policy().initial()).await;
        }
    }

    async fn serve(
        self: &Arc<Self>,
        st: &mut State,
        rx: &mut mpsc::UnboundedReceiver<Pending>,
        closing: &mut Closing,
    ) {
        if st.abort_at.is_none() && !st.closing_gone {
            if let Some(deadline) = *closing.borrow_and_update() {
                st.abort_at = Some(deadline);
                close_input(st, rx, self);
            }
        }
        loop {
            self.pump(st, closing).await;
            if st.abort_at.is_some_and(|t| t <= Instant::now()) {
                self.abort(st);
                return;
            }
            if st.line.is_empty() {
                // Nothing is waiting: the partition is not stuck.
                st.failing_since = None;
                if st.input_closed && st.open.is_empty() {
                    return;
                }
            }
            let wake = self.next_wake(st);
            tokio::select! {
                biased;
                Some((result, sent)) = st.line.answers().next() => {
                    self.on_answer(st, result, sent).await;
                }
                changed = closing.changed(), if !st.closing_gone && st.abort_at.is_none() => {
                    match changed {
                        Ok(()) => {
                            if let Some(deadline) = *closing.borrow_and_update() {
                                st.abort_at = Some(deadline);
                                close_input(st, rx, self);
                            }
                        }
                        Err(_) => st.closing_gone = true,
                    }
                }
                next = rx.recv(), if !st.input_closed => match next {
                    Some(p) => {
                        self.add(st, p);
                        // Take what is queued already in one go.
                        while let Ok(p) = rx.try_recv() {
                            self.add(st, p);
                        }
                    }
                    None => st.input_closed = true,
                },
                // An earlier batch was written: the open one may go.
                () = self.unsent.left(), if !st.open.is_empty() && self.unsent.any() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
            }
        }
    }

    /// The next instant the worker must act without an event: the end of a
    /// backoff, of the open batch's linger, or `close`'s deadline.
    fn next_wake(&self, st: &State) -> Option<Instant> {
        let mut wake = st.abort_at;
        let mut earliest = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        let waiting = st.line.unwritten() > 0 || !st.open.is_empty();
        if let Some(t) = st.line.resume_at().filter(|_| waiting) {
            earliest(t);
        }
        // The open batch waits for its linger only while it could be sent;
        // otherwise it keeps filling until it is full or the line has room.
        if let Some(since) = st.open_since {
            if st.line.unwritten() == 0
                && st.line.has_room(self.max_in_flight)
                && !self.unsent.any()
            {
                earliest(since + self.linger);
            }
        }
        wake
    }

    /// Append a record to the open batch, closing it first if it would overflow.
    fn add(&self, st: &mut State, p: Pending) {
        if !st.open.is_empty() && st.open_bytes + p.size > self.max_batch_bytes {
            self.close_open(st);
        }
        if st.open.is_empty() {
            st.open_since = Some(Instant::now());
        }
        st.open_bytes += p.size;
        #[cfg(test)]
        let panic_now = p.record.value.as_deref() == Some(TEST_PANIC_VALUE);
        st.open.push(p);
        #[cfg(test)]
        if panic_now {
            panic!("test hook: a record asked the worker to panic");
        }
        if st.open_bytes >= self.max_batch_bytes {
            self.close_open(st);
        }
    }

    /// Close the open batch: it joins the line.
    fn close_open(&self, st: &mut State) {
        if st.open.is_empty() {
            return;
        }
        let records = std::mem::take(&mut st.open);
        st.open_bytes = 0;
        st.open_since = None;
        st.line.push(records);
    }

    /// Write batches while the line allows.
    async fn pump(self: &Arc<Self>, st: &mut State, closing: &Closing) {
        loop {
            if st.line.unwritten() == 0
                && !st.open.is_empty()
                && st.line.has_room(self.max_in_flight)
            {
                let lingered = st
                    .open_since
                    .is_some_and(|since| since.elapsed() >= self.linger);
                // While an earlier batch still waits in the pipeline, the
                // open one keeps filling (see `Unsent`).
                if (lingered && !self.unsent.any()) || st.input_closed {
                    self.close_open(st);
                }
            }
            if st.line.next_to_write(self.max_in_flight).is_none() {
                return;
            }
            if let Some(ids) = self.ids.as_ref().filter(|_| st.line.identity.is_none()) {
                let identity = if st.fresh_identity {
                    ids.fresh().await
                } else {
                    ids.shared().await
                };
                match identity {
                    Ok(identity) => {
                        st.fresh_identity = false;
                        st.line.identity = Some(identity);
                    }
                    Err(e) => {
                        st.line.write_failed(e);
                        return;
                    }
                }
            }
            let identity = st.line.identity;
            let Some(batch) = st.line.next_to_write(self.max_in_flight) else {
                return;
            };
            let fields = match identity {
                Some(i) => ProducerFields {
                    id: i.id,
                    epoch: i.epoch,
                    base_sequence: batch.sequence,
                },
                None => ProducerFields::NONE,
            };
            let encoded = match self.encode(batch, fields) {
                Ok(bytes) => bytes,
                Err(e) => {
                    st.line.write_failed(e);
                    return;
                }
            };
            let abort = abort_signal(closing.clone(), st.abort_at);
            match self.write(encoded, abort).await {
                Ok((addr, answer)) => {
                    let this = Arc::clone(self);
                    let answer: Answer = Box::pin(async move {
                        let Outcome { result, written } = answer.await;
                        (this.interpret(&addr, result), written)
                    });
                    st.line.wrote(answer);
                }
                Err(e) => {
                    st.line.write_failed(e);
                    return;
                }
            }
        }
    }

    /// The batch's bytes for `fields`, encoded once per numbering.
    fn encode(&self, batch: &mut Batch, fields: ProducerFields) -> Result<bytes::Bytes> {
        if let Some((f, bytes)) = &batch.encoded {
            if *f == fields {
                return Ok(bytes.clone());
            }
        }
        let bytes = encode_batch(
            batch.records.iter().map(|p| &p.record),
            self.compression,
            fields,
        )
        .map_err(|e| Error::Protocol {
            broker: "local".into(),
            reason: e.to_string(),
        })?;
        batch.encoded = Some((fields, bytes.clone()));
        Ok(bytes)
    }

    /// Hand the batch to the partition leader's pipeline; returns the
    /// leader's address and the future of the partition's answer. Finding
    /// the leader gives up when `abort` fires (close's deadline). The
    /// pipeline connects to the leader itself; waiting for that is bounded
    /// like waiting for any answer: by the connect and request timeouts,
    /// and by the worker's own check of close's deadline, which fails what
    /// it holds whatever is outstanding.
    async fn write(
        &self,
        records: bytes::Bytes,
        abort: impl Future<Output = ()>,
    ) -> Result<(String, impl Future<Output = Outcome> + Send + 'static)> {
        let cluster = self.client.cluster();
        let found = tokio::select! {
            found = cluster.leader_addr(&self.dest.topic, self.dest.partition) => found,
            () = abort => Err(Error::Closed(CLOSED_UNACKNOWLEDGED)),
        };
        match found {
            Ok(addr) => {
                let answer = self.pipelines.submit(
                    &addr,
                    Arc::clone(&self.dest.topic),
                    self.dest.partition,
                    records,
                    &self.unsent,
                );
                Ok((addr, answer))
            }
            Err(e) => {
                if e.is_retriable() {
                    cluster.invalidate(&self.dest.topic);
                }
                Err(e)
            }
        }
    }

    /// This partition's outcome in a produce answer: the base offset, or -1
    /// for a batch the leader stored long ago and no longer knows the offset
    /// of (`DUPLICATE_SEQUENCE_NUMBER`: stored once, offset unknown).
    fn interpret(&self, addr: &str, answer: Result<PartitionProduceResponse>) -> Result<i64> {
        let cluster = self.client.cluster();
        let p = answer.inspect_err(|e| {
            if e.is_retriable() {
                cluster.invalidate(&self.dest.topic);
            }
        })?;
        match p.error_code {
            0 => Ok(p.base_offset),
            DUPLICATE_SEQUENCE_NUMBER => Ok(-1),
            code => {
                if needs_metadata_refresh(code) {
                    cluster.invalidate(&self.dest.topic);
                }
                Err(BrokerError::new(
                    addr,
                    "Produce",
                    code,
                    p.error_message.as_ref().map(|m| m.to_string()),
                )
                .into())
            }
        }
    }

    /// Take in the answer of the oldest unanswered batch.
    async fn on_answer(&self, st: &mut State, result: Result<i64>, sent: bool) {
        if let Some((batch, base)) = st.line.answered(result, sent) {
            st.failing_since = None;
            resolve_ok(batch, base);
        }
        if st.line.drained() {
            self.settle(st).await;
        }
    }

    /// The round failed and all its answers are in: decide about the oldest
    /// unacknowledged batch, whose failure stopped the round, and start the
    /// next round.
    async fn settle(&self, st: &mut State) {
        let failing_since = *st.failing_since.get_or_insert_with(std::time::Instant::now);
        let deadline = self.client.config().retry_policy().deadline();
        let Some(front) = st.line.front_mut() else {
            st.line.resend(None);
            return;
        };
        let e = front
            .last_error
            .take()
            .unwrap_or(Error::Closed("produce failed without an error"));
        let code = e.broker_code();
        if let Some(code @ (MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE)) = code {
            if front.len() > 1 {
                // Halve and resend; the halves keep the batch's sequence range.
                st.line.split_front();
                st.line.resend(None);
                return;
            }
            let size = front.encoded.as_ref().map_or_else(
                || front.records.first().map_or(0, |p| p.size),
                |(_, b)| b.len(),
            );
            let e = match limits::refusing_limit(&self.client, &self.dest.topic, code).await {
                Ok((limit, which)) => Error::RecordTooLarge { size, limit, which },
                Err(lookup) => {
                    tracing::debug!(topic = %self.dest.topic, error = %lookup,
                        "cannot read the topic's size limit");
                    e
                }
            };
            self.give_up_front(st, e);
            return;
        }
        if self.ids.is_some() {
            if let Some(
                code
                @ (OUT_OF_ORDER_SEQUENCE_NUMBER | UNKNOWN_PRODUCER_ID | INVALID_PRODUCER_EPOCH),
            ) = code
            {
                // The oldest unacknowledged batch, written in order right
                // after the last acknowledged one, does not fit the leader's
                // sequence state: the leader lost it (or, for
                // INVALID_PRODUCER_EPOCH, knows a newer epoch of our id).
                tracing::warn!(topic = %self.dest.topic, partition = self.dest.partition,
                    error = %e, "the partition leader lost this producer's sequence state; \
                    continuing from sequence 0 under a new epoch");
                let fresh = code == INVALID_PRODUCER_EPOCH;
                self.restart_sequences(st, fresh, &e);
                st.line.resend(None);
                return;
            }
        }
        if e.is_retriable() && failing_since.elapsed() < deadline {
            tracing::debug!(topic = %self.dest.topic, partition = self.dest.partition,
                attempt = front.attempts, error = %e, "produce failed; will resend");
            let backoff = self.backoff(front.attempts);
            st.line.resend(Some(backoff));
            return;
        }
        let e = if e.is_retriable() {
            Error::DeliveryTimeout {
                topic: self.dest.topic.to_string(),
                partition: self.dest.partition,
                timeout: deadline,
                last: e.to_string(),
            }
        } else {
            e
        };
        self.give_up_front(st, e);
    }

    /// Fail the oldest unacknowledged batch and carry on with the rest.
    fn give_up_front(&self, st: &mut State, e: Error) {
        let Some(front) = st.line.pop_front() else {
            return;
        };
        let (sequence, maybe_stored) = (front.sequence, front.maybe_stored);
        resolve_err(&self.dest, front, &e);
        if self.ids.is_some() {
            if maybe_stored {
                // The leader may hold it under its sequence numbers, so the
                // batches behind cannot take them over: those that may be
                // stored as well fail, the rest go on under a new epoch.
                self.restart_sequences(st, false, &e);
            } else {
                // Never stored, so neither is anything behind it: the
                // batches behind take over its sequence numbers.
                st.line.renumber(sequence);
            }
        }
        st.line.resend(None);
    }

    /// Continue the partition from sequence 0 under the next epoch (or a
    /// fresh id). Batches that may be stored under the old numbering fail
    /// with `cause`: resending them under new numbers could store them twice.
    fn restart_sequences(&self, st: &mut State, fresh: bool, cause: &Error) {
        let Some(ids) = &self.ids else { return };
        ids.count_reset();
        let unsure = st.line.take_maybe_stored();
        if !unsure.is_empty() {
            let e = Error::Client {
                context: format!(
                    "produce to {}/{} (the record may have been stored)",
                    self.dest.topic, self.dest.partition
                ),
                message: format!(
                    "its answer was lost and it cannot be resent under the same \
                     sequence numbers: {cause}"
                ),
                retriable: false,
            };
            for batch in unsure {
                resolve_err(&self.dest, batch, &e);
            }
        }
        let identity = if fresh {
            None
        } else {
            st.line.identity.and_then(ProducerIdentity::bumped)
        };
        st.fresh_identity = identity.is_none();
        st.line.restart_sequences(identity);
    }

    /// Pause before the `attempts`-th resend, as the client's retry
    /// policy says.
    fn backoff(&self, attempts: u32) -> Duration {
        let policy = self.client.config().retry_policy();
        policy
            .pauses()
            .nth(attempts.saturating_sub(1).min(30) as usize)
            .unwrap_or_else(|| policy.max())
    }

    /// `close`'s deadline passed: fail everything held.
    fn abort(&self, st: &mut State) {
        let n = st.records();
        if n > 0 {
            self.aborted.fetch_add(n, Ordering::AcqRel);
            tracing::warn!(topic = %self.dest.topic, partition = self.dest.partition,
                records = n, "producer closed with records not acknowledged; they fail");
        }
        let e = Error::Closed(CLOSED_UNACKNOWLEDGED);
        self.fail_all(st, &e);
    }

    fn fail_all(&self, st: &mut State, e: &Error) {
        for p in st.open.drain(..) {
            p.resolve(Err(e.duplicate()));
        }
        st.open_bytes = 0;
        st.open_since = None;
        for batch in st.line.take_all() {
            for p in batch.records {
                p.resolve(Err(e.duplicate()));
            }
        }
    }
}

/// After `close`: take in what is queued (nothing more will come) and stop
/// lingering.
fn close_input(
    st: &mut State,
    rx: &mut mpsc::UnboundedReceiver<Pending>,
    worker: &PartitionWorker,
) {
    while let Ok(p) = rx.try_recv() {
        worker.add(st, p);
    }
    st.input_closed = true;
}

/// Resolves at `close`'s deadline (never, while the producer is open).
async fn abort_signal(mut closing: Closing, abort_at: Option<Instant>) {
    let at = match abort_at {
        Some(at) => at,
        None => loop {
            if closing.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if let Some(at) = *closing.borrow_and_update() {
                break at;
            }
        },
    };
    tokio::time::sleep_until(at).await;
}

fn resolve_ok(batch: Batch, base: i64) {
    for (i, p) in batch.records.into_iter().enumerate() {
        p.resolve(Ok(if base >= 0 { base + i as i64 } else { -1 }));
    }
}

fn resolve_err(dest: &Destination, batch: Batch, e: &Error) {
    tracing::warn!(topic = %dest.topic, partition = dest.partition,
        records = batch.len(), error = %e, "produce failed");
    for p in batch.records {
        p.resolve(Err(e.duplicate()));
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
