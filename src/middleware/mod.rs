//! Middleware: code that runs around a [`Handler`] for every record —
//! retrying, timing out, bounding concurrency, parking failures in a
//! dead-letter topic, or anything of your own (Kefka's handler middleware).
//!
//! A middleware gets the record and a [`Next`]: the rest of the chain. It may
//! look at the record, call [`Next::run`] (once, several times, or not at
//! all), and look at or change the [`Outcome`]:
//!
//! ```
//! use std::time::Instant;
//! use kastellan::group::{ConsumerRecord, Outcome};
//! use kastellan::middleware::{Middleware, Next};
//!
//! /// Logs how long each record took.
//! struct Timing;
//!
//! impl Middleware for Timing {
//!     async fn call(&self, record: ConsumerRecord, next: Next) -> Outcome {
//!         let started = Instant::now();
//!         let position = format!("{}/{}@{}", record.topic, record.partition, record.offset);
//!         let outcome = next.run(record).await;
//!         println!("{position}: {:?} in {:?}", outcome.is_ok(), started.elapsed());
//!         outcome
//!     }
//! }
//! ```
//!
//! # Stacking
//!
//! A [`Stack`] lists middleware **in the order a record passes them**, then
//! takes the handler; the result is itself a [`Handler`], usable with a bare
//! [`GroupConsumer`](crate::group::GroupConsumer), in a
//! [`Route`](crate::service::Route), or in another stack. Kefka's typical
//! chain, *Consumer → DeadLetter → Retry → Handler*, is written in that
//! order:
//!
//! ```no_run
//! # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
//! use std::time::Duration;
//! use kastellan::group::{ConsumerRecord, HandlerError};
//! use kastellan::middleware::{DeadLetter, Retry, Stack, Timeout};
//!
//! let producer = client.producer().build()?;
//! let handler = Stack::new()
//!     .layer(DeadLetter::new(producer, "orders.dlq").group("billing")) // sees every failure last
//!     .layer(Retry::new(3))                                  // up to 3 attempts in process
//!     .layer(Timeout::new(Duration::from_secs(10)))          // each attempt at most 10 s
//!     .handler(|record: ConsumerRecord| async move {
//!         let _cents: i64 = record.json()?; // undecodable: dead-lettered at once
//!         Ok::<(), HandlerError>(())
//!     });
//! client.group_consumer("billing").topic("orders").build()?.run(handler).await
//! # }
//! ```
//!
//! The built-ins:
//!
//! | middleware | does |
//! |---|---|
//! | [`Retry`] | calls the rest again, with exponential backoff and jitter, for [`FailureKind::Retry`](crate::group::FailureKind::Retry) failures, up to a number of attempts; stops waiting when the record's partition is revoked |
//! | [`Timeout`] | a rest of the chain that takes longer than its limit is a `Retry` failure ([`TimedOut`]) |
//! | [`ConcurrencyLimit`] | at most `n` records in the rest of the chain at once, across everything that shares the limit |
//! | [`DeadLetter`] | produces a failed record to a dead-letter topic with the [failure headers](crate::service::headers), waits for the broker's acknowledgement, then completes the record |
//! | [`from_fn`] | a middleware from an async closure |
//!
//! # Panics
//!
//! [`Next::run`] catches a panic in the rest of the chain and returns it as
//! a [`FailureKind::Retry`](crate::group::FailureKind::Retry) failure whose
//! reason is the panic message ([`Panicked`]), so retry and dead-letter
//! middleware see a panicking handler like any failing one.
//!
//! # Why not tower
//!
//! tower's `Service` and `Layer` are built for request/response protocols
//! with back-pressure: `poll_ready`, generic request, response and error
//! types, `Clone` services moved into every call. A record handler needs
//! none of it — it takes a [`ConsumerRecord`] and answers an [`Outcome`] —
//! and tower would be a public dependency whose version our users must
//! match. A `next`-style trait is what users of axum's `from_fn` write
//! already, a plain `async fn` implements it, and it keeps the
//! whole chain one small, concrete type.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;

use crate::group::{BoxOutcome, ConsumerRecord, DynHandler, Handler, HandlerError, Outcome};

mod dead_letter;
mod limit;
mod retry;
mod timeout;

pub use dead_letter::DeadLetter;
pub use limit::ConcurrencyLimit;
pub use retry::Retry;
pub use timeout::{TimedOut, Timeout};

