//! Services: topics routed to handlers, with middleware, a retry topic, a
//! dead-letter topic and graceful shutdown, in one object (MiKa's client,
//! Kefka's handler chains, kafkaesk's glob subscriptions).
//!
//! ```no_run
//! use std::time::Duration;
//! use kastellan::group::{ConsumerRecord, HandlerError};
//! use kastellan::middleware::Timeout;
//! use kastellan::service::{Route, Router, Service, ServiceConfig};
//!
//! async fn orders(record: ConsumerRecord) -> Result<(), HandlerError> {
//!     let order: serde_json::Value = record.json()?; // undecodable: dead-lettered
//!     println!("order {order}");
//!     Ok(())
//! }
//!
//! async fn content(record: ConsumerRecord) -> Result<(), HandlerError> {
//!     println!("{} changed", record.topic);
//!     Ok(())
//! }
//!
//! # async fn demo() -> kastellan::Result<()> {
//! let router = Router::new()
//!     .route("orders", Route::new(orders).retries(3))  // 3 retries through the retry topic
//!     .route("content.*", content)                     // every topic matching, now and later
//!     .layer(Timeout::new(Duration::from_secs(30)));
//!
//! // KAFKA_BOOTSTRAP, KAFKA_GROUP_ID, KAFKA_RETRY_TOPIC, KAFKA_DLQ_TOPIC, ...
//! let config = ServiceConfig::from_env()?;
//! let service = Service::connect(config, router).await?;
//! service.run_until(async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await
//! # }
//! ```
//!
//! # The parts
//!
//! - a [`Router`] maps topics and glob patterns to [`Route`]s: a
//!   [`Handler`](crate::group::Handler) (async fn, closure, closure with
//!   state through [`with_state`](crate::group::with_state), or a struct)
//!   with its options — [`retries`](Route::retries),
//!   [`dead_letter`](Route::dead_letter), [`layer`](Route::layer)s and the
//!   [`order_guard`](Route::order_guard);
//! - a [`ServiceConfig`] names the group, the retry and dead-letter topics,
//!   the retry delays and the timeouts, from a builder or the environment;
//! - a [`Service`] owns the consumers and the producer;
//!   [`start`](Service::start) gives a [`ServiceHandle`] with the error
//!   stream, the status and [`shutdown`](ServiceHandle::shutdown);
//! - a [`Replay`] moves dead-lettered records back to their origin topics.
//!
//! # When a record fails
//!
//! A handler (or middleware) answers every record with an
//! [`Outcome`](crate::group::Outcome). After the route's chain:
//!
//! 1. `Ok` — the record is done.
//! 2. A [`FailureKind::Retry`](crate::group::FailureKind::Retry) failure on
//!    a route with retries left — the record is copied to the **retry
//!    topic** with the [failure headers](headers), due after the retry
//!    delay (`initial`, doubling up to `max`: [`ServiceConfig::retry_delay`]).
//!    The service's retry consumer takes it back when it is due and hands
//!    it to the same route, as the origin record (origin topic, partition,
//!    offset, timestamp; [`attempt`] reads the attempt number from the
//!    failure headers).
//! 3. A [`FailureKind::DeadLetter`](crate::group::FailureKind::DeadLetter)
//!    failure (at once, no retries), or a `Retry` failure with no retries
//!    left — the record is copied to the **dead-letter topic** with the same
//!    headers.
//! 4. With neither — no retries left and no dead-letter topic for the route
//!    — the record **fails and holds its partition**: the partition goes on,
//!    but its committed offset stays at that record, which is redelivered
//!    after a restart or rebalance. It is reported
//!    ([`ServiceError::Failed`], the consumer's stall reports in
//!    [`ServiceStatus`], a warning in the log) and, once
//!    `max_pending_per_partition` records of the partition failed, the
//!    partition pauses. Give routes a dead-letter topic to avoid this.
//!
//! A panic in a handler is a `Retry` failure whose reason is the panic
//! message ([`Panicked`](crate::middleware::Panicked)).
//!
//! # Retry topic and dead-letter topic
//!
//! Several services — different groups — may share one retry topic and one
//! dead-letter topic. Each copy names the group that failed it
//! ([`headers::GROUP`]); a service's retry consumer hands only its own
//! group's records to its handlers and completes the others at once, so no
//! service steals or re-processes another's retries.
//!
//! The retry topic has **its own consumer**, in its own group
//! ([`ServiceConfig::retry_group`], `<group>.retry` by default), so a
//! record waiting for its delay never holds anything the origin topics
//! need: it pauses only its own retry partition (records of one retry
//! partition are handled in order), not other retry partitions, and never
//! an origin partition or an in-flight slot of the origin consumer. Records
//! behind it in its retry partition wait too, so a record may be retried
//! later than its delay, never earlier. The wait ends at once when the
//! retry partition is revoked or the service shuts down; the record is
//! then retried by the partition's next owner.
//!
//! # Delivery semantics
//!
//! At least once, with this **commit rule**: a record's offset is committed
//! only once the record is *completed* — its chain returned `Ok`, or its
//! copy in the retry or dead-letter topic was **acknowledged by the broker**
//! (`acks=all`). A produce that fails is retried with backoff (reported as
//! [`ServiceError::HandOff`]) until it is acknowledged or the record's
//! partition is revoked; until then the record is incomplete and the
//! partition's commits wait, visibly. Storing a copy does not stop the
//! partition: the records behind it are handled meanwhile (at most
//! `max_pending_per_partition` records of a partition are incomplete at
//! once), except on routes with an order guard, whose copies are stored
//! one after another so that they keep their offset order. A failed record whose partition was
//! revoked (a rebalance, a shutdown) is not handed off at all: the
//! partition's next owner handles it again.
//!
//! **Never lost**: a record consumed from an origin or retry topic is,
//! until its offset is committed, either handled successfully or stored in
//! the retry or dead-letter topic — whatever crashes when.
//!
//! **Can be duplicated** (handle records idempotently; the origin topic,
//! partition and offset — which a retried record keeps — make a good key):
//!
//! - a record handled successfully, or whose copy reached the retry or
//!   dead-letter topic, just before a crash, a lost membership or a
//!   revocation deadline, and whose offset was not committed yet: it is
//!   handled again, and may leave a second copy in the retry or dead-letter
//!   topic;
//! - a copy whose produce timed out although the broker stored it, then
//!   produced again;
//! - a record moved by a [`Replay`] that crashed before it committed its
//!   progress.
//!
//! # The order guard
//!
//! Retrying through the retry topic lets later records of a partition
//! overtake a failed one. [`Route::order_guard`] keeps per-key order: while
//! a record with key *k* waits in the retry topic, later records of *k*
//! from the same partition are sent after it without being handled
//! ([`headers::ATTEMPT`] `0`), and a record retried again goes behind them
//! once more, so the key's records are handled in their original order.
//! Limits:
//!
//! - the guard is kept in memory, in each service instance: at most
//!   [`ServiceConfig::order_guard_capacity`] records per origin partition
//!   (10,000 by default, under 100 bytes each plus the key); a record that
//!   would add to a full guard waits, holding its partition;
//! - it holds fully while the instance that owns a key's origin partition
//!   also handles the key's retries — always with one instance. With
//!   several, another instance may handle a retry; the owner then forgets
//!   the key 10 minutes after the record was due;
//! - after a rebalance moves an origin partition, its new owner knows
//!   nothing of the keys waiting in the retry topic, and after a restart
//!   nothing is known: records of such keys may overtake the waiting ones;
//! - records without a key are not guarded.
//!
//! # Shutdown
//!
//! [`ServiceHandle::shutdown`] stops fetching, lets records in flight
//! finish (up to the deadline; records waiting for their retry delay stop
//! waiting at once), commits completed offsets, leaves both groups, then
//! closes the producer.

