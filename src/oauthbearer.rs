//! SASL/OAUTHBEARER tokens (KIP-255): where they come from and when they
//! are fetched again.
//!
//! A service hands kastellan an [`OAuthBearerTokenProvider`], typically a
//! closure that asks its identity provider for an access token (OAuth 2
//! client credentials). kastellan calls it when a connection authenticates
//! and it has no token yet, or when the token it has is more than 80% of
//! the way to its expiry; every connection of a client shares the one
//! token. So a steady service calls its provider about once per token
//! lifetime, and re-authentication (KIP-368) always presents a token that
//! is still valid.
//!
//! [`UnsecuredJwt`] makes unsigned tokens for brokers that run Kafka's
//! unsecured validator: for tests and development only.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use kastellan::{ClientConfig, OAuthBearerToken};
//!
//! // A provider is any async closure that returns a token (or an error).
//! let config = ClientConfig::new("kafka-1.internal:9093").sasl_oauthbearer(|| async {
//!     // Ask the identity provider here; this one is made up.
//!     let access_token = "eyJhbGciOi...".to_string();
//!     let expires_in = Duration::from_secs(3600);
//!     Ok(OAuthBearerToken::new(access_token, SystemTime::now() + expires_in))
//! });
//! assert!(config.validate().is_ok());
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::security::Secret;

/// The error a token provider may return: anything that can be shown.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// An OAuth 2 bearer token for SASL/OAUTHBEARER: the token text, when it
/// expires, and optional SASL extensions (KIP-342) the broker may check.
///
/// `Debug` never shows the token text.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthBearerToken {
    value: Secret,
    expires_at: SystemTime,
    extensions: Vec<(String, String)>,
}

impl OAuthBearerToken {
    /// A token `value` (the compact JWT or opaque token the identity
    /// provider issued) that expires at `expires_at`.
    pub fn new(value: impl Into<String>, expires_at: SystemTime) -> Self {
        Self {
            value: Secret::new(value),
            expires_at,
            extensions: Vec::new(),
        }
    }

    /// Add a SASL extension (KIP-342), sent with the token; some services
    /// ask for one (Confluent Cloud's `logicalCluster` and
    /// `identityPoolId`). Keys are ASCII letters; `auth` is reserved.
    /// An invalid key or value fails authentication with a message that
    /// names it.
    pub fn extension(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.push((key.into(), value.into()));
        self
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The token text.
    pub fn value(&self) -> &Secret {
        &self.value
    }

    /// The SASL extensions, in the order they were added.
    pub fn extensions(&self) -> &[(String, String)] {
        &self.extensions
    }

    /// The client's first OAUTHBEARER message (RFC 7628 section 3.1 with
    /// Kafka's extensions): `n,,` then `auth=Bearer <token>` and each
    /// extension, each followed by `0x01`, and a closing `0x01`.
    pub(crate) fn client_first_message(&self) -> Result<Vec<u8>, String> {
        let value = self.value.expose();
        if value.is_empty() || !value.bytes().all(is_token_char) {
            return Err(
                "the token is empty or has characters a bearer token cannot have \
                 (RFC 6750: letters, digits and -._~+/ then optional =)"
                    .into(),
            );
        }
        let mut message = Vec::with_capacity(value.len() + 32);
        message.extend_from_slice(b"n,,\x01auth=Bearer ");
        message.extend_from_slice(value.as_bytes());
        message.push(0x01);
        for (key, extension) in &self.extensions {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) || key == "auth" {
                return Err(format!(
                    "SASL extension key {key:?} is not allowed: keys are ASCII letters, not `auth`"
                ));
            }
            // RFC 7628 `value`: printable ASCII, space, tab, CR, LF.
            if !extension
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) || matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                return Err(format!(
                    "the value of SASL extension {key:?} has characters an extension cannot have"
                ));
            }
            message.extend_from_slice(key.as_bytes());
            message.push(b'=');
            message.extend_from_slice(extension.as_bytes());
            message.push(0x01);
        }
        message.push(0x01);
        Ok(message)
    }
}

/// RFC 6750 `b64token` characters (the trailing `=` padding included).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

