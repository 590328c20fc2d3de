//! What the group consumer calls for each record, what a handler answers
//! (done, retry later, dead-letter now), and how a handler that completes
//! work later acknowledges it.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::tracking::Tracking;
use crate::record::Record;
use crate::TopicPartition;

/// What a handler (or a middleware) answers for one record:
/// `Ok(())` when the record is done, or an [`HandlerError`] that says
/// whether to try again later ([`FailureKind::Retry`]) or never
/// ([`FailureKind::DeadLetter`]), with the reason.
pub type Outcome = Result<(), HandlerError>;

/// Whether a failed record may succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Transient (a timeout, a dependency that is down): try again later,
    /// in process or through the retry topic, as configured.
    Retry,
    /// Poison (an undecodable value, a record that breaks a rule): it can
    /// never succeed; park it in the dead-letter topic at once.
    DeadLetter,
}

/// Why a record failed, and whether trying again can help.
///
/// Any error converts into it with `?` (like `anyhow::Error`): most become
/// [`FailureKind::Retry`]; errors that say the record itself is bad become
/// [`FailureKind::DeadLetter`]: a [`serde_json::Error`] and kastellan's
/// [`Error::Json`](crate::Error::Json), [`Error::Decode`](crate::Error::Decode)
/// and [`Error::Serialization`](crate::Error::Serialization) (the value
/// cannot be decoded, and never will be). Say it explicitly with
/// [`HandlerError::retry`] and [`HandlerError::dead_letter`].
///
/// ```
/// use kastellan::group::{FailureKind, HandlerError};
///
/// fn parse(value: &[u8]) -> Result<u64, HandlerError> {
///     let text = std::str::from_utf8(value).map_err(HandlerError::dead_letter)?;
///     let n: u64 = text.parse().map_err(HandlerError::dead_letter)?;
///     Ok(n)
/// }
/// assert_eq!(parse(b"x").unwrap_err().kind(), FailureKind::DeadLetter);
/// let busy = HandlerError::retry("the ledger is busy");
/// assert_eq!(busy.kind(), FailureKind::Retry);
/// assert_eq!(busy.reason(), "the ledger is busy");
/// ```
pub struct HandlerError {
    kind: FailureKind,
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl HandlerError {
    /// A transient failure: try the record again later.
    pub fn retry(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self {
            kind: FailureKind::Retry,
            error: error.into(),
        }
    }

    /// A poison record: never retry it, park it in the dead-letter topic.
    pub fn dead_letter(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind: FailureKind::DeadLetter,
            error: error.into(),
        }
    }

    /// Whether trying again may help.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The same failure with another kind (a middleware that gives up
    /// retrying turns a `Retry` into a `DeadLetter`).
    pub fn with_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }

    /// The reason, as logs and dead-letter headers show it.
    pub fn reason(&self) -> String {
        self.error.to_string()
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// Take the underlying error out.
    pub fn into_error(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.error
    }

    /// A failure classified by the documented default (see the type's
    /// docs), for errors already boxed or given as text.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::classify(error.into())
    }

    /// The documented default for an error that says nothing about itself.
    fn classify(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        let poison = error.is::<serde_json::Error>()
            || matches!(
                error.downcast_ref::<crate::Error>(),
                Some(
                    crate::Error::Json(_)
                        | crate::Error::Decode { .. }
                        | crate::Error::Serialization { .. }
                )
            );
        Self {
            kind: if poison {
                FailureKind::DeadLetter
            } else {
                FailureKind::Retry
            },
            error,
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Retry => "retry",
            FailureKind::DeadLetter => "dead letter",
        };
        write!(f, "{} ({kind})", self.error)
    }
}

// Like `anyhow::Error`, `HandlerError` is not itself an `Error`, so that
// every error converts into it with `?`. (Text and boxed errors go through
// `HandlerError::new`, `retry` or `dead_letter`: a `From` for them would
// overlap this one as far as the compiler can tell.)
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::classify(Box::new(error))
    }
}

