//! Errors returned by kastellan.
//!
//! Every error says what failed and, where the broker answered, which broker,
//! which API and which Kafka error code. [`Error::is_retriable`] tells whether
//! trying the same operation again can help.

use std::time::Duration;

/// Result alias used throughout kastellan.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error code returned by a broker, with its context.
///
/// ```
/// use kastellan::BrokerError;
/// let e = BrokerError::new("127.0.0.1:9092", "CreateTopics", 36, None);
/// assert_eq!(e.name(), "TOPIC_ALREADY_EXISTS");
/// assert!(!e.is_retriable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    broker: String,
    api: &'static str,
    code: i16,
    message: Option<String>,
}

impl BrokerError {
    /// Wrap a broker error code returned by `api` from `broker`.
    pub fn new(
        broker: impl Into<String>,
        api: &'static str,
        code: i16,
        message: Option<String>,
    ) -> Self {
        Self {
            broker: broker.into(),
            api,
            code,
            message,
        }
    }

    /// The broker that answered (`host:port`, or `unknown` when the error came
    /// through a path that does not say).
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// The Kafka API the request was for, e.g. `Produce` or `CreateTopics`.
    pub fn api(&self) -> &'static str {
        self.api
    }

    /// The numeric Kafka error code.
    pub fn code(&self) -> i16 {
        self.code
    }

    /// The Kafka name of the error code, e.g. `UNKNOWN_TOPIC_OR_PARTITION`.
    pub fn name(&self) -> String {
        crate::protocol::error_codes::name(self.code)
    }

    /// Whether Kafka documents this error as retriable.
    pub fn is_retriable(&self) -> bool {
        crate::protocol::error_codes::is_retriable(self.code)
    }

    /// The error message the broker attached, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "broker {} answered {} with {} (code {}, {})",
            self.broker,
            self.api,
            self.name(),
            self.code,
            if self.is_retriable() {
                "retriable"
            } else {
                "not retriable"
            }
        )?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BrokerError {}