mod config;
mod dispatch;
mod events;
mod glob;
mod guard;
pub(crate) mod handoff;
pub mod headers;
mod replay;
mod router;

pub use config::ServiceConfig;
pub use events::{ConsumerRole, ServiceError, ServiceErrors, ServiceStatus, ServiceStatusHandle};
pub use headers::attempt;
pub use replay::{Replay, ReplayReport};
pub use router::{Route, Router};

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use self::dispatch::{Core, OriginHandler, RetryHandler};
use self::events::Reporter;
use self::router::{OwnTopics, RouteTable};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::group::{ConsumerErrors, GroupConsumerBuilder, ShutdownHandle};
use crate::StartOffset;

/// A routed consumer service; see the [module docs](self).
///
/// ```no_run
/// # async fn demo(client: kastellan::Client) -> kastellan::Result<()> {
/// use std::time::Duration;
/// use kastellan::group::{ConsumerRecord, HandlerError};
/// use kastellan::service::{Route, Router, Service, ServiceConfig};
///
/// let config = ServiceConfig::new("billing")
///     .retry_topic("billing.retry")
///     .dead_letter_topic("dlq");
/// let router = Router::new().route(
///     "payments",
///     Route::new(|record: ConsumerRecord| async move {
///         let _cents: u64 = record.json()?;
///         Ok::<(), HandlerError>(())
///     })
///     .retries(2),
/// );
/// let mut running = Service::new(client, config, router)?.start().await?;
/// let mut problems = running.errors().expect("taken once");
/// tokio::spawn(async move {
///     while let Some(problem) = problems.recv().await {
///         eprintln!("{problem}");
///     }
/// });
/// // ... later:
/// running.shutdown(Duration::from_secs(10)).await
/// # }
/// ```
#[derive(Debug)]
pub struct Service {
    client: Client,
    config: ServiceConfig,
    routes: RouteTable,
}

