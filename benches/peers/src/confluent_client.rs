//! Confluent's pure-Rust `confluent-kafka` crate: a `KafkaProducer` fed with
//! `send` plus a completion callback and drained with `flush`, a
//! group-less `KafkaConsumer` with `assign()` and `seek_to_beginning()`, and
//! a `KafkaConsumer` with `subscribe` in a KIP-848 (`consumer` protocol)
//! group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use confluent_kafka::common::serialization::{ByteArraySerializer, BytesDeserializer};
use confluent_kafka::common::{Error as KafkaError, TopicPartition};
use confluent_kafka::consumer::{Consumer, ConsumerConfig, KafkaConsumer};
use confluent_kafka::producer::{
    Callback, KafkaProducer, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};

use crate::tally::{GroupRead, GroupTally};
use crate::workload;

/// The producer settings, as the Java client names them.
pub fn producer_settings() -> Vec<(&'static str, String)> {
    vec![
        ("acks", "all".to_string()),
        ("linger.ms", workload::LINGER_MS.to_string()),
        ("batch.size", workload::BATCH_BYTES.to_string()),
        ("max.request.size", workload::MAX_REQUEST_BYTES.to_string()),
        ("compression.type", workload::COMPRESSION.to_string()),
    ]
}

fn properties(bootstrap: &str, settings: &[(&str, String)]) -> HashMap<String, String> {
    let mut props = HashMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]);
    for (name, value) in settings {
        props.insert((*name).to_string(), value.clone());
    }
    props
}

#[derive(Default)]
struct Tally {
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

/// Completion callback of one record: it only counts failures.
struct OnAck(Arc<Tally>);

impl Callback for OnAck {
    fn on_completion(self: Box<Self>, _: Option<&RecordMetadata>, error: Option<&KafkaError>) {
        if let Some(error) = error {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.0.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| error.to_string());
        }
    }
}

pub async fn produce(
    bootstrap: &str,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    let config = ProducerConfig::new(&properties(bootstrap, &producer_settings()))
        .context("confluent-kafka producer config")?;
    let producer = KafkaProducer::<Vec<u8>, Vec<u8>>::new(
        config,
        ByteArraySerializer::new(),
        ByteArraySerializer::new(),
    )
    .context("creating the confluent-kafka producer")?;
    let result = produce_with(&producer, topic, payload, records).await;
    let closed = producer.close().await;
    result?;
    closed.context("closing the confluent-kafka producer")?;
    Ok(())
}

async fn produce_with(
    producer: &KafkaProducer<Vec<u8>, Vec<u8>>,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<()> {
    producer
        .partitions_for(topic)
        .await
        .context("fetching metadata before producing")?;
    workload::mark_work_started();

    let tally = Arc::new(Tally::default());
    for index in 0..records {
        let key = workload::key(index);
        let record = ProducerRecord::with_key(
            topic.to_string(),
            key.as_ref().map(|k| &k[..]),
            Some(payload),
        );
        let callback: Box<dyn Callback> = Box::new(OnAck(Arc::clone(&tally)));
        producer
            .send(record, Some(callback))
            .await
            .context("confluent-kafka send")?;
    }
    producer.flush().await.context("confluent-kafka flush")?;

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
    Ok(())
}

pub async fn read(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    let settings = [
        // The only protocol this client implements; without a `group.id`
        // no group is joined and nothing is committed.
        ("group.protocol", "consumer".to_string()),
        ("enable.auto.commit", "false".to_string()),
        ("auto.offset.reset", "earliest".to_string()),
    ];
    let config = ConsumerConfig::new(&properties(bootstrap, &settings))
        .context("confluent-kafka consumer config")?;
    let mut consumer =
        KafkaConsumer::new(config, BytesDeserializer::new(), BytesDeserializer::new())
            .context("creating the confluent-kafka consumer")?;
    let result = read_with(&mut consumer, topic, partitions, expected).await;
    let closed = consumer.close().await;
    let bytes = result?;
    closed.context("closing the confluent-kafka consumer")?;
    Ok(bytes)
}

async fn read_with(
    consumer: &mut KafkaConsumer<bytes::Bytes, bytes::Bytes>,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<u64> {
    consumer
        .partitions_for(topic)
        .await
        .context("fetching metadata before reading")?;
    let assignment: Vec<TopicPartition> = (0..partitions)
        .map(|partition| TopicPartition::new(topic, partition))
        .collect();
    workload::mark_work_started();
    consumer
        .assign(assignment.clone())
        .await
        .context("confluent-kafka assign")?;
    consumer
        .seek_to_beginning(&assignment)
        .await
        .context("confluent-kafka seek_to_beginning")?;

    let stall = Duration::from_secs(workload::READ_STALL_SECS);
    let mut seen = 0usize;
    let mut bytes = 0u64;
    let mut last_progress = Instant::now();
    while seen < expected {
        let batch = consumer
            .poll(Duration::from_millis(200))
            .await
            .context("confluent-kafka poll")?;
        if batch.is_empty() {
            if last_progress.elapsed() > stall {
                bail!("no record for {stall:?}; saw {seen} of {expected}");
            }
            continue;
        }
        for record in &batch {
            seen += 1;
            bytes += record.value().map_or(0, |v| v.len() as u64);
        }
        last_progress = Instant::now();
    }
    Ok(bytes)
}

pub async fn group_consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<GroupRead> {
    let settings = [
        ("group.id", workload::fresh_group_id("group-confluent")),
        // The only group protocol this client implements (KIP-848).
        ("group.protocol", "consumer".to_string()),
        ("auto.offset.reset", "earliest".to_string()),
    ];
    let config = ConsumerConfig::new(&properties(bootstrap, &settings))
        .context("confluent-kafka consumer config")?;
    let mut consumer =
        KafkaConsumer::new(config, BytesDeserializer::new(), BytesDeserializer::new())
            .context("creating the confluent-kafka consumer")?;
    let result = group_consume_with(&mut consumer, topic, partitions, expected).await;
    let closed = consumer.close().await;
    let read = result?;
    closed.context("closing the confluent-kafka consumer")?;
    Ok(read)
}

async fn group_consume_with(
    consumer: &mut KafkaConsumer<bytes::Bytes, bytes::Bytes>,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<GroupRead> {
    consumer
        .partitions_for(topic)
        .await
        .context("fetching metadata before subscribing")?;
    let tally = GroupTally::new(partitions, expected);
    workload::mark_work_started();
    consumer
        .subscribe_with_topics(vec![topic.to_string()])
        .await
        .context("confluent-kafka subscribe")?;

    let stall = Duration::from_secs(workload::READ_STALL_SECS);
    let mut last_progress = Instant::now();
    while !tally.is_done() {
        let batch = consumer
            .poll(Duration::from_millis(200))
            .await
            .context("confluent-kafka poll")?;
        if batch.is_empty() {
            if last_progress.elapsed() > stall {
                tally.give_up(format!(
                    "no record for {stall:?}; saw {} of {expected}",
                    tally.seen()
                ));
                break;
            }
            continue;
        }
        for record in &batch {
            tally.see(
                record.partition(),
                record.offset(),
                record.value().map_or(0, |v| v.len()),
            );
        }
        last_progress = Instant::now();
    }
    tally.finish()
}
