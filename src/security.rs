//! Security settings: TLS (opt-in `tls` feature) and SASL authentication.
//!
//! Every connection kastellan opens (metadata, produce, fetch, group
//! coordinator, admin) goes through the same connect path, so these
//! settings apply to all of them alike.
//!
//! ```
//! use kastellan::{ClientConfig, TlsConfig};
//!
//! // SASL/SCRAM over TLS, trusting one CA (needs the `tls` feature to connect).
//! let config = ClientConfig::new("kafka-1.internal:9094")
//!     .tls(TlsConfig::new().ca_pem("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"))
//!     .sasl_scram_sha512("billing", "s3cret");
//! assert!(!format!("{config:?}").contains("s3cret"));
//! ```

use std::fmt;
use std::sync::Arc;

use crate::oauthbearer::{OAuthBearerTokenProvider, TokenSource};

/// A secret string (password, private key). Its `Debug` and `Display`
/// never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the code that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which certificates the client trusts to sign the brokers' certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustedRoots {
    /// The operating system's trust store.
    System,
    /// Only the CA certificates in this PEM text.
    Pem(String),
}

/// The crypto provider that does TLS's cryptography (handshake, signatures,
/// record encryption) for [`TlsConfig`].
///
/// | provider | in the build with | targets | C compiler |
/// |---|---|---|---|
/// | [`Graviola`](Self::Graviola) | feature `tls` | x86_64, aarch64 | not needed |
/// | [`Ring`](Self::Ring) | feature `tls-ring` | any | needed |
///
/// The default ([`TlsProvider::default`]) is graviola where it is in the
/// build, else ring. Choosing a provider that is not in the build is not a
/// compile error: the client refuses the configuration with
/// [`crate::Error::Config`] when it is built, naming the feature to enable.
/// [`is_available`](Self::is_available) tells beforehand.
///
/// ```
/// use kastellan::{ClientConfig, TlsConfig, TlsProvider};
///
/// // Prefer ring where this build has it, else keep the default.
/// let provider = if TlsProvider::Ring.is_available() {
///     TlsProvider::Ring
/// } else {
///     TlsProvider::default()
/// };
/// let config = ClientConfig::new("kafka-1.internal:9093")
///     .tls(TlsConfig::new().provider(provider));
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsProvider {
    /// [graviola](https://github.com/ctz/graviola) (through
    /// `rustls-graviola`): Rust and assembly, no C compiler; x86_64 and
    /// aarch64 only. In the build with the `tls` feature on those targets.
    Graviola,
    /// [ring](https://github.com/briansmith/ring): Rust, C and assembly;
    /// builds for most targets but needs a C compiler. In the build with
    /// the `tls-ring` feature.
    Ring,
}

impl TlsProvider {
    /// Whether this provider is compiled into this build of kastellan, so
    /// a client configured with it can connect.
    ///
    /// ```
    /// use kastellan::TlsProvider;
    ///
    /// // Graviola comes with the `tls` feature on x86_64 and aarch64,
    /// // ring with `tls-ring`.
    /// assert_eq!(TlsProvider::Ring.is_available(), cfg!(feature = "tls-ring"));
    /// ```
    pub fn is_available(self) -> bool {
        match self {
            TlsProvider::Graviola => {
                cfg!(all(
                    feature = "tls",
                    any(target_arch = "x86_64", target_arch = "aarch64")
                ))
            }
            TlsProvider::Ring => cfg!(feature = "tls-ring"),
        }
    }

    /// The provider's name: `graviola` or `ring`.
    pub fn name(self) -> &'static str {
        match self {
            TlsProvider::Graviola => "graviola",
            TlsProvider::Ring => "ring",
        }
    }

    /// Why a client cannot use this provider in this build, and which
    /// feature would put it in; `None` when it is available.
    pub(crate) fn unavailable_reason(self) -> Option<String> {
        if self.is_available() {
            return None;
        }
        Some(match self {
            TlsProvider::Graviola => format!(
                "the TLS crypto provider `graviola` is not in this build: it comes with \
                 kastellan's `tls` feature on x86_64 and aarch64 only (this build is for {}); \
                 use TlsProvider::Ring with the `tls-ring` feature (needs a C compiler)",
                std::env::consts::ARCH
            ),
            TlsProvider::Ring => "the TLS crypto provider `ring` is not in this build: \
                 enable kastellan's `tls-ring` feature (any target; ring needs a C compiler), \
                 or keep the default provider"
                .to_string(),
        })
    }
}

