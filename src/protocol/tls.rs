//! TLS for broker connections (rustls; the crypto provider is the one
//! [`TlsConfig::provider`] chose, by default graviola on x86_64 and aarch64,
//! which builds without a C compiler, else ring with the `tls-ring`
//! feature).
//!
//! The rustls configuration is built once per client from [`TlsConfig`];
//! each connection runs the handshake on its TCP stream. Handshake and
//! certificate failures become [`Error::Tls`] with a reason that says what
//! to check, since rustls' own wording ("invalid peer certificate:
//! UnknownIssuer") rarely tells a user which setting is wrong.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, InconsistentKeys, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};
use crate::security::{TlsConfig, TlsProvider, TrustedRoots};

/// The rustls crypto provider `choice` names: graviola where it has code for
/// the CPU (no C compiler needed), ring with `tls-ring` (which needs one).
/// One that is not in this build is a configuration error.
fn crypto_provider(choice: TlsProvider) -> Result<rustls::crypto::CryptoProvider> {
    match choice {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        TlsProvider::Graviola => Ok(rustls_graviola::default_provider()),
        #[cfg(feature = "tls-ring")]
        TlsProvider::Ring => Ok(rustls::crypto::ring::default_provider()),
        #[allow(unreachable_patterns)] // with both in the build
        missing => Err(Error::Config(missing.unavailable_reason().unwrap_or_else(
            || format!("the TLS crypto provider `{missing}` is not in this build"),
        ))),
    }
}

#[cfg(all(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    not(feature = "tls-ring")
))]
compile_error!(
    "the `tls` feature's no-C crypto provider (graviola) covers x86_64 and aarch64; \
     on this target enable `tls-ring` (which needs a C compiler)"
);

/// Who is at the other end of a TLS connection: failures name it, and say
/// which setting to check for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A Kafka broker.
    Broker,
    /// A schema registry (HTTPS).
    Registry,
}

impl Peer {
    /// "the broker", "the schema registry".
    fn the(self) -> &'static str {
        match self {
            Peer::Broker => "the broker",
            Peer::Registry => "the schema registry",
        }
    }

    /// Where to set the CA that signed its certificate.
    fn trust_hint(self) -> &'static str {
        match self {
            Peer::Broker => "set the broker's CA with TlsConfig::ca_pem (KAFKA_TRUSTED_CERT)",
            Peer::Registry => {
                "set the registry's CA with TlsConfig::ca_pem in the TlsConfig given to \
                 SchemaRegistryBuilder::tls"
            }
        }
    }

    /// What to check when it does not speak TLS.
    fn plaintext_hint(self) -> &'static str {
        match self {
            Peer::Broker => {
                "is this a plaintext listener? (use TLS only with SSL or SASL_SSL listeners)"
            }
            Peer::Registry => {
                "does the registry serve plain HTTP at this port? (then use an http:// URL)"
            }
        }
    }

    /// What to check when it refuses our client certificate.
    fn client_cert_hint(self) -> &'static str {
        match self {
            Peer::Broker => {
                "this listener wants mutual TLS with a certificate its truststore accepts: \
                 set TlsConfig::client_cert_pem (KAFKA_CLIENT_CERT, KAFKA_CLIENT_CERT_KEY)"
            }
            Peer::Registry => {
                "the registry wants mutual TLS with a certificate it trusts: \
                 set TlsConfig::client_cert_pem in the TlsConfig given to \
                 SchemaRegistryBuilder::tls"
            }
        }
    }
}