/// Processes records. Return `Ok(())` when a record is done (its offset
/// may be committed once every earlier record of its partition is done),
/// or an [`HandlerError`]: retry later, or dead-letter now.
///
/// Three shapes implement it:
///
/// - an async closure or function taking a [`ConsumerRecord`];
/// - a closure that also takes shared state, through [`with_state`];
/// - a struct, with a plain `async fn`:
///
/// ```
/// use kastellan::group::{ConsumerRecord, Handler, HandlerError};
///
/// struct Billing {
///     ledger: std::sync::Mutex<Vec<i64>>,
/// }
///
/// impl Handler for Billing {
///     async fn handle(&self, record: ConsumerRecord) -> Result<(), HandlerError> {
///         let cents: i64 = record.json()?; // undecodable: dead-lettered
///         self.ledger.lock().unwrap().push(cents);
///         Ok(())
///     }
/// }
/// ```
///
/// `Arc<H>` is a handler when `H` is, so one instance can serve several
/// topics.
pub trait Handler: Send + Sync + 'static {
    /// Handle one record.
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(ConsumerRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send {
        self(record)
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send {
        (**self).handle(record)
    }
}

/// A handler made of a closure and state handed to every call: what the
/// closure captures would otherwise need cloning outside and inside it.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use kastellan::group::{with_state, ConsumerRecord, HandlerError};
/// use kastellan::Producer;
///
/// let audit: Producer = client.producer().build()?;
/// let handler = with_state(audit, |audit: Producer, record: ConsumerRecord| async move {
///     audit.to("audit").value(record.value.clone().unwrap_or_default()).send().await?;
///     Ok::<(), HandlerError>(())
/// });
/// client.group_consumer("auditor").topic("orders").build()?.run(handler).await
/// # }
/// ```
pub fn with_state<S, F, Fut>(state: S, f: F) -> WithState<S, F>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, ConsumerRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    WithState { state, f }
}

/// A closure with its state; see [`with_state`].
#[derive(Clone)]
pub struct WithState<S, F> {
    state: S,
    f: F,
}

impl<S, F> fmt::Debug for WithState<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithState").finish_non_exhaustive()
    }
}

impl<S, F, Fut> Handler for WithState<S, F>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, ConsumerRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send {
        (self.f)(self.state.clone(), record)
    }
}

/// A boxed handler future.
pub(crate) type BoxOutcome<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// [`Handler`] in a form that can sit behind `dyn` (its `handle` returns
/// an anonymous future, so `dyn Handler` is not possible).
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn handle_boxed(&self, record: ConsumerRecord) -> BoxOutcome<'_>;
}

impl<H: Handler> DynHandler for H {
    fn handle_boxed(&self, record: ConsumerRecord) -> BoxOutcome<'_> {
        Box::pin(self.handle(record))
    }
}

/// A record handed to a [`Handler`], with the means to complete it later.
///
/// Dereferences to [`Record`]. Cloning it is cheap (the key, value and
/// headers are shared), so a middleware can hand the same record to the
/// next handler again.
#[derive(Debug, Clone)]
pub struct ConsumerRecord {
    record: Record,
    completion: Completion,
}

impl ConsumerRecord {
    pub(crate) fn new(record: Record, completion: Completion) -> Self {
        Self { record, completion }
    }

    /// The record itself.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Take the record out (the completion stays with the consumer).
    pub fn into_record(self) -> Record {
        self.record
    }

    /// The same completion and revocation signal with another record: the
    /// service hands a record from its retry topic to the origin topic's
    /// handler as the origin record (topic, partition, offset), while its
    /// completion still commits the retry-topic record.
    pub(crate) fn with_record(self, record: Record) -> Self {
        Self {
            record,
            completion: self.completion,
        }
    }

    /// Resolves when this record's partition is revoked or lost, or the
    /// consumer shuts down: a handler or middleware that waits (a backoff,
    /// a slow call) can stop early, since the record will be redelivered to
    /// the partition's next owner. Resolves at once if that happened already.
    ///
    /// ```no_run
    /// # async fn demo(record: kastellan::group::ConsumerRecord) -> kastellan::group::Outcome {
    /// use std::time::Duration;
    /// use kastellan::group::HandlerError;
    ///
    /// tokio::select! {
    ///     _ = tokio::time::sleep(Duration::from_secs(5)) => Ok(()),
    ///     _ = record.revoked() => Err(HandlerError::retry("partition revoked while waiting")),
    /// }
    /// # }
    /// ```
    pub fn revoked(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut signal = self.completion.revoked.clone();
        async move {
            // A closed channel means the partition's runtime is gone.
            let _ = signal.wait_for(|revoked| *revoked).await;
        }
    }

    /// Whether this record's partition was revoked or lost, or the
    /// consumer is shutting down.
    pub fn is_revoked(&self) -> bool {
        *self.completion.revoked.borrow() || self.completion.revoked.has_changed().is_err()
    }

