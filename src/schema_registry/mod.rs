//! A client for the Confluent-compatible schema registry REST API
//! (feature `schema-registry`): Confluent Schema Registry, Apicurio's
//! `ccompat` API, Karapace, Redpanda.
//!
//! [`SchemaRegistry`] registers and looks up schemas, fetches them by id,
//! lists subjects and versions, checks compatibility and reads or sets a
//! subject's compatibility level. Schemas by id and ids by (subject, schema)
//! are cached, so the serializers in [`avro`](crate::avro) call the registry
//! only the first time they meet a subject or a schema id. Every call has a
//! timeout (connect, request and answer together; 10 s unless set).
//!
//! ```no_run
//! # async fn demo() -> kastellan::Result<()> {
//! use kastellan::schema_registry::{Schema, SchemaRegistry};
//!
//! let registry = SchemaRegistry::builder("http://localhost:8081")
//!     .basic_auth("svc-orders", "s3cret")
//!     .build()?;
//! let schema = Schema::avro(r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"}]}"#);
//! let id = registry.register("pings-value", &schema).await?;
//! assert_eq!(registry.schema_by_id(id).await?.text, schema.text);
//! # Ok(()) }
//! ```
//!
//! Schema references (`references`) are carried to and from the registry
//! as they are; this client does not fetch the referenced schemas.

pub mod confluent;
mod http;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::security::Secret;
#[cfg(feature = "tls")]
use crate::security::TlsConfig;

use http::{percent_encode_segment, Endpoint, Transport};

/// A schema's id in the registry: the 4-byte number in the Confluent wire
/// format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SchemaId(pub u32);

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The kind of a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum SchemaType {
    /// Apache Avro (the registry's default when no type is given).
    #[default]
    Avro,
    /// JSON Schema.
    Json,
    /// Protocol Buffers.
    Protobuf,
}

/// A reference from a schema to another registered schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaReference {
    /// The name the referring schema uses (for Avro, the type's full name).
    pub name: String,
    /// The subject the referenced schema is registered under.
    pub subject: String,
    /// The referenced schema's version in that subject.
    pub version: i32,
}

/// A schema as the registry stores it: its type, its text and the schemas
/// it refers to (carried, not resolved, by this client).
///
/// ```
/// use kastellan::schema_registry::{Schema, SchemaType};
/// let s = Schema::avro(r#""string""#);
/// assert_eq!(s.schema_type, SchemaType::Avro);
/// assert!(s.references.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema {
    /// The kind of schema.
    pub schema_type: SchemaType,
    /// The schema text (for Avro, its JSON).
    pub text: String,
    /// Other registered schemas this one refers to.
    pub references: Vec<SchemaReference>,
}

impl Schema {
    /// A schema of `schema_type` with this text and no references.
    pub fn new(schema_type: SchemaType, text: impl Into<String>) -> Self {
        Self {
            schema_type,
            text: text.into(),
            references: Vec::new(),
        }
    }

    /// An Avro schema (JSON text) with no references.
    pub fn avro(text: impl Into<String>) -> Self {
        Self::new(SchemaType::Avro, text)
    }

    /// The same schema with these references.
    pub fn with_references(mut self, references: Vec<SchemaReference>) -> Self {
        self.references = references;
        self
    }
}

/// A subject's version: a number, or the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The newest version of the subject.
    Latest,
    /// A version number (from 1).
    Number(u32),
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Number(n) => n.fmt(f),
        }
    }
}

/// A schema registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// The subject.
    pub subject: String,
    /// The schema's global id.
    pub id: SchemaId,
    /// Its version within the subject.
    pub version: u32,
    /// The schema.
    pub schema: Schema,
}

/// The registry's answer to a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compatibility {
    /// Whether the schema may be registered under the subject.
    pub is_compatible: bool,
    /// The registry's reasons when it is not (some registries give none).
    pub messages: Vec<String>,
}

