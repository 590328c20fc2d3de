//! Records as kastellan hands them to readers and handlers.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::Result;

/// One record header. Kafka headers are ordered key/value pairs; keys are UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value bytes.
    pub value: Bytes,
}

/// A record read from Kafka, with where it came from.
///
/// ```
/// use kastellan::Record;
/// let r = Record::new("orders", 0, 42).with_value(r#"{"id":7}"#);
/// let v: serde_json::Value = r.json().unwrap();
/// assert_eq!(v["id"], 7);
/// assert_eq!(r.offset, 42);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Key bytes, if the record has a key.
    pub key: Option<Bytes>,
    /// Value bytes; `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Headers in the order the producer wrote them.
    pub headers: Vec<Header>,
    /// Record timestamp, milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl Record {
    /// An empty record at a position; mostly for tests and examples.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp: 0,
        }
    }

    /// Set the value (builder style).
    pub fn with_value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Set the key (builder style).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a header (builder style).
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// The first header with this name.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_ref())
    }

    /// The value parsed as JSON. A missing value parses as JSON `null`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(
            self.value.as_deref().unwrap_or(b"null"),
        )?)
    }

    /// The key as UTF-8 text, if present and valid.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value as UTF-8 text, if present and valid.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}
