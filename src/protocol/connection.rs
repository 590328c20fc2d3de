//! One multiplexed TCP connection to one broker.
//!
//! Requests are framed (`i32` size prefix) and tagged with a correlation id
//! by the caller, then handed to the connection's writer task, which writes
//! whole frames in the order they were handed over; a reader task matches
//! each response to its waiting caller by correlation id. So many requests
//! can be in flight at once on one socket, the way Kafka brokers expect
//! clients to pipeline, and a caller that gives up (a timeout, a `select!`)
//! never leaves half a frame on the socket: the writer finishes or skips
//! whole frames only, and the waiter of a cancelled request is removed when
//! its future is dropped.
//!
//! A request that gets no answer within its timeout closes the connection
//! (as the Java client does): a broker that stopped answering, or a peer
//! that vanished without closing the socket, would otherwise hold every
//! later request on it. Users of the pool then open a fresh one.
//!
//! Connecting (TCP, TLS, ApiVersions, SASL) runs under one deadline. On
//! connect we run ApiVersions once and afterwards pick, per request, the
//! highest version both sides support.
//!
//! When the broker announces a SASL session lifetime (KIP-368,
//! `connections.max.reauth.ms`), a task of the connection re-authenticates
//! on the same socket before the session ends, while the connection stays
//! in use: the broker would otherwise close it at the first request after
//! the end. During the exchange the authentication gate holds other
//! requests back, so nothing comes between its SASL requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes, VersionRange};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::api::KafkaApi;
use super::error_codes::UNSUPPORTED_VERSION;
use super::stats::WireCounters;
use super::validate;
use crate::error::{BrokerError, Error, Result};

/// Largest response frame we accept. Anything bigger is a corrupt stream or
/// not Kafka at all (for example a TLS alert or an HTTP server).
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// What a response buffer starts with: most answers fit; larger ones grow
/// as their bytes arrive.
const FIRST_READ_BYTES: usize = 1024 * 1024;

/// Settings a connection needs.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
    pub client_id: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// TLS and SASL, shared by every connection of a client.
    pub security: Arc<SecurityContext>,
    /// The client's wire counters; connections count their opening and
    /// closing here.
    pub counters: Arc<super::stats::WireCounters>,
}

/// TLS and SASL settings in the form connections use them.
#[derive(Debug, Default)]
pub(crate) struct SecurityContext {
    #[cfg(feature = "tls")]
    pub tls: Option<super::tls::TlsContext>,
    pub sasl: Option<crate::security::SaslConfig>,
}

impl SecurityContext {
    /// Prepare the settings of `config` (parses certificates once).
    pub(crate) fn new(config: &crate::ClientConfig) -> Result<Self> {
        #[cfg(feature = "tls")]
        let tls = match config.tls_config() {
            Some(t) => Some(super::tls::TlsContext::new(t)?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        if config.tls_config().is_some() {
            return Err(Error::Config(
                "TLS is configured but kastellan was built without its `tls` feature".into(),
            ));
        }
        Ok(Self {
            #[cfg(feature = "tls")]
            tls,
            sasl: config.sasl_config().cloned(),
        })
    }

    fn tls_on(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
}

/// The two directions of a connection's byte stream: a plain TCP socket's
/// halves, or a TLS stream's.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

type Waiter = oneshot::Sender<Result<Bytes>>;

/// Requests waiting for their answers. Shared by the callers (insert on
/// send, remove when they give up), the writer task (skips frames whose
/// caller is gone) and the reader task (removes on answer); guarded by its
/// own mutex, never held across an `.await`.
#[derive(Default)]
struct Pending {
    waiters: HashMap<i32, Waiter>,
    /// Set once the connection is unusable; new requests fail at once with it.
    closed: Option<String>,
}

/// A whole request frame on its way to the writer task.
struct Outgoing {
    correlation_id: i32,
    frame: BytesMut,
}

/// Frames queued for the writer task per connection: enough to keep a
/// pipeline full, bounded so a stalled socket pushes back on its callers.
const WRITE_QUEUE: usize = 64;

/// A connection to one broker with negotiated API versions.
pub(crate) struct BrokerConnection {
    addr: String,
    /// Frames for the writer task, in the order they reach the socket.
    outgoing: mpsc::Sender<Outgoing>,
    pending: Arc<Mutex<Pending>>,
    next_correlation_id: AtomicI32,
    versions: HashMap<i16, VersionRange>,
    settings: ConnectionSettings,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// Counted as open in the client's counters (set once fully opened).
    counted: bool,
    /// With SASL: every request takes it shared while it is queued;
    /// re-authentication takes it exclusively for its whole exchange (see
    /// the module docs). `None` without SASL.
    auth_gate: Option<tokio::sync::RwLock<()>>,
    /// The task that re-authenticates before each session ends; set once
    /// after connecting when the broker announced a lifetime, aborted on
    /// drop.
    reauth: Mutex<Option<JoinHandle<()>>>,
}

/// The waiter of one request, removed from [`Pending`] when the request's
/// future is dropped before the answer came (a timeout, a `select!`), so
/// abandoned requests leave nothing behind.
struct Waiting {
    pending: Arc<Mutex<Pending>>,
    correlation_id: i32,
    rx: oneshot::Receiver<Result<Bytes>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.pending).waiters.remove(&self.correlation_id);
    }
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for BrokerConnection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(task) = self
            .reauth
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        if self.counted {
            WireCounters::add(&self.settings.counters.connections_closed, 1);
        }
    }
}

