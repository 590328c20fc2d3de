//! Connection settings shared by every kastellan client.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::oauthbearer::OAuthBearerTokenProvider;
use crate::security::{SaslConfig, SaslMechanism, TlsConfig};

/// Where the brokers are and how patiently to talk to them.
///
/// Every wait has a deadline. The defaults, and what each bounds:
///
/// | setting | default | bounds |
/// |---|---|---|
/// | [`connect_timeout`](Self::connect_timeout) | 10 s | one connection attempt: TCP, TLS, ApiVersions and SASL together |
/// | [`request_timeout`](Self::request_timeout) | 30 s | one request, from writing it to its answer |
/// | [`retry_backoff`](Self::retry_backoff) | 100 ms to 1 s | the pause between attempts: starts at the first value and doubles up to the second, each pause shortened by a random part of up to a fifth (never longer than the maximum) |
/// | [`retry_deadline`](Self::retry_deadline) | 60 s | an operation with all its retries, in wall-clock time: an operation that still fails then returns its last error (connecting: [`Error::Unreachable`]) |
///
/// Connection and request timeouts follow the Java client
/// (`socket.connection.setup.timeout.ms`, `request.timeout.ms`,
/// `retry.backoff.ms`, `retry.backoff.max.ms`); the retry deadline plays
/// the part of its `max.block.ms` and `default.api.timeout.ms`. An attempt
/// never runs past the retry deadline: with `retry_deadline(5 s)` an
/// unreachable cluster is reported after about 5 s, whatever the timeouts.
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
#[must_use = "a builder does nothing until it is used"]
pub struct ClientConfig {
    pub(crate) bootstrap: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    // Read only through `retry_policy()`, so every retry loop follows the
    // same policy.
    retry_backoff: Duration,
    retry_backoff_max: Duration,
    retry_deadline: Duration,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) sasl: Option<SaslConfig>,
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
            tls: None,
            sasl: None,
        }
    }

    /// Settings from the environment.
    ///
    /// Brokers, from the first of these that is set:
    /// - `KAFKA_URL`: comma-separated `kafka://host:port` or
    ///   `kafka+ssl://host:port` URLs (Heroku's form); `kafka+ssl` turns TLS on;
    /// - `KAFKA_BOOTSTRAP` (or `KAFKA_BROKERS`): comma-separated `host:port` list.
    ///
    /// TLS (needs the `tls` feature):
    /// - `KAFKA_TLS=true` turns TLS on for a `KAFKA_BOOTSTRAP` list;
    /// - `KAFKA_TRUSTED_CERT`: PEM of the CA to trust (default: the system store);
    /// - `KAFKA_CLIENT_CERT` and `KAFKA_CLIENT_CERT_KEY`: PEM certificate and
    ///   key for mutual TLS (both or neither);
    /// - `KAFKA_TLS_SERVER_NAME`: name to check broker certificates against;
    /// - `KAFKA_TLS_VERIFY_HOSTNAME=false`: accept broker certificates that
    ///   chain to the trusted CA but name another host (Heroku Kafka's
    ///   certificates do not carry the brokers' names).
    ///
    /// SASL:
    /// - `KAFKA_SASL_MECHANISM` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`),
    ///   `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD` (all three or none).
    ///
    /// Other: `KAFKA_CLIENT_ID`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) reading variables through `lookup`.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let (mut config, url_tls) = if let Some(urls) = var("KAFKA_URL") {
            let (brokers, tls) = parse_kafka_urls(&urls)?;
            (Self::new(brokers.join(",")), tls)
        } else {
            let bootstrap = var("KAFKA_BOOTSTRAP")
                .or_else(|| var("KAFKA_BROKERS"))
                .ok_or_else(|| {
                    Error::Config(
                        "set KAFKA_BOOTSTRAP to a comma-separated list of host:port brokers \
                         (or KAFKA_URL to kafka+ssl://host:port URLs)"
                            .into(),
                    )
                })?;
            (Self::new(bootstrap), false)
        };
        if let Some(id) = var("KAFKA_CLIENT_ID") {
            config.client_id = id;
        }
        let tls_flag = flag(var, "KAFKA_TLS")?.unwrap_or(false);
        let trusted = var("KAFKA_TRUSTED_CERT");
        let client_cert = match (var("KAFKA_CLIENT_CERT"), var("KAFKA_CLIENT_CERT_KEY")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "set both KAFKA_CLIENT_CERT and KAFKA_CLIENT_CERT_KEY, or neither".into(),
                ))
            }
        };
        let server_name = var("KAFKA_TLS_SERVER_NAME");
        let verify_hostname = flag(var, "KAFKA_TLS_VERIFY_HOSTNAME")?.unwrap_or(true);
        if url_tls || tls_flag {
            let mut tls = TlsConfig::new();
            if let Some(ca) = trusted {
                tls = tls.ca_pem(ca);
            }
            if let Some((cert, key)) = client_cert {
                tls = tls.client_cert_pem(cert, key);
            }
            if let Some(name) = server_name {
                tls = tls.server_name(name);
            }
            config.tls = Some(tls.verify_hostname(verify_hostname));
        } else if trusted.is_some() || client_cert.is_some() {
            return Err(Error::Config(
                "KAFKA_TRUSTED_CERT or KAFKA_CLIENT_CERT is set but TLS is off: \
                 use kafka+ssl:// URLs in KAFKA_URL or set KAFKA_TLS=true"
                    .into(),
            ));
        }
        let sasl = (
            var("KAFKA_SASL_MECHANISM"),
            var("KAFKA_SASL_USERNAME"),
            lookup("KAFKA_SASL_PASSWORD"),
        );
        match sasl {
            (None, None, None) => {}
            (Some(mechanism), Some(user), Some(password)) => {
                let m = SaslMechanism::parse(&mechanism).ok_or_else(|| {
                    Error::Config(format!(
                        "KAFKA_SASL_MECHANISM `{mechanism}` is not one of PLAIN, \
                         SCRAM-SHA-256, SCRAM-SHA-512"
                    ))
                })?;
                config.sasl = Some(SaslConfig::new(m, user, password));
            }
            _ => {
                return Err(Error::Config(
                    "set all of KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and \
                     KAFKA_SASL_PASSWORD, or none"
                        .into(),
                ))
            }
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

    /// First and largest pause between retries of a retriable failure
    /// (default 100 ms and 1 s). Pauses double from `initial` up to `max`;
    /// each is shortened by a random part of up to a fifth, so clients that
    /// failed together do not retry in step, and none is longer than `max`.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_backoff = initial;
        self.retry_backoff_max = max;
        self
    }

    /// How long an operation may keep retrying retriable failures
    /// (unreachable brokers, leader changes, a coordinator moving) before it
    /// gives up with the last error (default 60 s). Wall-clock time: the
    /// attempts themselves count, and no attempt runs past it.
    pub fn retry_deadline(mut self, deadline: Duration) -> Self {
        self.retry_deadline = deadline;
        self
    }

    /// Connect with TLS (needs the `tls` feature).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticate with SASL after connecting (over TLS too, when set).
    pub fn sasl(mut self, sasl: SaslConfig) -> Self {
        self.sasl = Some(sasl);
        self
    }

    /// SASL `PLAIN` with this user and password.
    pub fn sasl_plain(self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.sasl(SaslConfig::new(SaslMechanism::Plain, username, password))
    }

    /// SASL `SCRAM-SHA-256` with this user and password.
    pub fn sasl_scram_sha256(
        self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl(SaslConfig::new(
            SaslMechanism::ScramSha256,
            username,
            password,
        ))
    }

    /// SASL `SCRAM-SHA-512` with this user and password.
    pub fn sasl_scram_sha512(
        self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl(SaslConfig::new(
            SaslMechanism::ScramSha512,
            username,
            password,
        ))
    }

    /// SASL `OAUTHBEARER` (KIP-255) with tokens from `provider`: an async
    /// closure or an [`OAuthBearerTokenProvider`] (see
    /// [`crate::oauthbearer`]). Brokers that announce a session lifetime
    /// get a fresh token on the same connection before it ends (KIP-368).
    ///
    /// ```
    /// use kastellan::{ClientConfig, UnsecuredJwt};
    ///
    /// // Unsigned tokens, for a broker with Kafka's unsecured validator.
    /// let config = ClientConfig::new("127.0.0.1:9092").sasl_oauthbearer(UnsecuredJwt::new("alice"));
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn sasl_oauthbearer(self, provider: impl OAuthBearerTokenProvider) -> Self {
        self.sasl(SaslConfig::oauthbearer(provider))
    }

    /// The TLS settings, if TLS is on.
    pub fn tls_config(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// The SASL settings, if SASL is on.
    pub fn sasl_config(&self) -> Option<&SaslConfig> {
        self.sasl.as_ref()
    }

    /// The retry policy every retry loop of this client follows.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.retry_backoff,
            max: self.retry_backoff_max.max(self.retry_backoff),
            deadline: self.retry_deadline,
        }
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
        if self.retry_backoff.is_zero() || self.retry_backoff_max < self.retry_backoff {
            return Err(Error::Config(format!(
                "retry_backoff needs 0 < initial <= max (got {:?} and {:?})",
                self.retry_backoff, self.retry_backoff_max
            )));
        }
        if self.tls.is_some() && !cfg!(feature = "tls") {
            return Err(Error::Config(
                "TLS is configured but kastellan was built without its `tls` feature \
                 (kastellan = { features = [\"tls\"] })"
                    .into(),
            ));
        }
        if let Some(reason) = self
            .tls
            .as_ref()
            .and_then(|t| t.provider.unavailable_reason())
        {
            return Err(Error::Config(reason));
        }
        if let Some(sasl) = &self.sasl {
            sasl.validate()?;
        }
        Ok(())
    }
}