/// Graviola where it is in the build (the `tls` feature on x86_64 and
/// aarch64), else ring.
impl Default for TlsProvider {
    fn default() -> Self {
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            TlsProvider::Graviola
        } else {
            TlsProvider::Ring
        }
    }
}

impl fmt::Display for TlsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// TLS settings: whom to trust, the client certificate for mutual TLS, and
/// the crypto provider.
///
/// Connecting with TLS needs the crate's `tls` feature; without it a
/// configuration that asks for TLS is refused with [`crate::Error::Config`].
///
/// ```
/// use kastellan::TlsConfig;
///
/// let tls = TlsConfig::new() // system trust store
///     .client_cert_pem("-----BEGIN CERTIFICATE-----\n...", "-----BEGIN PRIVATE KEY-----\n...");
/// assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a builder does nothing until it is used"]
pub struct TlsConfig {
    pub(crate) roots: TrustedRoots,
    pub(crate) client_cert: Option<(String, Secret)>,
    pub(crate) server_name: Option<String>,
    pub(crate) verify_hostname: bool,
    pub(crate) provider: TlsProvider,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsConfig {
    /// TLS that trusts the operating system's CA certificates.
    pub fn new() -> Self {
        Self {
            roots: TrustedRoots::System,
            client_cert: None,
            server_name: None,
            verify_hostname: true,
            provider: TlsProvider::default(),
        }
    }

    /// Trust only the CA certificate(s) in `pem` (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks), instead of the system store.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.roots = TrustedRoots::Pem(pem.into());
        self
    }

    /// Present this certificate chain and private key (PEM; the key in
    /// PKCS#8, PKCS#1 or SEC1 form, unencrypted) for mutual TLS.
    pub fn client_cert_pem(
        mut self,
        cert_chain: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        self.client_cert = Some((cert_chain.into(), Secret::new(key)));
        self
    }

    /// Check the brokers' certificates against this name instead of the
    /// host in each broker address.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Whether a broker's certificate must name the host connected to
    /// (default `true`). With `false` the certificate must still chain to a
    /// trusted CA and be in date, but may name another host: for services
    /// whose broker certificates do not carry the brokers' names (Heroku
    /// Kafka is one; its Java guidance turns endpoint identification off).
    /// Trust only that service's own CA when you do this.
    pub fn verify_hostname(mut self, verify: bool) -> Self {
        self.verify_hostname = verify;
        self
    }

    /// Do TLS's cryptography with `provider` instead of the default
    /// ([`TlsProvider::default`]: graviola where it is in the build, else
    /// ring). A provider this build lacks
    /// ([`TlsProvider::is_available`]) makes building the client fail with
    /// [`crate::Error::Config`].
    ///
    /// ```
    /// use kastellan::{TlsConfig, TlsProvider};
    ///
    /// let tls = TlsConfig::new().provider(TlsProvider::Ring); // needs `tls-ring`
    /// # let _ = tls;
    /// ```
    pub fn provider(mut self, provider: TlsProvider) -> Self {
        self.provider = provider;
        self
    }
}

/// SASL mechanisms kastellan speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN`: user name and password in the clear (use it over TLS).
    Plain,
    /// `SCRAM-SHA-256` (RFC 7677): the password never crosses the wire.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
    /// `OAUTHBEARER` (KIP-255): an OAuth 2 bearer token from a
    /// [`OAuthBearerTokenProvider`]; see
    /// [`SaslConfig::oauthbearer`].
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name as brokers know it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// Parse a mechanism name (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`,
    /// `OAUTHBEARER`; any case).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Some(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
            "OAUTHBEARER" => Some(SaslMechanism::OAuthBearer),
            _ => None,
        }
    }
}

/// SASL credentials: a mechanism with a user name and password, or
/// OAUTHBEARER with a token provider.
///
/// Clones share the OAUTHBEARER token, so a provider is called once per
/// token however many clients and connections use the settings.
#[derive(Debug, Clone)]
pub struct SaslConfig {
    pub(crate) mechanism: SaslMechanism,
    pub(crate) username: String,
    pub(crate) password: Secret,
    /// Set for [`SaslMechanism::OAuthBearer`] (and only then).
    pub(crate) tokens: Option<Arc<TokenSource>>,
}

