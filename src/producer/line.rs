//! One partition's send line: its closed batches in sequence order, which
//! of them are on the wire, and the producer id and epoch they carry.
//!
//! # The ordering invariant
//!
//! An idempotent producer's partition leader stores a batch only if its
//! first sequence number follows the last one it stored for the producer
//! (KIP-98); anything else is answered `OUT_OF_ORDER_SEQUENCE_NUMBER`. So
//! the batches of a partition must reach the leader in sequence order, also
//! while some of them are being resent. The line guarantees that by
//! construction:
//!
//! - `batches` is ordered by sequence number: a batch gets its sequence
//!   when it joins the back of the line, and renumbering (after a batch
//!   failed for good, or under a new epoch) keeps the order.
//! - Requests are written in *rounds*. The next write of a round is always
//!   `batches[written]`, the oldest batch not yet written in it, so a round
//!   writes batches in ascending sequence order.
//! - A round stops writing at its first failure: a failed write, or a
//!   failed answer (answers arrive in write order). Nothing is written
//!   again until every answer of the round is in; then a new round starts
//!   at `batches[0]`, the oldest unacknowledged batch (the resend), after
//!   its backoff, and carries only that batch until it is acknowledged.
//!
//! So a resent batch can never be overtaken by a later one: no later batch
//! is written while it waits. Between the oldest unacknowledged batch and
//! the next one written there is only ever a gap of batches the leader has
//! already acknowledged. [`Line::wrote`] checks this on every write.
//!
//! The line is plain state: the partition worker drives it and does the I/O.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use tokio::time::Instant;

use super::idempotence::ProducerIdentity;
use super::pending::Pending;
use crate::error::{Error, Result};
use crate::protocol::records::ProducerFields;

/// The answer to one written batch: its base offset, or the error of the
/// attempt and whether the request had been written (so the leader may
/// have stored the batch even though the answer is an error).
pub(crate) type Answer = Pin<Box<dyn Future<Output = (Result<i64>, bool)> + Send>>;

/// A closed batch: its records in order and, once encoded, its bytes.
pub(crate) struct Batch {
    pub records: Vec<Pending>,
    /// Sequence number of the first record (-1 without idempotence).
    pub sequence: i32,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Some attempt was written and its answer lost (connection lost,
    /// timeout): the leader may hold this batch under its current sequence.
    /// Such a batch is only ever resent with the same producer id, epoch and
    /// sequence, so the leader can recognise it as a duplicate.
    pub maybe_stored: bool,
    /// The error of the latest failed attempt.
    pub last_error: Option<Error>,
    pub encoded: Option<(ProducerFields, Bytes)>,
}

impl Batch {
    fn new(records: Vec<Pending>, sequence: i32) -> Self {
        Self {
            records,
            sequence,
            attempts: 0,
            maybe_stored: false,
            last_error: None,
            encoded: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }
}

/// See the [module documentation](self) for the invariant this upholds.
pub(crate) struct Line {
    /// Unacknowledged batches, in sequence order.
    batches: VecDeque<Batch>,
    /// How many batches at the front of `batches` were written in this round.
    written: usize,
    /// How many of those have answered with an error (the front ones;
    /// acknowledged batches leave the line at once).
    answered: usize,
    /// A write of this round failed: write nothing more in it.
    write_failed: bool,
    /// Answers of the written, unanswered batches, in write order:
    /// `answers[i]` is the answer of `batches[answered + i]`.
    answers: FuturesOrdered<Answer>,
    /// Carry one batch at a time until the front batch is acknowledged: at
    /// the start (a new producer id's first write), after a resend, and
    /// after a new epoch.
    probe: bool,
    /// Write nothing before this (backoff before a resend).
    resume_at: Option<Instant>,
    /// Sequence number of the next batch to join the line.
    next_sequence: i32,
    /// The producer id and epoch of the batches; `None` until the first
    /// write fetches one (idempotent producers only).
    pub identity: Option<ProducerIdentity>,
    idempotent: bool,
    /// Sequence and size of the last batch written in this round, to check
    /// the invariant on each write.
    last_written: Option<(i32, usize)>,
}

impl Line {
    pub(super) fn new(idempotent: bool, identity: Option<ProducerIdentity>) -> Self {
        Self {
            batches: VecDeque::new(),
            written: 0,
            answered: 0,
            write_failed: false,
            answers: FuturesOrdered::new(),
            probe: true,
            resume_at: None,
            next_sequence: 0,
            identity,
            idempotent,
            last_written: None,
        }
    }

