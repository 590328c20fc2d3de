//! The registry's HTTP transport.
//!
//! Why hyper: it is the HTTP/1.1 implementation most Rust HTTP clients sit
//! on, it is pure Rust, and its connection-level API runs on any stream we
//! give it. So we connect the TCP socket ourselves and, for `https`, run the
//! TLS handshake through the library's own rustls configuration
//! ([`TlsContext`](crate::protocol::tls::TlsContext), the graviola provider):
//! the default build and the `tls` build stay free of C (reqwest's TLS
//! options bring ring, aws-lc or OpenSSL, and its connection pool and
//! redirect machinery are more than a registry client needs).
//!
//! Each call opens one connection and closes it after the answer: registry
//! calls happen only on cache misses (start-up, a new schema id), so a
//! connection pool would save little. The whole call (connect, TLS, request,
//! answer and body) runs under one timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::security::Secret;

/// The media types the registry answers with, preferred first.
const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, \
                      application/vnd.schemaregistry+json; q=0.9, application/json; q=0.5";
/// The media type of request bodies.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The largest answer body read (schemas are text; a registry's answers
/// are far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where the registry is: parsed once from the URL given to the builder.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    /// Host name or address, without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The path prefix, without a trailing `/` (empty for the root).
    pub(crate) base_path: String,
    /// Credentials given in the URL (`http://user:password@host`).
    pub(crate) userinfo: Option<(String, Secret)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl Endpoint {
    /// Parse `http[s]://[user:password@]host[:port][/prefix]`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("schema registry URL `{url}`: {why}"));
        let (https, rest) = if let Some(rest) = strip_prefix_ci(url, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ci(url, "http://") {
            (false, rest)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("must not have a query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((info, hostport)) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                (
                    Some((percent_decode(user), Secret::new(percent_decode(password)))),
                    hostport,
                )
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad(&format!("`{p}` is not a port number")))?,
        };
        Ok(Self {
            https,
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
            userinfo,
        })
    }

    /// `host:port` as a socket or TLS peer name (IPv6 in brackets).
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without credentials, for messages.
    pub(crate) fn shown(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority(),
            self.base_path
        )
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Decode `%XX` escapes (URL credentials); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escape a path segment (a subject name) so that any text is one segment.
pub(crate) fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The HTTP side of a registry client: endpoint, credentials, TLS, timeout.
#[derive(Clone)]
pub(crate) struct Transport {
    pub(crate) endpoint: Endpoint,
    /// The `Authorization` header value, if any.
    authorization: Option<Secret>,
    timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<crate::protocol::tls::TlsContext>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("endpoint", &self.endpoint)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Transport {
    pub(crate) fn new(
        endpoint: Endpoint,
        authorization: Option<Secret>,
        timeout: Duration,
        #[cfg(feature = "tls")] tls: Option<crate::protocol::tls::TlsContext>,
    ) -> Self {
        Self {
            endpoint,
            authorization,
            timeout,
            #[cfg(feature = "tls")]
            tls,
        }
    }

    /// The full URL of `path` (which starts with `/`), for messages.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.shown())
    }

    /// A transport failure (no HTTP answer) for `path`.
    pub(crate) fn failure(&self, path: &str, message: String, retriable: bool) -> Error {
        Error::Registry {
            url: self.url(path),
            status: None,
            code: None,
            message,
            retriable,
        }
    }