impl BrokerConnection {
    /// Connect to `addr`, run the TLS handshake and negotiate API versions,
    /// then authenticate with SASL, as the settings ask; all of it within
    /// the connect timeout or `within`, whichever is shorter.
    pub(crate) async fn connect(
        addr: &str,
        settings: ConnectionSettings,
        within: Duration,
    ) -> Result<Arc<Self>> {
        let timeout = settings.connect_timeout.min(within);
        let deadline = tokio::time::Instant::now() + timeout;
        let security = Arc::clone(&settings.security);
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Connect {
                broker: addr.to_string(),
                reason: format!("no TCP connection within {timeout:?}"),
            })?
            .map_err(|e| Error::Connect {
                broker: addr.to_string(),
                reason: e.to_string(),
            })?;
        // Kafka requests are small and latency-sensitive; never wait for Nagle.
        stream.set_nodelay(true).map_err(|e| Error::Connect {
            broker: addr.to_string(),
            reason: e.to_string(),
        })?;
        let (read_half, write_half) =
            Self::secure(addr, stream, &security, deadline, timeout).await?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = tokio::spawn(read_loop(read_half, Arc::clone(&pending)));
        let (outgoing, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(queue, write_half, Arc::clone(&pending)));
        let mut conn = BrokerConnection {
            addr: addr.to_string(),
            outgoing,
            pending,
            next_correlation_id: AtomicI32::new(1),
            versions: HashMap::new(),
            settings,
            reader,
            writer,
            counted: false,
            auth_gate: security.sasl.as_ref().map(|_| tokio::sync::RwLock::new(())),
            reauth: Mutex::new(None),
        };
        let negotiated = tokio::time::timeout_at(deadline, conn.negotiate_versions()).await;
        conn.versions = match negotiated {
            Ok(Ok(versions)) => versions,
            Ok(Err(e)) => return Err(conn.first_answer_failed(e, &security)),
            Err(_) => {
                return Err(Error::Connect {
                    broker: addr.to_string(),
                    reason: format!(
                        "TCP connected but no ApiVersions answer within {timeout:?}; \
                         is this a Kafka listener of the right security protocol?"
                    ),
                })
            }
        };
        let mut session = None;
        if let Some(sasl) = &security.sasl {
            let authenticated = async {
                let prepared = super::sasl::prepare(addr, sasl, Duration::ZERO).await?;
                super::sasl::authenticate(&conn, sasl, prepared).await
            };
            session = Some(
                tokio::time::timeout_at(deadline, authenticated)
                    .await
                    .map_err(|_| Error::Authentication {
                        broker: addr.to_string(),
                        mechanism: sasl.mechanism().name(),
                        reason: format!("no answer within {timeout:?} of connecting"),
                    })??,
            );
        }
        WireCounters::add(&conn.settings.counters.connections_opened, 1);
        conn.counted = true;
        let conn = Arc::new(conn);
        if let Some(lifetime) = session.and_then(|s| s.lifetime) {
            let task = tokio::spawn(reauthenticate_in_time(Arc::downgrade(&conn), lifetime));
            *lock_reauth(&conn.reauth) = Some(task);
        }
        Ok(conn)
    }

    /// Run the SASL exchange again on this connection (KIP-368): the
    /// credentials first (a token provider may take a while, and nothing
    /// waits for it), then the exchange under the exclusive gate. Returns
    /// the new session. An OAUTHBEARER token must stay valid for half the
    /// session that ends (else the provider is asked for a new one): the
    /// broker ends a session when its token expires.
    async fn reauthenticate(&self, ending: Duration) -> Result<super::sasl::Session> {
        let (Some(sasl), Some(gate)) = (&self.settings.security.sasl, &self.auth_gate) else {
            return Ok(super::sasl::Session { lifetime: None });
        };
        let prepared = super::sasl::prepare(&self.addr, sasl, ending / 2).await?;
        let _exclusive = gate.write().await;
        let session = super::sasl::authenticate(self, sasl, prepared).await?;
        WireCounters::add(&self.settings.counters.reauthentications, 1);
        Ok(session)
    }

    /// Make the connection unusable: waiting and later requests fail with
    /// `reason`, and users of the pool open a fresh one.
    fn close(&self, reason: &str) {
        fail_all(&self.pending, reason);
        self.reader.abort();
        self.writer.abort();
    }

    /// The stream halves: TLS on top of `stream` when configured.
    async fn secure(
        addr: &str,
        stream: TcpStream,
        security: &SecurityContext,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(ReadHalf, WriteHalf)> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &security.tls {
            let tls_stream = tokio::time::timeout_at(
                deadline,
                tls.handshake(super::tls::Peer::Broker, addr, stream),
            )
            .await
            .map_err(|_| Error::Tls {
                broker: addr.to_string(),
                reason: format!("no TLS handshake within {timeout:?}; is this a TLS listener?"),
            })??;
            let (r, w) = tokio::io::split(tls_stream);
            return Ok((Box::new(r), Box::new(w)));
        }
        let _ = (addr, security, deadline, timeout);
        let (r, w) = stream.into_split();
        Ok((Box::new(r), Box::new(w)))
    }

    /// Explain a failure of the very first request, which is where a
    /// security mismatch between client and listener shows.
    fn first_answer_failed(&self, e: Error, security: &SecurityContext) -> Error {
        let Error::ConnectionLost { reason, .. } = &e else {
            return e;
        };
        if let Some(tls_reason) = reason.strip_prefix(TLS_PREFIX) {
            return Error::Tls {
                broker: self.addr.clone(),
                reason: tls_reason.to_string(),
            };
        }
        if reason.starts_with(TLS_LISTENER) {
            return Error::Tls {
                broker: self.addr.clone(),
                reason: reason.clone(),
            };
        }
        if !security.tls_on() {
            return Error::Connect {
                broker: self.addr.clone(),
                reason: format!(
                    "{reason}; the broker dropped our first request: \
                     if this listener uses TLS (SSL or SASL_SSL), turn TLS on"
                ),
            };
        }
        e
    }

    /// `host:port` of the broker.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection has failed and must be replaced.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.pending).closed.is_some()
    }

    /// Pick the highest version of `R` that both sides support.
    pub(crate) fn version_for<R: Request + KafkaApi>(&self) -> Result<i16> {
        let ours = R::VERSIONS;
        let ours = VersionRange {
            min: ours.min,
            max: ours.max.min(R::MAX_VERSION),
        };
        let theirs =
            self.versions
                .get(&R::KEY)
                .copied()
                .ok_or_else(|| Error::UnsupportedVersion {
                    broker: self.addr.clone(),
                    api: R::NAME,
                    ours: ours.to_string(),
                    theirs: "none".into(),
                })?;
        let max = ours.max.min(theirs.max);
        if max < ours.min.max(theirs.min) {
            return Err(Error::UnsupportedVersion {
                broker: self.addr.clone(),
                api: R::NAME,
                ours: ours.to_string(),
                theirs: theirs.to_string(),
            });
        }
        Ok(max)
    }

    /// Send a request at the negotiated version and wait for its response.
    pub(crate) async fn request<R: Request + KafkaApi>(&self, request: &R) -> Result<R::Response> {
        let version = self.version_for::<R>()?;
        self.request_at(request, version).await
    }

    /// Send a request at an explicit version.
    pub(crate) async fn request_at<R: Request + KafkaApi>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<R::Response> {
        self.request_with_timeout(request, version, self.settings.request_timeout)
            .await
    }

    /// Send a request at an explicit version with its own timeout (JoinGroup
    /// may legitimately block for the whole rebalance timeout).
    pub(crate) async fn request_with_timeout<R: Request + KafkaApi>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        self.request_gated(request, version, timeout, true).await
    }

    /// A SASL request: like [`request`](Self::request), but past the
    /// authentication gate, which its caller holds or nobody needs yet
    /// (see the [`super::sasl`] module docs).
    pub(crate) async fn auth_request<R: Request + KafkaApi>(
        &self,
        request: &R,
    ) -> Result<R::Response> {
        let version = self.version_for::<R>()?;
        self.request_gated(request, version, self.settings.request_timeout, false)
            .await
    }

    async fn request_gated<R: Request + KafkaApi>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
        gated: bool,
    ) -> Result<R::Response> {
        let (correlation_id, frame) = self.encode_request(request, version)?;
        let answer = tokio::time::timeout(timeout, async {
            let waiting = self.enqueue(correlation_id, frame, gated).await?;
            self.await_frame(waiting).await
        })
        .await;
        let frame = self.within_timeout::<R>(answer, timeout)?;
        self.decode_response::<R>(frame, version)
    }

    /// Queue a request now, at the negotiated version, and return a future
    /// of its answer. Requests queued this way reach the broker in the
    /// order of the `send` calls, and the broker handles the requests of one
    /// connection in order, so a caller can keep several in flight (produce
    /// pipelining) without reordering them. Dropping the returned future
    /// abandons the answer; the request itself is still written whole, or
    /// not at all if its turn had not come.
    pub(crate) async fn send<R>(
        self: &Arc<Self>,
        request: &R,
    ) -> Result<impl std::future::Future<Output = Result<R::Response>> + Send + 'static>
    where
        R: Request + KafkaApi,
        R::Response: Send + 'static,
    {
        let version = self.version_for::<R>()?;
        let timeout = self.settings.request_timeout;
        let (correlation_id, frame) = self.encode_request(request, version)?;
        let waiting =
            match tokio::time::timeout(timeout, self.enqueue(correlation_id, frame, true)).await {
                Ok(waiting) => waiting?,
                Err(_) => return Err(self.timed_out::<R>(timeout)),
            };
        let conn = Arc::clone(self);
        Ok(async move {
            let answer = tokio::time::timeout(timeout, conn.await_frame(waiting)).await;
            let frame = conn.within_timeout::<R>(answer, timeout)?;
            conn.decode_response::<R>(frame, version)
        })
    }

    fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            broker: self.addr.clone(),
            reason: reason.into(),
        }
    }

    /// Frame a request: size prefix, header with a fresh correlation id and
    /// the body, encoded straight into one buffer.
    fn encode_request<R: Request + KafkaApi>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<(i32, BytesMut)> {
        let api_key = ApiKey::try_from(R::KEY).map_err(|_| self.protocol("unknown API key"))?;
        // Size the frame up front: a produce request holds a whole record
        // batch, and growing a buffer to that size would copy it repeatedly.
        let body_size = request.compute_size(version).unwrap_or(0);
        self.encode_frame(
            R::NAME,
            R::KEY,
            version,
            api_key.request_header_version(version),
            body_size,
            |buf| {
                request
                    .encode(buf, version)
                    .map_err(|e| format!("cannot encode {} v{version}: {e}", R::NAME))
            },
        )
    }

    fn encode_frame(
        &self,
        api: &'static str,
        api_key: i16,
        version: i16,
        header_version: i16,
        body_size: usize,
        body: impl FnOnce(&mut BytesMut) -> std::result::Result<(), String>,
    ) -> Result<(i32, BytesMut)> {
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(api_key)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_string(self.settings.client_id.clone())));
        let mut frame = BytesMut::with_capacity(body_size + 256);
        frame.put_i32(0);
        header
            .encode(&mut frame, header_version)
            .map_err(|e| self.protocol(format!("cannot encode request header: {e}")))?;
        body(&mut frame).map_err(|e| self.protocol(e))?;
        let size = i32::try_from(frame.len() - 4)
            .map_err(|_| self.protocol(format!("{api} request too large")))?;
        frame[0..4].copy_from_slice(&size.to_be_bytes());
        Ok((correlation_id, frame))
    }

    /// Register a waiter for `correlation_id` and queue the frame for the
    /// writer task. The waiter is removed again when the returned
    /// [`Waiting`] is dropped without an answer. A `gated` request waits
    /// while a re-authentication runs (the gate is held until the frame is
    /// queued, so the writer never puts it between SASL requests).
    async fn enqueue(&self, correlation_id: i32, frame: BytesMut, gated: bool) -> Result<Waiting> {
        let _shared = match (&self.auth_gate, gated) {
            (Some(gate), true) => Some(gate.read().await),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(Error::ConnectionLost {
                    broker: self.addr.clone(),
                    reason: reason.clone(),
                });
            }
            pending.waiters.insert(correlation_id, tx);
        }
        let waiting = Waiting {
            pending: Arc::clone(&self.pending),
            correlation_id,
            rx,
        };
        let queued = self.outgoing.send(Outgoing {
            correlation_id,
            frame,
        });
        if queued.await.is_err() {
            return Err(Error::ConnectionLost {
                broker: self.addr.clone(),
                reason: lock(&self.pending)
                    .closed
                    .clone()
                    .unwrap_or_else(|| "connection closed".into()),
            });
        }
        Ok(waiting)
    }

    /// Wait for the response frame the reader task hands to `waiting`.
    async fn await_frame(&self, mut waiting: Waiting) -> Result<Bytes> {
        match (&mut waiting.rx).await {
            Ok(result) => result.map_err(|e| match e {
                Error::ConnectionLost { reason, .. } => Error::ConnectionLost {
                    broker: self.addr.clone(),
                    reason,
                },
                other => other,
            }),
            Err(_) => Err(Error::ConnectionLost {
                broker: self.addr.clone(),
                reason: "connection closed".into(),
            }),
        }
    }

    /// Turn an elapsed timeout into [`Error::RequestTimeout`]; the dropped
    /// future has already removed its waiter.
    fn within_timeout<R: KafkaApi>(
        &self,
        answer: std::result::Result<Result<Bytes>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<Bytes> {
        answer.unwrap_or_else(|_| Err(self.timed_out::<R>(timeout)))
    }

    /// A request got no answer in time: the broker stopped answering this
    /// connection, or the peer is gone without closing it. Close the
    /// connection so nobody else waits on it.
    fn timed_out<R: KafkaApi>(&self, timeout: Duration) -> Error {
        let reason = format!("{} request got no answer within {timeout:?}", R::NAME);
        fail_all(&self.pending, &reason);
        self.reader.abort();
        self.writer.abort();
        Error::RequestTimeout {
            broker: self.addr.clone(),
            api: R::NAME,
            timeout,
        }
    }

    fn decode_response<R: Request + KafkaApi>(
        &self,
        frame: Bytes,
        version: i16,
    ) -> Result<R::Response> {
        decode_frame::<R>(frame, version).map_err(|e| self.protocol(e))
    }

    /// ApiVersions: try the newest version we know; a broker that does not
    /// know it answers UNSUPPORTED_VERSION in the v0 layout, listing the
    /// versions it does support (KIP-511), and we retry with v0.
    async fn negotiate_versions(&self) -> Result<HashMap<i16, VersionRange>> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kastellan"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response = match self.api_versions_at(&request, 3).await? {
            r if r.error_code == UNSUPPORTED_VERSION => self.api_versions_at(&request, 0).await?,
            r => r,
        };
        if response.error_code != 0 {
            return Err(
                BrokerError::new(&self.addr, "ApiVersions", response.error_code, None).into(),
            );
        }
        Ok(response
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect())
    }

    async fn api_versions_at(
        &self,
        request: &ApiVersionsRequest,
        version: i16,
    ) -> Result<ApiVersionsResponse> {
        let key = ApiKey::ApiVersions;
        let (correlation_id, frame) = self.encode_frame(
            "ApiVersions",
            key as i16,
            version,
            key.request_header_version(version),
            0,
            |buf| {
                request
                    .encode(buf, version)
                    .map_err(|e| format!("cannot encode ApiVersions: {e}"))
            },
        )?;
        let timeout = self.settings.request_timeout;
        let answer = tokio::time::timeout(timeout, async {
            let waiting = self.enqueue(correlation_id, frame, false).await?;
            self.await_frame(waiting).await
        })
        .await;
        let frame = self.within_timeout::<ApiVersionsRequest>(answer, timeout)?;
        decode_api_versions(frame, version).map_err(|e| self.protocol(e))
    }
}