/// How kastellan retries a failure that may go away by itself (a broker
/// restarting or unreachable, a leader election, a group coordinator
/// moving): one policy, taken from [`ClientConfig`], for every retry loop
/// of a client.
///
/// Pauses start at [`initial`](Self::initial) and double up to
/// [`max`](Self::max); each is shortened by a random part of up to a fifth
/// (so clients that failed together do not retry in step) and none is
/// longer than `max`. Retrying stops once [`deadline`](Self::deadline) has
/// passed since the first attempt, counting the time attempts take.
///
/// ```
/// use std::time::Duration;
/// use kastellan::ClientConfig;
///
/// let policy = ClientConfig::new("127.0.0.1:9092")
///     .retry_backoff(Duration::from_millis(50), Duration::from_millis(400))
///     .retry_deadline(Duration::from_secs(5))
///     .retry_policy();
/// assert_eq!(policy.deadline(), Duration::from_secs(5));
/// let pauses: Vec<Duration> = policy.pauses().take(6).collect();
/// assert!(pauses.iter().all(|p| *p <= Duration::from_millis(400)));
/// assert!(pauses[0] >= Duration::from_millis(40)); // 50 ms less up to a fifth
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    initial: Duration,
    max: Duration,
    deadline: Duration,
}

impl RetryPolicy {
    /// Pauses of this policy's shape from `initial` up to `max`, for loops
    /// that wait on a slower clock than requests do; no deadline of its own.
    pub(crate) fn between(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            deadline: Duration::MAX,
        }
    }

    /// The first pause.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest pause.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How long an operation may keep retrying, from its first attempt.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The pauses before the second, third, ... attempt (endless; the
    /// deadline, not a count, ends retrying).
    pub fn pauses(&self) -> impl Iterator<Item = Duration> + Send + Sync + 'static {
        use backon::BackoffBuilder;
        // backon gives the doubling sequence; its own jitter adds up to a
        // whole pause on top, which would break the documented maximum, so
        // the jitter here takes away instead.
        let nominal = backon::ExponentialBuilder::default()
            .with_factor(2.0)
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .without_max_times()
            .build();
        nominal.map(|pause| pause.mul_f64(1.0 - rand::random::<f64>() * 0.2))
    }
}

