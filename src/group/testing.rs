//! Handlers and middleware tested without a broker: build a
//! [`ConsumerRecord`] from a [`Record`], call the handler, and look at what
//! it returned and at what became of the record ([`TestProbe`]): acked or
//! failed through a deferred [`AckHandle`](super::AckHandle), or still
//! pending. [`TestProbe::revoke`] fires the record's revocation signal.
//!
//! ```
//! use kastellan::group::testing::{test_record, Completed};
//! use kastellan::group::{ConsumerRecord, FailureKind, Handler, HandlerError};
//! use kastellan::Record;
//!
//! struct Amounts;
//! impl Handler for Amounts {
//!     async fn handle(&self, record: ConsumerRecord) -> Result<(), HandlerError> {
//!         let _cents: i64 = record.json()?;
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (record, _probe) = test_record(Record::new("amounts", 0, 7).with_value("42"));
//! assert!(Amounts.handle(record).await.is_ok());
//!
//! let (record, _probe) = test_record(Record::new("amounts", 0, 8).with_value("forty-two"));
//! let failure = Amounts.handle(record).await.unwrap_err();
//! assert_eq!(failure.kind(), FailureKind::DeadLetter); // undecodable: poison
//!
//! let (record, probe) = test_record(Record::new("amounts", 0, 9));
//! record.defer().ack();
//! assert_eq!(probe.completed(), Completed::Acked);
//! # });
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::handler::{Completion, CompletionState, ConsumerRecord, Sink};
use crate::{Record, TopicPartition};

/// What became of a test record through its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completed {
    /// Neither acked nor failed (a handler that returned without deferring
    /// completes nothing here: its return value is the outcome).
    Pending,
    /// Acked through a deferred [`AckHandle`](super::AckHandle).
    Acked,
    /// Failed through a deferred handle (or dropped), with the reason.
    Failed(String),
}

/// Watches one test record; made by [`test_record`].
#[derive(Debug)]
pub struct TestProbe {
    state: Arc<Mutex<Completed>>,
    revoke: tokio::sync::watch::Sender<bool>,
}

impl TestProbe {
    /// What became of the record so far.
    pub fn completed(&self) -> Completed {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fire the record's revocation signal, as a rebalance or a shutdown
    /// would ([`ConsumerRecord::revoked`]).
    pub fn revoke(&self) {
        self.revoke.send_replace(true);
    }
}

/// A [`ConsumerRecord`] for `record`, as a consumer would hand it to a
/// handler, and the probe that shows what became of it.
pub fn test_record(record: Record) -> (ConsumerRecord, TestProbe) {
    let state = Arc::new(Mutex::new(Completed::Pending));
    let (revoke, revoked) = tokio::sync::watch::channel(false);
    let completion = Completion::new(CompletionState {
        sink: Sink::Probe(Arc::clone(&state)),
        key: TopicPartition::new(Arc::clone(&record.topic), record.partition),
        offset: record.offset,
        deferred: AtomicBool::new(false),
        lazy: AtomicBool::new(false),
        revoked,
    });
    (
        ConsumerRecord::new(record, completion),
        TestProbe { state, revoke },
    )
}

/// Record a completion; the first one counts, as in the ack tracker.
pub(super) fn complete(state: &Mutex<Completed>, outcome: Completed) {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    if *state == Completed::Pending {
        *state = outcome;
    }
}