    /// Take over completion: what the handler returns no longer completes
    /// the record; call [`AckHandle::ack`] or [`AckHandle::fail`] when the
    /// work is done (MiKa's `Ack`/`Fail`, Kaffe's async ack). Until then the
    /// record counts as in flight and holds the partition's commit point.
    pub fn defer(&self) -> AckHandle {
        self.completion.deferred.store(true, Ordering::Release);
        self.completion.register();
        AckHandle {
            completion: Some(self.completion.clone()),
        }
    }
}

impl Deref for ConsumerRecord {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.record
    }
}

/// Where a record's completion goes: the consumer's ack tracker, or a
/// test probe ([`testing`](super::testing)).
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    Tracked {
        tracking: Arc<Tracking>,
        /// Which assignment of the partition dispatched the record: a late
        /// ack from before a revocation must not complete a redelivered
        /// record.
        epoch: u64,
    },
    Probe(Arc<std::sync::Mutex<super::testing::Completed>>),
}

/// Where a record's completion goes, and the signal that its partition was
/// taken away. Shared by every copy of the record and its `AckHandle`: one
/// allocation per record, and a clone is one reference count (a service
/// clones each record once to keep it for a failure).
#[derive(Debug, Clone)]
pub(crate) struct Completion(Arc<CompletionState>);

/// What a [`Completion`] shares; written once, when the record is
/// dispatched, except `deferred`.
#[derive(Debug)]
pub(crate) struct CompletionState {
    pub sink: Sink,
    pub key: TopicPartition,
    pub offset: i64,
    /// Set by [`ConsumerRecord::defer`]; read when the handler returns.
    pub deferred: AtomicBool,
    /// Set while the record is not in the ack tracker yet: the partition
    /// worker's fast path hands records to the handler without tracking
    /// them one by one, and tracks one only if it does not simply complete.
    /// Cleared by whoever registers it first: `defer` (before an
    /// `AckHandle` can complete it) or the worker (before failing it).
    pub lazy: AtomicBool,
    /// Becomes `true` (or closes) when the partition is revoked or lost, or
    /// the consumer shuts down. Written by the partition runtime.
    pub revoked: tokio::sync::watch::Receiver<bool>,
}

impl Deref for Completion {
    type Target = CompletionState;

    fn deref(&self) -> &CompletionState {
        &self.0
    }
}

impl Completion {
    pub(crate) fn new(state: CompletionState) -> Self {
        Self(Arc::new(state))
    }

    pub(crate) fn ack(&self) {
        match &self.sink {
            Sink::Tracked { tracking, epoch } => tracking.ack(&self.key, self.offset, *epoch),
            Sink::Probe(state) => super::testing::complete(state, super::testing::Completed::Acked),
        }
    }

    pub(crate) fn fail(&self, reason: String) {
        match &self.sink {
            Sink::Tracked { tracking, epoch } => {
                tracking.fail(&self.key, self.offset, *epoch, reason)
            }
            Sink::Probe(state) => {
                super::testing::complete(state, super::testing::Completed::Failed(reason))
            }
        }
    }

    /// Put a lazily dispatched record into the ack tracker, once (see
    /// `CompletionState::lazy`). Everything before it in its partition has
    /// completed: the worker hands records over one at a time.
    pub(crate) fn register(&self) {
        if !self.lazy.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Sink::Tracked { tracking, epoch } = &self.sink {
            tracking.dispatched(&self.key, self.offset, *epoch);
        }
    }

    pub(crate) fn is_deferred(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }
}

/// Completes a deferred record. Dropping it without calling `ack` or `fail`
/// marks the record failed (it is never silently treated as done).
#[derive(Debug)]
pub struct AckHandle {
    completion: Option<Completion>,
}

impl AckHandle {
    /// The record's partition and offset (`None` once completed).
    pub fn position(&self) -> Option<(&TopicPartition, i64)> {
        self.completion.as_ref().map(|c| (&c.key, c.offset))
    }

    /// The record is done: its offset may be committed once every earlier
    /// record of the partition is done too.
    pub fn ack(mut self) {
        if let Some(c) = self.completion.take() {
            c.ack();
        }
    }

    /// The record failed: it keeps holding the commit point, and the reason
    /// shows up in stall reports.
    pub fn fail(mut self, reason: impl Into<String>) {
        if let Some(c) = self.completion.take() {
            c.fail(reason.into());
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            tracing::warn!(
                partition = %c.key,
                offset = c.offset,
                "deferred record dropped without ack or fail; marking it failed"
            );
            c.fail("dropped without ack or fail".into());
        }
    }
}