/// Decode the frame (after its size prefix) that answers an `R` request
/// sent at `version`. The frame is checked against the response's schema
/// first, so no length field can make the decoder allocate more than the
/// frame's size warrants (see [`validate`]); then `kafka-protocol` decodes it.
pub(crate) fn decode_frame<R: Request + KafkaApi>(
    mut frame: Bytes,
    version: i16,
) -> std::result::Result<R::Response, String> {
    let api_key = ApiKey::try_from(R::KEY).map_err(|_| format!("unknown API key {}", R::KEY))?;
    let header_version = api_key.response_header_version(version);
    validate::check_response(R::KEY, version, header_version, &frame).map_err(|e| e.to_string())?;
    // The correlation id was matched by the reader task; skip the header.
    ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| format!("bad {} response header: {e}", R::NAME))?;
    R::Response::decode(&mut frame, version)
        .map_err(|e| format!("cannot decode {} v{version} response: {e}", R::NAME))
}

/// Decode an ApiVersions answer to a request sent at `version`, checked
/// like every other frame ([`decode_frame`]). ApiVersions responses always
/// use header v0; a broker that does not know `version` answers in the v0
/// layout (KIP-511), so a frame that is not a valid `version` answer is
/// tried as v0.
pub(crate) fn decode_api_versions(
    mut frame: Bytes,
    version: i16,
) -> std::result::Result<ApiVersionsResponse, String> {
    const KEY: i16 = ApiKey::ApiVersions as i16;
    validate::check_header(KEY, version, 0, &frame).map_err(|e| e.to_string())?;
    ResponseHeader::decode(&mut frame, 0)
        .map_err(|e| format!("bad ApiVersions response header: {e}"))?;
    let decode = |v: i16| {
        validate::check_body(KEY, v, &frame, 0).map_err(|e| e.to_string())?;
        ApiVersionsResponse::decode(&mut frame.clone(), v)
            .map_err(|e| format!("cannot decode ApiVersions: {e}"))
    };
    match decode(version) {
        Ok(r) => Ok(r),
        Err(_) if version > 0 => decode(0),
        Err(e) => Err(e),
    }
}

