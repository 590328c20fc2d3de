//! The task of a [`FetchPool`](super::FetchPool): partitions, their
//! routes to brokers, one fetch session and at most one request in flight
//! per broker (see the parent module's docs).
//!
//! Everything here is owned by the one task; the only shared state is the
//! byte budget (atomics, see `Budget`) and each partition's progress.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::session::{FetchSession, Plan, Position};
use super::{recover, Budget, Command, FetchSettings, Fetched, OnFailure, PartitionFetch};
use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{BrokerError, Error, Result};
use crate::protocol::cluster::TopicMetadata;
use crate::protocol::connection::BrokerConnection;
use crate::protocol::error_codes::{
    needs_metadata_refresh, OFFSET_OUT_OF_RANGE, UNKNOWN_TOPIC_OR_PARTITION,
};
use crate::protocol::records::decode_batches;
use crate::protocol::stats::WireCounters;
use crate::TopicPartition;

/// `FETCH_SESSION_ID_NOT_FOUND`: the broker evicted or never had our session.
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// `INVALID_FETCH_SESSION_EPOCH`: the broker expected another epoch.
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// Longest a request may wait on the broker while some partition of that
/// broker is held back for room: a long poll for the others would keep the
/// held-back partition waiting after its consumer caught up.
const HELD_BACK_MAX_WAIT: Duration = Duration::from_millis(50);

/// How long a partition is fetched from the replica its leader pointed us
/// to (KIP-392) before asking the leader again, as the Java client does at
/// its metadata refresh.
const REPLICA_ROUTE: Duration = Duration::from_secs(300);

/// How often partitions that are not failing are marked as fetching fine
/// for the watchdog, whether they got records or not (idle, held back for
/// room, or waiting for the byte budget): marking them at every answer
/// would cost a clock read per partition per answer.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// Pauses before fetching again a partition that failed for good and was
/// reported (group consumers).
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Where a partition is fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Its leader must be looked up (first use, or after an error).
    Lookup,
    /// From broker `node`, the leader at `epoch`.
    Leader { node: i32, epoch: i32 },
    /// Its position is being reset after `OFFSET_OUT_OF_RANGE`.
    Recovering,
    /// Fetching ended (reached its end, or failed for good in a reader);
    /// removed once its last batch or error is handed over.
    Done,
}

/// One partition of the pool.
struct Part {
    fetch: PartitionFetch,
    route: Route,
    /// A batch, or the final error, its channel had no room for yet; the
    /// partition is not fetched while it waits.
    held: Option<Result<Fetched>>,
    /// Not fetched, looked up or reset before this instant (backoff).
    not_before: Option<Instant>,
    /// Since when this partition has failed without a success between.
    failing_since: Option<std::time::Instant>,
    /// Pauses between retries of a failing partition; made at the first
    /// failure (most partitions never need one).
    backoff: Option<Backoff>,
    /// Pauses after a failure that was reported.
    restarts: Option<Backoff>,
    /// A replica to fetch from instead of the leader, until an instant
    /// (KIP-392, only with a rack).
    replica: Option<(i32, Instant)>,
    /// A reader's final error, handed over after the held batch.
    final_error: Option<Error>,
}

impl Part {
    fn node(&self, now: Instant) -> Option<i32> {
        let Route::Leader { node, .. } = self.route else {
            return None;
        };
        match self.replica {
            Some((replica, until)) if until > now => Some(replica),
            _ => Some(node),
        }
    }

    fn leader(&self) -> Option<i32> {
        match self.route {
            Route::Leader { node, .. } => Some(node),
            _ => None,
        }
    }

    fn leader_epoch(&self) -> i32 {
        match self.route {
            Route::Leader { epoch, .. } => epoch,
            _ => -1,
        }
    }

