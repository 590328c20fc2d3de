//! SASL authentication of a fresh connection (KIP-43, KIP-152):
//! SaslHandshake names the mechanism, then SaslAuthenticate carries the
//! mechanism's messages until the broker accepts or refuses.

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;

use super::connection::BrokerConnection;
use super::scram::{ScramClient, ScramMechanism};
use crate::error::{Error, Result};
use crate::security::{SaslConfig, SaslMechanism};

/// Error code `UNSUPPORTED_SASL_MECHANISM`.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Error code `ILLEGAL_SASL_STATE`.
const ILLEGAL_SASL_STATE: i16 = 34;

/// Authenticate `conn` with `sasl`. Every failure is
/// [`Error::Authentication`] (or a connection error), never retried.
pub(crate) async fn authenticate(conn: &BrokerConnection, sasl: &SaslConfig) -> Result<()> {
    let mechanism = sasl.mechanism.name();
    let fail = |reason: String| Error::Authentication {
        broker: conn.addr().to_string(),
        mechanism,
        reason,
    };
    let handshake = conn
        .request(
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
    match sasl.mechanism {
        SaslMechanism::Plain => {
            let mut message = Vec::new();
            message.push(0);
            message.extend_from_slice(sasl.username.as_bytes());
            message.push(0);
            message.extend_from_slice(sasl.password.expose().as_bytes());
            exchange(conn, mechanism, message).await?;
        }
        SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
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
                let reply = scram.client_final(&server_first);
                (scram, reply)
            })
            .await
            .map_err(|e| fail(format!("SCRAM computation failed: {e}")))?;
            let client_final = client_final.map_err(|e| fail(e.to_string()))?;
            let server_final = exchange(conn, mechanism, client_final).await?;
            scram
                .verify_server_final(&server_final)
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    tracing::debug!(broker = %conn.addr(), mechanism, "SASL authentication succeeded");
    Ok(())
}

/// One SaslAuthenticate round trip; returns the broker's bytes.
async fn exchange(
    conn: &BrokerConnection,
    mechanism: &'static str,
    bytes: Vec<u8>,
) -> Result<Bytes> {
    let response = conn
        .request(&SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)))
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
    Ok(response.auth_bytes)
}
