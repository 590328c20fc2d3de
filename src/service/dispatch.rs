//! What the service does with each record: route it, run its handler
//! chain, and on failure hand it to the retry topic, the dead-letter topic,
//! or hold it — for records of the origin topics (first attempts) and of
//! the retry topic (later attempts).
//!
//! The commit rule lives here: a record is completed for the group
//! consumer — and so lets its offset be committed — only when the chain
//! returned `Ok`, or when the record's copy in the retry or dead-letter
//! topic was acknowledged by the broker (`handoff.rs`). Everything else
//! returns the failure, and the record stays incomplete.
//!
//! A copy is stored without holding the partition: the record's completion
//! is deferred to a task that completes it once the copy is acknowledged,
//! and the next records are handled meanwhile (a produce round trip per
//! failed record would otherwise cap a partition's throughput). Routes
//! with an order guard are the exception: their copies are stored one
//! after another, in offset order.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::Either;

use super::config::ServiceConfig;
use super::events::{Counters, Reporter, ServiceError};
use super::guard::{OrderGuard, Upsert};
use super::handoff::send_until_acked;
use super::headers::{now_ms, FailureInfo};
use super::router::{Lookup, ResolvedRoute, RouteTable};
use crate::group::{BoxOutcome, ConsumerRecord, FailureKind, Handler, HandlerError, Outcome};
use crate::middleware::unless_revoked;
use crate::producer::{Producer, ProducerRecord};
use crate::TopicPartition;

/// Reason written on a record the order guard sends to the retry topic.
const FOLLOWS: &str = "follows an earlier record with its key waiting in the retry topic";

/// The state both consumers' handlers share. Read-only except the
/// counters, the guard and the once-only report sets (each behind its own
/// lock or atomics).
#[derive(Debug)]
pub(crate) struct Core {
    pub group: String,
    pub routes: RouteTable,
    pub producer: Producer,
    pub config: ServiceConfig,
    pub guard: OrderGuard,
    pub counters: Arc<Counters>,
    pub reporter: Reporter,
    /// Topics already reported as unroutable (once each).
    reported: Mutex<HashSet<String>>,
}

/// Where a record was consumed: what its failure holds, for reports.
#[derive(Debug, Clone)]
struct Held {
    partition: TopicPartition,
    offset: i64,
}

impl Held {
    fn of(record: &ConsumerRecord) -> Self {
        Held {
            partition: TopicPartition::new(std::sync::Arc::clone(&record.topic), record.partition),
            offset: record.offset,
        }
    }
}

/// The origin consumer's handler.
#[derive(Debug, Clone)]
pub(crate) struct OriginHandler(pub Arc<Core>);

impl Handler for OriginHandler {
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send {
        self.0.origin(record)
    }
}

/// The retry consumer's handler.
#[derive(Debug, Clone)]
pub(crate) struct RetryHandler(pub Arc<Core>);

impl Handler for RetryHandler {
    fn handle(&self, record: ConsumerRecord) -> impl Future<Output = Outcome> + Send {
        self.0.retry(record)
    }
}

impl Core {
    pub(crate) fn new(
        routes: RouteTable,
        producer: Producer,
        config: ServiceConfig,
        reporter: Reporter,
    ) -> Self {
        Self {
            group: config.group_id.clone(),
            routes,
            producer,
            guard: OrderGuard::new(config.order_guard_capacity),
            config,
            counters: Arc::new(Counters::default()),
            reporter,
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// A record of an origin topic, on its first attempt.
    fn origin(
        self: &Arc<Self>,
        record: ConsumerRecord,
    ) -> impl Future<Output = Outcome> + Send + '_ {
        // Not an `async fn`: the order guard's path (a FailureInfo, a
        // produce) is boxed, so the future of every other record holds only
        // what running its chain needs, and stays small enough for the
        // allocator's fast path.
        let held = Held::of(&record);
        let Some(route) = self.route_for(&record.topic) else {
            let error =
                HandlerError::retry(format!("no single route for topic `{}`", record.topic));
            return Either::Left(std::future::ready(Err(error)));
        };
        if route.order_guard {
            if let Some(key) = &record.key {
                if let Some(due) = self.guard.waiting(&held.partition, key, now_ms()) {
                    let info = FailureInfo::for_failure(
                        &record,
                        Some(&self.group),
                        0,
                        FOLLOWS,
                        FailureKind::Retry,
                        Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64),
                    );
                    let follow: BoxOutcome<'_> =
                        Box::pin(async move { self.follow(route, &record, info, &held).await });
                    return Either::Right(Either::Left(follow));
                }
            }
        }
        Either::Right(Either::Right(async move {
            self.run(route, record, 1, &held).await
        }))
    }