/// A compatibility level: which schema changes a subject accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum CompatibilityLevel {
    /// Any change.
    None,
    /// New schemas read data written with the previous one.
    Backward,
    /// New schemas read data written with every earlier one.
    BackwardTransitive,
    /// The previous schema reads data written with the new one.
    Forward,
    /// Every earlier schema reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward with the previous schema.
    Full,
    /// Backward and forward with every earlier schema.
    FullTransitive,
}

/// The registry's JSON bodies.
mod wire {
    use super::{CompatibilityLevel, SchemaReference, SchemaType};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize)]
    pub(super) struct SchemaRequest<'a> {
        pub(super) schema: &'a str,
        #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
        pub(super) schema_type: Option<SchemaType>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        pub(super) references: &'a [SchemaReference],
    }

    #[derive(Deserialize)]
    pub(super) struct IdAnswer {
        pub(super) id: u32,
    }

    #[derive(Deserialize)]
    pub(super) struct SchemaAnswer {
        pub(super) schema: String,
        #[serde(rename = "schemaType", default)]
        pub(super) schema_type: Option<SchemaType>,
        #[serde(default)]
        pub(super) references: Option<Vec<SchemaReference>>,
    }

    #[derive(Deserialize)]
    pub(super) struct SubjectVersionAnswer {
        pub(super) subject: String,
        pub(super) id: u32,
        pub(super) version: u32,
        pub(super) schema: String,
        #[serde(rename = "schemaType", default)]
        pub(super) schema_type: Option<SchemaType>,
        #[serde(default)]
        pub(super) references: Option<Vec<SchemaReference>>,
    }

    #[derive(Deserialize)]
    pub(super) struct CompatibilityAnswer {
        pub(super) is_compatible: bool,
        #[serde(default)]
        pub(super) messages: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    pub(super) struct ConfigAnswer {
        #[serde(rename = "compatibilityLevel", alias = "compatibility")]
        pub(super) level: CompatibilityLevel,
    }

    #[derive(Serialize)]
    pub(super) struct ConfigRequest {
        pub(super) compatibility: CompatibilityLevel,
    }

    #[derive(Deserialize)]
    pub(super) struct ErrorAnswer {
        #[serde(default)]
        pub(super) error_code: Option<i32>,
        #[serde(default)]
        pub(super) message: Option<String>,
    }
}

/// The registry's error codes this client looks at.
pub mod codes {
    /// The subject does not exist.
    pub const SUBJECT_NOT_FOUND: i32 = 40401;
    /// The version does not exist in the subject.
    pub const VERSION_NOT_FOUND: i32 = 40402;
    /// No schema with that id, or the schema is not in the subject.
    pub const SCHEMA_NOT_FOUND: i32 = 40403;
    /// The schema is incompatible with the subject's earlier versions.
    pub const INCOMPATIBLE_SCHEMA: i32 = 409;
    /// The schema is not valid.
    pub const INVALID_SCHEMA: i32 = 42201;
}

/// Build a [`SchemaRegistry`]: its URL, credentials, TLS and timeout.
///
/// ```
/// use std::time::Duration;
/// use kastellan::schema_registry::SchemaRegistry;
///
/// let registry = SchemaRegistry::builder("http://registry:8080/apis/ccompat/v7")
///     .bearer_token("eyJ...")
///     .timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert!(!format!("{registry:?}").contains("eyJ"));
/// ```
#[must_use = "a builder does nothing until it is built"]
pub struct SchemaRegistryBuilder {
    url: String,
    auth: Option<Auth>,
    timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
}

#[derive(Clone)]
enum Auth {
    Basic(String, Secret),
    Bearer(Secret),
}

