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

    // Each server key type with each TLS version, on a listener that speaks
    // only that version (the fixture's self-tests check that it does).

    #[tokio::test]
    async fn tls12_with_an_rsa_server_key() {
        let b = broker();
        round_trip(config(&b.ssl_rsa_tls12).tls(trusting_ca(b))).await;
    }

    #[tokio::test]
    async fn tls13_with_an_rsa_server_key() {
        let b = broker();
        round_trip(config(&b.ssl_rsa_tls13).tls(trusting_ca(b))).await;
    }

    #[tokio::test]
    async fn tls12_with_an_ecdsa_server_key() {
        let b = broker();
        round_trip(config(&b.ssl_ecdsa_tls12).tls(trusting_ca(b))).await;
    }

    #[tokio::test]
    async fn tls13_with_an_ecdsa_server_key() {
        let b = broker();
        round_trip(config(&b.ssl_ecdsa_tls13).tls(trusting_ca(b))).await;
    }

    /// Connect, produce one record and read it back.
    async fn produce_and_read_back(config: ClientConfig) {
        let client = Client::connect(config).await.expect("connect");
        let topic = new_topic(&client, "secure-key", 1).await;
        client
            .producer()
            .build()
            .expect("producer")
            .to(&topic)
            .value("signed in")
            .send()
            .await
            .expect("acknowledged");
        let records = read_all(&client, &topic).await;
        assert_eq!(records.len(), 1, "the record read back");
        assert_eq!(records[0].value.as_deref(), Some(&b"signed in"[..]));
    }

    /// Mutual TLS with a client key in `key` (PEM) for `cert`: a full round
    /// trip over TLS 1.3 (the client signs with RSA-PSS or ECDSA in its
    /// TLS 1.3 `CertificateVerify`), then one record over TLS 1.2.
    async fn mutual_tls_with(b: &SecureBroker, cert: &str, key: &str) {
        round_trip(config(&b.mtls).tls(trusting_ca(b).client_cert_pem(cert, key))).await;
        produce_and_read_back(config(&b.mtls_tls12).tls(trusting_ca(b).client_cert_pem(cert, key)))
            .await;
    }

    #[tokio::test]
    async fn mutual_tls_with_an_ecdsa_pkcs8_key() {
        let b = broker();
        assert!(b.pki.client_key.starts_with("-----BEGIN PRIVATE KEY-----"));
        mutual_tls_with(b, &b.pki.client_cert, &b.pki.client_key).await;
    }

    #[tokio::test]
    async fn mutual_tls_with_an_ecdsa_sec1_key() {
        let b = broker();
        assert!(b
            .pki
            .client_key_sec1
            .starts_with("-----BEGIN EC PRIVATE KEY-----"));
        mutual_tls_with(b, &b.pki.client_cert, &b.pki.client_key_sec1).await;
    }

    #[tokio::test]
    async fn mutual_tls_with_an_rsa_pkcs8_key() {
        let b = broker();
        assert!(b
            .pki
            .rsa_client_key
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        mutual_tls_with(b, &b.pki.rsa_client_cert, &b.pki.rsa_client_key).await;
    }

    #[tokio::test]
    async fn mutual_tls_with_an_rsa_pkcs1_key() {
        let b = broker();
        assert!(b
            .pki
            .rsa_client_key_pkcs1
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        mutual_tls_with(b, &b.pki.rsa_client_cert, &b.pki.rsa_client_key_pkcs1).await;
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

    // PEM text with its body lines changed by `edit` (BEGIN and END lines kept).
    fn edit_body(pem: &str, edit: impl FnOnce(&mut Vec<String>)) -> String {
        let lines: Vec<&str> = pem.lines().collect();
        let (first, rest) = lines.split_first().expect("BEGIN line");
        let (last, body) = rest.split_last().expect("END line");
        let mut body: Vec<String> = body.iter().map(|l| l.to_string()).collect();
        edit(&mut body);
        let mut text = format!("{first}\n");
        for line in body {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(last);
        text.push('\n');
        text
    }

    // One base64 character in the middle of the body replaced by another.
    fn one_character_changed(pem: &str) -> String {
        edit_body(pem, |body| {
            let middle_line = body.len() / 2;
            let line = &mut body[middle_line];
            let middle = line.len() / 2;
            let old = line.as_bytes()[middle];
            let new = if old == b'A' { "B" } else { "A" };
            line.replace_range(middle..middle + 1, new);
        })
    }

    /// A client key that is damaged or not the certificate's is a
    /// configuration error when the client is built (no connection is
    /// tried, nothing panics), saying what is wrong with the key and
    /// showing none of it.
    #[tokio::test]
    async fn garbled_client_keys_are_configuration_errors() {
        let b = broker();
        let pki = &b.pki;
        let cases: Vec<(&str, &str, String, &str)> = vec![
            (
                "END line cut off",
                &pki.client_cert,
                pki.client_key.replace("-----END PRIVATE KEY-----\n", ""),
                "the `-----END PRIVATE KEY-----` line is missing",
            ),
            (
                "not base64",
                &pki.rsa_client_cert,
                edit_body(&pki.rsa_client_key_pkcs1, |body| {
                    body[3].replace_range(10..12, "!?")
                }),
                "not an unencrypted PEM key",
            ),
            (
                "PKCS#8 body cut short",
                &pki.rsa_client_cert,
                edit_body(&pki.rsa_client_key, |body| {
                    body.drain(4..body.len() - 1);
                }),
                "client private key cannot be read",
            ),
            (
                "PKCS#1 body cut short",
                &pki.rsa_client_cert,
                edit_body(&pki.rsa_client_key_pkcs1, |body| {
                    body.drain(4..body.len() - 1);
                }),
                "client private key cannot be read",
            ),
            (
                "SEC1 body cut short",
                &pki.client_cert,
                edit_body(&pki.client_key_sec1, |body| body.truncate(1)),
                "client private key cannot be read",
            ),
            (
                // The middle of an RSA key is its first prime: the key
                // parses and its public half still matches the certificate.
                "PKCS#1 with one character changed",
                &pki.rsa_client_cert,
                one_character_changed(&pki.rsa_client_key_pkcs1),
                "client private key is damaged",
            ),
            (
                "SEC1 with one character changed",
                &pki.client_cert,
                one_character_changed(&pki.client_key_sec1),
                "client private key cannot be read",
            ),
            (
                "another certificate's key",
                &pki.client_cert,
                pki.rsa_client_key.clone(),
                "do not go together",
            ),
        ];
        for (case, cert, key, expected) in &cases {
            let started = Instant::now();
            let e = match Client::connect(
                config(&b.mtls).tls(trusting_ca(b).client_cert_pem(*cert, key)),
            )
            .await
            {
                Ok(_) => panic!("{case}: connected with a garbled key"),
                Err(e) => e,
            };
            let Error::Config(reason) = &e else {
                panic!("{case}: expected a configuration error, got {e:?}");
            };
            assert!(reason.contains(expected), "{case}: {reason}");
            assert!(!e.is_retriable(), "{case}: {e}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{case}: took {:?}",
                started.elapsed()
            );
            for line in key.lines().filter(|l| !l.starts_with("-----")) {
                for chunk in line.as_bytes().chunks(16).filter(|c| c.len() == 16) {
                    let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
                    assert!(!reason.contains(chunk), "{case}: key text in {reason}");
                }
            }
        }
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

/// SASL/OAUTHBEARER (KIP-255) against Kafka's unsecured validator.
mod oauthbearer {
    use super::*;
    use common::testcontainers::OAUTH_MAX_REAUTH_MS;
    use kastellan::{OAuthBearerToken, TokenError, UnsecuredJwt};
    use std::time::SystemTime;

    #[tokio::test]
    async fn unsecured_jwt_round_trip() {
        let b = broker();
        round_trip(config(&b.sasl_oauth).sasl_oauthbearer(UnsecuredJwt::new("alice"))).await;
    }

    #[tokio::test]
    async fn a_token_the_broker_refuses_is_reported_with_its_reason() {
        let b = broker();
        let provider = || async {
            Ok::<_, TokenError>(OAuthBearerToken::new(
                "not-a-jwt",
                SystemTime::now() + Duration::from_secs(3600),
            ))
        };
        let e = connect_error(config(&b.sasl_oauth).sasl_oauthbearer(provider)).await;
        let Error::Authentication {
            mechanism, reason, ..
        } = &e
        else {
            panic!("expected an authentication error, got {e:?}");
        };
        assert_eq!(*mechanism, "OAUTHBEARER");
        assert!(reason.contains("invalid_token"), "{reason}");
    }

    /// A provider that fails is retried (the identity provider may be back
    /// soon) until the retry deadline, and its error is the cause reported.
    #[tokio::test]
    async fn a_failing_token_provider_is_retried_and_reported() {
        let b = broker();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let provider = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err::<OAuthBearerToken, TokenError>("identity provider unreachable".into()) }
        };
        let e = connect_error(
            config(&b.sasl_oauth)
                .retry_deadline(Duration::from_secs(2))
                .sasl_oauthbearer(provider),
        )
        .await;
        assert!(e.is_retriable(), "{e:?}");
        assert!(
            e.to_string().contains("identity provider unreachable"),
            "{e}"
        );
        assert!(calls.load(Ordering::SeqCst) >= 2, "retried: {e}");
    }

    /// Sessions on this listener end when the token expires, so a
    /// connection lives on only if each re-authentication brings a fresh
    /// token from the provider.
    #[tokio::test]
    async fn tokens_are_refreshed_before_they_expire_and_connections_live_on() {
        let b = broker();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let jwt = UnsecuredJwt::new("alice").lifetime(Duration::from_secs(4));
        assert!(Duration::from_secs(4) < Duration::from_millis(OAUTH_MAX_REAUTH_MS));
        let provider = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let token = jwt.token_now();
            async move { Ok::<_, TokenError>(token) }
        };
        let client = Client::connect(config(&b.sasl_oauth).sasl_oauthbearer(provider))
            .await
            .expect("connect");
        super::reauthentication::outlive_sessions(&client, 3).await;
        assert!(
            calls.load(Ordering::SeqCst) >= 3,
            "the provider was called {} times",
            calls.load(Ordering::SeqCst)
        );
    }
}

/// SASL re-authentication (KIP-368): the listener's sessions last
/// `REAUTH_MS`, after which the broker closes a connection that has not
/// authenticated again.
mod reauthentication {
    use super::*;
    use common::testcontainers::REAUTH_MS;
    use kastellan::UnsecuredJwt;

    /// Produce and consume over `client` until each of its connections has
    /// re-authenticated about `sessions` times: every record arrives, and no
    /// connection was replaced (without re-authentication the broker would
    /// close each at its first use after the session ended).
    pub(super) async fn outlive_sessions(client: &Client, sessions: u64) {
        let topic = new_topic(client, "reauth", 1).await;
        let producer = client.producer().build().expect("producer");
        let seen = Arc::new(AtomicUsize::new(0));
        let consumer = client
            .group_consumer(unique_topic("reauth-group"))
            .topic(&topic)
            .start_with_earliest()
            .heartbeat_interval(Duration::from_millis(500))
            .build()
            .expect("consumer");
        let counter = Arc::clone(&seen);
        let member = RunningConsumer::spawn(
            consumer,
            recording(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let mut sent = 0usize;
        let send = |i: usize| producer.to(&topic).value(format!("v{i}")).send();
        send(sent).await.expect("acknowledged");
        sent += 1;
        let started = Instant::now();
        while seen.load(Ordering::SeqCst) < 1 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no record consumed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = client.status();
        let wanted = sessions * before.open_connections;
        let limit = Duration::from_millis(REAUTH_MS.max(4_000) * (sessions + 10));
        while client.status().reauthentications < wanted {
            assert!(
                started.elapsed() < limit,
                "after {limit:?}: {:?}, wanted {wanted} re-authentications",
                client.status()
            );
            send(sent).await.expect("acknowledged");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = client.status();
        assert_eq!(
            after.connections_opened, before.connections_opened,
            "no connection was replaced: {before:?} then {after:?}"
        );
        while seen.load(Ordering::SeqCst) < sent {
            assert!(
                started.elapsed() < limit + Duration::from_secs(30),
                "consumed {} of {sent}",
                seen.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        member.shutdown.shutdown(Duration::from_secs(10));
        tokio::time::timeout(Duration::from_secs(30), member.task)
            .await
            .expect("consumer stops")
            .expect("no panic")
            .expect("consumer stopped cleanly");
        assert_eq!(seen.load(Ordering::SeqCst), sent, "each record once");
        let values: Vec<String> = read_all(client, &topic)
            .await
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        let expected: Vec<String> = (0..sent).map(|i| format!("v{i}")).collect();
        assert_eq!(values, expected, "every record stored once, in order");
    }

    #[tokio::test]
    async fn plain_connections_outlive_their_sessions() {
        let b = broker();
        let client =
            Client::connect(config(&b.sasl_reauth).sasl(sasl(SaslMechanism::Plain, &b.plain_user)))
                .await
                .expect("connect");
        outlive_sessions(&client, 3).await;
    }

    #[tokio::test]
    async fn scram_connections_outlive_their_sessions() {
        let b = broker();
        let client = Client::connect(
            config(&b.sasl_reauth).sasl(sasl(SaslMechanism::ScramSha512, &b.scram_user)),
        )
        .await
        .expect("connect");
        outlive_sessions(&client, 3).await;
    }

    #[tokio::test]
    async fn oauthbearer_connections_outlive_their_sessions() {
        let b = broker();
        let client =
            Client::connect(config(&b.sasl_reauth).sasl_oauthbearer(UnsecuredJwt::new("alice")))
                .await
                .expect("connect");
        outlive_sessions(&client, 3).await;
    }
}