    fn waiting_out_backoff(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| t > now)
    }

    /// Whether the consumer has room for another batch.
    fn has_room(&self) -> bool {
        self.held.is_none() && self.fetch.tx.capacity() > 0
    }

    fn succeeded(&mut self) {
        self.failing_since = None;
        self.backoff = None;
        self.restarts = None;
    }
}

/// What the next request to one broker fetches.
#[derive(Default)]
struct Wanted {
    positions: HashMap<TopicPartition, Position>,
    /// Some partition of that broker is held back for room.
    held_back: bool,
    /// Some partition is fetched from a replica, not its leader.
    from_follower: bool,
}

/// One broker's fetching.
#[derive(Default)]
struct Broker {
    /// Our own connection to it, kept between requests.
    conn: Option<Arc<BrokerConnection>>,
    session: FetchSession,
    /// A request is in flight.
    busy: bool,
}

/// A request's outcome, back in the task.
struct Answer {
    node: i32,
    addr: String,
    conn: Option<Arc<BrokerConnection>>,
    plan: Plan,
    /// Bytes reserved against the budget for this request.
    reserved: usize,
    result: Result<FetchResponse>,
}

type Lookup = (Arc<str>, Result<Option<Arc<TopicMetadata>>>);
type Recovery = (TopicPartition, i64, Result<i64>);

struct Pool {
    client: Client,
    settings: FetchSettings,
    on_failure: OnFailure,
    budget: Arc<Budget>,
    counters: Arc<WireCounters>,
    parts: HashMap<TopicPartition, Part>,
    /// Topic names in use, to key answers without allocating.
    names: HashSet<Arc<str>>,
    brokers: HashMap<i32, Broker>,
    /// Bytes the requests in flight may return.
    reserved: usize,
    /// Partitions with a `held` batch or error.
    held: usize,
    fetches: FuturesUnordered<BoxFuture<'static, Answer>>,
    /// When partitions were last marked for the watchdog.
    marked: Instant,
    /// Some partition may need its leader looked up (set wherever a route
    /// becomes `Lookup`; cleared by a pass that finds none waiting). Keeps
    /// the pass over all partitions off the path of every wake-up.
    lookups_due: bool,
    /// Some partition may be waiting out a backoff (set by `fail`; cleared
    /// by a pass that finds none).
    backoffs_due: bool,
    lookups: FuturesUnordered<BoxFuture<'static, Lookup>>,
    looking_up: HashSet<Arc<str>>,
    recoveries: FuturesUnordered<BoxFuture<'static, Recovery>>,
}