/// Re-authenticate the connection before each SASL session ends, until
/// the connection is gone or closed, or the broker stops announcing a
/// lifetime. A failed re-authentication closes the connection (the broker
/// would at the session's end); its users then connect afresh, which
/// authenticates from the start and reports any error.
async fn reauthenticate_in_time(conn: Weak<BrokerConnection>, mut lifetime: Duration) {
    loop {
        tokio::time::sleep(reauthenticate_after(lifetime)).await;
        let Some(conn) = conn.upgrade() else { return };
        if conn.is_closed() {
            return;
        }
        let within = conn.settings.connect_timeout.min(lifetime);
        match tokio::time::timeout(within, conn.reauthenticate(lifetime)).await {
            Ok(Ok(session)) => {
                tracing::debug!(broker = %conn.addr, next_lifetime = ?session.lifetime, "re-authenticated");
                match session.lifetime {
                    Some(next) => lifetime = next,
                    None => return,
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(broker = %conn.addr, error = %e, "re-authentication failed; closing the connection");
                conn.close(&format!("re-authentication failed: {e}"));
                return;
            }
            Err(_) => {
                tracing::warn!(broker = %conn.addr, "re-authentication got no answer within {within:?}; closing the connection");
                conn.close(&format!(
                    "re-authentication got no answer within {within:?}"
                ));
                return;
            }
        }
    }
}

/// When to re-authenticate a session of `lifetime`: at a random point
/// between 85% and 95% of it (as Kafka's Java client does, so a client's
/// connections do not all re-authenticate at once), but at least a second
/// before its end where the lifetime allows: a Fetch long poll queued ahead
/// of the SaslHandshake delays it, and the broker closes a connection whose
/// session has ended when the handshake arrives.
fn reauthenticate_after(lifetime: Duration) -> Duration {
    let spread = lifetime.mul_f64(0.85 + 0.1 * rand::random::<f64>());
    let margin = lifetime.saturating_sub(Duration::from_secs(1));
    spread.min(margin.max(lifetime / 2))
}

fn lock_reauth(
    reauth: &Mutex<Option<JoinHandle<()>>>,
) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
    reauth.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock cannot leave the map inconsistent (each
    // operation is a single insert/remove), so recover from poisoning.
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_all(pending: &Mutex<Pending>, reason: &str) {
    let mut p = lock(pending);
    if p.closed.is_none() {
        p.closed = Some(reason.to_string());
    }
    for (_, waiter) in p.waiters.drain() {
        let _ = waiter.send(Err(Error::ConnectionLost {
            broker: String::new(),
            reason: reason.to_string(),
        }));
    }
}

/// Prefix of a connection-lost reason that carries a TLS failure.
const TLS_PREFIX: &str = "TLS: ";
/// Start of the reason given when a plaintext connection gets a TLS answer.
const TLS_LISTENER: &str = "the broker answered with TLS";

/// The reason for a failed read; TLS failures (an alert from the broker)
/// get an explanation and the [`TLS_PREFIX`].
fn read_failure(e: &std::io::Error) -> String {
    #[cfg(feature = "tls")]
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return format!(
            "{TLS_PREFIX}{}",
            super::tls::describe(super::tls::Peer::Broker, tls)
        );
    }
    format!("read failed: {e}")
}

/// Writes queued frames whole, in queue order, and flushes when the queue
/// runs dry. A frame whose caller gave up before its turn is skipped.
async fn write_loop(
    mut queue: mpsc::Receiver<Outgoing>,
    mut writer: WriteHalf,
    pending: Arc<Mutex<Pending>>,
) {
    while let Some(out) = queue.recv().await {
        let wanted = {
            let p = lock(&pending);
            if p.closed.is_some() {
                break;
            }
            p.waiters.contains_key(&out.correlation_id)
        };
        if !wanted {
            tracing::debug!(
                correlation_id = out.correlation_id,
                "request abandoned before it was written"
            );
            continue;
        }
        let mut written = writer.write_all(&out.frame).await;
        if written.is_ok() && queue.is_empty() {
            written = writer.flush().await;
        }
        if let Err(e) = written {
            fail_all(&pending, &format!("write failed: {e}"));
            break;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop(mut reader: ReadHalf, pending: Arc<Mutex<Pending>>) {
    let reason = loop {
        let size = match reader.read_i32().await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "broker closed the connection".to_string()
            }
            Err(e) => break read_failure(&e),
        };
        // A TLS record starts with its content type (0x15 alert, 0x16
        // handshake) and version 0x03: a TLS listener answering plaintext.
        let head = size.to_be_bytes();
        if matches!(head[0], 0x15 | 0x16) && head[1] == 0x03 {
            break format!(
                "{TLS_LISTENER}: this listener expects TLS (SSL or SASL_SSL); turn TLS on"
            );
        }
        let size = match usize::try_from(size) {
            Ok(s) if (4..=MAX_FRAME_BYTES).contains(&s) => s,
            _ => {
                break format!(
                    "response frame size {size} is not plausible; \
                     the peer may not speak Kafka's protocol"
                )
            }
        };
        // Read into spare capacity: no zero-filling of large fetch
        // responses. The buffer grows with the bytes that arrive (doubling,
        // from 1 MiB), so a size prefix alone never sizes an allocation: a
        // peer that announces 256 MiB and sends 10 bytes costs 1 MiB.
        let mut buf = BytesMut::with_capacity(size.min(FIRST_READ_BYTES));
        let mut failed = None;
        while buf.len() < size {
            if buf.len() == buf.capacity() {
                buf.reserve((size - buf.len()).min(buf.len()));
            }
            match (&mut reader)
                .take((size - buf.len()) as u64)
                .read_buf(&mut buf)
                .await
            {
                Ok(0) => {
                    failed = Some("broker closed the connection mid-response".to_string());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    failed = Some(read_failure(&e));
                    break;
                }
            }
        }
        if let Some(reason) = failed {
            break reason;
        }
        let mut frame = buf.freeze();
        let correlation_id = frame.clone().get_i32();
        let waiter = lock(&pending).waiters.remove(&correlation_id);
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(std::mem::take(&mut frame)));
            }
            // The caller gave up (timeout); the response is dropped.
            None => tracing::debug!(correlation_id, "response for an abandoned request"),
        }
    };
    tracing::debug!(%reason, "broker connection closed");
    fail_all(&pending, &reason);
}