/// A ready rustls client configuration and the name override, if any.
#[derive(Clone)]
pub(crate) struct TlsContext {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Build the rustls configuration: trusted roots and client certificate.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self> {
        let provider = Arc::new(crypto_provider(config.provider)?);
        let roots = root_store(&config.roots)?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS protocol versions: {e}")))?;
        let builder = if config.verify_hostname {
            builder.with_root_certificates(roots)
        } else {
            let chain =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| Error::Config(format!("TLS certificate verifier: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(chain)))
        };
        let client = match &config.client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(chain.as_bytes())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| {
                            Error::Config(format!(
                                "client certificate is not valid PEM: {}",
                                pem_error(&e)
                            ))
                        })?;
                if chain.is_empty() {
                    return Err(Error::Config(
                        "client certificate PEM holds no CERTIFICATE block".into(),
                    ));
                }
                // Never echo key material: the parser's message is enough.
                let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|e| {
                    Error::Config(format!(
                        "client private key is not an unencrypted PEM key \
                         (PKCS#8, PKCS#1 or SEC1): {}",
                        pem_error(&e)
                    ))
                })?;
                let key = provider.key_provider.load_private_key(key).map_err(|e| {
                    Error::Config(format!(
                        "client private key cannot be read ({e}); it must be an intact \
                         RSA (2048 to 8192 bits), ECDSA (P-256 or P-384) or Ed25519 key"
                    ))
                })?;
                let certified = CertifiedKey::new(chain, key);
                match certified.keys_match() {
                    // A key that cannot tell its public half: the handshake
                    // will show whether it fits.
                    Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
                    Err(e) => {
                        return Err(Error::Config(format!(
                            "client certificate and key do not go together ({e}): \
                             the key is not the one the certificate was issued for"
                        )))
                    }
                }
                check_signs(certified.key.as_ref())?;
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            server_name: config.server_name.clone(),
        })
    }

    /// Run the TLS handshake on `tcp` for `peer` at `addr` (`host:port`).
    /// Failures are [`Error::Tls`] with `addr` and a reason naming `peer`.
    pub(crate) async fn handshake(
        &self,
        peer: Peer,
        addr: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|_| Error::Tls {
                broker: addr.to_string(),
                reason: format!("`{host}` is not a valid TLS server name"),
            })?,
        };
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Tls {
                broker: addr.to_string(),
                reason: describe_io(peer, &e),
            })
    }
}

/// Signs a fixed message with the client key, so that a damaged key (one
/// that parses, and whose public half matches the certificate, but whose
/// private parts do not fit together, as after a changed character in the
/// middle of the PEM text) is a configuration error when the client is
/// built, not a failed handshake on every connection. (graviola checks each
/// RSA signature against the public key as it makes it.)
fn check_signs(key: &dyn SigningKey) -> Result<()> {
    use SignatureScheme as S;
    let schemes = [
        S::RSA_PSS_SHA256,
        S::RSA_PKCS1_SHA256,
        S::ECDSA_NISTP256_SHA256,
        S::ECDSA_NISTP384_SHA384,
        S::ED25519,
    ];
    // A key for none of these: the broker's offer decides in the handshake.
    let Some(signer) = key.choose_scheme(&schemes) else {
        return Ok(());
    };
    signer
        .sign(b"kastellan: client key check")
        .map(drop)
        .map_err(|e| {
            Error::Config(format!(
                "client private key is damaged: it cannot sign ({e}); \
                 copy it again from where it was issued"
            ))
        })
}

/// Verifies a broker's certificate like rustls' WebPKI verifier (chain to a
/// trusted root, validity dates, signatures) but accepts one that names
/// another host: [`TlsConfig::verify_hostname`]`(false)`. The WebPKI
/// verifier checks the name last, after the chain, so passing over only
/// that error keeps every other check.
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn root_store(roots: &TrustedRoots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        TrustedRoots::Pem(pem) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| {
                        Error::Config(format!("trusted CA is not valid PEM: {}", pem_error(&e)))
                    })?;
            if certs.is_empty() {
                return Err(Error::Config(
                    "trusted CA PEM holds no CERTIFICATE block".into(),
                ));
            }
            for cert in certs {
                store.add(cert).map_err(|e| {
                    Error::Config(format!("trusted CA certificate is not usable: {e}"))
                })?;
            }
        }
        TrustedRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // One odd certificate in the system store is no reason to fail.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(Error::Config(format!(
                    "no usable CA certificates in the system trust store{}; \
                     give the CA to trust with TlsConfig::ca_pem",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )));
            }
        }
    }
    Ok(store)
}

/// What is wrong with PEM text, in words (the parser shows the missing END
/// marker as a list of byte values).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::MissingSectionEnd { end_marker } => format!(
            "the `-----END {}-----` line is missing",
            String::from_utf8_lossy(end_marker)
        ),
        other => other.to_string(),
    }
}

fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A user-facing reason for a TLS failure carried in an I/O error.
pub(crate) fn describe_io(peer: Peer, e: &std::io::Error) -> String {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return describe(peer, tls);
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => format!(
            "{} closed the connection during the TLS handshake ({e}); {}",
            peer.the(),
            peer.plaintext_hint()
        ),
        _ => format!("TLS handshake failed: {e}"),
    }
}