impl fmt::Debug for OAuthBearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthBearerToken")
            .field("value", &self.value)
            .field("expires_at", &self.expires_at)
            .field(
                "extensions",
                &self.extensions.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where a client gets its OAUTHBEARER tokens: called when a connection
/// authenticates and the shared token is missing or near its expiry (see
/// the [module docs](crate::oauthbearer)). Calls are never concurrent for
/// one client; each runs within the connect timeout.
///
/// Any `Fn() -> impl Future<Output = Result<OAuthBearerToken, TokenError>>`
/// closure is a provider; implement the trait for a type that keeps state
/// (an HTTP client, a refresh token).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use kastellan::{OAuthBearerToken, OAuthBearerTokenProvider, TokenError};
///
/// struct FromFile(std::path::PathBuf);
///
/// #[kastellan::async_trait]
/// impl OAuthBearerTokenProvider for FromFile {
///     async fn token(&self) -> Result<OAuthBearerToken, TokenError> {
///         // A sidecar keeps this file fresh; its tokens live ten minutes.
///         let text = std::fs::read_to_string(&self.0)?;
///         let expires = SystemTime::now() + Duration::from_secs(600);
///         Ok(OAuthBearerToken::new(text.trim(), expires))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait OAuthBearerTokenProvider: Send + Sync + 'static {
    /// A fresh token, or why there is none. While the token in hand is
    /// still valid an error only logs a warning; without one, connecting
    /// fails with [`Error::Connect`](crate::Error::Connect) carrying this
    /// error, which is retried (an identity provider may be down for a
    /// moment) until the client's retry deadline.
    async fn token(&self) -> Result<OAuthBearerToken, TokenError>;
}

#[async_trait::async_trait]
impl<F, Fut> OAuthBearerTokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<OAuthBearerToken, TokenError>> + Send,
{
    async fn token(&self) -> Result<OAuthBearerToken, TokenError> {
        self().await
    }
}

/// Unsigned JSON Web Tokens (`"alg":"none"`) for brokers that run Kafka's
/// unsecured OAUTHBEARER validator (the broker default when no validator
/// is configured): the same tokens Kafka's Java clients make with
/// `unsecuredLoginStringClaim_sub`. **For tests and development only**:
/// anyone can make one for any principal.
///
/// ```
/// use std::time::Duration;
/// use kastellan::{ClientConfig, UnsecuredJwt};
///
/// let config = ClientConfig::new("127.0.0.1:9092")
///     .sasl_oauthbearer(UnsecuredJwt::new("alice").lifetime(Duration::from_secs(600)));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a builder does nothing until it is used"]
pub struct UnsecuredJwt {
    principal: String,
    lifetime: Duration,
    scope: Vec<String>,
    extensions: Vec<(String, String)>,
}

impl UnsecuredJwt {
    /// Tokens for `principal` (the `sub` claim), valid for an hour.
    pub fn new(principal: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
            lifetime: Duration::from_secs(3600),
            scope: Vec::new(),
            extensions: Vec::new(),
        }
    }

    /// How long each token is valid (default one hour; whole seconds, at
    /// least one).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The `scope` claim: the scopes the token grants.
    pub fn scope<S: Into<String>>(mut self, scope: impl IntoIterator<Item = S>) -> Self {
        self.scope = scope.into_iter().map(Into::into).collect();
        self
    }

    /// A SASL extension to send with each token (see
    /// [`OAuthBearerToken::extension`]).
    pub fn extension(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.push((key.into(), value.into()));
        self
    }

    /// A token issued now.
    pub fn token_now(&self) -> OAuthBearerToken {
        self.token_at(SystemTime::now())
    }

    fn token_at(&self, now: SystemTime) -> OAuthBearerToken {
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let lifetime = self.lifetime.as_secs().max(1);
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), self.principal.clone().into());
        claims.insert("iat".into(), issued.into());
        claims.insert("exp".into(), (issued + lifetime).into());
        if !self.scope.is_empty() {
            claims.insert("scope".into(), self.scope.clone().into());
        }
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let value = format!(
            "{}.{}.",
            encode(r#"{"alg":"none"}"#),
            encode(&serde_json::Value::Object(claims).to_string())
        );
        let expires_at = UNIX_EPOCH + Duration::from_secs(issued + lifetime);
        let mut token = OAuthBearerToken::new(value, expires_at);
        token.extensions = self.extensions.clone();
        token
    }
}