impl PartialEq for SaslConfig {
    fn eq(&self, other: &Self) -> bool {
        self.mechanism == other.mechanism
            && self.username == other.username
            && self.password == other.password
            && match (&self.tokens, &other.tokens) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for SaslConfig {}

impl SaslConfig {
    /// Credentials for a password `mechanism` (PLAIN or SCRAM). With
    /// [`SaslMechanism::OAuthBearer`] use [`SaslConfig::oauthbearer`]
    /// instead; a client built from this refuses it with a
    /// [`crate::Error::Config`] that says so.
    pub fn new(
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            mechanism,
            username: username.into(),
            password: Secret::new(password),
            tokens: None,
        }
    }

    /// SASL/OAUTHBEARER with tokens from `provider`, called before the
    /// current token expires (see [`crate::oauthbearer`]).
    ///
    /// ```
    /// use kastellan::{ClientConfig, SaslConfig, UnsecuredJwt};
    ///
    /// let sasl = SaslConfig::oauthbearer(UnsecuredJwt::new("alice"));
    /// let config = ClientConfig::new("127.0.0.1:9092").sasl(sasl);
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn oauthbearer(provider: impl OAuthBearerTokenProvider) -> Self {
        Self {
            mechanism: SaslMechanism::OAuthBearer,
            username: String::new(),
            password: Secret::new(""),
            tokens: Some(Arc::new(TokenSource::new(Arc::new(provider)))),
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// The user name (empty for OAUTHBEARER, whose tokens name the principal).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Whether the settings are complete; called by
    /// [`ClientConfig::validate`](crate::ClientConfig::validate).
    pub(crate) fn validate(&self) -> crate::Result<()> {
        match (self.mechanism, &self.tokens) {
            (SaslMechanism::OAuthBearer, None) => Err(crate::Error::Config(
                "SASL OAUTHBEARER needs a token provider: use SaslConfig::oauthbearer(provider) \
                 or ClientConfig::sasl_oauthbearer(provider)"
                    .into(),
            )),
            (SaslMechanism::OAuthBearer, Some(_)) => Ok(()),
            _ if self.username.is_empty() => {
                Err(crate::Error::Config("SASL user name is empty".into()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let sasl = SaslConfig::new(SaslMechanism::Plain, "alice", "hunter2");
        assert!(!format!("{sasl:?}").contains("hunter2"));
        let tls = TlsConfig::new().client_cert_pem("CERT", "KEYMATERIAL");
        assert!(!format!("{tls:?}").contains("KEYMATERIAL"));
        assert_eq!(Secret::new("x").to_string(), "***");
    }

    #[test]
    fn the_default_provider_is_graviola_where_it_builds() {
        let expected = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            TlsProvider::Graviola
        } else {
            TlsProvider::Ring
        };
        assert_eq!(TlsProvider::default(), expected);
        assert_eq!(TlsConfig::new().provider, expected);
        if cfg!(feature = "tls") {
            assert!(
                TlsProvider::default().is_available(),
                "tls builds its default"
            );
        }
        let ring = TlsConfig::new().provider(TlsProvider::Ring);
        assert_eq!(ring.provider, TlsProvider::Ring);
        assert_eq!(TlsProvider::Ring.to_string(), "ring");
        assert_eq!(TlsProvider::Graviola.name(), "graviola");
    }

    #[test]
    fn provider_availability_follows_the_features() {
        let graviola = cfg!(all(
            feature = "tls",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ));
        assert_eq!(TlsProvider::Graviola.is_available(), graviola);
        assert_eq!(TlsProvider::Ring.is_available(), cfg!(feature = "tls-ring"));
        for provider in [TlsProvider::Graviola, TlsProvider::Ring] {
            match provider.unavailable_reason() {
                None => assert!(provider.is_available()),
                Some(reason) => {
                    assert!(!provider.is_available());
                    assert!(reason.contains(provider.name()), "{reason}");
                    let feature = match provider {
                        TlsProvider::Graviola => "`tls`",
                        TlsProvider::Ring => "`tls-ring`",
                    };
                    assert!(reason.contains(feature), "{reason}");
                }
            }
        }
    }

    #[test]
    fn mechanism_names_round_trip() {
        for m in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::OAuthBearer,
        ] {
            assert_eq!(SaslMechanism::parse(m.name()), Some(m));
        }
        assert_eq!(
            SaslMechanism::parse("scram-sha-256"),
            Some(SaslMechanism::ScramSha256)
        );
        assert_eq!(SaslMechanism::parse("GSSAPI"), None);
    }
}
