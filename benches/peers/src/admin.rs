//! Topic set-up and clean-up for the parent, through rdkafka's `AdminClient`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::metadata::Metadata;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Admin {
    client: AdminClient<DefaultClientContext>,
}

impl Admin {
    pub fn connect(bootstrap: &str) -> anyhow::Result<Admin> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (name, value) in crate::workload::rdkafka_tls_settings() {
            config.set(name, value);
        }
        let client: AdminClient<DefaultClientContext> =
            config.create().context("creating the admin client")?;
        Ok(Admin { client })
    }

    fn metadata(&self, topic: Option<&str>) -> anyhow::Result<Metadata> {
        tokio::task::block_in_place(|| {
            self.client
                .inner()
                .fetch_metadata(topic, Duration::from_secs(10))
        })
        .map_err(|e| anyhow!(e))
    }

    /// Checks that the broker answers; returns its broker count.
    pub fn probe(&self) -> anyhow::Result<usize> {
        let metadata = self.metadata(None).context("no metadata from the broker")?;
        Ok(metadata.brokers().len())
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT))
    }

    /// Creates `name` with `partitions` partitions and replication factor 1,
    /// and returns once metadata shows every partition with a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = self
            .client
            .create_topics([&topic], &Self::options())
            .await
            .with_context(|| format!("creating topic {name}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        self.wait_ready(name, partitions).await
    }

    async fn wait_ready(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let state = match self.metadata(Some(name)) {
                Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == name) {
                    Some(topic) if topic.error().is_some() => {
                        format!("topic error {:?}", topic.error())
                    }
                    Some(topic) => {
                        let led = topic
                            .partitions()
                            .iter()
                            .filter(|p| p.error().is_none() && p.leader() >= 0)
                            .count();
                        if led == partitions as usize && topic.partitions().len() == led {
                            return Ok(());
                        }
                        format!("{led} of {partitions} partitions have a leader")
                    }
                    None => "topic not in metadata".to_string(),
                },
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() > deadline {
                bail!("topic {name} not ready after {READY_TIMEOUT:?}: {state}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn delete_topic(&self, name: &str) -> anyhow::Result<()> {
        let results = self
            .client
            .delete_topics(&[name], &Self::options())
            .await
            .with_context(|| format!("deleting topic {name}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("deleting topic {topic}: {code}");
            }
        }
        Ok(())
    }
}