impl Service {
    /// A service on `client`. Checks the configuration and the routes (see
    /// [`Router`]'s overlap rules) without contacting the brokers; `start`
    /// checks the rest.
    pub fn new(client: Client, config: ServiceConfig, router: Router) -> Result<Service> {
        config.validate()?;
        let routes = RouteTable::build(
            router,
            OwnTopics {
                retry: config.retry_topic.as_deref(),
                dead_letter: config.dead_letter_topic.as_deref(),
            },
        )?;
        Ok(Service {
            client,
            config,
            routes,
        })
    }

    /// Connect to the brokers of `config` ([`ServiceConfig::client`], or the
    /// environment's with [`ServiceConfig::from_env`]) and make the service.
    pub async fn connect(config: ServiceConfig, router: Router) -> Result<Service> {
        let client_config = config.client.clone().ok_or_else(|| {
            Error::Config(
                "the service configuration names no brokers; use ServiceConfig::from_env, \
                 ServiceConfig::client, or Service::new with a connected Client"
                    .into(),
            )
        })?;
        let client = Client::connect(client_config).await?;
        Self::new(client, config, router)
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Start consuming: check the topics, join the groups, and return the
    /// handle to watch and stop the service.
    ///
    /// Refused with [`Error::Config`]: the retry or dead-letter topic does
    /// not exist; an existing topic is matched by two patterns and no exact
    /// route; a consumer setting the group consumer refuses (see
    /// [`GroupConsumerBuilder::build`]). Routed topics that do not exist yet
    /// are consumed once created.
    pub async fn start(self) -> Result<ServiceHandle> {
        let Service {
            client,
            config,
            routes,
        } = self;
        let topics = client.admin().list_topics().await?;
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        for (what, topic) in [
            ("retry", &config.retry_topic),
            ("dead-letter", &config.dead_letter_topic),
        ] {
            if let Some(topic) = topic {
                if !names.contains(&topic.as_str()) {
                    return Err(Error::Config(format!(
                        "the {what} topic `{topic}` does not exist; create it (Admin::create_topic) \
                         before starting the service"
                    )));
                }
            }
        }
        routes.check_topics(names.iter().copied())?;
        if routes.any_order_guard() && config.key_concurrency.is_some_and(|n| n > 1) {
            tracing::info!("order guard with key_concurrency: records of one key stay in order");
        }

        let mut origin_builder = client
            .group_consumer(config.group_id.clone())
            .offset_reset(config.offset_reset);
        for topic in routes.topics() {
            origin_builder = origin_builder.topic(topic);
        }
        for pattern in routes.patterns() {
            origin_builder = origin_builder.topic_pattern(pattern);
        }
        if let Some(n) = config.max_in_flight {
            origin_builder = origin_builder.max_in_flight(n);
        }
        if let Some(n) = config.key_concurrency {
            origin_builder = origin_builder.key_concurrency(n);
        }
        let mut origin = tune(origin_builder, &config).build()?;
        let mut retry = match (&config.retry_topic, config.retry_group_id()) {
            (Some(topic), Some(group)) => {
                // Waiting for a delay is not a stall: only report records
                // stuck well past the longest delay.
                let threshold = config.retry_delay.1 + Duration::from_secs(60);
                let builder = client
                    .group_consumer(group)
                    .topic(topic.clone())
                    .offset_reset(StartOffset::Earliest)
                    .stall_threshold(threshold);
                Some(tune(builder, &config).build()?)
            }
            _ => None,
        };
        let producer = client.producer().build()?;

        let reporter = Reporter::default();
        let errors = reporter.stream();
        let mut forwarders = vec![forward(
            origin.errors(),
            ConsumerRole::Origin,
            reporter.clone(),
        )];
        if let Some(retry) = &mut retry {
            forwarders.push(forward(
                retry.errors(),
                ConsumerRole::Retry,
                reporter.clone(),
            ));
        }
        let shutdown_timeout = config.shutdown_timeout;
        let core = Arc::new(Core::new(
            routes,
            producer.clone(),
            config,
            reporter.clone(),
        ));
        let status = ServiceStatusHandle {
            origin: origin.status_handle(),
            retry: retry.as_ref().map(|r| r.status_handle()),
            counters: Arc::clone(&core.counters),
        };
        let shutdown = ServiceShutdown {
            origin: origin.shutdown_handle(),
            retry: retry.as_ref().map(|r| r.shutdown_handle()),
            requested: Arc::new(OnceLock::new()),
        };
        let origin_task = tokio::spawn(origin.run(OriginHandler(Arc::clone(&core))));
        let retry_task = retry.map(|r| tokio::spawn(r.run(RetryHandler(Arc::clone(&core)))));
        let done = tokio::spawn(supervise(Supervised {
            origin: origin_task,
            retry: retry_task,
            shutdown: shutdown.clone(),
            shutdown_timeout,
            producer,
            reporter,
            forwarders,
        }));
        Ok(ServiceHandle {
            shutdown,
            status,
            errors: Some(errors),
            done: Some(done),
            shutdown_timeout,
        })
    }

    /// Start, and run until a fatal error (see
    /// [`ServiceHandle::wait`]). Problems are logged; to read them, use
    /// [`start`](Self::start) and [`ServiceHandle::errors`].
    pub async fn run(self) -> Result<()> {
        self.start().await?.wait().await
    }

    /// Start, run until `signal` resolves (or a fatal error), then shut down
    /// with the configured deadline ([`ServiceConfig::shutdown_timeout`]).
    ///
    /// ```no_run
    /// # async fn demo(service: kastellan::service::Service) -> kastellan::Result<()> {
    /// service.run_until(async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await
    /// # }
    /// ```
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<()> {
        let handle = self.start().await?;
        let stop = handle.shutdown_handle();
        let deadline = handle.shutdown_timeout;
        let done = handle.wait();
        tokio::pin!(done);
        tokio::pin!(signal);
        tokio::select! {
            result = &mut done => return result,
            () = &mut signal => stop.shutdown(deadline),
        }
        done.await
    }
}

/// Apply the user's consumer tuning, then the service's timeouts.
fn tune(builder: GroupConsumerBuilder, config: &ServiceConfig) -> GroupConsumerBuilder {
    let mut b = builder;
    if let Some(t) = config.session_timeout {
        b = b.session_timeout(t);
    }
    if let Some(t) = config.commit_interval {
        b = b.commit_interval(t);
    }
    if let Some(t) = config.metadata_max_age {
        b = b.metadata_max_age(t);
    }
    match &config.tuning {
        Some(tune) => tune(b),
        None => b,
    }
}

/// Copy one consumer's problems onto the service's stream, until it ends.
fn forward(
    errors: Option<ConsumerErrors>,
    role: ConsumerRole,
    reporter: Reporter,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut errors) = errors else { return };
        while let Some(error) = errors.recv().await {
            reporter.report(ServiceError::Consumer { role, error });
        }
    })
}

