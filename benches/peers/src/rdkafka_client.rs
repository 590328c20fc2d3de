//! The `rdkafka` crate (librdkafka): a `BaseProducer` polled from the send
//! loop and flushed at the end, a group-less `BaseConsumer` with
//! `assign()`, and a `BaseConsumer` with `subscribe()` in a classic group.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::child::PhaseReport;
use crate::idle::{self, IdleArgs};
use crate::member::{self, Events, MemberArgs};
use crate::tally::{GroupRead, GroupTally};
use crate::workload;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// Records sent between two non-blocking polls of the delivery queue.
const POLL_EVERY: usize = 1000;

/// A configuration for `bootstrap`, with TLS when the run goes to a TLS
/// listener (`workload::rdkafka_tls_settings`).
fn config_for(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (name, value) in workload::rdkafka_tls_settings() {
        config.set(name, value);
    }
    config
}

/// The producer settings, as librdkafka names them.
pub fn producer_settings() -> Vec<(&'static str, String)> {
    vec![
        ("acks", "all".to_string()),
        ("linger.ms", workload::LINGER_MS.to_string()),
        ("batch.size", workload::BATCH_BYTES.to_string()),
        ("message.max.bytes", workload::MAX_REQUEST_BYTES.to_string()),
        ("compression.codec", workload::COMPRESSION.to_string()),
        // The Java client's partitioner for keyed records, so keyed runs
        // spread records the same way in every client.
        ("partitioner", "murmur2_random".to_string()),
    ]
}

#[derive(Default)]
struct DeliveryTally {
    acked: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTally {}

impl ProducerContext for DeliveryTally {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

pub async fn produce(
    bootstrap: &str,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| produce_blocking(bootstrap, topic, payload, records))
}

fn produce_blocking(
    bootstrap: &str,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    let mut config = config_for(bootstrap);
    for (name, value) in producer_settings() {
        config.set(name, value);
    }
    let producer: BaseProducer<DeliveryTally> = config
        .create_with_context(DeliveryTally::default())
        .context("creating the rdkafka producer")?;
    producer
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .context("fetching metadata before producing")?;
    workload::mark_work_started();

    for index in 0..records {
        let key = workload::key(index);
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key.as_ref() {
            record = record.key(&key[..]);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(anyhow!(error).context("rdkafka send")),
            }
        }
        if index % POLL_EVERY == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Timeout::After(FLUSH_TIMEOUT))
        .context("rdkafka flush")?;

    let tally = producer.context();
    let failed = tally.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = tally
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        bail!("{failed} of {records} records failed; first error: {first}");
    }
    let acked = tally.acked.load(Ordering::Relaxed);
    if acked != records {
        bail!("{acked} of {records} records acked after flush");
    }
    Ok(())
}

pub async fn read(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    tokio::task::block_in_place(|| read_blocking(bootstrap, topic, partitions, expected))
}

fn read_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    // librdkafka's assign() needs a group.id to be configured, but an
    // assigned consumer never joins that group, and with auto-commit off and
    // explicit start offsets nothing is committed to it or read from it.
    let group = format!("peers-reader-{}", std::process::id());
    let consumer: BaseConsumer = config_for(bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the rdkafka consumer")?;
    consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .context("fetching metadata before reading")?;

    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    workload::mark_work_started();
    consumer.assign(&assignment).context("rdkafka assign")?;

    let stall = Duration::from_secs(workload::READ_STALL_SECS);
    let mut seen = 0usize;
    let mut bytes = 0u64;
    let mut last_progress = Instant::now();
    while seen < expected {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                seen += 1;
                bytes += message.payload_len() as u64;
                last_progress = Instant::now();
            }
            Some(Err(error)) => return Err(anyhow!(error).context("rdkafka poll")),
            None => {
                if last_progress.elapsed() > stall {
                    bail!("no record for {stall:?}; saw {seen} of {expected}");
                }
            }
        }
    }
    Ok(bytes)
}

pub async fn group_consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<GroupRead> {
    tokio::task::block_in_place(|| group_consume_blocking(bootstrap, topic, partitions, expected))
}

fn group_consume_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<GroupRead> {
    let consumer: BaseConsumer = config_for(bootstrap)
        .set("group.id", workload::fresh_group_id("group-rdkafka"))
        .set("group.protocol", "classic")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the rdkafka consumer")?;
    consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .context("fetching metadata before subscribing")?;
    let tally = GroupTally::new(partitions, expected);
    workload::mark_work_started();
    consumer.subscribe(&[topic]).context("rdkafka subscribe")?;

    let stall = Duration::from_secs(workload::READ_STALL_SECS);
    let mut last_progress = Instant::now();
    while !tally.is_done() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                tally.see(message.partition(), message.offset(), message.payload_len());
                last_progress = Instant::now();
            }
            Some(Err(error)) => return Err(anyhow!(error).context("rdkafka poll")),
            None => {
                if last_progress.elapsed() > stall {
                    tally.give_up(format!(
                        "no record for {stall:?}; saw {} of {expected}",
                        tally.seen()
                    ));
                    break;
                }
            }
        }
    }
    consumer.unsubscribe();
    tally.finish()
}