impl fmt::Debug for SchemaRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistryBuilder")
            .field("url", &self.url)
            .field(
                "auth",
                &self.auth.as_ref().map(|a| match a {
                    Auth::Basic(user, _) => format!("basic {user}:***"),
                    Auth::Bearer(_) => "bearer ***".to_string(),
                }),
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SchemaRegistryBuilder {
    /// HTTP basic authentication (Confluent Cloud: the API key and secret).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Auth::Basic(user.into(), Secret::new(password)));
        self
    }

    /// Bearer-token authentication (`Authorization: Bearer <token>`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(Auth::Bearer(Secret::new(token)));
        self
    }

    /// TLS settings for an `https` URL (trusted CA, client certificate),
    /// the same settings type as for brokers. Without this call an `https`
    /// URL uses the system's trusted CAs.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The limit for each registry call: connecting, sending the request
    /// and reading the whole answer (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Check the settings and make the client. No connection is made yet.
    ///
    /// Fails with [`Error::Config`] for a URL that is not `http` or `https`,
    /// for an `https` URL without the `tls` feature, for bad TLS settings
    /// and for a zero timeout.
    pub fn build(self) -> Result<SchemaRegistry> {
        let mut endpoint = Endpoint::parse(&self.url)?;
        if self.timeout.is_zero() {
            return Err(Error::Config(
                "schema registry timeout must be above zero".into(),
            ));
        }
        let auth = match (self.auth, endpoint.userinfo.take()) {
            (Some(auth), _) => Some(auth),
            (None, Some((user, password))) => Some(Auth::Basic(user, password)),
            (None, None) => None,
        };
        let authorization = auth.map(|a| match a {
            Auth::Basic(user, password) => {
                use base64::Engine as _;
                Secret::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{user}:{}", password.expose()))
                ))
            }
            Auth::Bearer(token) => Secret::new(format!("Bearer {}", token.expose())),
        });
        #[cfg(feature = "tls")]
        let tls = if endpoint.https {
            Some(crate::protocol::tls::TlsContext::new(
                &self.tls.unwrap_or_default(),
            )?)
        } else {
            None
        };
        #[cfg(not(feature = "tls"))]
        if endpoint.https {
            return Err(Error::Config(format!(
                "schema registry URL `{}` is https, which needs kastellan's `tls` feature",
                endpoint.shown()
            )));
        }
        let transport = Transport::new(
            endpoint,
            authorization,
            self.timeout,
            #[cfg(feature = "tls")]
            tls,
        );
        Ok(SchemaRegistry {
            inner: Arc::new(Inner {
                transport,
                caches: Caches::default(),
                flights: Flights::default(),
                requests: AtomicU64::new(0),
            }),
        })
    }
}

/// What the client remembers: schemas by id, and ids by subject and schema.
#[derive(Debug, Default)]
struct Caches {
    by_id: RwLock<HashMap<SchemaId, Arc<Schema>>>,
    ids: RwLock<HashMap<(String, Schema), SchemaId>>,
    lookups: RwLock<HashMap<(String, Schema), RegisteredSchema>>,
}

/// Read a cache entry (a poisoned lock only means a panic elsewhere while
/// it was held; the map itself is intact).
fn read<K, V: Clone, Q>(map: &RwLock<HashMap<K, V>>, key: &Q) -> Option<V>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

fn write<K: std::hash::Hash + Eq, V>(map: &RwLock<HashMap<K, V>>, key: K, value: V) {
    map.write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, value);
}

/// A registry call under way, shared by every caller that needs its
/// answer (the error is shared too, and duplicated for each caller).
type Flight<V> = Shared<BoxFuture<'static, std::result::Result<V, Arc<Error>>>>;

/// The calls under way for one kind of key.
type FlightMap<K, V> = Mutex<HashMap<K, Flight<V>>>;

/// The cacheable calls under way, by key: a cache miss that finds one
/// waits for its answer instead of asking the registry again.
#[derive(Default)]
struct Flights {
    by_id: FlightMap<SchemaId, Arc<Schema>>,
    ids: FlightMap<(String, Schema), SchemaId>,
    lookups: FlightMap<(String, Schema), RegisteredSchema>,
}

impl fmt::Debug for Flights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