pub(super) async fn run(
    client: Client,
    settings: FetchSettings,
    on_failure: OnFailure,
    budget: Arc<Budget>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let counters = Arc::clone(client.cluster().counters());
    let mut pool = Pool {
        client,
        settings,
        on_failure,
        budget,
        counters,
        parts: HashMap::new(),
        names: HashSet::new(),
        brokers: HashMap::new(),
        reserved: 0,
        held: 0,
        fetches: FuturesUnordered::new(),
        marked: Instant::now(),
        lookups_due: false,
        backoffs_due: false,
        lookups: FuturesUnordered::new(),
        looking_up: HashSet::new(),
        recoveries: FuturesUnordered::new(),
    };
    loop {
        pool.mark_progress();
        pool.hand_over_held();
        pool.start_lookups();
        pool.start_fetches();
        let wake = pool.next_wake();
        let budget = Arc::clone(&pool.budget);
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => {
                    // Take every queued command before scheduling: an
                    // assignment of 1,000 partitions is one round, so the
                    // first request carries all of them, not the first one
                    // alone (which would then long-poll while the others
                    // wait).
                    pool.command(command);
                    while let Ok(command) = commands.try_recv() {
                        pool.command(command);
                    }
                }
                None => return,
            },
            Some(answer) = pool.fetches.next(), if !pool.fetches.is_empty() => pool.answered(answer),
            Some((topic, found)) = pool.lookups.next(), if !pool.lookups.is_empty() => {
                pool.looked_up(topic, found)
            }
            Some((tp, from, reset)) = pool.recoveries.next(), if !pool.recoveries.is_empty() => {
                pool.recovered(tp, from, reset)
            }
            () = budget.room.notified() => {}
            () = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Pool {
    fn command(&mut self, command: Command) {
        match command {
            Command::Add(fetches) => {
                for fetch in fetches {
                    self.add(fetch);
                }
            }
            Command::Remove(tp) => {
                if let Some(old) = self.parts.remove(&tp) {
                    self.held -= usize::from(old.held.is_some());
                }
            }
        }
    }

    /// Take a partition in; its leader is looked up at the next round.
    fn add(&mut self, fetch: PartitionFetch) {
        let name = match self.names.get(&fetch.tp.topic) {
            Some(n) => Arc::clone(n),
            None => {
                self.names.insert(Arc::clone(&fetch.tp.topic));
                Arc::clone(&fetch.tp.topic)
            }
        };
        let tp = TopicPartition {
            topic: name,
            partition: fetch.tp.partition,
        };
        let part = Part {
            fetch,
            route: Route::Lookup,
            held: None,
            not_before: None,
            failing_since: None,
            backoff: None,
            restarts: None,
            replica: None,
            final_error: None,
        };
        if let Some(old) = self.parts.insert(tp, part) {
            self.held -= usize::from(old.held.is_some());
        }
        self.lookups_due = true;
    }

    /// Try to hand held batches (and final errors) to their consumers.
    fn hand_over_held(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut finished = Vec::new();
        for (tp, part) in &mut self.parts {
            let Some(item) = part.held.take() else {
                continue;
            };
            match part.fetch.tx.try_send(item) {
                Ok(()) => {
                    if let Some(p) = &part.fetch.progress {
                        p.resumed();
                    }
                    if let Some(e) = part.final_error.take() {
                        part.held = Some(Err(e)); // still held: the count stays
                        continue;
                    }
                    self.held -= 1;
                    if part.route == Route::Done {
                        finished.push(tp.clone());
                    }
                }
                Err(TrySendError::Full(item)) => part.held = Some(item),
                Err(TrySendError::Closed(_)) => {
                    // The consumer is gone; its owner removes the partition.
                    self.held -= 1;
                    finished.push(tp.clone());
                }
            }
        }
        for tp in finished {
            self.parts.remove(&tp);
        }
    }

    /// Look up leaders of partitions that need one, a topic at a time.
    fn start_lookups(&mut self) {
        if !self.lookups_due {
            return;
        }
        let now = Instant::now();
        let mut topics: Vec<Arc<str>> = Vec::new();
        let mut waiting = false;
        for (tp, part) in &self.parts {
            waiting |= part.route == Route::Lookup;
            if part.route == Route::Lookup
                && !part.waiting_out_backoff(now)
                && !self.looking_up.contains(&tp.topic)
                && !topics.contains(&tp.topic)
            {
                topics.push(Arc::clone(&tp.topic));
            }
        }
        // Partitions still waiting (for a backoff or a lookup under way)
        // keep the flag; a lookup's answer or a backoff's end wakes us.
        self.lookups_due = waiting;
        for topic in topics {
            // Cached metadata routes at once, so that partitions of every
            // topic go into the same first request.
            if let Some(meta) = self.client.cluster().cached_topic(&topic) {
                self.looked_up(topic, Ok(Some(meta)));
                continue;
            }
            self.looking_up.insert(Arc::clone(&topic));
            let client = self.client.clone();
            self.lookups.push(
                async move {
                    let found = client.cluster().topic(&topic).await;
                    (topic, found)
                }
                .boxed(),
            );
        }
    }

    fn looked_up(&mut self, topic: Arc<str>, found: Result<Option<Arc<TopicMetadata>>>) {
        self.looking_up.remove(&topic);
        let waiting: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(tp, p)| tp.topic == topic && p.route == Route::Lookup)
            .map(|(tp, _)| tp.clone())
            .collect();
        let meta = match found {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                for tp in waiting {
                    self.fail(&tp, Error::UnknownTopic(topic.to_string()));
                }
                return;
            }
            Err(e) => {
                for tp in waiting {
                    self.fail(&tp, e.duplicate());
                }
                return;
            }
        };
        for tp in waiting {
            let cluster = self.client.cluster();
            let Some(p) = meta.partitions.iter().find(|p| p.id == tp.partition) else {
                let count = i32::try_from(meta.partitions.len()).unwrap_or(i32::MAX);
                self.fail(
                    &tp,
                    Error::UnknownPartition {
                        topic: topic.to_string(),
                        partition: tp.partition,
                        count,
                    },
                );
                continue;
            };
            if p.leader >= 0 && cluster.broker_addr(p.leader).is_some() {
                if let Some(part) = self.parts.get_mut(&tp) {
                    part.route = Route::Leader {
                        node: p.leader,
                        epoch: p.leader_epoch,
                    };
                    // Known, so that `start_fetches` sees it idle.
                    self.brokers.entry(p.leader).or_default();
                }
            } else {
                cluster.invalidate(&topic);
                let e = BrokerError::new(
                    "metadata",
                    "Metadata",
                    crate::protocol::error_codes::LEADER_NOT_AVAILABLE,
                    Some(format!("{tp} has no known leader")),
                );
                self.fail(&tp, e.into());
            }
        }
    }

    /// Send a request to every idle broker that leads partitions with room.
    fn start_fetches(&mut self) {
        // Every partition's broker is known here (a lookup or a replica
        // route adds it): with all of them busy there is nothing to send.
        if self.brokers.values().all(|b| b.busy) {
            return;
        }
        let used = self.budget.used.load(std::sync::atomic::Ordering::Acquire);
        let mut available = self
            .budget
            .limit
            .saturating_sub(used)
            .saturating_sub(self.reserved);
        if available == 0 {
            return; // a consumer dropping a batch wakes us
        }
        let now = Instant::now();
        // Partitions to fetch per idle broker, and whether any partition of
        // that broker is held back for room.
        let mut wanted: HashMap<i32, Wanted> = HashMap::new();
        for (tp, part) in &self.parts {
            let Some(node) = part.node(now) else {
                continue;
            };
            if self.brokers.get(&node).is_some_and(|b| b.busy) {
                continue;
            }
            let entry = wanted.entry(node).or_default();
            if part.waiting_out_backoff(now) {
                continue;
            }
            if !part.has_room() {
                entry.held_back = true;
                continue;
            }
            entry.from_follower |= Some(node) != part.leader();
            entry.positions.insert(
                tp.clone(),
                Position {
                    offset: part.fetch.next,
                    leader_epoch: part.leader_epoch(),
                    max_bytes: self.settings.max_partition_bytes.max(1),
                },
            );
        }
        for (node, wanted) in wanted {
            let Wanted {
                positions: wanted,
                held_back,
                from_follower,
            } = wanted;
            if wanted.is_empty() {
                continue;
            }
            if available == 0 {
                break;
            }
            let Some(addr) = self.client.cluster().broker_addr(node) else {
                // The broker left the metadata: look the leaders up again.
                self.reroute(node);
                continue;
            };
            let max_bytes = available.min(super::MAX_REQUEST_BYTES);
            available -= max_bytes;
            self.reserved += max_bytes;
            let broker = self.brokers.entry(node).or_default();
            broker.busy = true;
            let plan = broker.session.plan(wanted);
            let max_wait = if held_back {
                self.settings.max_wait.min(HELD_BACK_MAX_WAIT)
            } else {
                self.settings.max_wait
            };
            let request = build_request(&plan, &self.settings, max_wait, max_bytes);
            tracing::trace!(
                broker = %addr,
                session = plan.session_id,
                epoch = plan.epoch,
                wanted = plan.wanted.len(),
                listed = plan.listed.len(),
                forgotten = plan.forgotten.len(),
                held_back,
                ?max_wait,
                max_bytes,
                "fetch request"
            );
            WireCounters::add(&self.counters.fetch_requests, 1);
            if plan.incremental() {
                WireCounters::add(&self.counters.incremental_fetches, 1);
            }
            WireCounters::add(&self.counters.fetch_partitions, plan.listed.len() as u64);
            if from_follower {
                WireCounters::add(&self.counters.follower_fetches, 1);
            }
            let conn = broker.conn.take().filter(|c| !c.is_closed());
            let client = self.client.clone();
            self.fetches.push(
                async move {
                    let (conn, result) = send(&client, &addr, conn, &request).await;
                    Answer {
                        node,
                        addr,
                        conn,
                        plan,
                        reserved: max_bytes,
                        result,
                    }
                }
                .boxed(),
            );
        }
    }

    /// Partitions routed to `node` look their leader up again.
    fn reroute(&mut self, node: i32) {
        let cluster = self.client.cluster();
        for (tp, part) in &mut self.parts {
            if matches!(part.route, Route::Leader { node: n, .. } if n == node) {
                part.route = Route::Lookup;
                self.lookups_due = true;
                cluster.invalidate(&tp.topic);
            }
            if part.replica.is_some_and(|(r, _)| r == node) {
                part.replica = None;
            }
        }
    }

    fn answered(&mut self, answer: Answer) {
        let Answer {
            node,
            addr,
            conn,
            plan,
            reserved,
            result,
        } = answer;
        self.reserved -= reserved;
        let broker = self.brokers.entry(node).or_default();
        broker.busy = false;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                // Connection lost, timeout: the whole request failed.
                broker.conn = None;
                broker.session.failed();
                let topics: HashSet<&Arc<str>> = plan.wanted.keys().map(|tp| &tp.topic).collect();
                for topic in topics {
                    self.client.cluster().invalidate(topic);
                }
                for tp in plan.wanted.keys() {
                    self.fail(tp, e.duplicate());
                }
                return;
            }
        };
        broker.conn = conn;
        match response.error_code {
            0 => {}
            FETCH_SESSION_ID_NOT_FOUND | INVALID_FETCH_SESSION_EPOCH => {
                // Start a new session at the next request (at once).
                tracing::debug!(broker = %addr, code = response.error_code, "fetch session lost; starting a new one");
                broker.session.lost();
                return;
            }
            code => {
                broker.session.failed();
                for tp in plan.wanted.keys() {
                    self.fail(tp, BrokerError::new(&addr, "Fetch", code, None).into());
                }
                return;
            }
        }
        let session_id = response.session_id;
        tracing::trace!(
            broker = %addr,
            session = session_id,
            partitions = response.responses.iter().map(|t| t.partitions.len()).sum::<usize>(),
            "fetch answer"
        );
        for topic in response.responses {
            let Some(name) = self.names.get(topic.topic.0.as_str()).cloned() else {
                continue;
            };
            for data in topic.partitions {
                let tp = TopicPartition {
                    topic: Arc::clone(&name),
                    partition: data.partition_index,
                };
                let Some(asked) = plan.wanted.get(&tp) else {
                    continue;
                };
                self.take_partition(&tp, asked.offset, node, &addr, data);
            }
        }
        if let Some(broker) = self.brokers.get_mut(&node) {
            broker.session.answered(plan, session_id);
        }
    }

    /// One partition's part of an answer; `asked` is the offset the
    /// request fetched it from.
    fn take_partition(
        &mut self,
        tp: &TopicPartition,
        asked: i64,
        node: i32,
        addr: &str,
        data: kafka_protocol::messages::fetch_response::PartitionData,
    ) {
        let rack = self.settings.rack.is_some();
        let Some(part) = self.parts.get_mut(tp) else {
            return; // removed meanwhile
        };
        if part.fetch.next != asked || !matches!(part.route, Route::Leader { .. }) {
            return; // its position or route changed meanwhile: stale
        }
        match data.error_code {
            0 => {}
            OFFSET_OUT_OF_RANGE if part.replica.is_some() => {
                // A follower may be behind the leader: ask the leader.
                part.replica = None;
                return;
            }
            OFFSET_OUT_OF_RANGE => {
                part.route = Route::Recovering;
                let client = self.client.clone();
                let policy = part.fetch.out_of_range;
                let tp = tp.clone();
                self.recoveries.push(
                    async move {
                        let reset = recover::new_position(client, tp.clone(), asked, policy).await;
                        (tp, asked, reset)
                    }
                    .boxed(),
                );
                return;
            }
            code => {
                part.replica = None;
                if needs_metadata_refresh(code) {
                    self.client.cluster().invalidate(&tp.topic);
                }
                let e =
                    BrokerError::new(addr, "Fetch", code, Some(format!("{tp} at offset {asked}")));
                self.fail(tp, e.into());
                return;
            }
        }
        let replica = data.preferred_read_replica.0;
        if rack && replica >= 0 && replica != node {
            // The leader directs us to a replica in our rack (KIP-392).
            part.replica = Some((replica, Instant::now() + REPLICA_ROUTE));
            self.brokers.entry(replica).or_default();
            return;
        }
        part.succeeded();
        let Some(bytes) = data.records.filter(|b| !b.is_empty()) else {
            if let Some(p) = &part.fetch.progress {
                p.fetched(part.fetch.next);
            }
            return;
        };
        let size = bytes.len();
        let decoded = match decode_batches(bytes, &tp.topic, tp.partition, asked) {
            Ok(d) => d,
            Err(e) => {
                let e = Error::Decode {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: asked,
                    reason: e.to_string(),
                };
                self.fail(tp, e);
                return;
            }
        };
        if let Some(next) = decoded.next_offset {
            part.fetch.next = part.fetch.next.max(next);
        }
        let mut records = decoded.records;
        if let Some(end) = part.fetch.end {
            records.retain(|r| r.offset < end);
            if part.fetch.next >= end {
                part.route = Route::Done;
            }
        }
        if let Some(p) = &part.fetch.progress {
            p.fetched(part.fetch.next);
        }
        if records.is_empty() {
            if part.route == Route::Done {
                self.parts.remove(tp);
            }
            return;
        }
        if let Some(p) = &part.fetch.progress {
            p.handing_over(records.len());
        }
        let lease = self.budget.lease(size);
        part.held = Some(Ok(Fetched { records, lease }));
        self.held += 1;
    }

    fn recovered(&mut self, tp: TopicPartition, from: i64, reset: Result<i64>) {
        let Some(part) = self.parts.get_mut(&tp) else {
            return;
        };
        if part.route != Route::Recovering || part.fetch.next != from {
            return;
        }
        part.route = Route::Lookup;
        self.lookups_due = true;
        match reset {
            Ok(to) => part.fetch.next = to,
            Err(e) => self.fail(&tp, e),
        }
    }

    /// A partition's fetch failed: retry after a backoff, or, if it has
    /// failed for the retry deadline or retrying cannot help, hand the
    /// error to the owner's [`OnFailure`].
    fn fail(&mut self, tp: &TopicPartition, error: Error) {
        let deadline = self.client.config().retry_policy().deadline();
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if part.route == Route::Done {
            return;
        }
        part.route = Route::Lookup;
        part.replica = None;
        self.lookups_due = true;
        self.backoffs_due = true;
        let now = std::time::Instant::now();
        let since = *part.failing_since.get_or_insert(now);
        let for_good = !error.is_retriable() || now.duration_since(since) > deadline;
        if !for_good {
            tracing::debug!(partition = %tp, offset = part.fetch.next, error = %error, "fetch failed; retrying");
            let delay = part
                .backoff
                .get_or_insert_with(|| Backoff::for_client(self.client.config()))
                .next_delay();
            part.not_before = Some(Instant::now() + delay);
            return;
        }
        match &self.on_failure {
            OnFailure::EndStream => {
                // What was fetched goes first, then the error.
                part.route = Route::Done;
                if part.held.is_some() {
                    part.final_error = Some(error);
                } else {
                    part.held = Some(Err(error));
                    self.held += 1;
                }
            }
            OnFailure::Report(report) => {
                let delay = part
                    .restarts
                    .get_or_insert_with(|| Backoff::between(RESTART_FIRST, RESTART_MAX))
                    .next_delay();
                tracing::warn!(partition = %tp, offset = part.fetch.next, error = %error, retry_in = ?delay, "fetching failed; retrying");
                part.failing_since = None;
                part.backoff = None;
                part.not_before = Some(Instant::now() + delay);
                let gone = matches!(
                    error,
                    Error::UnknownTopic(_) | Error::UnknownPartition { .. }
                ) || error.broker_code() == Some(UNKNOWN_TOPIC_OR_PARTITION);
                report(tp, error, gone);
            }
        }
    }

    /// Every [`MARK_EVERY`], tell the watchdog that partitions which are
    /// not failing are fine.
    fn mark_progress(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.marked) < MARK_EVERY {
            return;
        }
        self.marked = now;
        for part in self.parts.values() {
            if part.failing_since.is_none() {
                if let Some(p) = &part.fetch.progress {
                    p.fetched(part.fetch.next);
                }
            }
        }
    }

    /// The earliest backoff that ends, or the next progress mark.
    fn next_wake(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let backoff = if self.backoffs_due {
            self.parts
                .values()
                .filter_map(|p| p.not_before.filter(|t| *t > now))
                .min()
        } else {
            None
        };
        self.backoffs_due = backoff.is_some();
        let mark = (!self.parts.is_empty()).then_some(self.marked + MARK_EVERY);
        backoff.into_iter().chain(mark).min()
    }
}