/// A user-facing reason for a rustls error.
pub(crate) fn describe(peer: Peer, e: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    let the = peer.the();
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "{the}'s certificate is not signed by a trusted CA ({e}); {}",
                peer.trust_hint()
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("{the}'s certificate has expired ({e}); {the} needs a new certificate")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("{the}'s certificate is not valid yet ({e}); check clocks")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "{the}'s certificate does not name the host we connected to ({e}); \
                     connect by a name the certificate lists, or set TlsConfig::server_name"
                )
            }
            _ => format!("{the}'s certificate was rejected: {e}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::CertificateUnknown
            | Alert::UnknownCA => format!(
                "{the} rejected our client certificate (alert {alert:?}); {}",
                peer.client_cert_hint()
            ),
            Alert::CertificateExpired => {
                format!("{the} rejected our client certificate as expired (alert {alert:?})")
            }
            _ => format!("{the} ended the TLS session with alert {alert:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "{the} did not answer with TLS ({e}); {}",
            peer.plaintext_hint()
        ),
        _ => format!("TLS failed: {e}"),
    }
}

/// The rustls error inside `e` or its sources (through I/O errors, which
/// hide their inner error from `source()`), if any.
pub(crate) fn rustls_error_in<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_a_config_error_without_key_material() {
        let e = TlsContext::new(&TlsConfig::new().ca_pem("not pem")).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = TlsContext::new(
            &TlsConfig::new()
                .ca_pem(include_str!("../../tests/data/ca.pem"))
                .client_cert_pem("nope", "SECRET-KEY-TEXT"),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("SECRET-KEY-TEXT"), "{e}");
    }

    #[test]
    fn a_missing_end_line_is_named() {
        let ca = include_str!("../../tests/data/ca.pem").replace("-----END CERTIFICATE-----", "");
        let e = TlsContext::new(&TlsConfig::new().ca_pem(ca)).unwrap_err();
        assert!(
            e.to_string()
                .contains("the `-----END CERTIFICATE-----` line is missing"),
            "{e}"
        );
    }

    #[test]
    fn each_provider_in_the_build_makes_a_context_and_others_are_config_errors() {
        for provider in [TlsProvider::Graviola, TlsProvider::Ring] {
            let config = TlsConfig::new()
                .ca_pem(include_str!("../../tests/data/ca.pem"))
                .provider(provider);
            match TlsContext::new(&config) {
                Ok(_) => assert!(provider.is_available(), "{provider} built"),
                Err(Error::Config(reason)) => {
                    assert!(!provider.is_available(), "{provider}: {reason}");
                    assert!(reason.contains(provider.name()), "{reason}");
                }
                Err(other) => panic!("{provider}: not a config error: {other}"),
            }
        }
        assert!(
            TlsContext::new(&TlsConfig::new().ca_pem(include_str!("../../tests/data/ca.pem")))
                .is_ok()
        );
    }

    #[test]
    fn failures_name_the_peer_and_its_settings() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let broker = describe(Peer::Broker, &unknown);
        assert!(broker.starts_with("the broker's certificate"), "{broker}");
        assert!(broker.contains("KAFKA_TRUSTED_CERT"), "{broker}");
        let registry = describe(Peer::Registry, &unknown);
        assert!(
            registry.starts_with("the schema registry's certificate is not signed"),
            "{registry}"
        );
        assert!(
            registry.contains("SchemaRegistryBuilder::tls"),
            "{registry}"
        );
        assert!(!registry.contains("broker"), "{registry}");
        assert!(!registry.contains("KAFKA_"), "{registry}");

        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let registry = describe(Peer::Registry, &alert);
        assert!(
            registry.starts_with("the schema registry rejected our client certificate"),
            "{registry}"
        );
        assert!(!registry.contains("listener"), "{registry}");

        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let registry = describe_io(Peer::Registry, &eof);
        assert!(registry.contains("http:// URL"), "{registry}");
        assert!(!registry.contains("listener"), "{registry}");
        assert!(describe_io(Peer::Broker, &eof).contains("plaintext listener"));

        // Found through an I/O error and a wrapper, as hyper reports it.
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connection error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrapper(std::io::Error::other(alert.clone()));
        assert_eq!(rustls_error_in(&wrapped), Some(&alert));
        assert_eq!(rustls_error_in(&Wrapper(eof)), None);
    }

    #[test]
    fn host_names_come_from_addresses() {
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("broker.example:9093"), "broker.example");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }
}
