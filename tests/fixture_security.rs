//! The secure broker of `testcontainers.rs` (TLS, mutual TLS, SASL PLAIN and
//! SCRAM listeners), checked with Kafka's own Java console producer and
//! consumer rather than with kastellan: if these pass, a failing kastellan
//! security test points at the library, not at the fixture.
//!
//! Each test launches at most three short JVMs; the tests run in parallel
//! against one shared broker. With the `tls` feature, rustls (not
//! kastellan) also checks which TLS version and certificate each
//! one-version listener serves.

#[path = "../testcontainers.rs"]
mod testcontainers;

use std::fs;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use testcontainers::{
    run_kafka_class, run_kafka_class_with_stdin, secure_broker, SaslUser, SecureBroker, TestPki,
    CONSOLE_CONSUMER, CONSOLE_PRODUCER, MTLS_LISTENER, MTLS_TLS12_LISTENER,
    SASL_PLAINTEXT_LISTENER, SASL_PLAIN_ONLY_LISTENER, SASL_SSL_LISTENER, SSL_EXPIRED_LISTENER,
    SSL_LISTENER, SSL_RSA_TLS12_LISTENER, SSL_WRONG_HOST_LISTENER,
};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
// How long a failing producer may wait for metadata before giving up; the
// failures below arrive well within it.
const FAILING_MAX_BLOCK_MS: &str = "15000";

// A client properties file, deleted on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kastellan-client-{}-{}.properties",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8 here")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn unique_topic(name: &str) -> String {
    format!("fixture-security-{name}-{}", std::process::id())
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// A properties file for a well-configured Java client of `listener` (see
// `SecureBroker::java_client_properties`).
fn client_config(
    broker: &SecureBroker,
    listener: &str,
    sasl: Option<(&str, &SaslUser)>,
) -> ConfigFile {
    ConfigFile::new(&broker.java_client_properties(listener, sasl))
}

fn address<'a>(broker: &'a SecureBroker, listener: &str) -> &'a str {
    broker
        .broker
        .listener_address(listener)
        .unwrap_or_else(|| panic!("no listener {listener}"))
}

fn run_producer(address: &str, config: &ConfigFile, topic: &str, records: &[String]) -> Output {
    let stdin = records.iter().map(|r| format!("{r}\n")).collect::<String>();
    run_kafka_class_with_stdin(
        CONSOLE_PRODUCER,
        &[
            "--bootstrap-server",
            address,
            "--topic",
            topic,
            "--command-config",
            config.path(),
            "--command-property",
            "acks=all",
            "--max-block-ms",
            FAILING_MAX_BLOCK_MS,
        ],
        stdin.as_bytes(),
        TOOL_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("console producer: {e}"))
}

// Produces `records` and checks the producer reported no error.
fn produce(address: &str, config: &ConfigFile, topic: &str, records: &[String]) {
    let output = run_producer(address, config, topic, records);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("ERROR"),
        "producing to {topic} at {address} failed:\n{}",
        text(&output)
    );
}

// Reads `count` records from the beginning of `topic` (through a consumer
// group, so FindCoordinator and the group protocol cross the listener too).
fn consume(address: &str, config: &ConfigFile, topic: &str, count: usize) -> Vec<String> {
    let count_arg = count.to_string();
    let output = run_kafka_class(
        CONSOLE_CONSUMER,
        &[
            "--bootstrap-server",
            address,
            "--topic",
            topic,
            "--command-config",
            config.path(),
            "--from-beginning",
            "--max-messages",
            &count_arg,
            "--timeout-ms",
            "30000",
        ],
        TOOL_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("console consumer: {e}"));
    let values: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        output.status.success() && values.len() == count,
        "consuming {count} records of {topic} at {address} failed:\n{}",
        text(&output)
    );
    values
}