#[cfg(test)]
mod tests {
    //! How a connection reacts to peers that are not a working Kafka
    //! listener. Real broker behaviour is covered by the integration tests.
    use super::*;
    use tokio::net::TcpListener;

    fn settings() -> ConnectionSettings {
        ConnectionSettings {
            client_id: "test".into(),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(500),
            security: Arc::new(SecurityContext::default()),
            counters: Arc::default(),
        }
    }

    async fn peer(reply: &'static [u8], close: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(reply).await;
            if !close {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tls_answer_to_plaintext_says_tls_is_needed() {
        // A TLS alert record starts 0x15 0x03 0x03.
        let addr = peer(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50], false).await;
        let err = BrokerConnection::connect(&addr, settings(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("expects TLS"), "{err}");
        assert!(!err.is_retriable());
    }

    #[tokio::test]
    async fn implausible_frame_size_is_a_clear_error() {
        let addr = peer(&[0x7f, 0x00, 0x00, 0x00, 0x01], false).await;
        let err = BrokerConnection::connect(&addr, settings(), Duration::from_secs(5))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not plausible"), "{msg}");
    }

    #[tokio::test]
    async fn peer_closing_is_connection_lost() {
        let addr = peer(b"", true).await;
        let err = BrokerConnection::connect(&addr, settings(), Duration::from_secs(5))
            .await
            .unwrap_err();
        // Retriable (brokers restart), with a hint for the TLS-listener case.
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("turn TLS on"), "{err}");
        assert!(err.is_retriable());
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let addr = peer(b"", false).await;
        let err = BrokerConnection::connect(&addr, settings(), Duration::from_secs(5))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no ApiVersions answer") || msg.contains("timed out"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn garbage_response_body_is_a_protocol_error() {
        // A well-framed response with the right correlation id but a body
        // that is not an ApiVersions response.
        let addr = peer(&[0, 0, 0, 6, 0, 0, 0, 1, 0xff, 0xff], false).await;
        let err = BrokerConnection::connect(&addr, settings(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Protocol { .. } | Error::Connect { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_cancelled_request_never_leaves_part_of_a_frame() {
        use crate::protocol::test_peer;
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{MetadataRequest, ProduceRequest, TopicName};

        let mut peer = test_peer::start().await;
        let conn = Arc::new(
            BrokerConnection::connect(&peer.addr, settings(), Duration::from_secs(5))
                .await
                .expect("connect"),
        );
        // The peer stops reading, so a request bigger than the socket
        // buffers cannot be written whole.
        peer.reading.send(false).expect("peer");
        let big = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(vec![0u8; 32 << 20])))])]);
        let version = conn.version_for::<ProduceRequest>().expect("version");
        tokio::select! {
            _ = conn.request_with_timeout(&big, version, Duration::from_secs(60)) => {
                panic!("the peer is not reading; the request cannot complete")
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        // The caller is gone: nothing waits for its answer any more.
        assert!(lock(&conn.pending).waiters.is_empty());
        assert!(
            !conn.is_closed(),
            "cancelling a request keeps the connection"
        );
        // Queued behind the cut-off produce request; its caller keeps
        // waiting (a request abandoned before its turn is not written).
        let _next = conn
            .send(&MetadataRequest::default())
            .await
            .expect("queued");
        peer.reading.send(true).expect("peer");
        let produce = tokio::time::timeout(Duration::from_secs(30), peer.frames.recv())
            .await
            .expect("the cut-off request is finished whole")
            .expect("produce frame");
        assert_eq!(produce.api_key, 0);
        assert!(produce.len > 32 << 20, "{produce:?}");
        let metadata = tokio::time::timeout(Duration::from_secs(30), peer.frames.recv())
            .await
            .expect("the next frame arrives whole")
            .expect("frame");
        assert_eq!(metadata.api_key, 3, "{metadata:?}");
        assert_eq!(metadata.correlation_id, produce.correlation_id + 1);
    }

    #[tokio::test]
    async fn a_request_timeout_closes_the_connection_and_forgets_its_waiters() {
        use crate::protocol::test_peer;
        use kafka_protocol::messages::MetadataRequest;

        let peer = test_peer::start().await;
        let conn = BrokerConnection::connect(&peer.addr, settings(), Duration::from_secs(5))
            .await
            .expect("connect");
        // The peer reads but never answers anything but ApiVersions.
        let err = conn
            .request(&MetadataRequest::default())
            .await
            .expect_err("no answer");
        assert!(matches!(err, Error::RequestTimeout { .. }), "{err:?}");
        assert!(conn.is_closed());
        assert!(lock(&conn.pending).waiters.is_empty());
        let again = conn.request(&MetadataRequest::default()).await.unwrap_err();
        assert!(matches!(again, Error::ConnectionLost { .. }), "{again:?}");
    }
}