/// A true/false environment variable, if set.
fn flag(var: impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>> {
    match var(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(Some(true)),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(Some(false)),
        Some(v) => Err(Error::Config(format!(
            "{name} is `{v}`; expected true or false"
        ))),
    }
}

/// Brokers from Heroku-style URLs, and whether they ask for TLS.
fn parse_kafka_urls(urls: &str) -> Result<(Vec<String>, bool)> {
    let mut brokers = Vec::new();
    let mut schemes = Vec::new();
    for url in split_list(urls) {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::Config(format!(
                "KAFKA_URL entry `{url}` is not a kafka:// or kafka+ssl:// URL"
            ))
        })?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "kafka" => false,
            "kafka+ssl" => true,
            other => {
                return Err(Error::Config(format!(
                    "KAFKA_URL scheme `{other}` is not kafka or kafka+ssl"
                )))
            }
        };
        schemes.push(tls);
        brokers.push(rest.trim_end_matches('/').to_string());
    }
    if brokers.is_empty() {
        return Err(Error::Config("KAFKA_URL lists no brokers".into()));
    }
    if schemes.iter().any(|&t| t != schemes[0]) {
        return Err(Error::Config(
            "KAFKA_URL mixes kafka:// and kafka+ssl:// brokers".into(),
        ));
    }
    Ok((brokers, schemes[0]))
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

    fn env(vars: &[(&str, &str)]) -> Result<ClientConfig> {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientConfig::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn heroku_urls_give_brokers_and_tls() {
        let vars = [
            (
                "KAFKA_URL",
                "kafka+ssl://b1.example:9096,kafka+ssl://b2.example:9096",
            ),
            ("KAFKA_TRUSTED_CERT", "CA-PEM"),
            ("KAFKA_CLIENT_CERT", "CERT-PEM"),
            ("KAFKA_CLIENT_CERT_KEY", "KEY-PEM-SECRET"),
        ];
        let result = env(&vars);
        if cfg!(feature = "tls") {
            let config = result.expect("valid");
            assert_eq!(
                config.bootstrap_servers(),
                ["b1.example:9096", "b2.example:9096"]
            );
            let tls = config.tls_config().expect("tls on");
            assert_eq!(
                tls.roots,
                crate::security::TrustedRoots::Pem("CA-PEM".into())
            );
            assert_eq!(
                tls.client_cert.as_ref().map(|c| c.0.as_str()),
                Some("CERT-PEM")
            );
            assert!(!format!("{config:?}").contains("KEY-PEM-SECRET"));
            assert!(tls.verify_hostname);
            let mut relaxed = vars.to_vec();
            relaxed.push(("KAFKA_TLS_VERIFY_HOSTNAME", "false"));
            assert!(!env(&relaxed).unwrap().tls_config().unwrap().verify_hostname);
        } else {
            let e = result.unwrap_err().to_string();
            assert!(e.contains("`tls` feature"), "{e}");
        }
        let plain = env(&[("KAFKA_URL", "kafka://b1:9092")]).expect("plain url");
        assert!(plain.tls_config().is_none());
        assert!(env(&[("KAFKA_URL", "kafka://b1:9092,kafka+ssl://b2:9096")]).is_err());
        assert!(env(&[("KAFKA_URL", "http://b1:9092")]).is_err());
        assert!(env(&[("KAFKA_URL", "b1:9092")]).is_err());
    }

    #[test]
    fn a_tls_provider_missing_from_the_build_is_a_config_error() {
        use crate::security::TlsProvider;
        for provider in [TlsProvider::Graviola, TlsProvider::Ring] {
            let config =
                ClientConfig::new("127.0.0.1:9093").tls(TlsConfig::new().provider(provider));
            match config.validate() {
                Ok(()) => assert!(provider.is_available(), "{provider} accepted"),
                Err(Error::Config(reason)) => {
                    assert!(!provider.is_available(), "{provider} refused: {reason}");
                    // Without `tls` at all that is what the error says;
                    // with it, the feature that adds the provider.
                    let feature = match provider {
                        _ if !cfg!(feature = "tls") => "`tls` feature",
                        TlsProvider::Graviola => "x86_64 and aarch64",
                        TlsProvider::Ring => "`tls-ring` feature",
                    };
                    assert!(reason.contains(feature), "{reason}");
                }
                Err(other) => panic!("{provider}: not a config error: {other}"),
            }
        }
        if cfg!(feature = "tls") {
            let default = ClientConfig::new("127.0.0.1:9093").tls(TlsConfig::new());
            assert!(
                default.validate().is_ok(),
                "the default provider is in every tls build"
            );
        }
    }

    #[test]
    fn sasl_from_env_needs_all_three_and_hides_the_password() {
        let config = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "bob"),
            ("KAFKA_SASL_PASSWORD", "pa55word"),
        ])
        .expect("valid");
        let sasl = config.sasl_config().expect("sasl on");
        assert_eq!(sasl.mechanism(), SaslMechanism::ScramSha512);
        assert_eq!(sasl.username(), "bob");
        assert!(!format!("{config:?}").contains("pa55word"));
        let partial = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_SASL_USERNAME", "bob"),
        ]);
        assert!(partial.is_err());
        let unknown = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ("KAFKA_SASL_USERNAME", "bob"),
            ("KAFKA_SASL_PASSWORD", "pa55word"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("GSSAPI") && !unknown.contains("pa55word"),
            "{unknown}"
        );
    }

    #[test]
    fn certificates_without_tls_are_refused() {
        let e = env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_TRUSTED_CERT", "CA"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("TLS is off"), "{e}");
        assert!(env(&[
            ("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ("KAFKA_TLS", "maybe")
        ])
        .is_err());
        assert!(env(&[]).is_err());
    }
}