/// Reports the member's rebalances as they are applied.
struct MemberContext {
    topic: String,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |list: &TopicPartitionList| -> Vec<i32> {
            let mut partitions: Vec<i32> = list
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            partitions.sort_unstable();
            partitions
        };
        match rebalance {
            Rebalance::Assign(list) => Events.assigned(&partitions(list)),
            Rebalance::Revoke(_) => {
                let left = consumer
                    .assignment()
                    .map(|list| partitions(&list))
                    .unwrap_or_default();
                Events.revoked(&left);
            }
            Rebalance::Error(_) => {}
        }
    }
}

pub async fn member(args: &MemberArgs) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| member_blocking(args))
}

fn member_blocking(args: &MemberArgs) -> anyhow::Result<()> {
    let millis = |d: Duration| d.as_millis().to_string();
    let consumer: BaseConsumer<MemberContext> = config_for(&args.bootstrap)
        .set("group.id", &args.group)
        .set("group.protocol", "classic")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", millis(member::SESSION_TIMEOUT))
        .set("heartbeat.interval.ms", millis(member::HEARTBEAT_INTERVAL))
        .set("auto.commit.interval.ms", millis(member::COMMIT_INTERVAL))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create_with_context(MemberContext {
            topic: args.topic.clone(),
        })
        .context("creating the rdkafka consumer")?;
    consumer
        .fetch_metadata(Some(&args.topic), METADATA_TIMEOUT)
        .context("fetching metadata before subscribing")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        member::on_stdin_closed(move || stop.store(true, Ordering::Relaxed));
    }
    Events.start();
    consumer
        .subscribe(&[&args.topic])
        .context("rdkafka subscribe")?;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => Events.consumed(message.partition(), message.payload()),
            Some(Err(error)) => return Err(anyhow!(error).context("rdkafka poll")),
            None => {}
        }
    }
    consumer.unsubscribe();
    Ok(())
}

/// Counts the partitions an idle member owns, as rebalances are applied.
struct IdleContext {
    owned: AtomicUsize,
}

impl ClientContext for IdleContext {}

impl ConsumerContext for IdleContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let owned = match rebalance {
            Rebalance::Assign(list) => list.count(),
            _ => consumer.assignment().map(|list| list.count()).unwrap_or(0),
        };
        self.owned.store(owned, Ordering::Relaxed);
    }
}

/// The idle phase's member (see `crate::idle`): a classic-group
/// `BaseConsumer` with default settings, polled every 100 ms as an
/// application's loop would, left alone once it owns every partition.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<PhaseReport> {
    tokio::task::block_in_place(|| idle_blocking(args))
}

fn idle_blocking(args: &IdleArgs) -> anyhow::Result<PhaseReport> {
    let started = Instant::now();
    let consumer: BaseConsumer<IdleContext> = config_for(&args.bootstrap)
        .set("group.id", &args.group)
        .set("group.protocol", "classic")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create_with_context(IdleContext {
            owned: AtomicUsize::new(0),
        })
        .context("creating the rdkafka consumer")?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("rdkafka subscribe")?;
    let owned = || consumer.context().owned.load(Ordering::Relaxed);
    let poll = |until: Instant, stop_at_full: bool| -> anyhow::Result<()> {
        while Instant::now() < until {
            if stop_at_full && owned() == args.partitions {
                return Ok(());
            }
            if let Some(Err(error)) = consumer.poll(Duration::from_millis(100)) {
                return Err(anyhow!(error).context("rdkafka poll"));
            }
        }
        Ok(())
    };
    poll(Instant::now() + idle::ASSIGN_TIMEOUT, true)?;
    if owned() != args.partitions {
        bail!(
            "owned {} of {} partitions after {:?}",
            owned(),
            args.partitions,
            idle::ASSIGN_TIMEOUT
        );
    }
    let window = idle::Window::begin(started);
    poll(Instant::now() + Duration::from_secs(args.secs), false)?;
    if owned() != args.partitions {
        bail!(
            "owned {} of {} partitions at the end of the idle window",
            owned(),
            args.partitions
        );
    }
    let report = window.end(args, None)?;
    consumer.unsubscribe();
    Ok(report)
}