/// What the supervisor task owns.
struct Supervised {
    origin: JoinHandle<Result<()>>,
    retry: Option<JoinHandle<Result<()>>>,
    shutdown: ServiceShutdown,
    shutdown_timeout: Duration,
    producer: crate::Producer,
    reporter: Reporter,
    forwarders: Vec<JoinHandle<()>>,
}

/// Wait for the consumers; when one ends (shut down, or a fatal error),
/// stop the other; then close the producer and end the error stream.
async fn supervise(s: Supervised) -> Result<()> {
    let Supervised {
        mut origin,
        retry,
        shutdown,
        shutdown_timeout,
        producer,
        reporter,
        forwarders,
    } = s;
    let joined = |r: std::result::Result<Result<()>, tokio::task::JoinError>, role| match r {
        Ok(result) => result,
        Err(e) => Err(Error::Client {
            context: format!("the service's {role}"),
            message: format!("its task ended abnormally: {e}"),
            retriable: false,
        }),
    };
    let (first, second) = match retry {
        Some(mut retry) => {
            let (first, other, other_role) = tokio::select! {
                r = &mut origin => (joined(r, ConsumerRole::Origin), retry, ConsumerRole::Retry),
                r = &mut retry => (joined(r, ConsumerRole::Retry), origin, ConsumerRole::Origin),
            };
            shutdown.shutdown(shutdown_timeout);
            (first, joined(other.await, other_role))
        }
        None => (joined(origin.await, ConsumerRole::Origin), Ok(())),
    };
    // No handler runs any more: nothing else will be handed off.
    if let Err(e) = producer.close(Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "closing the service's producer");
    }
    for f in forwarders {
        let _ = f.await;
    }
    reporter.close();
    first.and(second)
}

