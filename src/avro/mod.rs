//! Avro values in the Confluent wire format, with schemas in a schema
//! registry (feature `avro`).
//!
//! [`AvroSerializer`] turns a Rust value into a framed record value: magic
//! byte, the schema's registry id, the Avro body. The first value for a
//! subject registers the schema (or, with
//! [`auto_register(false)`](AvroSerializer::auto_register), looks it up);
//! later values make no registry call. [`AvroDeserializer`] reads the id,
//! fetches the writer's schema once per id, and resolves it against the
//! reader's schema: fields added with defaults, removed fields, promotions
//! such as int to long. [`GenericAvroSerializer`] and
//! [`GenericAvroDeserializer`] do the same for
//! [`apache_avro::types::Value`].
//!
//! A record that is not a valid frame or whose body does not decode is an
//! [`Error::Serialization`], which a group handler's `?` turns into a
//! dead-letter outcome; it never panics. Bodies are checked against the
//! writer's schema before decoding, so hostile lengths cannot make large
//! allocations.
//!
//! ```no_run
//! # async fn demo() -> kastellan::Result<()> {
//! use apache_avro::AvroSchema;
//! use kastellan::avro::{AvroDeserializer, AvroSerializer};
//! use kastellan::schema_registry::SchemaRegistry;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, AvroSchema)]
//! struct OrderPlaced {
//!     id: String,
//!     amount_cents: i64,
//! }
//!
//! let registry = SchemaRegistry::builder("http://localhost:8081").build()?;
//! let serializer = AvroSerializer::<OrderPlaced>::new(registry.clone())?;
//! let bytes = serializer
//!     .serialize("orders", &OrderPlaced { id: "o-1".into(), amount_cents: 1250 })
//!     .await?;
//!
//! let deserializer = AvroDeserializer::<OrderPlaced>::new(registry)?;
//! let order = deserializer.deserialize("orders", &bytes).await?;
//! # Ok(()) }
//! ```
//!
//! apache-avro is re-exported as [`kastellan::avro::apache_avro`](apache_avro),
//! so the derive and the value types need no extra dependency.

mod guard;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use apache_avro;

use crate::error::{Error, Result};
use crate::schema_registry::{codes, confluent, Schema, SchemaId, SchemaRegistry, SchemaType};

/// Whether a schema is for a record's key or its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Part {
    /// The record key.
    Key,
    /// The record value.
    #[default]
    Value,
}

/// How a serializer names the subject a schema is registered under.
///
/// ```
/// use kastellan::avro::{apache_avro::Schema, Part, SubjectNameStrategy};
///
/// let schema = Schema::parse_str(
///     r#"{"type":"record","name":"OrderPlaced","namespace":"shop","fields":[]}"#,
/// ).unwrap();
/// let subject = |s: SubjectNameStrategy, part| s.subject("orders", part, &schema).unwrap();
/// assert_eq!(subject(SubjectNameStrategy::TopicName, Part::Value), "orders-value");
/// assert_eq!(subject(SubjectNameStrategy::TopicName, Part::Key), "orders-key");
/// assert_eq!(subject(SubjectNameStrategy::RecordName, Part::Value), "shop.OrderPlaced");
/// assert_eq!(subject(SubjectNameStrategy::TopicRecordName, Part::Value), "orders-shop.OrderPlaced");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SubjectNameStrategy {
    /// `<topic>-key` or `<topic>-value`: one schema per topic (the default).
    #[default]
    TopicName,
    /// The record's full name: the same type shares one subject across
    /// topics. Needs a named schema (record, enum or fixed).
    RecordName,
    /// `<topic>-<full name>`: several types per topic.
    TopicRecordName,
}

impl SubjectNameStrategy {
    /// The subject for `schema` in `topic`'s key or value.
    pub fn subject(&self, topic: &str, part: Part, schema: &apache_avro::Schema) -> Result<String> {
        let full_name = || {
            schema.name().map(|n| n.fullname(None)).ok_or_else(|| {
                Error::Config(format!(
                    "the {self:?} subject name strategy needs a named Avro schema \
                     (record, enum or fixed); this one is `{}`",
                    schema.canonical_form()
                ))
            })
        };
        Ok(match self {
            SubjectNameStrategy::TopicName => match part {
                Part::Key => format!("{topic}-key"),
                Part::Value => format!("{topic}-value"),
            },
            SubjectNameStrategy::RecordName => full_name()?,
            SubjectNameStrategy::TopicRecordName => format!("{topic}-{}", full_name()?),
        })
    }
}

