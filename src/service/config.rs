//! [`ServiceConfig`]: a service's group, its retry and dead-letter topics,
//! and its timeouts, from a builder or from the environment.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::group::GroupConsumerBuilder;
use crate::StartOffset;

/// A change applied to the service's consumer builders.
type Tuning = Arc<dyn Fn(GroupConsumerBuilder) -> GroupConsumerBuilder + Send + Sync>;

/// How a [`Service`](super::Service) consumes: its group, its retry and
/// dead-letter topics, the retry delays and its timeouts.
///
/// From a builder:
///
/// ```
/// use std::time::Duration;
/// use kastellan::service::ServiceConfig;
/// use kastellan::StartOffset;
///
/// let config = ServiceConfig::new("billing")
///     .retry_topic("billing.retry")
///     .dead_letter_topic("dlq")
///     .retry_delay(Duration::from_secs(1), Duration::from_secs(60))
///     .offset_reset(StartOffset::Earliest);
/// assert_eq!(config.group_id(), "billing");
/// assert_eq!(config.retry_group_id().as_deref(), Some("billing.retry"));
/// ```
///
/// Or from the environment ([`from_env`](Self::from_env)), or any lookup
/// function ([`from_lookup`](Self::from_lookup), MiKa's env function):
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `KAFKA_GROUP_ID` | the consumer group (required) | |
/// | `KAFKA_RETRY_TOPIC` | the retry topic | none: no topic retries |
/// | `KAFKA_DLQ_TOPIC` | the dead-letter topic | none: failed records hold their partition |
/// | `KAFKA_RETRY_GROUP_ID` | the group that consumes the retry topic | `<group>.retry` |
/// | `KAFKA_RETRY_DELAY_MS` | delay before the first retry | 1000 |
/// | `KAFKA_RETRY_DELAY_MAX_MS` | longest delay; delays double up to it | 300000 |
/// | `KAFKA_OFFSET_RESET` | `earliest` or `latest`: where a group with no committed offset starts | `latest` |
/// | `KAFKA_SESSION_TIMEOUT_MS` | group session timeout | 45000 |
/// | `KAFKA_COMMIT_INTERVAL_MS` | how often completed offsets are committed | 5000 |
/// | `KAFKA_SHUTDOWN_TIMEOUT_MS` | deadline of the shutdown in [`Service::run_until`](super::Service::run_until) | 30000 |
/// | `KAFKA_CONNECT_TIMEOUT_MS` | one connection attempt | 10000 |
/// | `KAFKA_REQUEST_TIMEOUT_MS` | one request | 30000 |
///
/// and the brokers and security settings [`ClientConfig::from_env`] reads:
/// `KAFKA_URL` or `KAFKA_BOOTSTRAP` (or `KAFKA_BROKERS`), `KAFKA_CLIENT_ID`,
/// `KAFKA_TLS`, `KAFKA_TRUSTED_CERT`, `KAFKA_CLIENT_CERT`,
/// `KAFKA_CLIENT_CERT_KEY`, `KAFKA_TLS_SERVER_NAME`,
/// `KAFKA_TLS_VERIFY_HOSTNAME`, `KAFKA_SASL_MECHANISM`,
/// `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`. Empty variables count as
/// unset.
///
/// ```
/// use std::collections::HashMap;
/// use kastellan::service::ServiceConfig;
///
/// let env: HashMap<&str, &str> = HashMap::from([
///     ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
///     ("KAFKA_GROUP_ID", "billing"),
///     ("KAFKA_RETRY_TOPIC", "billing.retry"),
///     ("KAFKA_DLQ_TOPIC", "dlq"),
///     ("KAFKA_OFFSET_RESET", "earliest"),
/// ]);
/// let config = ServiceConfig::from_lookup(|name| env.get(name).map(|v| v.to_string()))?;
/// assert_eq!(config.group_id(), "billing");
/// assert_eq!(config.dead_letter_topic_name(), Some("dlq"));
/// assert!(config.client_config().is_some());
/// # Ok::<(), kastellan::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "a configuration does nothing until a Service uses it"]
pub struct ServiceConfig {
    pub(crate) group_id: String,
    pub(crate) client: Option<ClientConfig>,
    pub(crate) retry_topic: Option<String>,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) retry_group: Option<String>,
    pub(crate) retry_delay: (Duration, Duration),
    pub(crate) offset_reset: StartOffset,
    pub(crate) session_timeout: Option<Duration>,
    pub(crate) commit_interval: Option<Duration>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) metadata_max_age: Option<Duration>,
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) key_concurrency: Option<usize>,
    pub(crate) order_guard_capacity: usize,
    pub(crate) tuning: Option<Tuning>,
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("group_id", &self.group_id)
            .field("client", &self.client)
            .field("retry_topic", &self.retry_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("retry_group", &self.retry_group_id())
            .field("retry_delay", &self.retry_delay)
            .field("offset_reset", &self.offset_reset)
            .field("session_timeout", &self.session_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("metadata_max_age", &self.metadata_max_age)
            .field("max_in_flight", &self.max_in_flight)
            .field("key_concurrency", &self.key_concurrency)
            .field("order_guard_capacity", &self.order_guard_capacity)
            .field("tuned", &self.tuning.is_some())
            .finish()
    }
}

