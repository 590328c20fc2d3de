//! kastellan, run through the same two functions as the other clients.
//!
//! Contract shared by every client module:
//! - `produce` sends `records` copies of `payload` to `topic` with acks=all,
//!   keyed with `crate::workload::key(i)` for record `i` (that is `None`
//!   unless the run is `--keyed`), and returns once every record is acked.
//! - `read` reads `topic` (partitions `0..partitions`) from the earliest
//!   offset, without a consumer group and without commits, until `expected`
//!   records have been seen, and returns the number of value bytes read.
//! - Either may call `crate::workload::mark_work_started()` once its client
//!   is built and connected, so that set-up is left out of the timing.
//! - Producer settings to match: `crate::workload::{LINGER_MS, BATCH_BYTES,
//!   MAX_REQUEST_BYTES, COMPRESSION}`.
//! - `group_consume` joins a fresh consumer group as its only member,
//!   subscribed to `topic` from the earliest offset, and feeds every record
//!   to a `crate::tally::GroupTally` until it holds `expected` records.
//! - Here each of `produce`, `read` and `group_consume` takes the TLS
//!   crypto provider first (`kastellan` and `kastellan-ring`, see
//!   `crate::clients::Client::tls`); it matters only over TLS.
//! - `member` (rebalance phase) is one member of a shared group that reports
//!   its assignments and records through `crate::member::Events`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::StreamExt;
use kastellan::group::assignor::{Assignor, CooperativeStickyAssignor, RangeAssignor};
use kastellan::group::{ConsumerRecord, HandlerError, StatusHandle};
use kastellan::{Client, ClientConfig, StartOffset, TlsProvider};

use crate::child::PhaseReport;
use crate::idle::{self, IdleArgs};
use crate::member::{self, Events, MemberArgs, MemberKind};
use crate::tally::{self, GroupRead, GroupTally};
use crate::workload;

/// A client for `bootstrap`; over TLS (`PEERS_TLS_CA`) with the crypto
/// provider `tls`.
async fn connect(tls: TlsProvider, bootstrap: &str) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(bootstrap).client_id("peers-bench");
    if let Some(ca) = workload::tls_ca() {
        let pem = std::fs::read_to_string(&ca).with_context(|| format!("reading {ca}"))?;
        config = config.tls(kastellan::TlsConfig::new().ca_pem(pem).provider(tls));
    }
    Client::connect(config)
        .await
        .context("connecting kastellan")
}