fn records(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

// Producing must fail fast, and the tool's output must contain one of
// `needles` (the Java client's description of why). The console producer
// logs a failed send and still exits with status 0, so its output is what
// tells.
fn assert_produce_fails(address: &str, config: &ConfigFile, topic: &str, needles: &[&str]) {
    let started = Instant::now();
    let output = run_producer(address, config, topic, &records("never", 1));
    let all = text(&output);
    assert!(
        needles.iter().any(|n| all.contains(n)),
        "expected one of {needles:?} from the producer at {address}:\n{all}"
    );
    assert!(
        !all.contains("TimeoutException"),
        "the producer at {address} timed out instead of failing fast:\n{all}"
    );
    eprintln!(
        "producer at {address} failed as expected in {:?}",
        started.elapsed()
    );
}

#[test]
fn ssl_round_trip() {
    let broker = secure_broker();
    let config = client_config(broker, SSL_LISTENER, None);
    let topic = unique_topic("ssl");
    let sent = records("ssl", 3);
    produce(&broker.ssl, &config, &topic, &sent);
    assert_eq!(consume(&broker.ssl, &config, &topic, sent.len()), sent);
}

#[test]
fn mtls_round_trip_with_client_certificate() {
    let broker = secure_broker();
    let config = client_config(broker, MTLS_LISTENER, None);
    let topic = unique_topic("mtls");
    let sent = records("mtls", 3);
    produce(&broker.mtls, &config, &topic, &sent);
    assert_eq!(consume(&broker.mtls, &config, &topic, sent.len()), sent);
}

// Every mechanism on one SASL listener: produce with PLAIN, then with
// SCRAM-SHA-256, and read both batches back with SCRAM-SHA-512.
fn sasl_round_trip(listener: &str, tag: &str) {
    let broker = secure_broker();
    let at = address(broker, listener);
    let topic = unique_topic(tag);
    let plain = client_config(broker, listener, Some(("PLAIN", &broker.plain_user)));
    let scram256 = client_config(
        broker,
        listener,
        Some(("SCRAM-SHA-256", &broker.scram_user)),
    );
    let scram512 = client_config(
        broker,
        listener,
        Some(("SCRAM-SHA-512", &broker.scram_user)),
    );
    let first = records(&format!("{tag}-plain"), 2);
    let second = records(&format!("{tag}-scram256"), 2);
    produce(at, &plain, &topic, &first);
    produce(at, &scram256, &topic, &second);
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(consume(at, &scram512, &topic, all.len()), all);
}

#[test]
fn sasl_plaintext_round_trip_plain_scram256_scram512() {
    sasl_round_trip(SASL_PLAINTEXT_LISTENER, "sasl-plaintext");
}

#[test]
fn sasl_ssl_round_trip_plain_scram256_scram512() {
    sasl_round_trip(SASL_SSL_LISTENER, "sasl-ssl");
}

const AUTH_FAILED: &[&str] = &["Authentication failed", "SaslAuthenticationException"];

/// Produce with `user` under a wrong password must fail authentication.
fn wrong_password_is_rejected(listener: &str, addr: &str, mechanism: &str, user: &SaslUser) {
    let broker = secure_broker();
    let wrong = SaslUser {
        password: "not-the-password".to_string(),
        ..user.clone()
    };
    let config = client_config(broker, listener, Some((mechanism, &wrong)));
    let topic = unique_topic("wrong-password");
    assert_produce_fails(addr, &config, &topic, AUTH_FAILED);
}

#[test]
fn wrong_plain_password_is_rejected() {
    let broker = secure_broker();
    wrong_password_is_rejected(
        SASL_PLAINTEXT_LISTENER,
        &broker.sasl_plaintext,
        "PLAIN",
        &broker.plain_user,
    );
}

#[test]
fn wrong_scram_password_is_rejected() {
    let broker = secure_broker();
    wrong_password_is_rejected(
        SASL_SSL_LISTENER,
        &broker.sasl_ssl,
        "SCRAM-SHA-512",
        &broker.scram_user,
    );
}

#[test]
fn plain_only_listener_rejects_scram_and_accepts_plain() {
    let broker = secure_broker();
    let topic = unique_topic("plain-only");
    let scram = client_config(
        broker,
        SASL_PLAIN_ONLY_LISTENER,
        Some(("SCRAM-SHA-256", &broker.scram_user)),
    );
    assert_produce_fails(
        &broker.sasl_plain_only,
        &scram,
        &topic,
        &["UnsupportedSaslMechanismException"],
    );
    let plain = client_config(
        broker,
        SASL_PLAIN_ONLY_LISTENER,
        Some(("PLAIN", &broker.plain_user)),
    );
    produce(
        &broker.sasl_plain_only,
        &plain,
        &topic,
        &records("plain-only", 1),
    );
}

#[test]
fn expired_broker_certificate_is_rejected() {
    let broker = secure_broker();
    let config = client_config(broker, SSL_EXPIRED_LISTENER, None);
    let topic = unique_topic("expired");
    assert_produce_fails(
        &broker.ssl_expired,
        &config,
        &topic,
        &["CertificateExpiredException"],
    );
}

#[test]
fn wrong_host_certificate_fails_only_hostname_verification() {
    let broker = secure_broker();
    let topic = unique_topic("wrong-host");
    let config = client_config(broker, SSL_WRONG_HOST_LISTENER, None);
    assert_produce_fails(
        &broker.ssl_wrong_host,
        &config,
        &topic,
        &["No subject alternative names matching IP address 127.0.0.1"],
    );
    // The same client without hostname verification gets through: the
    // certificate is otherwise valid and trusted.
    let unverified = ConfigFile::new(&format!(
        "{}ssl.endpoint.identification.algorithm=\n",
        broker.java_client_properties(SSL_WRONG_HOST_LISTENER, None)
    ));
    produce(
        &broker.ssl_wrong_host,
        &unverified,
        &topic,
        &records("wrong-host", 1),
    );
}

#[test]
fn unrelated_ca_is_rejected() {
    let broker = secure_broker();
    let props = broker.java_client_properties(SSL_LISTENER, None).replace(
        &escape(&broker.pki.ca_cert),
        &escape(&broker.pki.other_ca_cert),
    );
    assert!(props.contains(&escape(&broker.pki.other_ca_cert)));
    let config = ConfigFile::new(&props);
    let topic = unique_topic("wrong-ca");
    assert_produce_fails(
        &broker.ssl,
        &config,
        &topic,
        &[
            "PKIX path building failed",
            "unable to find valid certification path",
        ],
    );
}

#[test]
fn mtls_without_client_certificate_is_rejected() {
    let broker = secure_broker();
    // Trusts the broker, but presents no certificate.
    let config = client_config(broker, SSL_LISTENER, None);
    let topic = unique_topic("mtls-no-cert");
    assert_produce_fails(
        &broker.mtls,
        &config,
        &topic,
        // TLS 1.3: the client finishes its handshake first, then reads the
        // broker's alert.
        &["Received fatal alert: bad_certificate"],
    );
}

// PEM text as it appears in a properties file.
fn escape(pem: &str) -> String {
    pem.replace('\n', "\\n")
}

#[test]
fn pki_debug_hides_keys() {
    let broker = secure_broker();
    let shown = format!("{broker:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains(&broker.scram_user.password), "{shown}");
    assert!(!shown.contains(&broker.plain_user.password), "{shown}");
}

// A fresh PKI (no broker needed) writes each key in the format its field
// names.
#[test]
fn pki_writes_each_key_format() {
    let started = Instant::now();
    let pki = TestPki::generate().expect("test PKI");
    eprintln!("test PKI generated in {:?}", started.elapsed());
    let label = |pem: &str| pem.lines().next().unwrap_or_default().to_string();
    for (name, key, expected) in [
        ("broker_key", &pki.broker_key, "-----BEGIN PRIVATE KEY-----"),
        (
            "rsa_broker_key",
            &pki.rsa_broker_key,
            "-----BEGIN PRIVATE KEY-----",
        ),
        ("client_key", &pki.client_key, "-----BEGIN PRIVATE KEY-----"),
        (
            "client_key_sec1",
            &pki.client_key_sec1,
            "-----BEGIN EC PRIVATE KEY-----",
        ),
        (
            "rsa_client_key",
            &pki.rsa_client_key,
            "-----BEGIN PRIVATE KEY-----",
        ),
        (
            "rsa_client_key_pkcs1",
            &pki.rsa_client_key_pkcs1,
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
    ] {
        assert_eq!(label(key), expected, "{name}");
        assert!(key.ends_with("-----\n"), "{name}");
    }
    // RSA keys are longer than ECDSA ones: the RSA fields hold RSA keys.
    assert!(pki.rsa_broker_key.len() > 3 * pki.broker_key.len());
    assert!(pki.rsa_client_key_pkcs1.len() > 3 * pki.client_key_sec1.len());
}

// A Java client trusting the test CA produces over TLS 1.2 to the RSA
// listener, and reads back over mutual TLS 1.2 presenting the RSA client
// certificate (its PKCS#8 key as the broker's own tools read it).
#[test]
fn java_round_trip_over_tls12_with_rsa_keys() {
    let broker = secure_broker();
    let topic = unique_topic("rsa-tls12");
    let sent = records("rsa-tls12", 2);
    let rsa_listener = client_config(broker, SSL_RSA_TLS12_LISTENER, None);
    produce(&broker.ssl_rsa_tls12, &rsa_listener, &topic, &sent);
    let props = broker
        .java_client_properties(MTLS_TLS12_LISTENER, None)
        .replace(
            &escape(&broker.pki.client_cert),
            &escape(&broker.pki.rsa_client_cert),
        )
        .replace(
            &escape(&broker.pki.client_key),
            &escape(&broker.pki.rsa_client_key),
        );
    assert!(props.contains(&escape(&broker.pki.rsa_client_key)));
    let rsa_client = ConfigFile::new(&props);
    assert_eq!(
        consume(&broker.mtls_tls12, &rsa_client, &topic, sent.len()),
        sent
    );
}

/// The one-version listeners, checked with a bare rustls client: each
/// negotiates its TLS version with the certificate it is documented to
/// serve, and refuses a client that offers only the other version.
#[cfg(feature = "tls")]
mod one_version_listeners {
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ProtocolVersion, SupportedProtocolVersion};

    use super::testcontainers::{
        secure_broker, SecureBroker, TestPki, MTLS_TLS12_LISTENER, SSL_ECDSA_TLS12_LISTENER,
        SSL_ECDSA_TLS13_LISTENER, SSL_RSA_TLS12_LISTENER, SSL_RSA_TLS13_LISTENER,
    };

    const TLS12: &SupportedProtocolVersion = &rustls::version::TLS12;
    const TLS13: &SupportedProtocolVersion = &rustls::version::TLS13;

    fn certificate(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
    }

    // A TLS handshake with the listener at `address`, offering `versions`
    // and presenting `client` (certificate, key) if given. Returns the
    // negotiated version and the broker's certificate.
    fn handshake(
        address: &str,
        pki: &TestPki,
        versions: &[&'static SupportedProtocolVersion],
        client: Option<(&str, &str)>,
    ) -> Result<(ProtocolVersion, CertificateDer<'static>), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certificate(&pki.ca_cert))
            .expect("CA certificate");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls_graviola::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![certificate(cert)],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a PEM key"),
                )
                .expect("client certificate and key"),
        };
        let name = ServerName::try_from("127.0.0.1").expect("an IP address");
        let mut tls =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let mut tcp = TcpStream::connect(address).map_err(|e| e.to_string())?;
        // Bounds a broker that never answers; a refusal comes at once.
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        let version = tls.protocol_version().expect("negotiated");
        let served = tls.peer_certificates().expect("the broker's chain")[0].clone();
        Ok((version, served))
    }

    fn check(
        b: &SecureBroker,
        listener: &str,
        address: &str,
        (version, other): (
            &'static SupportedProtocolVersion,
            &'static SupportedProtocolVersion,
        ),
        served_cert: &str,
        client: Option<(&str, &str)>,
    ) {
        let (negotiated, served) = handshake(address, &b.pki, &[TLS13, TLS12], client)
            .unwrap_or_else(|e| panic!("{listener}: handshake failed: {e}"));
        assert_eq!(
            negotiated, version.version,
            "{listener}: negotiated version"
        );
        assert!(
            served == certificate(served_cert),
            "{listener}: serves another certificate"
        );
        match handshake(address, &b.pki, &[other], client) {
            Ok((v, _)) => panic!("{listener}: a {:?}-only client got {v:?}", other.version),
            Err(e) => eprintln!(
                "{listener}: a {:?}-only client is refused: {e}",
                other.version
            ),
        }
    }

    #[test]
    fn rsa_listeners_speak_one_version() {
        let b = secure_broker();
        let rsa = &b.pki.rsa_broker_cert;
        check(
            b,
            SSL_RSA_TLS12_LISTENER,
            &b.ssl_rsa_tls12,
            (TLS12, TLS13),
            rsa,
            None,
        );
        check(
            b,
            SSL_RSA_TLS13_LISTENER,
            &b.ssl_rsa_tls13,
            (TLS13, TLS12),
            rsa,
            None,
        );
    }

    #[test]
    fn ecdsa_listeners_speak_one_version() {
        let b = secure_broker();
        let ecdsa = &b.pki.broker_cert;
        check(
            b,
            SSL_ECDSA_TLS12_LISTENER,
            &b.ssl_ecdsa_tls12,
            (TLS12, TLS13),
            ecdsa,
            None,
        );
        check(
            b,
            SSL_ECDSA_TLS13_LISTENER,
            &b.ssl_ecdsa_tls13,
            (TLS13, TLS12),
            ecdsa,
            None,
        );
    }

    #[test]
    fn mtls_tls12_listener_speaks_tls12_and_wants_a_client_certificate() {
        let b = secure_broker();
        let client = (b.pki.client_cert.as_str(), b.pki.client_key.as_str());
        check(
            b,
            MTLS_TLS12_LISTENER,
            &b.mtls_tls12,
            (TLS12, TLS13),
            &b.pki.broker_cert,
            Some(client),
        );
        // In TLS 1.2 the broker's Finished comes after it checked the
        // client's certificate, so a refusal ends the client's handshake.
        let e = handshake(&b.mtls_tls12, &b.pki, &[TLS12], None)
            .map(|(v, _)| v)
            .expect_err("no client certificate");
        assert!(e.contains("alert"), "{e}");
    }
}