impl ServiceConfig {
    /// A service in consumer group `group_id`, with no retry or dead-letter
    /// topic and the defaults of the table above.
    pub fn new(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            client: None,
            retry_topic: None,
            dead_letter_topic: None,
            retry_group: None,
            retry_delay: (Duration::from_secs(1), Duration::from_secs(300)),
            offset_reset: StartOffset::Latest,
            session_timeout: None,
            commit_interval: None,
            shutdown_timeout: Duration::from_secs(30),
            metadata_max_age: None,
            max_in_flight: None,
            key_concurrency: None,
            order_guard_capacity: 10_000,
            tuning: None,
        }
    }

    /// Settings from the process environment; see the table above.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings read through `lookup` (given a variable name, its value):
    /// the process environment, a map in tests, a secrets store. See the
    /// table above.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let millis = |name: &str| -> Result<Option<Duration>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| {
                            Error::Config(format!("{name} is `{v}`; expected milliseconds"))
                        })
                })
                .transpose()
        };
        let group = var("KAFKA_GROUP_ID").ok_or_else(|| {
            Error::Config("set KAFKA_GROUP_ID to the service's consumer group".into())
        })?;
        let mut client = ClientConfig::from_lookup(&lookup)?;
        if let Some(t) = millis("KAFKA_CONNECT_TIMEOUT_MS")? {
            client = client.connect_timeout(t);
        }
        if let Some(t) = millis("KAFKA_REQUEST_TIMEOUT_MS")? {
            client = client.request_timeout(t);
        }
        client.validate()?;
        let mut config = Self::new(group.trim()).client(client);
        config.retry_topic = var("KAFKA_RETRY_TOPIC").map(|t| t.trim().to_string());
        config.dead_letter_topic = var("KAFKA_DLQ_TOPIC").map(|t| t.trim().to_string());
        config.retry_group = var("KAFKA_RETRY_GROUP_ID").map(|t| t.trim().to_string());
        let (initial, max) = config.retry_delay;
        config = config.retry_delay(
            millis("KAFKA_RETRY_DELAY_MS")?.unwrap_or(initial),
            millis("KAFKA_RETRY_DELAY_MAX_MS")?.unwrap_or(max),
        );
        if let Some(reset) = var("KAFKA_OFFSET_RESET") {
            config.offset_reset = match reset.trim().to_ascii_lowercase().as_str() {
                "earliest" => StartOffset::Earliest,
                "latest" => StartOffset::Latest,
                other => {
                    return Err(Error::Config(format!(
                        "KAFKA_OFFSET_RESET is `{other}`; expected earliest or latest"
                    )))
                }
            };
        }
        config.session_timeout = millis("KAFKA_SESSION_TIMEOUT_MS")?;
        config.commit_interval = millis("KAFKA_COMMIT_INTERVAL_MS")?;
        if let Some(t) = millis("KAFKA_SHUTDOWN_TIMEOUT_MS")? {
            config.shutdown_timeout = t;
        }
        Ok(config)
    }

    /// Where the brokers are, for [`Service::connect`](super::Service::connect)
    /// (set by [`from_env`](Self::from_env); not needed with
    /// [`Service::new`](super::Service::new), which takes a connected
    /// client).
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = Some(client);
        self
    }

    /// The retry topic: records whose handler failed with a `Retry`
    /// failure, on routes with [`Route::retries`](super::Route::retries),
    /// go there and come back after a delay. Several services (different
    /// groups) may share one; each handles only its own group's records.
    /// It must exist when the service starts.
    pub fn retry_topic(mut self, topic: impl Into<String>) -> Self {
        self.retry_topic = Some(topic.into());
        self
    }

    /// The dead-letter topic: records that cannot succeed go there (see
    /// [`Route::dead_letter`](super::Route::dead_letter)). Several services
    /// may share one. It must exist when the service starts.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The consumer group that consumes the retry topic (default
    /// `<group>.retry`). It is a group of its own, so that rebalances of
    /// one consumer never revoke the other's partitions; its committed
    /// offsets are the service's progress through the retry topic.
    pub fn retry_group(mut self, group: impl Into<String>) -> Self {
        self.retry_group = Some(group.into());
        self
    }

    /// Delay before a record is handled again through the retry topic:
    /// `initial` before the first retry, doubling each time up to `max`
    /// (default 1 s and 5 min). A record is never handled before its delay
    /// has passed; it may be handled later, when records ahead of it in its
    /// retry partition wait longer.
    pub fn retry_delay(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_delay = (initial, max.max(initial));
        self
    }

    /// Where the service's group starts in partitions it has no committed
    /// offset for (default [`StartOffset::Latest`], as every group
    /// consumer). The retry topic's consumer always starts at the earliest
    /// offset, so no retry is skipped.
    pub fn offset_reset(mut self, reset: StartOffset) -> Self {
        self.offset_reset = reset;
        self
    }

    /// The groups' session timeout (default 45 s).
    pub fn session_timeout(mut self, t: Duration) -> Self {
        self.session_timeout = Some(t);
        self
    }

    /// How often completed offsets are committed (default 5 s).
    pub fn commit_interval(mut self, t: Duration) -> Self {
        self.commit_interval = Some(t);
        self
    }

    /// The deadline [`Service::run_until`](super::Service::run_until) gives
    /// the shutdown (default 30 s).
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.shutdown_timeout = t;
        self
    }

    /// How often topic metadata is refreshed, and so how soon a new topic
    /// matching a pattern route is consumed (default 5 min; see
    /// [`GroupConsumerBuilder::metadata_max_age`]).
    pub fn metadata_max_age(mut self, t: Duration) -> Self {
        self.metadata_max_age = Some(t);
        self
    }

    /// Most origin records handled at once across all partitions (see
    /// [`GroupConsumerBuilder::max_in_flight`]). The retry topic has its
    /// own consumer and is not counted: a record waiting for its retry
    /// delay never holds one of these slots.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Records of one origin partition handled at once when their keys
    /// differ (see [`GroupConsumerBuilder::key_concurrency`]).
    pub fn key_concurrency(mut self, n: usize) -> Self {
        self.key_concurrency = Some(n);
        self
    }

    /// Most records the [order guard](super::Route::order_guard) tracks per
    /// origin partition (default 10,000). When a partition's guard is full,
    /// a record that would add to it waits (holding its partition) until
    /// records leave the retry topic.
    pub fn order_guard_capacity(mut self, n: usize) -> Self {
        self.order_guard_capacity = n.max(1);
        self
    }

    /// Change anything else on both consumers' builders (heartbeats, fetch
    /// sizes, assignors, static membership): applied after the service's
    /// own settings.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kastellan::service::ServiceConfig;
    ///
    /// let config = ServiceConfig::new("billing")
    ///     .consumers(|b| b.heartbeat_interval(Duration::from_secs(1)).max_wait(Duration::from_millis(100)));
    /// # let _ = config;
    /// ```
    pub fn consumers(
        mut self,
        tune: impl Fn(GroupConsumerBuilder) -> GroupConsumerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.tuning = Some(Arc::new(tune));
        self
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The group that consumes the retry topic, if there is one.
    pub fn retry_group_id(&self) -> Option<String> {
        self.retry_topic.as_ref()?;
        Some(
            self.retry_group
                .clone()
                .unwrap_or_else(|| format!("{}.retry", self.group_id)),
        )
    }

    /// The retry topic, if any.
    pub fn retry_topic_name(&self) -> Option<&str> {
        self.retry_topic.as_deref()
    }

    /// The dead-letter topic, if any.
    pub fn dead_letter_topic_name(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref()
    }

    /// The broker settings, if given (or read from the environment).
    pub fn client_config(&self) -> Option<&ClientConfig> {
        self.client.as_ref()
    }

    /// The delay before retry number `attempt` (1 for the first retry).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let (initial, max) = self.retry_delay;
        let doublings = attempt.saturating_sub(1).min(32);
        initial.saturating_mul(1u32 << doublings.min(31)).min(max)
    }

    /// Check what can be checked without a broker.
    pub(crate) fn validate(&self) -> Result<()> {
        let refuse = |m: String| Err(Error::Config(m));
        if self.group_id.trim().is_empty() {
            return refuse("the service's group id is empty".into());
        }
        for (what, topic) in [
            ("retry", &self.retry_topic),
            ("dead-letter", &self.dead_letter_topic),
        ] {
            if let Some(t) = topic {
                if let Err(e) = super::glob::check_topic(t) {
                    return refuse(format!("{what} topic: {e}"));
                }
            }
        }
        if self.retry_topic.is_some() && self.retry_topic == self.dead_letter_topic {
            return refuse("the retry topic and the dead-letter topic must differ".into());
        }
        if self.retry_delay.0.is_zero() {
            return refuse("the retry delay must be above zero".into());
        }
        if self.retry_group_id().as_deref() == Some(self.group_id.as_str()) {
            return refuse(
                "the retry group must differ from the service's group: the retry topic has \
                 its own consumer"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<ServiceConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServiceConfig::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn reads_every_variable() {
        let c = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_CLIENT_ID", "billing-1"),
            ("KAFKA_GROUP_ID", "billing"),
            ("KAFKA_RETRY_TOPIC", "billing.retry"),
            ("KAFKA_DLQ_TOPIC", "dlq"),
            ("KAFKA_RETRY_GROUP_ID", "billing-retries"),
            ("KAFKA_RETRY_DELAY_MS", "250"),
            ("KAFKA_RETRY_DELAY_MAX_MS", "2000"),
            ("KAFKA_OFFSET_RESET", "Earliest"),
            ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
            ("KAFKA_COMMIT_INTERVAL_MS", "1000"),
            ("KAFKA_SHUTDOWN_TIMEOUT_MS", "5000"),
            ("KAFKA_CONNECT_TIMEOUT_MS", "3000"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "7000"),
        ])
        .expect("valid");
        assert_eq!(c.group_id(), "billing");
        assert_eq!(c.retry_topic_name(), Some("billing.retry"));
        assert_eq!(c.dead_letter_topic_name(), Some("dlq"));
        assert_eq!(c.retry_group_id().as_deref(), Some("billing-retries"));
        assert_eq!(
            c.retry_delay,
            (Duration::from_millis(250), Duration::from_secs(2))
        );
        assert_eq!(c.offset_reset, StartOffset::Earliest);
        assert_eq!(c.session_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.commit_interval, Some(Duration::from_secs(1)));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        let client = c.client_config().expect("brokers");
        assert_eq!(client.bootstrap_servers(), ["127.0.0.1:9092"]);
        assert_eq!(client.client_id, "billing-1");
        assert_eq!(client.connect_timeout, Duration::from_secs(3));
        assert_eq!(client.request_timeout, Duration::from_secs(7));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn missing_and_bad_values_are_named() {
        let e = env(&[("KAFKA_BOOTSTRAP", "127.0.0.1:9092")]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_GROUP_ID"), "{e}");
        let e = env(&[("KAFKA_GROUP_ID", "g")]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_BOOTSTRAP"), "{e}");
        let e = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_GROUP_ID", "g"),
            ("KAFKA_RETRY_DELAY_MS", "soon"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("KAFKA_RETRY_DELAY_MS"), "{e}");
        let e = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_GROUP_ID", "g"),
            ("KAFKA_OFFSET_RESET", "middle"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("KAFKA_OFFSET_RESET"), "{e}");
        let c = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_GROUP_ID", "g"),
            ("KAFKA_RETRY_TOPIC", ""),
        ])
        .unwrap();
        assert_eq!(c.retry_topic_name(), None, "empty counts as unset");
        assert_eq!(c.retry_group_id(), None);
    }

    #[test]
    fn delays_double_up_to_the_maximum() {
        let c =
            ServiceConfig::new("g").retry_delay(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<u128> = (1..=6).map(|a| c.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn checks() {
        assert!(ServiceConfig::new(" ").validate().is_err());
        assert!(ServiceConfig::new("g")
            .retry_topic("t")
            .dead_letter_topic("t")
            .validate()
            .is_err());
        assert!(ServiceConfig::new("g")
            .retry_topic("t")
            .retry_group("g")
            .validate()
            .is_err());
        assert!(ServiceConfig::new("g")
            .retry_topic("bad topic")
            .validate()
            .is_err());
    }
}