fn avro_error(reason: String) -> Error {
    Error::Serialization {
        format: "Avro",
        reason,
    }
}

fn parse(text: &str, what: &str) -> Result<apache_avro::Schema> {
    let schema = apache_avro::Schema::parse_str(text)
        .map_err(|e| avro_error(format!("{what} is not a valid Avro schema: {e}")))?;
    ResolvedSchema::try_from(&schema)
        .map_err(|e| avro_error(format!("{what} cannot be resolved: {e}")))?;
    Ok(schema)
}

/// The writing side shared by the typed and generic serializers: the
/// schema, how to name its subject, and the ids found per topic.
struct Writing {
    registry: SchemaRegistry,
    schema: Arc<apache_avro::Schema>,
    registered: Schema,
    strategy: SubjectNameStrategy,
    part: Part,
    auto_register: bool,
    ids: RwLock<HashMap<String, SchemaId>>,
}

impl Writing {
    fn new(registry: SchemaRegistry, schema: apache_avro::Schema) -> Result<Self> {
        let text = serde_json::to_string(&schema)?;
        ResolvedSchema::try_from(&schema)
            .map_err(|e| Error::Config(format!("the Avro schema cannot be resolved: {e}")))?;
        Ok(Self {
            registry,
            schema: Arc::new(schema),
            registered: Schema::avro(text),
            strategy: SubjectNameStrategy::default(),
            part: Part::default(),
            auto_register: true,
            ids: RwLock::new(HashMap::new()),
        })
    }

    /// The schema's id for `topic`: from memory after the first call.
    async fn id(&self, topic: &str) -> Result<SchemaId> {
        if let Some(id) = self
            .ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(*id);
        }
        let subject = self.strategy.subject(topic, self.part, &self.schema)?;
        let id = if self.auto_register {
            self.registry.register(&subject, &self.registered).await?
        } else {
            self.registry.lookup(&subject, &self.registered).await?.id
        };
        self.ids
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string(), id);
        Ok(id)
    }

    fn fits(&self, topic: &str, e: apache_avro::Error) -> Error {
        avro_error(format!(
            "the value for topic `{topic}` does not fit its schema: {e}"
        ))
    }
}

impl Clone for Writing {
    /// The same settings, with ids to be found again (the settings that
    /// decide the subject may change on the copy).
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            schema: Arc::clone(&self.schema),
            registered: self.registered.clone(),
            strategy: self.strategy,
            part: self.part,
            auto_register: self.auto_register,
            ids: RwLock::new(HashMap::new()),
        }
    }
}

impl fmt::Debug for Writing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writing")
            .field("registry", &self.registry.url())
            .field("schema", &self.registered.text)
            .field("strategy", &self.strategy)
            .field("part", &self.part)
            .field("auto_register", &self.auto_register)
            .finish_non_exhaustive()
    }
}

macro_rules! writing_options {
    () => {
        /// How the subject is named (default
        /// [`SubjectNameStrategy::TopicName`]).
        pub fn subject_name_strategy(mut self, strategy: SubjectNameStrategy) -> Self {
            self.writing_mut().strategy = strategy;
            self
        }

        /// Whether the values are record keys or values (default
        /// [`Part::Value`]); with the topic-name strategy, it picks
        /// `<topic>-key` or `<topic>-value`.
        pub fn part(mut self, part: Part) -> Self {
            self.writing_mut().part = part;
            self
        }

        /// Whether the first value for a subject registers the schema
        /// (`true`, the default) or only looks it up, failing with
        /// [`Error::Registry`] if it is not registered (`false`, for
        /// registries that only a deployment pipeline writes to).
        pub fn auto_register(mut self, on: bool) -> Self {
            self.writing_mut().auto_register = on;
            self
        }

        /// The writer's schema.
        pub fn schema(&self) -> &apache_avro::Schema {
            &self.writing.schema
        }

        fn writing_mut(&mut self) -> &mut Writing {
            // Options are set before the serializer is shared; setting one
            // on a clone makes it a serializer of its own.
            Arc::make_mut(&mut self.writing)
        }
    };
}

