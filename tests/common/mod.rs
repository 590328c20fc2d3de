//! Shared helpers for integration tests: every test talks to a real broker.
#![allow(dead_code)]

#[path = "../../testcontainers.rs"]
pub mod testcontainers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kastellan::admin::NewTopic;
use kastellan::{Client, ClientConfig};

/// A client for the shared test broker (started on first use).
pub async fn client() -> Client {
    // RUST_LOG=kastellan=debug shows the library's logs in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    let name = unique_topic(prefix);
    client
        .admin()
        .create_topic(NewTopic::new(&name, partitions, 1))
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    name
}
