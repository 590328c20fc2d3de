//! SASL authentication of a connection (KIP-43, KIP-152): SaslHandshake
//! names the mechanism, then SaslAuthenticate carries the mechanism's
//! messages until the broker accepts or refuses. The same exchange runs
//! again on an open connection to re-authenticate (KIP-368) before the
//! session the broker announced ends.
//!
//! Every request here goes through [`BrokerConnection::auth_request`],
//! which bypasses the connection's authentication gate: at connect nobody
//! else uses the connection yet, and at re-authentication the caller holds
//! the gate, so no other request can come between these.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;

use super::connection::BrokerConnection;
use super::scram::{ScramClient, ScramMechanism};
use crate::error::{Error, Result};
use crate::oauthbearer::OAuthBearerToken;
use crate::security::{SaslConfig, SaslMechanism};

/// Error code `UNSUPPORTED_SASL_MECHANISM`.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Error code `ILLEGAL_SASL_STATE`.
const ILLEGAL_SASL_STATE: i16 = 34;

/// Credentials in the form the exchange sends them, got before it starts:
/// a token provider may take a while (an HTTP call), and during
/// re-authentication nothing else may use the connection.
pub(crate) enum Prepared {
    /// PLAIN and SCRAM: the user name and password in the [`SaslConfig`].
    Password,
    /// OAUTHBEARER: the token to present.
    Token(OAuthBearerToken),
}

/// Get what `sasl` needs to authenticate: for OAUTHBEARER, the shared token
/// (asking the provider when it is missing, near expiry, or expires within
/// `valid_for`). Without a token it is [`Error::Connect`], which retry
/// loops retry until their deadline.
pub(crate) async fn prepare(
    broker: &str,
    sasl: &SaslConfig,
    valid_for: Duration,
) -> Result<Prepared> {
    match &sasl.tokens {
        None => Ok(Prepared::Password),
        Some(tokens) => tokens
            .token(valid_for)
            .await
            .map(Prepared::Token)
            // Retriable: an identity provider that is down now may be back
            // on the next attempt (the broker refused nothing).
            .map_err(|reason| Error::Connect {
                broker: broker.to_string(),
                reason: format!("no OAUTHBEARER token to authenticate with: {reason}"),
            }),
    }
}

/// The session a successful authentication opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    /// How long the broker keeps it (KIP-368 `session_lifetime_ms`); the
    /// connection must re-authenticate before then. `None`: no limit.
    pub lifetime: Option<Duration>,
}