/// Everything that can go wrong in kastellan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No connection could be made to a broker.
    #[error("cannot connect to broker {broker}: {reason}")]
    Connect {
        /// `host:port` that was tried.
        broker: String,
        /// What went wrong.
        reason: String,
    },

    /// The TLS handshake with a broker failed, or the broker's TLS answer
    /// showed a problem (untrusted or expired certificate, wrong host name,
    /// client certificate refused, TLS on one side only). Not retriable:
    /// the configuration or the certificates need fixing.
    #[error("TLS with broker {broker} failed: {reason}")]
    Tls {
        /// `host:port` of the broker.
        broker: String,
        /// What went wrong and what to check.
        reason: String,
    },

    /// The broker refused SASL authentication (wrong credentials, a
    /// mechanism it does not enable). Not retriable.
    #[error("SASL {mechanism} authentication with broker {broker} failed: {reason}")]
    Authentication {
        /// `host:port` of the broker.
        broker: String,
        /// The mechanism tried.
        mechanism: &'static str,
        /// The broker's explanation, or ours.
        reason: String,
    },

    /// None of the bootstrap brokers could be reached before the deadline.
    #[error("no broker reachable among [{brokers}] within {elapsed:?}; last error: {last}")]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// How long we tried.
        elapsed: Duration,
        /// The last connection error.
        last: String,
    },

    /// An operation kept failing with errors that may go away by themselves
    /// (a broker restarting, a leader moving, a coordinator loading) until
    /// the client's retry deadline
    /// ([`ClientConfig::retry_deadline`](crate::ClientConfig::retry_deadline)) passed.
    /// `last` is the error of the last attempt.
    #[error("{operation} gave up after {elapsed:?} and {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        /// What was being done, e.g. `Metadata` or `CreateTopics`.
        operation: &'static str,
        /// Wall-clock time from the first attempt until giving up.
        elapsed: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Error>,
    },

    /// A broker connection failed while a request was outstanding.
    #[error("connection to broker {broker} lost: {reason}")]
    ConnectionLost {
        /// `host:port` of the broker.
        broker: String,
        /// What happened.
        reason: String,
    },

    /// A request got no answer within the request timeout.
    #[error("{api} request to broker {broker} timed out after {timeout:?}")]
    RequestTimeout {
        /// `host:port` of the broker.
        broker: String,
        /// Kafka API name.
        api: &'static str,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// The broker answered with an error code.
    #[error(transparent)]
    Broker(#[from] BrokerError),

    /// The broker does not support any version of an API we need.
    #[error("broker {broker} does not support {api} versions {ours}; it supports {theirs}")]
    UnsupportedVersion {
        /// `host:port` of the broker.
        broker: String,
        /// Kafka API name.
        api: &'static str,
        /// Versions kastellan can speak.
        ours: String,
        /// Versions the broker advertised.
        theirs: String,
    },

    /// Bytes from the broker could not be decoded, or a request could not be encoded.
    #[error("protocol error talking to {broker}: {reason}")]
    Protocol {
        /// `host:port` of the broker.
        broker: String,
        /// What could not be encoded or decoded.
        reason: String,
    },

    /// The topic does not exist and auto-creation is off.
    #[error("topic `{0}` does not exist (create it with Admin::create_topic, or enable auto-creation on the producer)")]
    UnknownTopic(String),

    /// The partition does not exist in the topic.
    #[error("topic `{topic}` has no partition {partition} (it has {count})")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: i32,
        /// Number of partitions the topic has.
        count: i32,
    },

    /// The topic to create exists already.
    #[error("topic `{0}` already exists")]
    TopicAlreadyExists(String),

    /// A record is larger than the producer or the broker accepts.
    #[error("record of {size} bytes is larger than the limit of {limit} bytes ({which})")]
    RecordTooLarge {
        /// Encoded size estimate of the record.
        size: usize,
        /// The limit that applies.
        limit: usize,
        /// Which limit: the producer's `max_batch_bytes` or the broker's `message.max.bytes`.
        which: &'static str,
    },

    /// A value could not be serialized or deserialized as JSON.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),

    /// A record batch uses a compression codec this build cannot decode.
    #[error("cannot decode records of {topic}/{partition} at offset {offset}: {reason}")]
    Decode {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset that was being fetched.
        offset: i64,
        /// What failed, e.g. an unsupported compression codec.
        reason: String,
    },

    /// A produce did not get an acknowledgement before the delivery timeout.
    #[error("record to {topic}/{partition} not acknowledged within {timeout:?}: {last}")]
    DeliveryTimeout {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: i32,
        /// The delivery timeout.
        timeout: Duration,
        /// The last error seen while retrying.
        last: String,
    },

    /// The client was closed before the operation finished.
    #[error("client closed: {0}")]
    Closed(&'static str),

    /// A producer's partition worker failed (it panicked) while it held the
    /// record. The record may or may not have been stored. Later records to
    /// the partition are served by a new worker.
    #[error("producer worker for {topic}/{partition} failed: {reason}; the record may or may not have been stored")]
    WorkerFailed {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: i32,
        /// What happened, with the panic's message.
        reason: String,
    },

    /// [`Producer::close`](crate::Producer::close) reached its deadline with
    /// records still unacknowledged; they were failed with [`Error::Closed`].
    #[error("producer closed with {unresolved} records not acknowledged within {timeout:?}; they were failed and may or may not have been stored")]
    CloseTimeout {
        /// The deadline given to `close`.
        timeout: Duration,
        /// How many records were failed at the deadline.
        unresolved: usize,
    },

    /// A call to the schema registry failed: the registry answered with an
    /// error (`status` and, where its body carried one, the registry's
    /// `code`, such as 40401 subject not found, 40403 schema not found,
    /// 409 incompatible schema, 42201 invalid schema), or gave no usable
    /// answer (`status` is `None`: no connection, a timeout, a closed
    /// connection, TLS refused). Retriable for 5xx answers, 429, timeouts
    /// and connection failures; not for other 4xx answers or TLS
    /// certificate problems.
    #[error("schema registry {url}: {}{message}", describe_registry_status(*.status, *.code))]
    Registry {
        /// The URL called (no credentials).
        url: String,
        /// The HTTP status, if an answer came.
        status: Option<u16>,
        /// The registry's `error_code`, if its answer carried one.
        code: Option<i32>,
        /// The registry's message, or what went wrong.
        message: String,
        /// Whether repeating the call later may succeed.
        retriable: bool,
    },

    /// A value does not fit its format: a record's bytes are not a valid
    /// frame (a Confluent frame that is empty, shorter than 5 bytes, or with
    /// a magic byte other than 0; a schema id the registry does not know),
    /// the body does not decode with the writer's schema or cannot be read
    /// with the reader's, or a value to send does not fit its schema. Not
    /// retriable: for a consumer, such a record is poison, and
    /// [`HandlerError`](crate::group::HandlerError) routes it to the
    /// dead-letter topic.
    #[error("{format}: {reason}")]
    Serialization {
        /// The format, e.g. `Avro` or `Confluent wire format`.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// An error from the data-path client, with its context.
    #[error("{context}: {message}")]
    Client {
        /// What kastellan was doing.
        context: String,
        /// The underlying error.
        message: String,
        /// Whether retrying may help.
        retriable: bool,
    },
}

/// The start of a registry error's text: the HTTP status and the
/// registry's error code, where there are.
fn describe_registry_status(status: Option<u16>, code: Option<i32>) -> String {
    match (status, code) {
        (Some(s), Some(c)) => format!("HTTP {s}, error code {c}: "),
        (Some(s), None) => format!("HTTP {s}: "),
        (None, _) => String::new(),
    }
}

impl Error {
    /// Whether repeating the same operation later may succeed.
    ///
    /// ```
    /// use kastellan::Error;
    /// assert!(!Error::Config("x".into()).is_retriable());
    /// ```
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Unreachable { .. }
            | Error::ConnectionLost { .. }
            | Error::RequestTimeout { .. }
            | Error::DeliveryTimeout { .. }
            | Error::RetriesExhausted { .. }
            | Error::WorkerFailed { .. } => true,
            Error::Broker(b) => b.is_retriable(),
            Error::Client { retriable, .. } | Error::Registry { retriable, .. } => *retriable,
            _ => false,
        }
    }

    /// A copy of this error for each of several waiters (one failed batch
    /// fails every record in it). JSON errors, which cannot be cloned, are
    /// carried over by their message.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Config(s) => Error::Config(s.clone()),
            Error::Connect { broker, reason } => Error::Connect {
                broker: broker.clone(),
                reason: reason.clone(),
            },
            Error::Tls { broker, reason } => Error::Tls {
                broker: broker.clone(),
                reason: reason.clone(),
            },
            Error::Authentication {
                broker,
                mechanism,
                reason,
            } => Error::Authentication {
                broker: broker.clone(),
                mechanism,
                reason: reason.clone(),
            },
            Error::Unreachable {
                brokers,
                elapsed,
                last,
            } => Error::Unreachable {
                brokers: brokers.clone(),
                elapsed: *elapsed,
                last: last.clone(),
            },
            Error::RetriesExhausted {
                operation,
                elapsed,
                attempts,
                last,
            } => Error::RetriesExhausted {
                operation,
                elapsed: *elapsed,
                attempts: *attempts,
                last: Box::new(last.duplicate()),
            },
            Error::ConnectionLost { broker, reason } => Error::ConnectionLost {
                broker: broker.clone(),
                reason: reason.clone(),
            },
            Error::RequestTimeout {
                broker,
                api,
                timeout,
            } => Error::RequestTimeout {
                broker: broker.clone(),
                api,
                timeout: *timeout,
            },
            Error::Broker(b) => Error::Broker(b.clone()),
            Error::UnsupportedVersion {
                broker,
                api,
                ours,
                theirs,
            } => Error::UnsupportedVersion {
                broker: broker.clone(),
                api,
                ours: ours.clone(),
                theirs: theirs.clone(),
            },
            Error::Protocol { broker, reason } => Error::Protocol {
                broker: broker.clone(),
                reason: reason.clone(),
            },
            Error::UnknownTopic(t) => Error::UnknownTopic(t.clone()),
            Error::UnknownPartition {
                topic,
                partition,
                count,
            } => Error::UnknownPartition {
                topic: topic.clone(),
                partition: *partition,
                count: *count,
            },
            Error::TopicAlreadyExists(t) => Error::TopicAlreadyExists(t.clone()),
            Error::RecordTooLarge { size, limit, which } => Error::RecordTooLarge {
                size: *size,
                limit: *limit,
                which,
            },
            Error::Json(e) => Error::Client {
                context: "JSON".into(),
                message: e.to_string(),
                retriable: false,
            },
            Error::Decode {
                topic,
                partition,
                offset,
                reason,
            } => Error::Decode {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                reason: reason.clone(),
            },
            Error::DeliveryTimeout {
                topic,
                partition,
                timeout,
                last,
            } => Error::DeliveryTimeout {
                topic: topic.clone(),
                partition: *partition,
                timeout: *timeout,
                last: last.clone(),
            },
            Error::Closed(s) => Error::Closed(s),
            Error::WorkerFailed {
                topic,
                partition,
                reason,
            } => Error::WorkerFailed {
                topic: topic.clone(),
                partition: *partition,
                reason: reason.clone(),
            },
            Error::CloseTimeout {
                timeout,
                unresolved,
            } => Error::CloseTimeout {
                timeout: *timeout,
                unresolved: *unresolved,
            },
            Error::Registry {
                url,
                status,
                code,
                message,
                retriable,
            } => Error::Registry {
                url: url.clone(),
                status: *status,
                code: *code,
                message: message.clone(),
                retriable: *retriable,
            },
            Error::Serialization { format, reason } => Error::Serialization {
                format,
                reason: reason.clone(),
            },
            Error::Client {
                context,
                message,
                retriable,
            } => Error::Client {
                context: context.clone(),
                message: message.clone(),
                retriable: *retriable,
            },
        }
    }

    /// The broker error code, if the broker answered with one (for
    /// [`Error::RetriesExhausted`], the last attempt's).
    pub fn broker_code(&self) -> Option<i16> {
        match self {
            Error::Broker(b) => Some(b.code()),
            Error::RetriesExhausted { last, .. } => last.broker_code(),
            _ => None,
        }
    }
}