    /// A record of the retry topic: skip it if another group's, wait until
    /// it is due, then hand it to its origin topic's route as the origin
    /// record.
    async fn retry(self: &Arc<Self>, record: ConsumerRecord) -> Outcome {
        let held = Held::of(&record);
        let info = match FailureInfo::parse(&record) {
            Ok(Some(info)) => info,
            other => {
                let reason = match other {
                    Err(reason) => reason,
                    _ => format!("no {} header", super::headers::ORIGIN_TOPIC),
                };
                self.reporter.report(ServiceError::MalformedRetryRecord {
                    partition: held.partition,
                    offset: held.offset,
                    reason,
                });
                Counters::bump(&self.counters.skipped);
                return Ok(());
            }
        };
        if info.group.as_deref() != Some(self.group.as_str()) {
            // Another service's record: it retries it itself.
            Counters::bump(&self.counters.skipped);
            return Ok(());
        }
        // Not due yet: wait, holding only this retry partition (the retry
        // topic has its own consumer, so no origin record waits for it).
        // (A loop: the due time is wall-clock time, timers run on the
        // monotonic clock.)
        loop {
            let wait = info.not_before_ms.saturating_sub(now_ms());
            if wait <= 0 {
                break;
            }
            let sleep = tokio::time::sleep(Duration::from_millis(wait as u64));
            if unless_revoked(&record, sleep).await.is_none() {
                return Err(HandlerError::retry(
                    "partition revoked before the record was due; its next owner retries it",
                ));
            }
        }
        let origin = record.clone().with_record(info.as_origin(&record));
        let Some(route) = self.route_for(&info.origin_topic) else {
            return self.unroutable(origin, &info, &held).await;
        };
        if route.order_guard {
            if let Some(key) = &origin.key {
                let tp = TopicPartition::new(info.origin_topic.as_str(), info.origin_partition);
                if let Some(due) = self
                    .guard
                    .predecessor(&tp, key, info.origin_offset, now_ms())
                {
                    // An earlier record of the key was retried again and now
                    // waits behind this one: go behind it once more.
                    let mut again = info.clone();
                    again.not_before_ms = due.max(now_ms());
                    return self.follow(route, &origin, again, &held).await;
                }
            }
        }
        self.run(route, origin, info.attempt.saturating_add(1), &held)
            .await
    }

    /// Run the route's chain for `record`, its `attempt`-th attempt.
    async fn run(
        self: &Arc<Self>,
        route: &ResolvedRoute,
        record: ConsumerRecord,
        attempt: u32,
        held: &Held,
    ) -> Outcome {
        match route.chain.handle(record.clone()).await {
            Ok(()) => {
                self.counters.handled.bump(record.partition);
                self.unguard(route, &record);
                Ok(())
            }
            // Boxed: the failure path's state (hand-offs, the guard) would
            // otherwise make every record's future as large as its own.
            Err(error) => Box::pin(self.failed(route, record, error, attempt, held)).await,
        }
    }