/// Join the call for `key` under way in the `flights` map of `inner`, or
/// start `call` as a task of its own. The task runs to its end (the
/// transport's timeout bounds it) even if every caller stops waiting, puts
/// its answer in the cache, and then takes itself out of the map, so a
/// caller after it finds the cache.
async fn single_flight<K, V, F>(
    inner: &Arc<Inner>,
    flights: fn(&Inner) -> &FlightMap<K, V>,
    key: K,
    call: impl FnOnce() -> F,
) -> Result<V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    F: Future<Output = Result<V>> + Send + 'static,
{
    let flight = flights(inner)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_insert_with(|| {
            let call = call();
            let owner = Arc::clone(inner);
            let url = inner.transport.endpoint.shown();
            let task = tokio::spawn(async move {
                let result = call.await.map_err(Arc::new);
                flights(&owner)
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                result
            });
            task.map(move |joined| {
                joined.unwrap_or_else(|e| {
                    Err(Arc::new(Error::Registry {
                        url,
                        status: None,
                        code: None,
                        message: format!("the registry call ended without an answer: {e}"),
                        retriable: true,
                    }))
                })
            })
            .boxed()
            .shared()
        })
        .clone();
    flight.await.map_err(|e| e.duplicate())
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    caches: Caches,
    flights: Flights,
    /// HTTP requests sent, for [`SchemaRegistry::requests`].
    requests: AtomicU64,
}

/// A client for a Confluent-compatible schema registry. Cheap to clone:
/// clones share the HTTP settings and the caches.
///
/// Calls that read immutable data are cached: [`schema_by_id`](Self::schema_by_id),
/// [`register`](Self::register) and [`lookup`](Self::lookup) ask the
/// registry once per id or per (subject, schema); callers that miss the
/// cache for the same key at the same time share one request. Listing
/// calls, version queries, compatibility checks and configuration always
/// ask. [`requests`](Self::requests) counts the requests sent.
///
/// The URL may carry a path prefix: `http://host:8080/apis/ccompat/v7` for
/// Apicurio, `http://host:8081` for Confluent's registry.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    inner: Arc<Inner>,
}