    /// Add a batch of records to the back of the line.
    pub(super) fn push(&mut self, records: Vec<Pending>) {
        let sequence = if self.idempotent {
            let s = self.next_sequence;
            self.next_sequence = advance(s, records.len());
            s
        } else {
            -1
        };
        self.batches.push_back(Batch::new(records, sequence));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Batches not yet written in this round.
    pub(super) fn unwritten(&self) -> usize {
        self.batches.len() - self.written
    }

    /// Records held by the line.
    pub(super) fn records(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }

    pub(super) fn answers(&mut self) -> &mut FuturesOrdered<Answer> {
        &mut self.answers
    }

    /// When the line waits for a backoff to pass before writing.
    pub(super) fn resume_at(&self) -> Option<Instant> {
        self.resume_at.filter(|&t| t > Instant::now())
    }

    /// Whether the line could write a batch now if it had one, given
    /// `max_in_flight`.
    pub(super) fn has_room(&self, max_in_flight: usize) -> bool {
        let cap = if self.probe { 1 } else { max_in_flight };
        self.answered == 0
            && !self.write_failed
            && self.answers.len() < cap
            && self.resume_at().is_none()
    }

    /// The batch to write next, if the invariant and `max_in_flight` allow a
    /// write now.
    pub(super) fn next_to_write(&mut self, max_in_flight: usize) -> Option<&mut Batch> {
        if !self.has_room(max_in_flight) {
            return None;
        }
        self.batches.get_mut(self.written)
    }

    /// Record that the batch from [`next_to_write`](Self::next_to_write)
    /// was written and `answer` will bring its outcome.
    pub(super) fn wrote(&mut self, answer: Answer) {
        let batch = &self.batches[self.written];
        if self.idempotent {
            // The invariant: a round starts at the oldest unacknowledged
            // batch and then only moves forward.
            match self.last_written {
                None => debug_assert_eq!(self.written, 0, "a round must start at the front"),
                Some((seq, len)) => debug_assert!(
                    ahead(advance(seq, len), batch.sequence),
                    "sequence {} written after {seq}+{len}",
                    batch.sequence
                ),
            }
            self.last_written = Some((batch.sequence, batch.len()));
        }
        self.written += 1;
        self.answers.push_back(answer);
    }

    /// Record that writing the batch from [`next_to_write`](Self::next_to_write)
    /// failed: it is not on the wire, and nothing more is written in this round.
    pub(super) fn write_failed(&mut self, e: Error) {
        self.write_failed = true;
        self.written += 1;
        self.answers
            .push_back(Box::pin(std::future::ready((Err(e), false))));
    }

    /// Take in the next answer. An acknowledged batch leaves the line and is
    /// returned with its base offset; a failed one stays for a resend.
    pub(super) fn answered(&mut self, result: Result<i64>, sent: bool) -> Option<(Batch, i64)> {
        let index = self.answered;
        match result {
            Ok(base) => {
                let batch = self.batches.remove(index)?;
                self.written -= 1;
                if index == 0 {
                    // The front batch is in: the resend (if any) succeeded.
                    self.probe = false;
                }
                Some((batch, base))
            }
            Err(e) => {
                if let Some(batch) = self.batches.get_mut(index) {
                    batch.attempts += 1;
                    batch.maybe_stored |= sent && may_be_stored(&e);
                    batch.last_error = Some(e);
                }
                self.answered += 1;
                None
            }
        }
    }

    /// Whether the round failed and every answer of it is in: time to
    /// decide about the front batch and start a new round.
    pub(super) fn drained(&self) -> bool {
        (self.answered > 0 || self.write_failed) && self.answers.is_empty()
    }

    /// The oldest unacknowledged batch.
    pub(super) fn front_mut(&mut self) -> Option<&mut Batch> {
        self.batches.front_mut()
    }

    pub(super) fn pop_front(&mut self) -> Option<Batch> {
        let batch = self.batches.pop_front();
        self.written = self.written.saturating_sub(1);
        batch
    }

    /// Take every batch out of the line, in order (the worker fails them).
    pub(super) fn take_all(&mut self) -> Vec<Batch> {
        self.written = 0;
        self.answered = 0;
        self.answers = FuturesOrdered::new();
        self.batches.drain(..).collect()
    }

    /// Take out the batches that may be stored, in order.
    pub(super) fn take_maybe_stored(&mut self) -> Vec<Batch> {
        let (maybe, rest): (VecDeque<Batch>, VecDeque<Batch>) =
            self.batches.drain(..).partition(|b| b.maybe_stored);
        self.batches = rest;
        maybe.into_iter().collect()
    }

    /// Split the front batch in two halves that keep its sequence range.
    pub(super) fn split_front(&mut self) {
        let Some(mut batch) = self.batches.pop_front() else {
            return;
        };
        let second = batch.records.split_off(batch.records.len() / 2);
        let second_sequence = if self.idempotent {
            advance(batch.sequence, batch.records.len())
        } else {
            -1
        };
        let mut second = Batch::new(second, second_sequence);
        second.attempts = batch.attempts;
        batch.encoded = None;
        self.batches.push_front(second);
        self.batches.push_front(batch);
    }

    /// Start a new round at the front batch, after `backoff`.
    pub(super) fn resend(&mut self, backoff: Option<std::time::Duration>) {
        debug_assert!(self.answers.is_empty(), "resend with answers pending");
        self.written = 0;
        self.answered = 0;
        self.write_failed = false;
        self.last_written = None;
        self.probe = true;
        self.resume_at = backoff.map(|d| Instant::now() + d);
    }

    /// Number the batches again from `from` on, in order. Only for batches
    /// the leader did not store (none of them holds these numbers).
    pub(super) fn renumber(&mut self, from: i32) {
        if !self.idempotent {
            return;
        }
        let mut sequence = from;
        for batch in &mut self.batches {
            batch.maybe_stored = false;
            if batch.sequence != sequence {
                batch.sequence = sequence;
                batch.encoded = None;
            }
            sequence = advance(sequence, batch.len());
        }
        self.next_sequence = sequence;
    }

    /// Continue under a new producer id or epoch: every batch is numbered
    /// from 0 again. Only for batches the leader did not store (the caller
    /// takes out those that may be stored first).
    pub(super) fn restart_sequences(&mut self, identity: Option<ProducerIdentity>) {
        debug_assert!(self.batches.iter().all(|b| !b.maybe_stored));
        self.identity = identity;
        for batch in &mut self.batches {
            batch.encoded = None;
        }
        self.renumber(0);
        self.probe = true;
    }
}

/// Whether the leader may have stored a batch whose written request ended
/// with `e`: the answer was lost, or the leader stored it and then failed.
fn may_be_stored(e: &Error) -> bool {
    /// `UNKNOWN_SERVER_ERROR`, `REQUEST_TIMED_OUT` (acks=all: stored by the
    /// leader, not yet by enough replicas), `NOT_ENOUGH_REPLICAS_AFTER_APPEND`.
    const STORED_MAYBE: [i16; 3] = [-1, 7, 20];
    match e {
        Error::Broker(b) => STORED_MAYBE.contains(&b.code()),
        // A broker error code is a decision about this request; anything
        // else (lost connection, timeout, an undecodable answer) may hide a
        // stored batch.
        _ => true,
    }
}

/// The sequence number `n` records after `sequence`; wraps to 0 after
/// `i32::MAX` as Kafka's sequences do.
pub(crate) fn advance(sequence: i32, n: usize) -> i32 {
    ((i64::from(sequence) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

/// Whether `next` is `expected` or after it (within half the sequence
/// space, so wrap-around counts as forward).
fn ahead(expected: i32, next: i32) -> bool {
    let distance = (i64::from(next) - i64::from(expected)).rem_euclid(i64::from(i32::MAX) + 1);
    distance < i64::from(i32::MAX) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(advance(0, 5), 5);
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 3), 1);
        assert!(ahead(5, 5));
        assert!(ahead(5, 9));
        assert!(!ahead(9, 5));
        assert!(ahead(i32::MAX, 2));
    }
}