/// Serializes `T` to Avro in the Confluent wire format. Cheap to clone.
///
/// The schema is derived (`T: AvroSchema`, with [`new`](Self::new)) or
/// given ([`with_schema`](Self::with_schema)).
///
/// ```no_run
/// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry, producer: kastellan::Producer) -> kastellan::Result<()> {
/// use kastellan::avro::{apache_avro::AvroSchema, AvroSerializer, SubjectNameStrategy};
///
/// #[derive(serde::Serialize, AvroSchema)]
/// struct Ping { n: i64 }
///
/// let serializer = AvroSerializer::<Ping>::new(registry)?
///     .subject_name_strategy(SubjectNameStrategy::TopicRecordName);
/// let value = serializer.serialize("pings", &Ping { n: 1 }).await?;
/// producer.to("pings").value(value).send().await?;
/// # Ok(()) }
/// ```
pub struct AvroSerializer<T> {
    writing: Arc<Writing>,
    _type: PhantomData<fn(&T)>,
}

impl<T> Clone for AvroSerializer<T> {
    fn clone(&self) -> Self {
        Self {
            writing: Arc::clone(&self.writing),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for AvroSerializer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroSerializer")
            .field("writing", &self.writing)
            .finish()
    }
}

impl<T: Serialize + apache_avro::AvroSchema> AvroSerializer<T> {
    /// A serializer with `T`'s derived schema.
    pub fn new(registry: SchemaRegistry) -> Result<Self> {
        Self::with_schema(registry, T::get_schema())
    }
}

impl<T: Serialize> AvroSerializer<T> {
    /// A serializer with the given writer's schema.
    ///
    /// ```
    /// # fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
    /// use kastellan::avro::{apache_avro::Schema, AvroSerializer};
    /// let schema = Schema::parse_str(r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"}]}"#).unwrap();
    /// let serializer = AvroSerializer::<serde_json::Value>::with_schema(registry, schema)?;
    /// # Ok(()) }
    /// ```
    pub fn with_schema(registry: SchemaRegistry, schema: apache_avro::Schema) -> Result<Self> {
        Ok(Self {
            writing: Arc::new(Writing::new(registry, schema)?),
            _type: PhantomData,
        })
    }

    writing_options!();

    /// `value` as a framed Avro value for `topic`. The first call per
    /// subject asks the registry for the schema's id; later calls make no
    /// registry call.
    pub async fn serialize(&self, topic: &str, value: &T) -> Result<Vec<u8>> {
        let id = self.writing.id(topic).await?;
        self.serialize_with_id(id, topic, value)
    }

    fn serialize_with_id(&self, id: SchemaId, topic: &str, value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&confluent::header(id));
        let schema = &*self.writing.schema;
        // The named types, for references within the schema. (apache-avro
        // keeps an owned form of this map private, so it is made per value;
        // it costs a walk of the schema.)
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| self.writing.fits(topic, e))?;
        apache_avro::write_avro_datum_ref(schema, resolved.get_names(), value, &mut out)
            .map_err(|e| self.writing.fits(topic, e))?;
        Ok(out)
    }
}

/// Serializes [`apache_avro::types::Value`]s (validated against the
/// schema) in the Confluent wire format. Cheap to clone.
///
/// ```no_run
/// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry) -> kastellan::Result<()> {
/// use kastellan::avro::apache_avro::{types::Value, Schema};
/// use kastellan::avro::GenericAvroSerializer;
///
/// let schema = Schema::parse_str(r#"{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"}]}"#).unwrap();
/// let serializer = GenericAvroSerializer::new(registry, schema)?;
/// let bytes = serializer
///     .serialize("pings", &Value::Record(vec![("n".into(), Value::Long(1))]))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GenericAvroSerializer {
    writing: Arc<Writing>,
}

