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
//! Deriving schemas: the `AvroSchema` derive macro writes paths to the
//! `apache_avro` and `serde_json` crates, so a crate that derives needs both
//! as its own dependencies, `apache-avro` at the version kastellan uses
//! (the derived trait must be the one kastellan's is):
//!
//! ```toml
//! kastellan = { version = "0.1", features = ["avro"] }
//! apache-avro = { version = "0.22", default-features = false, features = ["derive"] }
//! serde = { version = "1", features = ["derive"] }
//! serde_json = "1"
//! ```
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

/// Why the Avro schema `new` cannot replace `old` in a subject, in either
/// direction (for a registry that refuses without a reason); `None` if
/// both read each other's data or either does not parse.
pub(crate) fn incompatibility(old: &str, new: &str) -> Option<String> {
    let old = apache_avro::Schema::parse_str(old).ok()?;
    let new = apache_avro::Schema::parse_str(new).ok()?;
    let mut reasons = Vec::new();
    if let Err(e) = SchemaCompatibility::can_read(&old, &new) {
        reasons.push(format!(
            "the new schema cannot read data written with the old one: {e}"
        ));
    }
    if let Err(e) = SchemaCompatibility::can_read(&new, &old) {
        reasons.push(format!(
            "the old schema cannot read data written with the new one: {e}"
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// The writer's schema with what apache-avro derives from it, made once:
/// its named types (for the typed writer) and the generic datum writer.
#[ouroboros::self_referencing]
struct Encoder {
    schema: apache_avro::Schema,
    #[borrows(schema)]
    #[covariant]
    names: ResolvedSchema<'this>,
    #[borrows(schema)]
    #[covariant]
    generic: GenericDatumWriter<'this>,
}

impl Encoder {
    fn make(schema: apache_avro::Schema) -> std::result::Result<Self, apache_avro::Error> {
        EncoderTryBuilder {
            schema,
            names_builder: |schema| ResolvedSchema::try_from(schema),
            generic_builder: |schema| GenericDatumWriter::builder(schema).build(),
        }
        .try_build()
    }
}

/// The writing side shared by the typed and generic serializers: the
/// schema, how to name its subject, and the ids found per topic.
struct Writing {
    registry: SchemaRegistry,
    encoder: Arc<Encoder>,
    registered: Schema,
    strategy: SubjectNameStrategy,
    part: Part,
    auto_register: bool,
    ids: RwLock<HashMap<String, SchemaId>>,
}

impl Writing {
    fn new(registry: SchemaRegistry, schema: apache_avro::Schema) -> Result<Self> {
        let text = serde_json::to_string(&schema)?;
        let encoder = Encoder::make(schema)
            .map_err(|e| Error::Config(format!("the Avro schema cannot be resolved: {e}")))?;
        Ok(Self {
            registry,
            encoder: Arc::new(encoder),
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
        let subject = self
            .strategy
            .subject(topic, self.part, self.encoder.borrow_schema())?;
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
            encoder: Arc::clone(&self.encoder),
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
            self.writing.encoder.borrow_schema()
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
        let encoder = &self.writing.encoder;
        apache_avro::write_avro_datum_ref(
            encoder.borrow_schema(),
            encoder.borrow_names().get_names(),
            value,
            &mut out,
        )
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
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&confluent::header(id));
        self.writing
            .encoder
            .borrow_generic()
            .write_value_ref(&mut out, value)
            .map_err(|e| self.writing.fits(topic, e))?;
        Ok(out)
    }
}

/// The writer's schema and the reader's (if it differs) with what
/// apache-avro derives from them, made once per schema id: the writer's
/// named types (for the body check) and the datum reader, which holds the
/// named types of both.
#[ouroboros::self_referencing]
struct Decoder {
    writer: apache_avro::Schema,
    reader: Option<Arc<apache_avro::Schema>>,
    #[borrows(writer)]
    #[covariant]
    names: ResolvedSchema<'this>,
    #[borrows(writer, reader)]
    #[covariant]
    datum: GenericDatumReader<'this>,
}

/// How values written with one schema id are read.
struct Plan {
    id: SchemaId,
    decoder: Decoder,
    /// When the reader's record differs from the writer's only by fields
    /// added (with defaults) or removed, and every shared field has the
    /// same schema: where each of the reader's fields comes from. The
    /// decoder then reads the writer's record, and the reader's is put
    /// together from it without a general resolution per record.
    fields: Option<Vec<FieldSource>>,
}

/// Where a field of the reader's record comes from.
enum FieldSource {
    /// The writer's field at this position, as it is.
    Writer(usize),
    /// The field's default, already resolved to its schema.
    Default(String, Value),
}

/// Whether `schema` refers to a named type by name (whose definition may
/// differ between the writer's and the reader's schema).
fn has_ref(schema: &apache_avro::Schema) -> bool {
    use apache_avro::Schema as S;
    match schema {
        S::Ref { .. } => true,
        S::Record(r) => r.fields.iter().any(|f| has_ref(&f.schema)),
        S::Array(a) => has_ref(&a.items),
        S::Map(m) => has_ref(&m.types),
        S::Union(u) => u.variants().iter().any(has_ref),
        _ => false,
    }
}

/// The field plan for a writer's and a reader's record, if the change
/// between them is only fields added with defaults or removed; `None`
/// when apache-avro's general resolution is needed (renamed or promoted
/// fields, changed types, references to named types). The result is what
/// that resolution gives.
fn field_plan(
    writer: &apache_avro::Schema,
    reader: &apache_avro::Schema,
) -> Option<Vec<FieldSource>> {
    use apache_avro::Schema as S;
    let (S::Record(w), S::Record(r)) = (writer, reader) else {
        return None;
    };
    if w.name.fullname(None) != r.name.fullname(None) {
        return None;
    }
    let names = ResolvedSchema::try_from(reader).ok()?;
    let mut plan = Vec::with_capacity(r.fields.len());
    for field in &r.fields {
        if has_ref(&field.schema) {
            return None;
        }
        match w.fields.iter().position(|f| f.name == field.name) {
            Some(i) => {
                // The same schema, logical types and all: the writer's
                // value is already the reader's.
                let same = serde_json::to_value(&w.fields[i].schema).ok()?
                    == serde_json::to_value(&field.schema).ok()?;
                if !same {
                    return None;
                }
                plan.push(FieldSource::Writer(i));
            }
            None => {
                // As apache-avro resolves a missing field's default.
                let default = Value::try_from(field.default.clone()?).ok()?;
                let value = match &field.schema {
                    S::Union(u) => Value::Union(
                        0,
                        Box::new(
                            default
                                .resolve_with_names(u.variants().first()?, names.get_names())
                                .ok()?,
                        ),
                    ),
                    _ => default,
                };
                let value = value
                    .resolve_with_names(&field.schema, names.get_names())
                    .ok()?;
                plan.push(FieldSource::Default(field.name.clone(), value));
            }
        }
    }
    Some(plan)
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
        let fields = reader.as_deref().and_then(|r| field_plan(&writer, r));
        let decoder = DecoderTryBuilder {
            writer,
            // With a field plan the decoder reads the writer's record as it is.
            reader: if fields.is_some() { None } else { reader },
            names_builder: |writer| ResolvedSchema::try_from(writer),
            datum_builder: |writer, reader| {
                GenericDatumReader::builder(writer)
                    .maybe_reader_schema(reader.as_deref())
                    .build()
            },
        }
        .try_build()
        .map_err(|e| {
            avro_error(format!(
                "values written with schema id {id} cannot be read with the reader's schema: {e}"
            ))
        })?;
        let plan = Arc::new(Plan {
            id,
            decoder,
            fields,
        });
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
    let bad = |what: String| {
        avro_error(format!(
            "a value in topic `{topic}` does not decode with its writer's schema (id {}): {what}",
            plan.id
        ))
    };
    let decoder = &plan.decoder;
    guard::check(
        decoder.borrow_writer(),
        decoder.borrow_names().get_names(),
        body,
    )
    .map_err(bad)?;
    let mut rest = body;
    let value = decoder
        .borrow_datum()
        .read_value(&mut rest)
        .map_err(|e| bad(e.to_string()))?;
    let Some(plan) = &plan.fields else {
        return Ok(value);
    };
    let Value::Record(mut written) = value else {
        return Err(bad(
            "the writer's record decoded as another kind of value".into()
        ));
    };
    let mut fields = Vec::with_capacity(plan.len());
    for source in plan {
        fields.push(match source {
            FieldSource::Writer(i) => {
                let Some((name, value)) = written.get_mut(*i) else {
                    return Err(bad(format!("the writer's record has no field {i}")));
                };
                (std::mem::take(name), std::mem::replace(value, Value::Null))
            }
            FieldSource::Default(name, value) => (name.clone(), value.clone()),
        });
    }
    Ok(Value::Record(fields))
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