impl SchemaRegistry {
    /// Start building a client for the registry at `url`
    /// (`http[s]://host[:port][/prefix]`; credentials in the URL, as
    /// `user:password@host`, are used for basic authentication).
    pub fn builder(url: impl Into<String>) -> SchemaRegistryBuilder {
        SchemaRegistryBuilder {
            url: url.into(),
            auth: None,
            timeout: Duration::from_secs(10),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The registry's URL, without credentials.
    pub fn url(&self) -> String {
        self.inner.transport.endpoint.shown()
    }

    /// How many HTTP requests this client (and its clones, which share
    /// it) has sent to the registry, answered or not. The caches and
    /// single-flight mean a service makes one registry call per schema it
    /// writes and per schema id it reads, so in steady state this number
    /// does not move; a number that keeps growing points at a cache that
    /// does not hold (for instance a new client per record).
    ///
    /// ```
    /// use kastellan::schema_registry::SchemaRegistry;
    /// let registry = SchemaRegistry::builder("http://localhost:8081").build().unwrap();
    /// assert_eq!(registry.requests(), 0);
    /// ```
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Register `schema` under `subject` (or find it there, if it is
    /// already registered) and return its id. Cached per (subject, schema).
    ///
    /// Fails with [`Error::Registry`] code 409 when the schema is
    /// incompatible with the subject's earlier versions, 42201 when it is
    /// not a valid schema.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::Schema;
    /// let id = registry.register("orders-value", &Schema::avro(r#""string""#)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn register(&self, subject: &str, schema: &Schema) -> Result<SchemaId> {
        let key = (subject.to_string(), schema.clone());
        if let Some(id) = read(&self.inner.caches.ids, &key) {
            return Ok(id);
        }
        let this = self.clone();
        single_flight(
            &self.inner,
            |i| &i.flights.ids,
            key.clone(),
            move || async move {
                // A call that ended just before this one began has filled the
                // cache.
                if let Some(id) = read(&this.inner.caches.ids, &key) {
                    return Ok(id);
                }
                let path = format!("/subjects/{}/versions", percent_encode_segment(&key.0));
                let answer: wire::IdAnswer = this
                    .json(Method::POST, &path, Some(schema_request(&key.1)?))
                    .await?;
                let id = SchemaId(answer.id);
                write(&this.inner.caches.ids, key, id);
                Ok(id)
            },
        )
        .await
    }

    /// Find `schema` among `subject`'s versions: its id and version. Cached
    /// per (subject, schema). Fails with [`Error::Registry`] code 40401 if
    /// the subject does not exist, 40403 if the schema is not in it.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::Schema;
    /// let found = registry.lookup("orders-value", &Schema::avro(r#""string""#)).await?;
    /// println!("id {} version {}", found.id, found.version);
    /// # Ok(()) }
    /// ```
    pub async fn lookup(&self, subject: &str, schema: &Schema) -> Result<RegisteredSchema> {
        let key = (subject.to_string(), schema.clone());
        if let Some(found) = read(&self.inner.caches.lookups, &key) {
            return Ok(found);
        }
        let this = self.clone();
        single_flight(
            &self.inner,
            |i| &i.flights.lookups,
            key.clone(),
            move || async move {
                if let Some(found) = read(&this.inner.caches.lookups, &key) {
                    return Ok(found);
                }
                let path = format!("/subjects/{}", percent_encode_segment(&key.0));
                let answer: wire::SubjectVersionAnswer = this
                    .json(Method::POST, &path, Some(schema_request(&key.1)?))
                    .await?;
                let found = registered(answer);
                write(&this.inner.caches.ids, key.clone(), found.id);
                write(&this.inner.caches.lookups, key, found.clone());
                Ok(found)
            },
        )
        .await
    }

    /// The schema with this id. Cached: ids never change their schema.
    /// Fails with [`Error::Registry`] code 40403 for an unknown id.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::SchemaId;
    /// let schema = registry.schema_by_id(SchemaId(1)).await?;
    /// println!("{}", schema.text);
    /// # Ok(()) }
    /// ```
    pub async fn schema_by_id(&self, id: SchemaId) -> Result<Arc<Schema>> {
        if let Some(schema) = read(&self.inner.caches.by_id, &id) {
            return Ok(schema);
        }
        let this = self.clone();
        single_flight(
            &self.inner,
            |i| &i.flights.by_id,
            id,
            move || async move {
                if let Some(schema) = read(&this.inner.caches.by_id, &id) {
                    return Ok(schema);
                }
                let path = format!("/schemas/ids/{id}");
                let answer: wire::SchemaAnswer = this.json(Method::GET, &path, None).await?;
                let schema = Arc::new(Schema {
                    schema_type: answer.schema_type.unwrap_or_default(),
                    text: answer.schema,
                    references: answer.references.unwrap_or_default(),
                });
                write(&this.inner.caches.by_id, id, Arc::clone(&schema));
                Ok(schema)
            },
        )
        .await
    }

    /// Every subject's name.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// for subject in registry.subjects().await? { println!("{subject}"); }
    /// # Ok(()) }
    /// ```
    pub async fn subjects(&self) -> Result<Vec<String>> {
        self.json(Method::GET, "/subjects", None).await
    }

    /// A subject's version numbers, oldest first.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// let versions = registry.versions("orders-value").await?;
    /// # Ok(()) }
    /// ```
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>> {
        let path = format!("/subjects/{}/versions", percent_encode_segment(subject));
        self.json(Method::GET, &path, None).await
    }

    /// One version of a subject, with its id and schema.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::Version;
    /// let latest = registry.version("orders-value", Version::Latest).await?;
    /// # Ok(()) }
    /// ```
    pub async fn version(&self, subject: &str, version: Version) -> Result<RegisteredSchema> {
        let path = format!(
            "/subjects/{}/versions/{version}",
            percent_encode_segment(subject)
        );
        let answer: wire::SubjectVersionAnswer = self.json(Method::GET, &path, None).await?;
        let found = registered(answer);
        write(
            &self.inner.caches.by_id,
            found.id,
            Arc::new(found.schema.clone()),
        );
        Ok(found)
    }

    /// Whether `schema` may be registered under `subject`, checked against
    /// `version` (and, for transitive levels, the versions before it), with
    /// the registry's reasons when it may not.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::{Schema, Version};
    /// let verdict = registry
    ///     .check_compatibility("orders-value", &Schema::avro(r#""string""#), Version::Latest)
    ///     .await?;
    /// if !verdict.is_compatible { eprintln!("{:?}", verdict.messages); }
    /// # Ok(()) }
    /// ```
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &Schema,
        version: Version,
    ) -> Result<Compatibility> {
        let path = format!(
            "/compatibility/subjects/{}/versions/{version}?verbose=true",
            percent_encode_segment(subject)
        );
        let answer: wire::CompatibilityAnswer = self
            .json(Method::POST, &path, Some(schema_request(schema)?))
            .await?;
        Ok(Compatibility {
            is_compatible: answer.is_compatible,
            messages: answer.messages.unwrap_or_default(),
        })
    }

    /// The compatibility level that applies to `subject`: its own, else the
    /// registry's global level.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// let level = registry.config("orders-value").await?;
    /// # Ok(()) }
    /// ```
    pub async fn config(&self, subject: &str) -> Result<CompatibilityLevel> {
        let path = format!(
            "/config/{}?defaultToGlobal=true",
            percent_encode_segment(subject)
        );
        match self
            .json::<wire::ConfigAnswer>(Method::GET, &path, None)
            .await
        {
            Ok(answer) => Ok(answer.level),
            // Registries that do not know `defaultToGlobal` answer 404 for a
            // subject without a level of its own: ask for the global one.
            Err(Error::Registry {
                status: Some(404), ..
            }) => {
                let answer: wire::ConfigAnswer = self.json(Method::GET, "/config", None).await?;
                Ok(answer.level)
            }
            Err(e) => Err(e),
        }
    }

    /// Set `subject`'s compatibility level.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::CompatibilityLevel;
    /// registry.set_config("orders-value", CompatibilityLevel::Full).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_config(&self, subject: &str, level: CompatibilityLevel) -> Result<()> {
        let path = format!("/config/{}", percent_encode_segment(subject));
        let body = serde_json::to_vec(&wire::ConfigRequest {
            compatibility: level,
        })?;
        let _: serde_json::Value = self.json(Method::PUT, &path, Some(body)).await?;
        Ok(())
    }

