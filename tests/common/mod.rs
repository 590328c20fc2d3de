//! Shared helpers for integration tests: every test talks to a real broker.
#![allow(dead_code)]

#[path = "../../testcontainers.rs"]
pub mod testcontainers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kastellan::admin::NewTopic;
use kastellan::group::{
    ConsumerRecord, GroupConsumer, GroupConsumerBuilder, Handler, HandlerError, ShutdownHandle,
    StatusHandle,
};
use kastellan::{Client, ClientConfig, Record, StartOffset, TopicPartition};
use tokio::task::JoinHandle;

/// Shows the library's logs in failing tests when `RUST_LOG` asks for them
/// (`RUST_LOG=kastellan=debug`). Idempotent.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A client for the shared test broker (started on first use).
pub async fn client() -> Client {
    init_logging();
    let bootstrap = testcontainers::bootstrap();
    Client::connect(
        ClientConfig::new(&bootstrap)
            .client_id("kastellan-tests")
            .retry_deadline(Duration::from_secs(30)),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to the test broker at {bootstrap}: {e}"))
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// Create a fresh topic with `partitions` partitions and return its name.
pub async fn new_topic(client: &Client, prefix: &str, partitions: i32) -> String {
    new_replicated_topic(client, prefix, partitions, 1).await
}

/// Create a fresh topic with `partitions` partitions of `replicas` replicas
/// each and return its name.
pub async fn new_replicated_topic(
    client: &Client,
    prefix: &str,
    partitions: i32,
    replicas: i16,
) -> String {
    let name = unique_topic(prefix);
    client
        .admin()
        .create_topic(NewTopic::new(&name, partitions, replicas))
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    name
}

/// Polls `cond` every 50 ms until it holds; fails the test after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every record of `topic`, read with a fresh reader from the earliest
/// offset to the end.
pub async fn read_all(client: &Client, topic: &str) -> Vec<Record> {
    client
        .reader()
        .topic(topic)
        .start(StartOffset::Earliest)
        .build()
        .await
        .unwrap_or_else(|e| panic!("reader of {topic} builds: {e}"))
        .read_to_end()
        .await
        .unwrap_or_else(|e| panic!("{topic} reads back to the end: {e}"))
}

// ---------------------------------------------------------------------------
// Group consumers.

/// A group consumer of `topic` with the settings the group tests share:
/// from the earliest offset, 10 s sessions, a heartbeat every 500 ms, a
/// commit every 300 ms, fetches that wait at most 100 ms.
pub fn group_member(client: &Client, group: &str, topic: &str) -> GroupConsumerBuilder {
    client
        .group_consumer(group)
        .topic(topic)
        .start_with_earliest()
        .session_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(500))
        .commit_interval(Duration::from_millis(300))
        .max_wait(Duration::from_millis(100))
}

/// A handler that shows each record to `record` and completes it.
pub fn recording(record: impl Fn(&ConsumerRecord) + Send + Sync + 'static) -> impl Handler {
    let record = Arc::new(record);
    move |r: ConsumerRecord| {
        let record = Arc::clone(&record);
        async move {
            record(&r);
            Ok::<(), HandlerError>(())
        }
    }
}

/// A group consumer whose `run` goes on in a task, with the handles to stop
/// it and to read its status.
pub struct RunningConsumer {
    pub task: JoinHandle<kastellan::Result<()>>,
    pub shutdown: ShutdownHandle,
    pub status: StatusHandle,
}

impl RunningConsumer {
    /// Runs `consumer` with `handler` in a task.
    pub fn spawn(consumer: GroupConsumer, handler: impl Handler) -> RunningConsumer {
        let shutdown = consumer.shutdown_handle();
        let status = consumer.status_handle();
        let task = tokio::spawn(consumer.run(handler));
        RunningConsumer {
            task,
            shutdown,
            status,
        }
    }

    /// The partitions it owns now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.status.get().assignment
    }

    /// Asks it to stop within `deadline`, and checks that `run` ends
    /// cleanly within a minute.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.shutdown(deadline);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("member stops in time")
            .expect("member task did not panic")
            .expect("member stopped cleanly");
    }
}
