//! Secure connections against a real broker: SASL PLAIN and SCRAM over
//! plaintext, and with the `tls` feature TLS, mutual TLS and SASL_SSL. Each
//! listener gets a produce, read and consumer-group round trip; each failure
//! case gets its distinct error, well within the connect timeout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::testcontainers::{secure_broker, SaslUser, SecureBroker};
use common::{init_logging, new_topic, read_all, recording, unique_topic, RunningConsumer};
use kastellan::{Client, ClientConfig, Error, SaslConfig, SaslMechanism};

/// Generous against a loaded machine, yet far below the retry deadline: a
/// security failure must end the connect, not be retried until the deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn config(addr: &str) -> ClientConfig {
    ClientConfig::new(addr)
        .client_id("kastellan-security-tests")
        .connect_timeout(CONNECT_TIMEOUT)
        .retry_deadline(Duration::from_secs(60))
}

fn sasl(mechanism: SaslMechanism, user: &SaslUser) -> SaslConfig {
    SaslConfig::new(mechanism, &user.username, &user.password)
}

fn broker() -> &'static SecureBroker {
    init_logging();
    secure_broker()
}

/// Produce, read back and consume in a group over the listener `config`
/// points at: every record arrives, the group commits the end offset.
async fn round_trip(config: ClientConfig) {
    let client = Client::connect(config).await.expect("connect");
    let topic = new_topic(&client, "secure", 2).await;
    let producer = client.producer().build().expect("producer");
    for i in 0..20 {
        producer
            .to(&topic)
            .key(format!("k{i}"))
            .value(format!("v{i}"))
            .send()
            .await
            .expect("acknowledged");
    }
    let records = read_all(&client, &topic).await;
    assert_eq!(records.len(), 20, "every record read back");

    let seen = Arc::new(AtomicUsize::new(0));
    let consumer = client
        .group_consumer(unique_topic("secure-group"))
        .topic(&topic)
        .start_with_earliest()
        .heartbeat_interval(Duration::from_millis(500))
        .commit_interval(Duration::from_millis(200))
        .max_wait(Duration::from_millis(100))
        .build()
        .expect("consumer");
    let counter = Arc::clone(&seen);
    let member = RunningConsumer::spawn(
        consumer,
        recording(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let started = Instant::now();
    while seen.load(Ordering::SeqCst) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "group consumed {} of 20 records",
            seen.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    member.shutdown.shutdown(Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(30), member.task)
        .await
        .expect("consumer stops")
        .expect("no panic")
        .expect("consumer stopped cleanly");
    assert_eq!(seen.load(Ordering::SeqCst), 20, "each record once");
}

/// Connect with `config` and return the error, checking it came quickly.
async fn connect_error(config: ClientConfig) -> Error {
    let started = Instant::now();
    let result = Client::connect(config).await;
    let elapsed = started.elapsed();
    let e = match result {
        Ok(_) => panic!("connect succeeded but should not have"),
        Err(e) => e,
    };
    assert!(
        elapsed < CONNECT_TIMEOUT + Duration::from_secs(5),
        "failure took {elapsed:?} (retried instead of failing?): {e}"
    );
    e
}

#[tokio::test]
async fn sasl_plain_over_plaintext() {
    let b = broker();
    round_trip(config(&b.sasl_plaintext).sasl(sasl(SaslMechanism::Plain, &b.plain_user))).await;
}

#[tokio::test]
async fn sasl_scram_sha256_over_plaintext() {
    let b = broker();
    round_trip(config(&b.sasl_plaintext).sasl(sasl(SaslMechanism::ScramSha256, &b.scram_user)))
        .await;
}

#[tokio::test]
async fn sasl_scram_sha512_over_plaintext() {
    let b = broker();
    round_trip(config(&b.sasl_plaintext).sasl(sasl(SaslMechanism::ScramSha512, &b.scram_user)))
        .await;
}

#[tokio::test]
async fn wrong_passwords_are_authentication_errors() {
    let b = broker();
    for mechanism in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        let user = if mechanism == SaslMechanism::Plain {
            &b.plain_user
        } else {
            &b.scram_user
        };
        let e = connect_error(config(&b.sasl_plaintext).sasl(SaslConfig::new(
            mechanism,
            &user.username,
            "not-the-password",
        )))
        .await;
        match &e {
            Error::Authentication {
                mechanism: m,
                reason,
                ..
            } => {
                assert_eq!(*m, mechanism.name());
                assert!(
                    reason.to_lowercase().contains("invalid"),
                    "broker's reason is passed on: {reason}"
                );
            }
            other => panic!("{mechanism:?}: expected Authentication, got {other}"),
        }
        assert!(!e.to_string().contains("not-the-password"), "{e}");
        assert!(!e.is_retriable());
    }
}

#[tokio::test]
async fn unsupported_mechanism_names_the_enabled_ones() {
    let b = broker();
    let e = connect_error(
        config(&b.sasl_plain_only).sasl(sasl(SaslMechanism::ScramSha256, &b.scram_user)),
    )
    .await;
    match &e {
        Error::Authentication { reason, .. } => {
            assert!(reason.contains("does not enable SCRAM-SHA-256"), "{reason}");
            assert!(reason.contains("PLAIN"), "{reason}");
        }
        other => panic!("expected Authentication, got {other}"),
    }
}

#[tokio::test]
async fn sasl_against_a_listener_without_sasl_is_refused() {
    let b = broker();
    let e =
        connect_error(config(&b.plaintext).sasl(sasl(SaslMechanism::Plain, &b.plain_user))).await;
    assert!(matches!(e, Error::Authentication { .. }), "{e}");
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use common::testcontainers::WRONG_HOST_NAME;
    use kastellan::TlsConfig;

    fn trusting_ca(b: &SecureBroker) -> TlsConfig {
        TlsConfig::new().ca_pem(&b.pki.ca_cert)
    }

    #[tokio::test]
    async fn tls() {
        let b = broker();
        round_trip(config(&b.ssl).tls(trusting_ca(b))).await;
    }

    /// The same over the TLS listener with ring chosen instead of the
    /// default provider.
    #[cfg(feature = "tls-ring")]
    #[tokio::test]
    async fn ring_provider_round_trip() {
        let b = broker();
        let tls = trusting_ca(b).provider(kastellan::TlsProvider::Ring);
        round_trip(config(&b.ssl).tls(tls)).await;
    }

    #[tokio::test]
    async fn mutual_tls() {
        let b = broker();
        round_trip(
            config(&b.mtls)
                .tls(trusting_ca(b).client_cert_pem(&b.pki.client_cert, &b.pki.client_key)),
        )
        .await;
    }

    #[tokio::test]
    async fn sasl_over_tls_plain_and_scram() {
        let b = broker();
        round_trip(
            config(&b.sasl_ssl)
                .tls(trusting_ca(b))
                .sasl(sasl(SaslMechanism::Plain, &b.plain_user)),
        )
        .await;
        round_trip(
            config(&b.sasl_ssl)
                .tls(trusting_ca(b))
                .sasl(sasl(SaslMechanism::ScramSha512, &b.scram_user)),
        )
        .await;
    }

    fn tls_reason(e: &Error) -> &str {
        match e {
            Error::Tls { reason, .. } => reason,
            other => panic!("expected a TLS error, got {other}"),
        }
    }

    #[tokio::test]
    async fn wrong_ca_is_reported() {
        let b = broker();
        let e =
            connect_error(config(&b.ssl).tls(TlsConfig::new().ca_pem(&b.pki.other_ca_cert))).await;
        assert!(tls_reason(&e).contains("not signed by a trusted CA"), "{e}");
        assert!(!e.is_retriable());
    }

    #[tokio::test]
    async fn expired_broker_certificate_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.ssl_expired).tls(trusting_ca(b))).await;
        assert!(tls_reason(&e).contains("expired"), "{e}");
    }

    #[tokio::test]
    async fn certificate_for_another_host_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.ssl_wrong_host).tls(trusting_ca(b))).await;
        assert!(tls_reason(&e).contains("does not name the host"), "{e}");
        // Checked against the name it was issued for, the same certificate passes.
        Client::connect(config(&b.ssl_wrong_host).tls(trusting_ca(b).server_name(WRONG_HOST_NAME)))
            .await
            .expect("connects when checked against the certificate's own name");
    }

    #[tokio::test]
    async fn hostname_check_can_be_turned_off_but_the_chain_is_still_checked() {
        let b = broker();
        round_trip(config(&b.ssl_wrong_host).tls(trusting_ca(b).verify_hostname(false))).await;
        let e = connect_error(
            config(&b.ssl_wrong_host).tls(
                TlsConfig::new()
                    .ca_pem(&b.pki.other_ca_cert)
                    .verify_hostname(false),
            ),
        )
        .await;
        assert!(tls_reason(&e).contains("not signed by a trusted CA"), "{e}");
        let e =
            connect_error(config(&b.ssl_expired).tls(trusting_ca(b).verify_hostname(false))).await;
        assert!(tls_reason(&e).contains("expired"), "{e}");
    }

    #[tokio::test]
    async fn mutual_tls_without_a_client_certificate_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.mtls).tls(trusting_ca(b))).await;
        assert!(
            tls_reason(&e).contains("rejected our client certificate"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn client_certificate_from_another_ca_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.mtls).tls(
            trusting_ca(b).client_cert_pem(&b.pki.other_ca_client_cert, &b.pki.other_ca_client_key),
        ))
        .await;
        assert!(
            tls_reason(&e).contains("rejected our client certificate"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn expired_client_certificate_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.mtls).tls(
            trusting_ca(b).client_cert_pem(&b.pki.expired_client_cert, &b.pki.expired_client_key),
        ))
        .await;
        assert!(tls_reason(&e).contains("client certificate"), "{e}");
    }

    #[tokio::test]
    async fn tls_to_a_plaintext_listener_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.plaintext).tls(trusting_ca(b))).await;
        assert!(tls_reason(&e).contains("plaintext listener"), "{e}");
    }

    #[tokio::test]
    async fn plaintext_to_a_tls_listener_is_reported() {
        let b = broker();
        let e = connect_error(config(&b.ssl)).await;
        let text = e.to_string();
        assert!(
            text.contains("TLS") && !e.is_retriable(),
            "says TLS is needed and is final: {e:?}"
        );
    }
}
