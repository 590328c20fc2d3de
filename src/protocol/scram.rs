//! The client side of SASL SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802,
//! RFC 7677), without channel binding, as Kafka uses it.
//!
//! The exchange: client-first (`n,,n=user,r=nonce`), the server's first
//! message (`r=nonce+server,s=salt,i=iterations`), client-final with the
//! proof that we know the password, and the server's final message, whose
//! signature proves the server knows it too (checked, so a man in the middle
//! cannot fake a successful login).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256, Sha512};

/// Fewest PBKDF2 iterations we accept: RFC 7677's minimum, and Kafka's.
const MIN_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations we accept (Kafka allows up to 16384); a hostile
/// server must not make us spin for minutes.
const MAX_ITERATIONS: u32 = 1_000_000;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// The mechanism's SASL name.
    #[allow(dead_code)]
    pub(crate) fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => hmac_with::<Hmac<Sha256>>(key, data),
            ScramMechanism::Sha512 => hmac_with::<Hmac<Sha512>>(key, data),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// PBKDF2 with this mechanism's HMAC (RFC 5802's `Hi`).
    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = vec![0; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
            ScramMechanism::Sha512 => {
                let mut out = vec![0; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
                out
            }
        }
    }
}

fn hmac_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Why a SCRAM exchange failed. Messages never contain the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScramError {
    /// A server message does not follow RFC 5802.
    #[error("malformed SCRAM server message: {0}")]
    Malformed(String),
    /// The server's nonce does not extend ours.
    #[error("the server's SCRAM nonce does not start with ours")]
    NonceMismatch,
    /// The iteration count is outside what we accept.
    #[error("SCRAM iteration count {0} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    /// The server reported an error in its final message.
    #[error("the server refused the SCRAM proof: {0}")]
    Server(String),
    /// The server's signature is wrong: it does not know our credentials.
    #[error("the server's SCRAM signature is wrong; it may not be the broker it claims to be")]
    BadServerSignature,
    /// Messages came in the wrong order.
    #[error("SCRAM messages out of order")]
    OutOfOrder,
}

/// One SCRAM exchange from the client's side.
pub(crate) struct ScramClient {
    mechanism: ScramMechanism,
    username: String,
    password: String,
    nonce: String,
    /// The server signature we expect, once client-final is computed.
    expected_server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A new exchange with a fresh random nonce.
    pub(crate) fn new(mechanism: ScramMechanism, username: &str, password: &str) -> Self {
        let bytes: [u8; 24] = rand::rng().random();
        Self::with_nonce(mechanism, username, password, &BASE64.encode(bytes))
    }

    /// A new exchange with a given nonce (tests).
    pub(crate) fn with_nonce(
        mechanism: ScramMechanism,
        username: &str,
        password: &str,
        nonce: &str,
    ) -> Self {
        Self {
            mechanism,
            username: username.to_string(),
            password: password.to_string(),
            nonce: nonce.to_string(),
            expected_server_signature: None,
        }
    }

    fn client_first_bare(&self) -> String {
        let name = self.username.replace('=', "=3D").replace(',', "=2C");
        format!("n={name},r={}", self.nonce)
    }

    /// The client-first message.
    pub(crate) fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// The client-final message answering `server_first`.
    pub(crate) fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("server-first is not UTF-8".into()))?;
        let attrs = attributes(server_first)?;
        if attrs.iter().any(|(k, _)| *k == 'm') {
            return Err(ScramError::Malformed(
                "server-first asks for an extension we do not know".into(),
            ));
        }
        let nonce = find(&attrs, 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = BASE64
            .decode(find(&attrs, 's')?)
            .map_err(|_| ScramError::Malformed("salt is not base64".into()))?;
        let iterations: u32 = find(&attrs, 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count is not a number".into()))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let m = self.mechanism;
        let salted = m.salted_password(&self.password, &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let client_signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = m.hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(m.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Check the server-final message.
    pub(crate) fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self
            .expected_server_signature
            .as_ref()
            .ok_or(ScramError::OutOfOrder)?;
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| ScramError::Malformed("server-final is not UTF-8".into()))?;
        let attrs = attributes(server_final)?;
        if let Ok(error) = find(&attrs, 'e') {
            return Err(ScramError::Server(error.to_string()));
        }
        let signature = BASE64
            .decode(find(&attrs, 'v')?)
            .map_err(|_| ScramError::Malformed("server signature is not base64".into()))?;
        if &signature == expected {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

/// `k=v` attributes of a SCRAM message, in order.
fn attributes(message: &str) -> Result<Vec<(char, &str)>, ScramError> {
    message
        .split(',')
        .map(|part| {
            let mut chars = part.chars();
            match (chars.next(), chars.next()) {
                (Some(k), Some('=')) if k.is_ascii_alphabetic() => Ok((k, &part[2..])),
                _ => Err(ScramError::Malformed(format!(
                    "`{}` is not a k=v attribute",
                    part.chars().take(16).collect::<String>()
                ))),
            }
        })
        .collect()
}

fn find<'a>(attrs: &[(char, &'a str)], key: char) -> Result<&'a str, ScramError> {
    attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .ok_or_else(|| ScramError::Malformed(format!("attribute `{key}` missing")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc7677_test_vector() {
        let mut c = ScramClient::with_nonce(
            ScramMechanism::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = c.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(
            c.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        );
        assert_eq!(
            c.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".into()))
        );
    }

    #[test]
    fn usernames_are_escaped() {
        let c = ScramClient::with_nonce(ScramMechanism::Sha512, "a=b,c", "p", "n");
        assert_eq!(c.client_first(), b"n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let mut c = ScramClient::with_nonce(ScramMechanism::Sha256, "u", "secret-pw", "abc");
        for (msg, want_nonce) in [
            (&b"r=xyz123,s=AAAA,i=4096"[..], true),
            (b"r=abc,s=AAAA,i=4096", true),
            (b"r=abcd,s=AAAA,i=1", false),
            (b"r=abcd,s=AAAA,i=4294967295", false),
            (b"r=abcd,s=!!,i=4096", false),
            (b"r=abcd,i=4096", false),
            (b"m=ext,r=abcd,s=AAAA,i=4096", false),
            (b"\xff\xfe", false),
            (b"", false),
        ] {
            let e = c.client_final(msg).unwrap_err();
            assert_eq!(matches!(e, ScramError::NonceMismatch), want_nonce, "{e}");
            assert!(!e.to_string().contains("secret-pw"));
        }
        assert_eq!(
            ScramClient::new(ScramMechanism::Sha256, "u", "p").verify_server_final(b"v=AAAA"),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = ScramClient::with_nonce(ScramMechanism::Sha512, "u", "secret-pw", "abc");
        c.client_final(b"r=abcdef,s=AAAA,i=4096").unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret-pw") && !shown.contains("signature"),
            "{shown}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_server_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut c = ScramClient::with_nonce(ScramMechanism::Sha256, "u", "p", "abc");
            let _ = c.client_final(&bytes);
            let _ = c.verify_server_final(&bytes);
        }
    }
}