/// The Fetch request for `plan`.
fn build_request(
    plan: &Plan,
    settings: &FetchSettings,
    max_wait: Duration,
    max_bytes: usize,
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (tp, pos) in &plan.listed {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_current_leader_epoch(pos.leader_epoch)
            .with_fetch_offset(pos.offset)
            .with_partition_max_bytes(pos.max_bytes);
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == &*tp.topic => t.partitions.push(partition),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic(topic_name(&tp.topic))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    let mut forgotten: Vec<ForgottenTopic> = Vec::new();
    for tp in &plan.forgotten {
        match forgotten.last_mut() {
            Some(t) if t.topic.0.as_str() == &*tp.topic => t.partitions.push(tp.partition),
            _ => forgotten.push(
                ForgottenTopic::default()
                    .with_topic(topic_name(&tp.topic))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    FetchRequest::default()
        .with_max_wait_ms(i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(1)
        .with_max_bytes(i32::try_from(max_bytes).unwrap_or(i32::MAX).max(1))
        .with_session_id(plan.session_id)
        .with_session_epoch(plan.epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten)
        .with_rack_id(StrBytes::from_string(
            settings.rack.clone().unwrap_or_default(),
        ))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Send one request on `conn` (opening a connection of our own if there
/// is none); returns the connection to keep and the answer.
async fn send(
    client: &Client,
    addr: &str,
    conn: Option<Arc<BrokerConnection>>,
    request: &FetchRequest,
) -> (Option<Arc<BrokerConnection>>, Result<FetchResponse>) {
    let conn = match conn {
        Some(c) => c,
        None => match client.cluster().dedicated_connection(addr).await {
            Ok(c) => c,
            Err(e) => return (None, Err(e)),
        },
    };
    let result = conn.request(request).await;
    let keep = (!conn.is_closed()).then_some(conn);
    (keep, result)
}