pub async fn produce(
    tls: TlsProvider,
    bootstrap: &str,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    let client = connect(tls, bootstrap).await?;
    let producer = client
        .producer()
        .linger(Duration::from_millis(u64::from(workload::LINGER_MS)))
        .max_batch_bytes(workload::BATCH_BYTES)
        .build()?;
    client
        .topic_metadata(topic, true)
        .await?
        .context("topic missing")?;
    workload::mark_work_started();

    let payload = Bytes::copy_from_slice(payload);
    let mut pending = Vec::with_capacity(records);
    for index in 0..records {
        let mut message = producer.to(topic).value(payload.clone());
        if let Some(key) = workload::key(index) {
            message = message.key(Bytes::copy_from_slice(&key));
        }
        pending.push(message.enqueue().await?);
    }
    let mut failed = 0;
    let mut first_error = None;
    for delivery in pending {
        if let Err(e) = delivery.await {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        bail!("{failed} records failed; first error: {e}");
    }
    Ok(())
}

pub async fn read(
    tls: TlsProvider,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    let client = connect(tls, bootstrap).await?;
    let all: Vec<i32> = (0..partitions).collect();
    let reader = client
        .reader()
        .partitions(topic, &all)
        .start(StartOffset::Earliest)
        .build()
        .await?;
    workload::mark_work_started();
    let mut stream = reader.stream();
    let mut seen = 0usize;
    let mut bytes = 0u64;
    while seen < expected {
        let next = tokio::time::timeout(
            Duration::from_secs(workload::READ_STALL_SECS),
            stream.next(),
        )
        .await
        .with_context(|| format!("no record for {}s after {seen}", workload::READ_STALL_SECS))?;
        match next {
            Some(Ok(record)) => {
                seen += 1;
                bytes += record.value.as_ref().map_or(0, |v| v.len() as u64);
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("stream ended after {seen} of {expected} records"),
        }
    }
    Ok(bytes)
}

pub async fn group_consume(
    tls: TlsProvider,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<GroupRead> {
    let client = connect(tls, bootstrap).await?;
    client
        .topic_metadata(topic, true)
        .await?
        .context("topic missing")?;
    let consumer = client
        .group_consumer(workload::fresh_group_id("group-kastellan"))
        .topic(topic)
        .start_with_earliest()
        .build()?;
    let stop = consumer.shutdown_handle();
    let tally = Arc::new(GroupTally::new(partitions, expected));
    let handler = {
        let tally = Arc::clone(&tally);
        let stop = stop.clone();
        move |record: ConsumerRecord| {
            let len = record.value.as_ref().map_or(0, |v| v.len());
            if tally.see(record.partition, record.offset, len) {
                stop.shutdown(tally::SHUTDOWN_DEADLINE);
            }
            async { Ok::<(), HandlerError>(()) }
        }
    };
    let watchdog = {
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            let stall = Duration::from_secs(workload::READ_STALL_SECS);
            if tally::watch_for_stall(&tally, stall).await {
                stop.shutdown(tally::SHUTDOWN_DEADLINE);
            }
        })
    };
    workload::mark_work_started();
    let outcome = consumer.run(handler).await;
    watchdog.abort();
    outcome.context("kastellan group consumer")?;
    tally.finish()
}

/// Reports assignment changes of a kastellan member: a new join (the
/// `joins` counter moved) is an assignment, a shrinking assignment between
/// joins is a revocation.
struct AssignmentWatch {
    status: StatusHandle,
    topic: String,
    /// `joins` and partitions last reported.
    last: std::sync::Mutex<(u64, Vec<i32>)>,
}

impl AssignmentWatch {
    /// Reports a change since the last call, if any. Called before every
    /// record is reported, so a record of a new assignment never appears
    /// before that assignment.
    fn check(&self, events: &Events) {
        let status = self.status.get();
        let partitions: Vec<i32> = status
            .assignment
            .iter()
            .filter(|tp| tp.topic() == self.topic)
            .map(|tp| tp.partition())
            .collect();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if status.joins != last.0 {
            events.assigned(&partitions);
        } else if partitions != last.1 {
            events.revoked(&partitions);
        } else {
            return;
        }
        *last = (status.joins, partitions);
    }
}

pub async fn member(args: &MemberArgs) -> anyhow::Result<()> {
    let client = connect(TlsProvider::default(), &args.bootstrap).await?;
    client
        .topic_metadata(&args.topic, true)
        .await?
        .context("topic missing")?;
    let assignor: Arc<dyn Assignor> = match args.kind {
        MemberKind::KastellanCooperative => Arc::new(CooperativeStickyAssignor),
        _ => Arc::new(RangeAssignor),
    };
    let consumer = client
        .group_consumer(args.group.clone())
        .topic(args.topic.clone())
        .start_with_earliest()
        .session_timeout(member::SESSION_TIMEOUT)
        .heartbeat_interval(member::HEARTBEAT_INTERVAL)
        .commit_interval(member::COMMIT_INTERVAL)
        .assignors(vec![assignor])
        .build()?;
    let stop = consumer.shutdown_handle();
    member::on_stdin_closed(move || stop.shutdown(tally::SHUTDOWN_DEADLINE));
    let watch = Arc::new(AssignmentWatch {
        status: consumer.status_handle(),
        topic: args.topic.clone(),
        last: std::sync::Mutex::new((0, Vec::new())),
    });
    let poller = {
        let watch = Arc::clone(&watch);
        tokio::spawn(async move {
            loop {
                watch.check(&Events);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let handler = move |record: ConsumerRecord| {
        watch.check(&Events);
        Events.consumed(record.partition, record.value.as_deref());
        async { Ok::<(), HandlerError>(()) }
    };
    Events.start();
    let outcome = consumer.run(handler).await;
    poller.abort();
    outcome.context("kastellan group consumer")
}

/// The idle phase's member (see `crate::idle`): a group consumer with
/// default settings over all the topics, left alone once it owns every
/// partition.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<PhaseReport> {
    let started = std::time::Instant::now();
    let client = connect(TlsProvider::default(), &args.bootstrap).await?;
    let consumer = client
        .group_consumer(args.group.clone())
        .topics(args.topics.clone())
        .start_with_earliest()
        .build()?;
    let stop = consumer.shutdown_handle();
    let status = consumer.status_handle();
    let running =
        tokio::spawn(consumer.run(|_: ConsumerRecord| async { Ok::<(), HandlerError>(()) }));
    let assigned = idle::wait_for_assignment(args.partitions, || {
        // A stopped consumer ends the wait; its outcome below says why.
        (!running.is_finished()).then(|| status.get().assignment.len())
    })
    .await;
    let measured = match assigned {
        Ok(()) => {
            let window = idle::Window::begin(started);
            tokio::time::sleep(Duration::from_secs(args.secs)).await;
            let owned = status.get().assignment.len();
            if owned != args.partitions {
                Err(anyhow::anyhow!(
                    "owned {owned} of {} partitions at the end of the idle window",
                    args.partitions
                ))
            } else {
                window.end(args, Some(client.status().open_connections))
            }
        }
        Err(error) => Err(error),
    };
    stop.shutdown(tally::SHUTDOWN_DEADLINE);
    let outcome = running.await.context("kastellan consumer task")?;
    let report = measured?;
    outcome.context("kastellan group consumer")?;
    Ok(report)
}