/// Stops a running service gracefully; cheap to clone.
///
/// ```no_run
/// # async fn demo(running: kastellan::service::ServiceHandle) -> kastellan::Result<()> {
/// use std::time::Duration;
///
/// let stop = running.shutdown_handle();
/// tokio::spawn(async move {
///     tokio::signal::ctrl_c().await.ok();
///     stop.shutdown(Duration::from_secs(30));
/// });
/// running.wait().await // returns once the shutdown is done
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServiceShutdown {
    origin: ShutdownHandle,
    retry: Option<ShutdownHandle>,
    /// The first deadline asked for; later requests change nothing.
    requested: Arc<OnceLock<Duration>>,
}

impl ServiceShutdown {
    /// Stop fetching, let records in flight finish (up to `deadline`),
    /// commit, leave both groups. Returns at once; the service's
    /// [`wait`](ServiceHandle::wait) ends when it is done.
    pub fn shutdown(&self, deadline: Duration) {
        if self.requested.set(deadline).is_ok() {
            self.origin.shutdown(deadline);
            if let Some(retry) = &self.retry {
                retry.shutdown(deadline);
            }
        }
    }
}

/// A running service: its problems, its status, and the way to stop it.
/// Made by [`Service::start`].
///
/// Dropping the handle shuts the service down (with the configured
/// [`shutdown_timeout`](ServiceConfig::shutdown_timeout)) without waiting
/// for it; call [`shutdown`](Self::shutdown) to wait.
///
/// ```no_run
/// # async fn demo(service: kastellan::service::Service) -> kastellan::Result<()> {
/// use std::time::Duration;
///
/// let mut running = service.start().await?;
/// let _problems = running.errors();
/// println!("{:?}", running.status().origin.state);
/// running.shutdown(Duration::from_secs(10)).await
/// # }
/// ```
#[derive(Debug)]
pub struct ServiceHandle {
    shutdown: ServiceShutdown,
    status: ServiceStatusHandle,
    errors: Option<ServiceErrors>,
    done: Option<JoinHandle<Result<()>>>,
    shutdown_timeout: Duration,
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        if self.done.as_ref().is_some_and(|d| !d.is_finished()) {
            self.shutdown.shutdown(self.shutdown_timeout);
        }
    }
}

impl ServiceHandle {
    /// The stream of problems the service reports (see [`ServiceError`]);
    /// `None` when taken already.
    pub fn errors(&mut self) -> Option<ServiceErrors> {
        self.errors.take()
    }

    /// What the service is doing now.
    pub fn status(&self) -> ServiceStatus {
        self.status.get()
    }

    /// A handle to read the status from another task.
    pub fn status_handle(&self) -> ServiceStatusHandle {
        self.status.clone()
    }

    /// A handle to stop the service from another task.
    pub fn shutdown_handle(&self) -> ServiceShutdown {
        self.shutdown.clone()
    }

    /// Whether the service has stopped.
    pub fn is_finished(&self) -> bool {
        self.done.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stop gracefully (see [`ServiceShutdown::shutdown`]) and wait until
    /// done: records in flight finished or the deadline passed, offsets
    /// committed, both groups left, the producer closed.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<()> {
        self.shutdown.shutdown(deadline);
        self.finish().await
    }

    /// Wait until the service stops: after a shutdown (`Ok`), or a fatal
    /// error of either consumer (that error; the other consumer is shut
    /// down first). See [`GroupConsumer::run`](crate::group::GroupConsumer::run)
    /// for the errors that end a consumer.
    pub async fn wait(mut self) -> Result<()> {
        self.finish().await
    }

    async fn finish(&mut self) -> Result<()> {
        // Kept until it resolves: if this future is dropped first, dropping
        // the handle still shuts the service down.
        let Some(done) = self.done.as_mut() else {
            return Ok(());
        };
        let joined = done.await;
        self.done = None;
        match joined {
            Ok(result) => result,
            Err(e) => Err(Error::Client {
                context: "the service".into(),
                message: format!("its supervisor task ended abnormally: {e}"),
                retriable: false,
            }),
        }
    }
}