    /// Delete a subject (a soft delete: its schemas keep their ids) and
    /// return the versions it had.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// let gone = registry.delete_subject("scratch-value").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_subject(&self, subject: &str) -> Result<Vec<u32>> {
        let path = format!("/subjects/{}", percent_encode_segment(subject));
        let versions = self.json(Method::DELETE, &path, None).await?;
        self.inner
            .caches
            .ids
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| s != subject);
        self.inner
            .caches
            .lookups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| s != subject);
        Ok(versions)
    }

    /// Register every schema a service uses, at start-up, all or nothing
    /// as far as compatibility goes: first each schema is checked against
    /// its subject's latest version (a subject that does not exist yet
    /// accepts anything); if any is incompatible, nothing is registered
    /// and the error ([`Error::Registry`], code 409) lists every
    /// incompatible subject with the registry's reasons. Then each schema
    /// is registered, and the ids are returned in order.
    ///
    /// ```no_run
    /// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::schema_registry::Schema;
    /// let ids = registry
    ///     .register_all(&[
    ///         ("orders-value".to_string(), Schema::avro(r#""string""#)),
    ///         ("orders-key".to_string(), Schema::avro(r#""long""#)),
    ///     ])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn register_all(&self, schemas: &[(String, Schema)]) -> Result<Vec<SchemaId>> {
        let mut refused = Vec::new();
        for (subject, schema) in schemas {
            match self
                .check_compatibility(subject, schema, Version::Latest)
                .await
            {
                Ok(c) if c.is_compatible => {}
                Ok(c) => refused.push(format!(
                    "subject `{subject}`: {}",
                    if c.messages.is_empty() {
                        self.explain_incompatibility(subject, schema).await
                    } else {
                        c.messages.join("; ")
                    }
                )),
                Err(Error::Registry {
                    code: Some(codes::SUBJECT_NOT_FOUND | codes::VERSION_NOT_FOUND),
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        if !refused.is_empty() {
            return Err(Error::Registry {
                url: self.url(),
                status: None,
                code: Some(codes::INCOMPATIBLE_SCHEMA),
                message: format!(
                    "{} of {} schemas are incompatible with what their subjects hold, \
                     so none was registered: {}",
                    refused.len(),
                    schemas.len(),
                    refused.join(" | ")
                ),
                retriable: false,
            });
        }
        let mut ids = Vec::with_capacity(schemas.len());
        for (subject, schema) in schemas {
            ids.push(self.register(subject, schema).await?);
        }
        Ok(ids)
    }

    /// Why `schema` is incompatible with `subject`, for a registry that
    /// said so without a reason (Apicurio's compatibility check): with the
    /// `avro` feature and an Avro schema, apache-avro's own check against
    /// the subject's latest version.
    async fn explain_incompatibility(&self, subject: &str, schema: &Schema) -> String {
        const NO_REASON: &str = "incompatible (the registry gave no reason)";
        #[cfg(feature = "avro")]
        if schema.schema_type == SchemaType::Avro {
            if let Ok(latest) = self.version(subject, Version::Latest).await {
                if let Some(reason) =
                    crate::avro::incompatibility(&latest.schema.text, &schema.text)
                {
                    return format!(
                        "{NO_REASON}; checked here against version {}: {reason}",
                        latest.version
                    );
                }
            }
        }
        #[cfg(not(feature = "avro"))]
        let _ = (subject, schema);
        NO_REASON.to_string()
    }

    /// Call the registry and parse a JSON answer; a non-2xx answer becomes
    /// [`Error::Registry`] with the registry's code and message.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let transport = &self.inner.transport;
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let answer = transport.call(method, path, body).await?;
        if !answer.status.is_success() {
            return Err(error_from_answer(
                transport.url(path),
                answer.status,
                &answer.body,
            ));
        }
        serde_json::from_slice(&answer.body).map_err(|e| Error::Registry {
            url: transport.url(path),
            status: Some(answer.status.as_u16()),
            code: None,
            message: format!(
                "the answer is not the JSON expected ({e}); it starts: {}",
                excerpt(&answer.body)
            ),
            retriable: false,
        })
    }
}

fn schema_request(schema: &Schema) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&wire::SchemaRequest {
        schema: &schema.text,
        // Avro is the default; leaving it out suits registries that predate
        // the field.
        schema_type: (schema.schema_type != SchemaType::Avro).then_some(schema.schema_type),
        references: &schema.references,
    })?)
}