    /// The chain failed: retry topic, dead-letter topic, or hold.
    async fn failed(
        self: &Arc<Self>,
        route: &ResolvedRoute,
        record: ConsumerRecord,
        error: HandlerError,
        attempt: u32,
        held: &Held,
    ) -> Outcome {
        if record.is_revoked() {
            // The partition's next owner gets the record again.
            return Err(error);
        }
        let reason = error.reason();
        let retry_topic = self
            .config
            .retry_topic
            .as_deref()
            .filter(|_| error.kind() == FailureKind::Retry && attempt <= route.retries);
        // The failure headers of the copy, due after `delay`.
        let failure = |delay| {
            FailureInfo::for_failure(
                &record,
                Some(&self.group),
                attempt,
                &reason,
                error.kind(),
                delay,
            )
        };
        if let Some(topic) = retry_topic {
            let delay = self.config.delay(attempt);
            let info = failure(delay);
            let copy = info.copy_of(&record, topic);
            if !route.order_guard {
                return self.hand_off_detached(topic, copy, &record, held, move |core| {
                    Counters::bump(&core.counters.retried);
                });
            }
            let first = FailureInfo::of(&record).is_none();
            self.guard(route, &record, info.not_before_ms, held).await?;
            return match self.hand_off(topic, copy, &record, held).await {
                Ok(()) => {
                    Counters::bump(&self.counters.retried);
                    tracing::debug!(
                        partition = %held.partition, offset = held.offset, attempt, ?delay,
                        %reason, "record handed to the retry topic"
                    );
                    Ok(())
                }
                Err(e) => {
                    if first {
                        self.unguard(route, &record);
                    }
                    Err(e)
                }
            };
        }
        if route.dead_letter {
            if let Some(topic) = self.config.dead_letter_topic.as_deref() {
                let copy = failure(Duration::ZERO).copy_of(&record, topic);
                let (partition, offset) = (held.partition.clone(), held.offset);
                let stored = move |core: &Core| {
                    Counters::bump(&core.counters.dead_lettered);
                    tracing::info!(%partition, offset, attempt, %reason, "record dead-lettered");
                };
                if !route.order_guard {
                    return self.hand_off_detached(topic, copy, &record, held, stored);
                }
                self.hand_off(topic, copy, &record, held).await?;
                stored(self);
                self.unguard(route, &record);
                return Ok(());
            }
        }
        Counters::bump(&self.counters.failed);
        self.reporter.report(ServiceError::Failed {
            partition: held.partition.clone(),
            offset: held.offset,
            reason,
        });
        Err(error)
    }

    /// Send `record` to the retry topic without handling it, to follow an
    /// earlier record with its key (`info` says when it is due).
    async fn follow(
        &self,
        route: &ResolvedRoute,
        record: &ConsumerRecord,
        info: FailureInfo,
        held: &Held,
    ) -> Outcome {
        let Some(topic) = self.config.retry_topic.as_deref() else {
            // Routes with a guard need a retry topic (checked at start-up).
            return Err(HandlerError::retry("order guard without a retry topic"));
        };
        let first = FailureInfo::of(record).is_none();
        self.guard(route, record, info.not_before_ms, held).await?;
        match self
            .hand_off(topic, info.copy_of(record, topic), record, held)
            .await
        {
            Ok(()) => {
                Counters::bump(&self.counters.followed);
                Ok(())
            }
            Err(e) => {
                if first {
                    self.unguard(route, record);
                }
                Err(e)
            }
        }
    }

    /// A retry-topic record whose origin topic no route covers: dead-letter
    /// it if the service can, else hold it.
    async fn unroutable(
        self: &Arc<Self>,
        origin: ConsumerRecord,
        info: &FailureInfo,
        held: &Held,
    ) -> Outcome {
        let reason = format!("no route for its topic `{}`", info.origin_topic);
        if let Some(topic) = self.config.dead_letter_topic.as_deref() {
            let dead = FailureInfo::for_failure(
                &origin,
                Some(&self.group),
                info.attempt,
                &reason,
                FailureKind::DeadLetter,
                Duration::ZERO,
            );
            return self.hand_off_detached(
                topic,
                dead.copy_of(&origin, topic),
                &origin,
                held,
                |core| {
                    Counters::bump(&core.counters.dead_lettered);
                },
            );
        }
        Counters::bump(&self.counters.failed);
        self.reporter.report(ServiceError::Failed {
            partition: held.partition.clone(),
            offset: held.offset,
            reason: reason.clone(),
        });
        Err(HandlerError::dead_letter(reason))
    }