/// Authenticate `conn` with `sasl` and the credentials [`prepare`] got.
/// Every failure is [`Error::Authentication`] (or a connection error),
/// never retried.
pub(crate) async fn authenticate(
    conn: &BrokerConnection,
    sasl: &SaslConfig,
    prepared: Prepared,
) -> Result<Session> {
    let mechanism = sasl.mechanism.name();
    let fail = |reason: String| Error::Authentication {
        broker: conn.addr().to_string(),
        mechanism,
        reason,
    };
    let handshake = conn
        .auth_request(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
        )
        .await
        .map_err(|e| match e {
            Error::ConnectionLost { reason, .. } => fail(format!(
                "the broker closed the connection at the SASL handshake ({reason}); \
                 is this a SASL listener?"
            )),
            other => other,
        })?;
    match handshake.error_code {
        0 => {}
        UNSUPPORTED_SASL_MECHANISM => {
            let enabled: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(fail(if enabled.is_empty() {
                "the broker enables no SASL mechanism on this listener; \
                 is this a SASL listener?"
                    .to_string()
            } else {
                format!(
                    "the broker does not enable {mechanism} on this listener; it enables [{}]",
                    enabled.join(", ")
                )
            }));
        }
        ILLEGAL_SASL_STATE => {
            return Err(fail(
                "the broker refused the SASL handshake (ILLEGAL_SASL_STATE); \
                 is this a SASL listener?"
                    .into(),
            ))
        }
        code => {
            return Err(fail(format!(
                "the broker answered the SASL handshake with {}",
                super::error_codes::name(code)
            )))
        }
    }
    let last = match (sasl.mechanism, prepared) {
        (SaslMechanism::OAuthBearer, Prepared::Token(token)) => {
            oauthbearer(conn, mechanism, &token).await?
        }
        (SaslMechanism::OAuthBearer, Prepared::Password) => {
            return Err(fail("OAUTHBEARER needs a token provider".into()))
        }
        (SaslMechanism::Plain, _) => {
            let mut message = Vec::new();
            message.push(0);
            message.extend_from_slice(sasl.username.as_bytes());
            message.push(0);
            message.extend_from_slice(sasl.password.expose().as_bytes());
            exchange(conn, mechanism, message).await?
        }
        (SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512, _) => {
            let scram_mechanism = if sasl.mechanism == SaslMechanism::ScramSha256 {
                ScramMechanism::Sha256
            } else {
                ScramMechanism::Sha512
            };
            let username = sasl.username.clone();
            let password = sasl.password.clone();
            let mut scram = ScramClient::new(scram_mechanism, &username, password.expose());
            let server_first = exchange(conn, mechanism, scram.client_first()).await?;
            // Salting the password is thousands of HMAC rounds: keep it off
            // the async worker threads.
            let (scram, client_final) = tokio::task::spawn_blocking(move || {
                let reply = scram.client_final(&server_first.bytes);
                (scram, reply)
            })
            .await
            .map_err(|e| fail(format!("SCRAM computation failed: {e}")))?;
            let client_final = client_final.map_err(|e| fail(e.to_string()))?;
            let server_final = exchange(conn, mechanism, client_final).await?;
            scram
                .verify_server_final(&server_final.bytes)
                .map_err(|e| fail(e.to_string()))?;
            server_final
        }
    };
    tracing::debug!(
        broker = %conn.addr(),
        mechanism,
        session_lifetime_ms = last.session_lifetime_ms,
        "SASL authentication succeeded"
    );
    Ok(Session {
        lifetime: u64::try_from(last.session_lifetime_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
    })
}

/// The OAUTHBEARER exchange (RFC 7628): the token in one message. A
/// broker that refuses it answers with a JSON error instead of an empty
/// message and waits for the client's `0x01` before failing the exchange
/// with its reason.
async fn oauthbearer(
    conn: &BrokerConnection,
    mechanism: &'static str,
    token: &OAuthBearerToken,
) -> Result<Answer> {
    let fail = |reason: String| Error::Authentication {
        broker: conn.addr().to_string(),
        mechanism,
        reason,
    };
    let message = token.client_first_message().map_err(fail)?;
    let answer = exchange(conn, mechanism, message).await?;
    if answer.bytes.is_empty() {
        return Ok(answer);
    }
    let server_error = String::from_utf8_lossy(&answer.bytes).into_owned();
    let reason = match exchange(conn, mechanism, vec![0x01]).await {
        Err(Error::Authentication { reason, .. }) => {
            format!("{reason} (the broker's error: {server_error})")
        }
        Err(other) => return Err(other),
        Ok(_) => format!("the broker refused the token: {server_error}"),
    };
    Err(fail(reason))
}

/// A successful SaslAuthenticate answer.
struct Answer {
    bytes: Bytes,
    session_lifetime_ms: i64,
}

/// One SaslAuthenticate round trip; returns the broker's answer.
async fn exchange(
    conn: &BrokerConnection,
    mechanism: &'static str,
    bytes: Vec<u8>,
) -> Result<Answer> {
    let response = conn
        .auth_request(&SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)))
        .await
        .map_err(|e| match e {
            Error::ConnectionLost { broker, reason } => Error::Authentication {
                broker,
                mechanism,
                reason: format!(
                    "the broker closed the connection during authentication ({reason})"
                ),
            },
            other => other,
        })?;
    if response.error_code != 0 {
        return Err(Error::Authentication {
            broker: conn.addr().to_string(),
            mechanism,
            reason: response
                .error_message
                .map(|m| m.to_string())
                .unwrap_or_else(|| super::error_codes::name(response.error_code)),
        });
    }
    Ok(Answer {
        bytes: response.auth_bytes,
        session_lifetime_ms: response.session_lifetime_ms,
    })
}
