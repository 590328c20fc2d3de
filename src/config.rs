//! Connection settings shared by every kastellan client.

use std::time::Duration;

use crate::error::{Error, Result};

/// Where the brokers are and how patiently to talk to them.
///
/// Defaults follow the Java client where one exists (`request.timeout.ms`
/// 30 s, `retry.backoff.ms` 100 ms, `retry.backoff.max.ms` 1 s).
///
/// ```
/// use std::time::Duration;
/// use kastellan::ClientConfig;
///
/// let config = ClientConfig::new("127.0.0.1:9092,127.0.0.1:9093")
///     .client_id("billing")
///     .request_timeout(Duration::from_secs(10));
/// assert_eq!(config.bootstrap_servers(), ["127.0.0.1:9092", "127.0.0.1:9093"]);
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) bootstrap: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) retry_deadline: Duration,
}

impl ClientConfig {
    /// Settings for the given bootstrap list: `host:port` entries separated by commas.
    pub fn new(bootstrap: impl AsRef<str>) -> Self {
        Self {
            bootstrap: split_list(bootstrap.as_ref()),
            client_id: "kastellan".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            retry_deadline: Duration::from_secs(60),
        }
    }

    /// Settings from the environment:
    ///
    /// - `KAFKA_BOOTSTRAP` (or `KAFKA_BROKERS`): comma-separated `host:port` list (required);
    /// - `KAFKA_CLIENT_ID`: client id sent to brokers (optional).
    pub fn from_env() -> Result<Self> {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
            .or_else(|_| std::env::var("KAFKA_BROKERS"))
            .map_err(|_| {
                Error::Config(
                    "set KAFKA_BOOTSTRAP to a comma-separated list of host:port brokers".into(),
                )
            })?;
        let mut config = Self::new(bootstrap);
        if let Ok(id) = std::env::var("KAFKA_CLIENT_ID") {
            config.client_id = id;
        }
        config.validate()?;
        Ok(config)
    }

    /// Client id sent with every request (shows up in broker logs and quotas).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// How long to wait for a TCP connection and the first ApiVersions answer.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to any single request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// First and largest pause between retries of a retriable failure.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_backoff = initial;
        self.retry_backoff_max = max;
        self
    }

    /// How long to keep retrying retriable failures (unreachable brokers,
    /// leader changes) before giving up with the last error.
    pub fn retry_deadline(mut self, deadline: Duration) -> Self {
        self.retry_deadline = deadline;
        self
    }

    /// The backoff policy for retriable failures: exponential with jitter
    /// from `retry_backoff` up to `retry_backoff_max`, for at most `retry_deadline` in total.
    pub(crate) fn backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.retry_backoff)
            .with_max_delay(self.retry_backoff_max)
            .without_max_times()
            .with_total_delay(Some(self.retry_deadline))
    }

    /// The bootstrap brokers.
    pub fn bootstrap_servers(&self) -> &[String] {
        &self.bootstrap
    }

    /// Check the settings; called by every client constructor.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap.is_empty() {
            return Err(Error::Config(
                "no bootstrap servers given (expected host:port[,host:port...])".into(),
            ));
        }
        for b in &self.bootstrap {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::Config(format!(
                    "bootstrap server `{b}` is not host:port"
                )));
            }
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be greater than zero".into()));
        }
        Ok(())
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_bootstrap_entries() {
        assert!(ClientConfig::new("").validate().is_err());
        assert!(ClientConfig::new("localhost").validate().is_err());
        assert!(ClientConfig::new("localhost:notaport").validate().is_err());
        assert!(ClientConfig::new(" 127.0.0.1:9092 , ").validate().is_ok());
    }
}