/// Runs around the rest of a handler chain for every record; see the
/// [module docs](self).
///
/// Implement it with a plain `async fn`. The record is yours; hand it (or a
/// clone: cloning is cheap) to [`Next::run`] to continue the chain.
///
/// ```
/// use kastellan::group::{ConsumerRecord, HandlerError, Outcome};
/// use kastellan::middleware::{Middleware, Next};
///
/// /// Refuses records without a key before they reach the handler.
/// struct RequireKey;
///
/// impl Middleware for RequireKey {
///     async fn call(&self, record: ConsumerRecord, next: Next) -> Outcome {
///         if record.key.is_none() {
///             return Err(HandlerError::dead_letter("record has no key"));
///         }
///         next.run(record).await
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handle one record, usually by calling `next.run(record)`.
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send;
}

impl<M: Middleware> Middleware for Arc<M> {
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send {
        (**self).call(record, next)
    }
}

/// [`Middleware`] behind `dyn` (its `call` returns an anonymous future).
pub(crate) trait DynMiddleware: Send + Sync + 'static {
    fn call_boxed(&self, record: ConsumerRecord, next: Next) -> BoxOutcome<'_>;
}

impl<M: Middleware> DynMiddleware for M {
    fn call_boxed(&self, record: ConsumerRecord, next: Next) -> BoxOutcome<'_> {
        Box::pin(self.call(record, next))
    }
}

/// The rest of a handler chain: the middleware after the current one, then
/// the handler. Cheap to clone; [`run`](Self::run) may be called any number
/// of times (a retrying middleware calls it once per attempt).
///
/// ```
/// use kastellan::group::{ConsumerRecord, Outcome};
/// use kastellan::middleware::{Middleware, Next};
///
/// /// Tries once more, at once, whatever the failure.
/// struct OnceMore;
///
/// impl Middleware for OnceMore {
///     async fn call(&self, record: ConsumerRecord, next: Next) -> Outcome {
///         match next.run(record.clone()).await {
///             Ok(()) => Ok(()),
///             Err(_) => next.run(record).await,
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Next {
    chain: Arc<Chain>,
    /// Index of the next middleware in `chain.layers`; the handler when it
    /// equals their number.
    index: usize,
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("layers_left", &(self.chain.layers.len() - self.index))
            .finish()
    }
}

impl Next {
    /// Run the rest of the chain for `record`. A panic in it comes back as
    /// a [`FailureKind::Retry`](crate::group::FailureKind::Retry) failure
    /// whose reason is the panic message ([`Panicked`]).
    pub fn run(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send + 'static {
        let next = self.clone();
        async move { next.run_borrowed(record).await }
    }

    /// [`run`](Self::run) borrowing `self`: no reference count is taken
    /// for the handler itself (shared by every partition's worker, the
    /// chain's count is a contended cache line), only for the `Next`
    /// handed to a layer.
    async fn run_borrowed(&self, record: ConsumerRecord) -> Outcome {
        let step = std::panic::AssertUnwindSafe(async {
            match self.chain.layers.get(self.index) {
                Some(layer) => {
                    let rest = Next {
                        chain: Arc::clone(&self.chain),
                        index: self.index + 1,
                    };
                    layer.call_boxed(record, rest).await
                }
                None => self.chain.handler.handle_boxed(record).await,
            }
        });
        match step.catch_unwind().await {
            Ok(outcome) => outcome,
            Err(payload) => Err(HandlerError::retry(Panicked {
                message: panic_message(&*payload),
            })),
        }
    }
}

/// Middleware in order, and the handler at the end.
struct Chain {
    layers: Vec<Arc<dyn DynMiddleware>>,
    handler: Arc<dyn DynHandler>,
}

/// A handler that panicked; the [`HandlerError`] a [`Next::run`] returns
/// for it (kind [`FailureKind::Retry`](crate::group::FailureKind::Retry)).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use kastellan::group::testing::test_record;
/// use kastellan::group::{ConsumerRecord, Handler, HandlerError};
/// use kastellan::middleware::{Panicked, Stack};
/// use kastellan::Record;
///
/// let handler = Stack::new().handler(|_record: ConsumerRecord| async move {
///     if true {
///         panic!("index out of bounds");
///     }
///     Ok::<(), HandlerError>(())
/// });
/// let (record, _probe) = test_record(Record::new("orders", 0, 1));
/// let failure = handler.handle(record).await.unwrap_err();
/// assert_eq!(failure.reason(), "handler panicked: index out of bounds");
/// assert!(failure.error().is::<Panicked>());
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    /// The panic message (`a panic without a message` when it had none).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