    /// [`hand_off`](Self::hand_off) without holding the partition's worker:
    /// the record's completion is deferred to a task that completes it once
    /// the copy is acknowledged (then runs `stored`), or fails it when the
    /// partition is revoked first. The next records of the partition are
    /// handled meanwhile; the commit rule holds, since the record stays
    /// incomplete until its copy is stored, and the consumer's
    /// `max_pending_per_partition` bounds how many wait at once.
    ///
    /// Not for routes with an order guard: their copies are stored one
    /// after another, so that they enter the retry topic in offset order.
    fn hand_off_detached(
        self: &Arc<Self>,
        destination: &str,
        copy: ProducerRecord,
        record: &ConsumerRecord,
        held: &Held,
        stored: impl FnOnce(&Core) + Send + 'static,
    ) -> Outcome {
        let ack = record.defer();
        let core = Arc::clone(self);
        let destination = destination.to_string();
        let record = record.clone();
        let held = held.clone();
        tokio::spawn(async move {
            match core.hand_off(&destination, copy, &record, &held).await {
                Ok(()) => {
                    stored(&core);
                    ack.ack();
                }
                Err(e) => ack.fail(e.reason()),
            }
        });
        Ok(())
    }

    /// Produce a copy until acknowledged; `Err` (the record stays
    /// incomplete) only when the partition was revoked first.
    async fn hand_off(
        &self,
        destination: &str,
        copy: ProducerRecord,
        record: &ConsumerRecord,
        held: &Held,
    ) -> Result<(), HandlerError> {
        let stored = send_until_acked(&self.producer, copy, record, |error, pause| {
            self.reporter.report(ServiceError::HandOff {
                destination: destination.to_string(),
                partition: held.partition.clone(),
                offset: held.offset,
                error: error.duplicate(),
                retry_in: pause,
            });
        })
        .await;
        match stored {
            Ok(_) => Ok(()),
            Err(revoked) => Err(HandlerError::retry(format!(
                "partition revoked before `{destination}` acknowledged the record's copy{}",
                revoked
                    .last
                    .map(|e| format!(" (last attempt: {e})"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// Note in the order guard that `record` (the origin view) waits in the
    /// retry topic until `not_before`; waits for room when the partition's
    /// guard is full.
    async fn guard(
        &self,
        route: &ResolvedRoute,
        record: &ConsumerRecord,
        not_before: i64,
        held: &Held,
    ) -> Result<(), HandlerError> {
        if !route.order_guard {
            return Ok(());
        }
        let Some(key) = &record.key else {
            return Ok(());
        };
        let tp = TopicPartition::new(std::sync::Arc::clone(&record.topic), record.partition);
        let mut reported = false;
        loop {
            let freed = self.guard.freed();
            if self
                .guard
                .upsert(&tp, key, record.offset, not_before, now_ms())
                == Upsert::Done
            {
                return Ok(());
            }
            if !reported {
                reported = true;
                self.reporter.report(ServiceError::OrderGuardFull {
                    partition: tp.clone(),
                    capacity: self.guard.capacity(),
                });
            }
            // Entries leave when records finish here, or expire (when
            // another instance handles their retry): look again at least
            // every second.
            let wait = tokio::time::timeout(Duration::from_secs(1), freed);
            if unless_revoked(record, wait).await.is_none() {
                return Err(HandlerError::retry(format!(
                    "partition revoked while waiting for room in the order guard of {}",
                    held.partition
                )));
            }
        }
    }

    /// `record` (the origin view) is done with the retry topic.
    fn unguard(&self, route: &ResolvedRoute, record: &ConsumerRecord) {
        if !route.order_guard {
            return;
        }
        if let Some(key) = &record.key {
            let tp = TopicPartition::new(std::sync::Arc::clone(&record.topic), record.partition);
            self.guard.remove(&tp, key, record.offset);
        }
    }

    /// The one route for `topic`; reports (once per topic) when there is
    /// none or more than one.
    fn route_for(&self, topic: &str) -> Option<&ResolvedRoute> {
        let problem = match self.routes.lookup(topic) {
            Lookup::Found(route) => return Some(route),
            Lookup::Ambiguous(patterns) => ServiceError::AmbiguousRoute {
                topic: topic.to_string(),
                patterns: patterns.into_iter().map(str::to_string).collect(),
            },
            Lookup::None => ServiceError::NoRoute {
                topic: topic.to_string(),
            },
        };
        let first = self
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        if first {
            self.reporter.report(problem);
        }
        None
    }
}