impl fmt::Debug for GenericAvroSerializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericAvroSerializer")
            .field("writing", &self.writing)
            .finish()
    }
}

impl GenericAvroSerializer {
    /// A serializer for values of `schema`.
    pub fn new(registry: SchemaRegistry, schema: apache_avro::Schema) -> Result<Self> {
        Ok(Self {
            writing: Arc::new(Writing::new(registry, schema)?),
        })
    }

    writing_options!();

    /// `value` as a framed Avro value for `topic`; fails with
    /// [`Error::Serialization`] if it does not fit the schema.
    pub async fn serialize(&self, topic: &str, value: &Value) -> Result<Vec<u8>> {
        let id = self.writing.id(topic).await?;
        let writer = GenericDatumWriter::builder(&self.writing.schema)
            .build()
            .map_err(|e| self.writing.fits(topic, e))?;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&confluent::header(id));
        writer
            .write_value_ref(&mut out, value)
            .map_err(|e| self.writing.fits(topic, e))?;
        Ok(out)
    }
}

/// How values written with one schema id are read: the writer's schema
/// (with its named types, for the body check) and the reader's schema, if
/// it differs.
struct Plan {
    id: SchemaId,
    writer: apache_avro::Schema,
    reader: Option<Arc<apache_avro::Schema>>,
}

/// The reading side shared by the typed and generic deserializers.
struct Reading {
    registry: SchemaRegistry,
    reader: Option<Arc<apache_avro::Schema>>,
    plans: RwLock<HashMap<SchemaId, Arc<Plan>>>,
}

impl fmt::Debug for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reading")
            .field("registry", &self.registry.url())
            .field("reader", &self.reader.as_ref().map(|s| s.canonical_form()))
            .finish_non_exhaustive()
    }
}

impl Reading {
    fn new(registry: SchemaRegistry, reader: Option<apache_avro::Schema>) -> Self {
        Self {
            registry,
            reader: reader.map(Arc::new),
            plans: RwLock::new(HashMap::new()),
        }
    }