fn registered(answer: wire::SubjectVersionAnswer) -> RegisteredSchema {
    RegisteredSchema {
        subject: answer.subject,
        id: SchemaId(answer.id),
        version: answer.version,
        schema: Schema {
            schema_type: answer.schema_type.unwrap_or_default(),
            text: answer.schema,
            references: answer.references.unwrap_or_default(),
        },
    }
}

/// The first 200 characters of a body, for messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".into();
    }
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// [`Error::Registry`] for a non-2xx answer: the registry's `error_code`
/// and `message` if the body is its JSON error, else the body's start.
fn error_from_answer(url: String, status: StatusCode, body: &[u8]) -> Error {
    let (code, message) = match serde_json::from_slice::<wire::ErrorAnswer>(body) {
        Ok(e) if e.error_code.is_some() || e.message.is_some() => (
            e.error_code,
            e.message.unwrap_or_else(|| "(no message)".into()),
        ),
        _ => (
            None,
            format!(
                "{} (not the registry's JSON error: {})",
                status.canonical_reason().unwrap_or("error"),
                excerpt(body)
            ),
        ),
    };
    let retriable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    Error::Registry {
        url,
        status: Some(status.as_u16()),
        code,
        message,
        retriable,
    }
}

#[cfg(test)]
pub(crate) mod tests;