    /// Send one request and read the whole answer, all within the timeout.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(self.failure(
                path,
                format!(
                    "no complete answer within {:?} (the timeout covers connecting, \
                     the request and the answer's body)",
                    self.timeout
                ),
                true,
            )),
        }
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer> {
        let authority = self.endpoint.authority();
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| self.failure(path, format!("cannot connect to {authority}: {e}"), true))?;
        let _ = tcp.set_nodelay(true);
        let request = self.request(method, path, body)?;
        if self.endpoint.https {
            #[cfg(feature = "tls")]
            {
                let Some(tls) = &self.tls else {
                    return Err(Error::Config(
                        "an https schema registry URL needs TLS settings".into(),
                    ));
                };
                let peer = crate::protocol::tls::Peer::Registry;
                let stream = tls
                    .handshake(peer, &authority, tcp)
                    .await
                    .map_err(|e| match e {
                        Error::Tls { reason, .. } => self.failure(
                            path,
                            format!("TLS with the registry failed: {reason}"),
                            false,
                        ),
                        other => other,
                    })?;
                return self.exchange(path, stream, request).await;
            }
            #[cfg(not(feature = "tls"))]
            {
                return Err(Error::Config(
                    "an https schema registry URL needs kastellan's `tls` feature".into(),
                ));
            }
        }
        self.exchange(path, tcp, request).await
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>> {
        let host = if (self.endpoint.https && self.endpoint.port == 443)
            || (!self.endpoint.https && self.endpoint.port == 80)
        {
            if self.endpoint.host.contains(':') {
                format!("[{}]", self.endpoint.host)
            } else {
                self.endpoint.host.clone()
            }
        } else {
            self.endpoint.authority()
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint.base_path))
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, ACCEPT)
            .header(
                hyper::header::USER_AGENT,
                concat!("kastellan/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, auth.expose());
        }
        let body = match body {
            Some(b) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, CONTENT_TYPE);
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        builder.body(body).map_err(|e| {
            Error::Config(format!(
                "cannot make a request to the schema registry for `{path}`: {e}"
            ))
        })
    }

    /// Run one request on a connected stream: hyper's connection future and
    /// the request are driven together, so nothing outlives the call.
    async fn exchange<S>(
        &self,
        path: &str,
        stream: S,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let lost = |what: &str, e: &(dyn std::error::Error + 'static)| {
            // A TLS alert after the handshake (with TLS 1.3 a server refuses
            // a client certificate only then) is no passing fault.
            #[cfg(feature = "tls")]
            if let Some(tls) = crate::protocol::tls::rustls_error_in(e) {
                let reason =
                    crate::protocol::tls::describe(crate::protocol::tls::Peer::Registry, tls);
                return self.failure(
                    path,
                    format!("TLS with the registry failed: {reason}"),
                    false,
                );
            }
            let mut message = format!("{what}: {}", chain(e));
            // A TLS server closes a plain-HTTP connection without a word.
            if !self.endpoint.https
                && e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_incomplete_message)
            {
                message.push_str(
                    "; if the registry serves HTTPS at this port, use an https:// URL \
                     (and SchemaRegistryBuilder::tls)",
                );
            }
            self.failure(path, message, true)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| lost("HTTP connection failed", &e))?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| lost("the registry did not answer", &e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| lost("reading the registry's answer failed", &*e))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        tokio::select! {
            answer = &mut exchange => answer,
            ended = &mut conn => match ended {
                Err(e) => Err(lost("the connection to the registry failed", &e)),
                // The connection is done; the answer (if it came) is buffered.
                Ok(()) => exchange.await,
            },
        }
    }
}

/// An error and its sources, joined (hyper's own text is often just
/// "connection error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_prefixes() {
        let e = Endpoint::parse("http://localhost:8081").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("localhost", 8081, "")
        );
        let e = Endpoint::parse("http://reg:8080/apis/ccompat/v7/").unwrap();
        assert_eq!(e.base_path, "/apis/ccompat/v7");
        assert_eq!(e.shown(), "http://reg:8080/apis/ccompat/v7");
        let e = Endpoint::parse("HTTPS://[::1]/x").unwrap();
        assert!(e.https);
        assert_eq!((e.host.as_str(), e.port), ("::1", 443));
        assert_eq!(e.authority(), "[::1]:443");
        let e = Endpoint::parse("http://user:p%40ss@reg").unwrap();
        let (user, password) = e.userinfo.clone().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("user", "p@ss"));
        assert!(!e.shown().contains("p@ss"));
        for bad in [
            "reg:8081",
            "ftp://x",
            "http://",
            "http://h:port",
            "http://h/x?y=1",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn subjects_become_single_path_segments() {
        assert_eq!(percent_encode_segment("orders-value"), "orders-value");
        assert_eq!(percent_encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(percent_decode("a%2Fb%20c%zz"), "a/b c%zz");
    }
}