    /// The plan for `id`: from memory after the first record with it.
    async fn plan(&self, id: SchemaId) -> Result<Arc<Plan>> {
        if let Some(plan) = self
            .plans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(Arc::clone(plan));
        }
        let schema = match self.registry.schema_by_id(id).await {
            Ok(s) => s,
            // An id the registry does not know makes the record poison.
            Err(Error::Registry {
                code: Some(codes::SCHEMA_NOT_FOUND),
                url,
                message,
                ..
            }) => {
                return Err(Error::Serialization {
                    format: "Confluent wire format",
                    reason: format!(
                        "the value names schema id {id}, which the registry does not know \
                         ({url}: {message})"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        if schema.schema_type != SchemaType::Avro {
            return Err(avro_error(format!(
                "the value was written with schema id {id}, a {:?} schema, not Avro",
                schema.schema_type
            )));
        }
        let writer = parse(&schema.text, &format!("the writer's schema (id {id})"))?;
        let reader = match &self.reader {
            Some(reader) if **reader != writer => {
                SchemaCompatibility::can_read(&writer, reader).map_err(|e| {
                    avro_error(format!(
                        "values written with schema id {id} cannot be read with the reader's \
                         schema: {e}"
                    ))
                })?;
                Some(Arc::clone(reader))
            }
            _ => None,
        };
        let plan = Arc::new(Plan { id, writer, reader });
        self.plans
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&plan));
        Ok(plan)
    }

    /// Deframe, fetch the plan and decode to a value of the reader's schema.
    async fn value(&self, topic: &str, bytes: &[u8]) -> Result<Value> {
        let (id, body) = confluent::deframe(bytes)?;
        let plan = self.plan(id).await?;
        decode(&plan, topic, body)
    }
}

/// Decode `body` with the plan: check it, decode with the writer's schema,
/// resolve to the reader's.
fn decode(plan: &Plan, topic: &str, body: &[u8]) -> Result<Value> {
    let writer = &plan.writer;
    let bad = |what: String| {
        avro_error(format!(
            "a value in topic `{topic}` does not decode with its writer's schema (id {}): {what}",
            plan.id
        ))
    };
    let names = ResolvedSchema::try_from(writer).map_err(|e| bad(e.to_string()))?;
    guard::check(writer, names.get_names(), body).map_err(bad)?;
    let reader = GenericDatumReader::builder(writer)
        .resolved_writer_schemata(names)
        .maybe_reader_schema(plan.reader.as_deref())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut rest = body;
    reader.read_value(&mut rest).map_err(|e| bad(e.to_string()))
}

/// Deserializes framed Avro values into `T`, resolving each writer's
/// schema against the reader's. Cheap to clone.
///
/// ```no_run
/// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry, record: kastellan::Record) -> kastellan::Result<()> {
/// use kastellan::avro::{apache_avro::AvroSchema, AvroDeserializer};
///
/// #[derive(serde::Deserialize, AvroSchema)]
/// struct Ping { n: i64 }
///
/// let deserializer = AvroDeserializer::<Ping>::new(registry)?;
/// let ping = deserializer
///     .deserialize(&record.topic, record.value.as_deref().unwrap_or_default())
///     .await?;
/// # Ok(()) }
/// ```
pub struct AvroDeserializer<T> {
    reading: Arc<Reading>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for AvroDeserializer<T> {
    fn clone(&self) -> Self {
        Self {
            reading: Arc::clone(&self.reading),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for AvroDeserializer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroDeserializer")
            .field("reading", &self.reading)
            .finish()
    }
}

impl<T: DeserializeOwned + apache_avro::AvroSchema> AvroDeserializer<T> {
    /// A deserializer whose reader's schema is `T`'s derived schema.
    pub fn new(registry: SchemaRegistry) -> Result<Self> {
        Ok(Self::with_schema(registry, Some(T::get_schema())))
    }
}

impl<T: DeserializeOwned> AvroDeserializer<T> {
    /// A deserializer with the given reader's schema, or with `None`, one
    /// that reads each value as its writer's schema says (`T` must then
    /// accept every writer's shape).
    pub fn with_schema(registry: SchemaRegistry, reader: Option<apache_avro::Schema>) -> Self {
        Self {
            reading: Arc::new(Reading::new(registry, reader)),
            _type: PhantomData,
        }
    }

    /// The value of a framed record value from `topic`. The first value
    /// with a schema id fetches the writer's schema; later ones make no
    /// registry call. Fails with [`Error::Serialization`] for a bad frame,
    /// an unknown schema id, a body that does not decode, or a value that
    /// does not fit `T`; with [`Error::Registry`] if the registry cannot
    /// be asked.
    pub async fn deserialize(&self, topic: &str, bytes: &[u8]) -> Result<T> {
        let value = self.reading.value(topic, bytes).await?;
        apache_avro::from_value(&value).map_err(|e| {
            avro_error(format!(
                "a value in topic `{topic}` does not fit the Rust type {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Deserializes framed Avro values into [`apache_avro::types::Value`]s.
/// Cheap to clone.
///
/// ```no_run
/// # async fn demo(registry: kastellan::schema_registry::SchemaRegistry, bytes: Vec<u8>) -> kastellan::Result<()> {
/// use kastellan::avro::GenericAvroDeserializer;
/// let value = GenericAvroDeserializer::new(registry, None).deserialize("pings", &bytes).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GenericAvroDeserializer {
    reading: Arc<Reading>,
}

impl fmt::Debug for GenericAvroDeserializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericAvroDeserializer")
            .field("reading", &self.reading)
            .finish()
    }
}

impl GenericAvroDeserializer {
    /// A deserializer that resolves each value to `reader`, or with `None`
    /// reads it as its writer's schema says.
    pub fn new(registry: SchemaRegistry, reader: Option<apache_avro::Schema>) -> Self {
        Self {
            reading: Arc::new(Reading::new(registry, reader)),
        }
    }

    /// The value of a framed record value from `topic`; errors as for
    /// [`AvroDeserializer::deserialize`].
    pub async fn deserialize(&self, topic: &str, bytes: &[u8]) -> Result<Value> {
        self.reading.value(topic, bytes).await
    }
}

#[cfg(test)]
mod tests;