#[async_trait::async_trait]
impl OAuthBearerTokenProvider for UnsecuredJwt {
    async fn token(&self) -> Result<OAuthBearerToken, TokenError> {
        Ok(self.token_now())
    }
}

/// The token a client's connections share, and its provider.
///
/// `current` is written only under its async lock by [`TokenSource::token`],
/// so at most one provider call runs at a time and every connection that
/// waited for it gets its result.
pub(crate) struct TokenSource {
    provider: Arc<dyn OAuthBearerTokenProvider>,
    current: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    token: OAuthBearerToken,
    /// When to ask the provider again: 80% of the way from when the token
    /// arrived to its expiry, so re-authentication and new connections
    /// never present a token about to expire.
    refresh_at: SystemTime,
}

/// The fraction of a token's remaining life after which it is refreshed.
const REFRESH_AT: f64 = 0.8;

impl TokenSource {
    pub(crate) fn new(provider: Arc<dyn OAuthBearerTokenProvider>) -> Self {
        Self {
            provider,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The shared token; asks the provider first if there is none, it is
    /// due for refresh, or it expires within `valid_for` (re-authentication
    /// asks for a token that carries the new session a good while).
    ///
    /// When the provider fails (or returns an expired token) while the
    /// token in hand is still valid, that one is used and the provider is
    /// asked again next time: an identity provider's hiccup must not cut
    /// connections early. Otherwise the provider's error is the reason
    /// returned.
    pub(crate) async fn token(&self, valid_for: Duration) -> Result<OAuthBearerToken, String> {
        let mut current = self.current.lock().await;
        let now = SystemTime::now();
        if let Some(cached) = current.as_ref() {
            if now < cached.refresh_at && now + valid_for < cached.token.expires_at {
                return Ok(cached.token.clone());
            }
        }
        let fetched = match self.provider.token().await {
            Err(e) => Err(format!("the token provider failed: {e}")),
            Ok(token) => match token.expires_at.duration_since(now) {
                Ok(remaining) => Ok((token, remaining)),
                Err(_) => Err(format!(
                    "the token provider returned a token that expired {:?} ago",
                    now.duration_since(token.expires_at).unwrap_or_default()
                )),
            },
        };
        let (token, remaining) = match fetched {
            Ok(fetched) => fetched,
            Err(reason) => match current.as_ref() {
                Some(cached) if now < cached.token.expires_at => {
                    tracing::warn!(
                        %reason,
                        "could not refresh the OAUTHBEARER token; using the current one until it expires"
                    );
                    return Ok(cached.token.clone());
                }
                _ => return Err(reason),
            },
        };
        let refresh_at = now + remaining.mul_f64(REFRESH_AT);
        tracing::debug!(
            expires_in = ?remaining,
            "fetched an OAUTHBEARER token from the provider"
        );
        *current = Some(Cached {
            token: token.clone(),
            refresh_at,
        });
        Ok(token)
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn client_first_message_has_the_rfc_7628_layout() {
        let token = OAuthBearerToken::new("abc.def.", SystemTime::now())
            .extension("logicalCluster", "lkc-1");
        let message = token.client_first_message().unwrap();
        assert_eq!(
            message,
            b"n,,\x01auth=Bearer abc.def.\x01logicalCluster=lkc-1\x01\x01"
        );
    }

    #[test]
    fn bad_tokens_and_extensions_are_refused_with_reasons() {
        let now = SystemTime::now();
        let err = OAuthBearerToken::new("has space", now)
            .client_first_message()
            .unwrap_err();
        assert!(err.contains("characters"), "{err}");
        let err = OAuthBearerToken::new("t", now)
            .extension("auth", "x")
            .client_first_message()
            .unwrap_err();
        assert!(err.contains("\"auth\""), "{err}");
        let err = OAuthBearerToken::new("t", now)
            .extension("k", "a\u{1}b")
            .client_first_message()
            .unwrap_err();
        assert!(err.contains("\"k\""), "{err}");
    }

    #[test]
    fn unsecured_jwt_carries_sub_iat_exp_and_scope() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = UnsecuredJwt::new("alice")
            .lifetime(Duration::from_secs(60))
            .scope(["read", "write"])
            .token_at(now);
        let parts: Vec<&str> = token.value().expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "", "unsigned: empty signature");
        let decode = |s: &str| -> serde_json::Value {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(decode(parts[0]), serde_json::json!({"alg": "none"}));
        assert_eq!(
            decode(parts[1]),
            serde_json::json!({"sub": "alice", "iat": 1_700_000_000u64,
                "exp": 1_700_000_060u64, "scope": ["read", "write"]})
        );
        assert_eq!(
            token.expires_at(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_060)
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = OAuthBearerToken::new("SECRETTOKEN", SystemTime::now());
        assert!(!format!("{token:?}").contains("SECRETTOKEN"));
    }

    #[tokio::test]
    async fn the_provider_is_called_again_only_near_expiry() {
        let calls = Arc::new(AtomicUsize::new(0));
        let lifetime = Arc::new(std::sync::Mutex::new(Duration::from_secs(3600)));
        let provider = {
            let calls = Arc::clone(&calls);
            let lifetime = Arc::clone(&lifetime);
            move || {
                let calls = Arc::clone(&calls);
                let lifetime = *lifetime.lock().unwrap();
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    Ok(OAuthBearerToken::new(
                        format!("token{n}"),
                        SystemTime::now() + lifetime,
                    ))
                }
            }
        };
        let source = TokenSource::new(Arc::new(provider));
        assert_eq!(
            source.token(Duration::ZERO).await.unwrap().value().expose(),
            "token0"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Asked to last longer than the token does: a new one.
        let long = source.token(Duration::from_secs(7200)).await.unwrap();
        assert_eq!(long.value().expose(), "token1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A token with no life left to speak of is refreshed at every use.
        *lifetime.lock().unwrap() = Duration::from_millis(1);
        source.current.lock().await.as_mut().unwrap().refresh_at = SystemTime::now();
        let short = source.token(Duration::ZERO).await.unwrap();
        assert_eq!(short.value().expose(), "token2");
        while SystemTime::now() < short.expires_at() {
            tokio::task::yield_now().await;
        }
        *lifetime.lock().unwrap() = Duration::from_secs(3600);
        assert_eq!(
            source.token(Duration::ZERO).await.unwrap().value().expose(),
            "token3"
        );
    }

    #[tokio::test]
    async fn provider_errors_and_expired_tokens_are_reasons() {
        let failing = TokenSource::new(Arc::new(|| async {
            Err::<OAuthBearerToken, TokenError>("identity provider unreachable".into())
        }));
        let err = failing.token(Duration::ZERO).await.unwrap_err();
        assert!(err.contains("identity provider unreachable"), "{err}");
        let expired = TokenSource::new(Arc::new(|| async {
            Ok(OAuthBearerToken::new(
                "t",
                SystemTime::now() - Duration::from_secs(5),
            ))
        }));
        let err = expired.token(Duration::ZERO).await.unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_token_in_hand_while_it_is_valid() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let source = TokenSource::new(Arc::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(OAuthBearerToken::new(
                        "first",
                        SystemTime::now() + Duration::from_secs(3600),
                    ))
                } else {
                    Err::<OAuthBearerToken, TokenError>("identity provider down".into())
                }
            }
        }));
        assert_eq!(
            source.token(Duration::ZERO).await.unwrap().value().expose(),
            "first"
        );
        // Due for refresh; the provider fails; the valid token is kept.
        let kept = source.token(Duration::from_secs(7200)).await.unwrap();
        assert_eq!(kept.value().expose(), "first");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Once it has expired, the provider's error is the answer.
        source
            .current
            .lock()
            .await
            .as_mut()
            .unwrap()
            .token
            .expires_at = SystemTime::now();
        let err = source.token(Duration::ZERO).await.unwrap_err();
        assert!(err.contains("identity provider down"), "{err}");
    }
}
