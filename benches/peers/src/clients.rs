//! The clients under test and the dispatch to their functions.

use std::fmt;
use std::str::FromStr;

use kastellan::TlsProvider;

use crate::tally::GroupRead;
use crate::{confluent_client, kastellan_client, rdkafka_client};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    /// kastellan; over TLS with its default crypto provider (graviola).
    Kastellan,
    /// kastellan with `TlsProvider::Ring`: differs from `Kastellan` only
    /// over TLS (`PEERS_TLS_CA`).
    KastellanRing,
    Rdkafka,
    Confluent,
    /// franz-go, a separate Go program (`franz/`), see `spawn::command_for`.
    Franz,
    /// Kafka's own `ProducerPerformance` and `ConsumerPerformance` tools.
    Java,
}

impl Client {
    /// The clients run when `--clients` is not given: the Java tools are
    /// left out because every phase of theirs starts a JVM.
    pub const DEFAULT: [Client; 4] = [
        Client::Kastellan,
        Client::Rdkafka,
        Client::Confluent,
        Client::Franz,
    ];

    /// The TLS crypto provider of a kastellan client: ring for
    /// `kastellan-ring`, else kastellan's default (graviola).
    pub fn tls(self) -> TlsProvider {
        match self {
            Client::KastellanRing => TlsProvider::Ring,
            _ => TlsProvider::default(),
        }
    }

    fn elsewhere(self) -> anyhow::Error {
        anyhow::anyhow!("{self} runs as a program of its own, not through `peers run`")
    }

    /// The name used on the command line and in topic names.
    pub fn id(self) -> &'static str {
        match self {
            Client::Kastellan => "kastellan",
            Client::KastellanRing => "kastellan-ring",
            Client::Rdkafka => "rdkafka",
            Client::Confluent => "confluent",
            Client::Franz => "franz-go",
            Client::Java => "java",
        }
    }

    /// The name shown in the report.
    pub fn label(self) -> &'static str {
        match self {
            Client::Kastellan => "kastellan",
            Client::KastellanRing => "kastellan-ring",
            Client::Rdkafka => "rdkafka",
            Client::Confluent => "confluent-kafka",
            Client::Franz => "franz-go",
            Client::Java => "java",
        }
    }

    pub async fn produce(
        self,
        bootstrap: &str,
        topic: &str,
        payload: &[u8],
        records: usize,
    ) -> anyhow::Result<()> {
        match self {
            Client::Kastellan | Client::KastellanRing => {
                kastellan_client::produce(self.tls(), bootstrap, topic, payload, records).await
            }
            Client::Rdkafka => rdkafka_client::produce(bootstrap, topic, payload, records).await,
            Client::Confluent => {
                confluent_client::produce(bootstrap, topic, payload, records).await
            }
            Client::Franz | Client::Java => Err(self.elsewhere()),
        }
    }

    pub async fn read(
        self,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        expected: usize,
    ) -> anyhow::Result<u64> {
        match self {
            Client::Kastellan | Client::KastellanRing => {
                kastellan_client::read(self.tls(), bootstrap, topic, partitions, expected).await
            }
            Client::Rdkafka => rdkafka_client::read(bootstrap, topic, partitions, expected).await,
            Client::Confluent => {
                confluent_client::read(bootstrap, topic, partitions, expected).await
            }
            Client::Franz | Client::Java => Err(self.elsewhere()),
        }
    }

    pub async fn group_consume(
        self,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        expected: usize,
    ) -> anyhow::Result<GroupRead> {
        match self {
            Client::Kastellan | Client::KastellanRing => {
                kastellan_client::group_consume(self.tls(), bootstrap, topic, partitions, expected)
                    .await
            }
            Client::Rdkafka => {
                rdkafka_client::group_consume(bootstrap, topic, partitions, expected).await
            }
            Client::Confluent => {
                confluent_client::group_consume(bootstrap, topic, partitions, expected).await
            }
            Client::Franz | Client::Java => Err(self.elsewhere()),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Client {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kastellan" => Ok(Client::Kastellan),
            "kastellan-ring" | "kastellan_ring" => Ok(Client::KastellanRing),
            "rdkafka" | "librdkafka" => Ok(Client::Rdkafka),
            "confluent" | "confluent-kafka" | "confluent_kafka" => Ok(Client::Confluent),
            "franz-go" | "franz" | "franz_go" => Ok(Client::Franz),
            "java" => Ok(Client::Java),
            other => anyhow::bail!(
                "unknown client {other:?} (known: kastellan, kastellan-ring, rdkafka, confluent-kafka, franz-go, java)"
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Produce,
    Read,
    /// One member of a fresh consumer group reads the whole topic.
    Group,
}

impl Phase {
    pub fn id(self) -> &'static str {
        match self {
            Phase::Produce => "produce",
            Phase::Read => "read",
            Phase::Group => "group",
        }
    }
}

impl FromStr for Phase {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "produce" => Ok(Phase::Produce),
            "read" => Ok(Phase::Read),
            "group" => Ok(Phase::Group),
            other => anyhow::bail!("unknown phase {other:?} (known: produce, read, group)"),
        }
    }
}