/// The message of a panic payload (`panic!` with a string or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Middleware in the order records pass them; [`handler`](Self::handler)
/// closes the stack with the handler and gives a [`Layered`] handler.
///
/// ```
/// use std::time::Duration;
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::middleware::{ConcurrencyLimit, Retry, Stack, Timeout};
///
/// // A record passes the limit first, then Retry, then Timeout (which
/// // bounds each attempt), then the handler.
/// let handler = Stack::new()
///     .layer(ConcurrencyLimit::new(8))
///     .layer(Retry::new(3).backoff(Duration::from_millis(50), Duration::from_secs(1)))
///     .layer(Timeout::new(Duration::from_secs(5)))
///     .handler(|_record: ConsumerRecord| async move { Ok::<(), HandlerError>(()) });
/// # let _ = handler;
/// ```
#[derive(Clone, Default)]
#[must_use = "a stack does nothing until `handler(..)` closes it"]
pub struct Stack {
    layers: Vec<Arc<dyn DynMiddleware>>,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Stack {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a middleware after (inside) the ones added so far: records pass
    /// middleware in the order they were added.
    pub fn layer(mut self, middleware: impl Middleware) -> Self {
        self.layers.push(Arc::new(middleware));
        self
    }

    /// How many middleware the stack has.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the stack has no middleware.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Close the stack with `handler`: records pass every middleware, in
    /// order, then reach `handler`.
    pub fn handler(self, handler: impl Handler) -> Layered {
        self.handler_arc(Arc::new(handler))
    }

    /// Append another stack's middleware after this one's.
    pub(crate) fn extend(mut self, inner: &Stack) -> Self {
        self.layers.extend(inner.layers.iter().cloned());
        self
    }

    pub(crate) fn handler_arc(self, handler: Arc<dyn DynHandler>) -> Layered {
        Layered {
            next: Next {
                chain: Arc::new(Chain {
                    layers: self.layers,
                    handler,
                }),
                index: 0,
            },
        }
    }
}

/// A handler behind a stack of middleware; made by [`Stack::handler`]. It is
/// a [`Handler`] itself. Cheap to clone.
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::middleware::{Layered, Retry, Stack};
///
/// let handler: Layered = Stack::new()
///     .layer(Retry::new(3))
///     .handler(|_r: ConsumerRecord| async move { Ok::<(), HandlerError>(()) });
/// // One handler for two consumers.
/// let a = client.group_consumer("a").topic("orders").build()?;
/// let b = client.group_consumer("b").topic("orders").build()?;
/// tokio::try_join!(a.run(handler.clone()), b.run(handler))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Layered {
    next: Next,
}

impl Handler for Layered {
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send {
        self.next.run_borrowed(record)
    }
}

/// A middleware made from an async closure taking the record and the
/// [`Next`] (axum's `from_fn`).
///
/// ```
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::middleware::{from_fn, Next, Stack};
///
/// let handler = Stack::new()
///     .layer(from_fn(|record: ConsumerRecord, next: Next| async move {
///         if record.header("skip").is_some() {
///             return Ok(()); // completed without handling
///         }
///         next.run(record).await
///     }))
///     .handler(|_record: ConsumerRecord| async move { Ok::<(), HandlerError>(()) });
/// # let _ = handler;
/// ```
pub fn from_fn<F, Fut>(f: F) -> FromFn<F>
where
    F: Fn(ConsumerRecord, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    FromFn { f }
}

/// A middleware made from a closure; see [`from_fn`] (an example there).
#[derive(Clone)]
pub struct FromFn<F> {
    f: F,
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

impl<F, Fut> Middleware for FromFn<F>
where
    F: Fn(ConsumerRecord, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    fn call(&self, record: ConsumerRecord, next: Next) -> impl Future<Output = Outcome> + Send {
        (self.f)(record, next)
    }
}

/// Waits for `fut`, or ends early with `None` when `record`'s partition is
/// revoked (or the consumer shuts down).
pub(crate) async fn unless_revoked<T>(
    record: &ConsumerRecord,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let revoked = record.revoked();
    tokio::select! {
        out = fut => Some(out),
        () = revoked => None,
    }
}
