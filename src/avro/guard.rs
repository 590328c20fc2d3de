//! A check of an Avro body against its writer's schema before apache-avro
//! decodes it, so that hostile or damaged bytes are an error, never a
//! panic, a stack overflow or a large allocation.
//!
//! apache-avro bounds each allocation by a process-wide limit (512 MiB by
//! default, settable once per process), reads an absent string at the end
//! of the input as a null, and decodes nested values by recursion. This
//! walk, which allocates nothing, makes sure that every length fits in the
//! bytes that remain, that items taking no bytes (nulls, empty records) are
//! few, that nesting stays shallow, that union branches and enum symbols
//! exist, and that the body ends where the value ends. Decoding a body
//! that passes allocates in proportion to its size.

use apache_avro::schema::{InnerDecimalSchema, Name, NamesRef, UuidSchema};
use apache_avro::Schema;

/// The deepest nesting of records, arrays, maps and unions accepted.
pub(crate) const MAX_DEPTH: usize = 128;
/// Items that take no bytes (nulls, empty records in arrays and maps) per
/// body, beyond a few per body byte.
const ZERO_SIZE_ITEMS_BASE: u64 = 4096;

/// Check `body` against `schema`; the error says what is wrong and where.
pub(crate) fn check(schema: &Schema, names: &NamesRef<'_>, body: &[u8]) -> Result<(), String> {
    let mut walk = Walk {
        names,
        body,
        at: 0,
        zero_items: 0,
        zero_budget: ZERO_SIZE_ITEMS_BASE + 8 * body.len() as u64,
    };
    walk.value(schema, 0)?;
    if walk.at != body.len() {
        return Err(format!(
            "{} bytes are left after the value ends at byte {}: the writer's schema does not describe this body",
            body.len() - walk.at,
            walk.at
        ));
    }
    Ok(())
}

struct Walk<'a, 'n> {
    names: &'a NamesRef<'n>,
    body: &'a [u8],
    at: usize,
    zero_items: u64,
    zero_budget: u64,
}

impl<'n> Walk<'_, 'n> {
    fn remaining(&self) -> usize {
        self.body.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "the body is truncated: {what} at byte {} needs {n} bytes, {} remain",
                self.at,
                self.remaining()
            ));
        }
        self.at += n;
        Ok(())
    }

    /// A zig-zag varint (Avro int and long).
    fn long(&mut self, what: &str) -> Result<i64, String> {
        let start = self.at;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.body.get(self.at) else {
                return Err(format!(
                    "the body is truncated: {what} at byte {start} ends early"
                ));
            };
            self.at += 1;
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(format!("{what} at byte {start} is not a valid varint"))
    }

    fn int(&mut self, what: &str) -> Result<i64, String> {
        let start = self.at;
        let v = self.long(what)?;
        if i32::try_from(v).is_err() {
            return Err(format!("{what} at byte {start} ({v}) does not fit an int"));
        }
        Ok(v)
    }

    /// A length prefix that must fit in the remaining bytes, then the bytes.
    fn bytes(&mut self, what: &str) -> Result<(), String> {
        let start = self.at;
        let len = self.long(what)?;
        let len = usize::try_from(len)
            .map_err(|_| format!("{what} at byte {start} has a negative length ({len})"))?;
        self.take(len, what)
    }

    fn resolve(&self, name: &Name) -> Result<&'n Schema, String> {
        self.names.get(name).copied().ok_or_else(|| {
            format!("the writer's schema refers to `{name}`, which it does not define")
        })
    }

    fn value(&mut self, schema: &Schema, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "the value is nested deeper than {MAX_DEPTH} levels"
            ));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => {
                let at = self.at;
                self.take(1, "a boolean")?;
                match self.body[at] {
                    0 | 1 => Ok(()),
                    b => Err(format!("a boolean at byte {at} is {b}, not 0 or 1")),
                }
            }
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int("an int").map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long("a long").map(drop),
            Schema::Float => self.take(4, "a float"),
            Schema::Double => self.take(8, "a double"),
            Schema::Bytes | Schema::BigDecimal => self.bytes("a bytes value"),
            Schema::String => {
                let start = self.at;
                self.bytes("a string")?;
                // The length prefix is a varint of at most 10 bytes.
                let text = &self.body[start..self.at];
                let skip = text.iter().position(|b| b & 0x80 == 0).map_or(0, |i| i + 1);
                std::str::from_utf8(&text[skip..])
                    .map(drop)
                    .map_err(|e| format!("a string at byte {start} is not UTF-8 ({e})"))
            }
            Schema::Uuid(UuidSchema::String) => self.value(&Schema::String, depth),
            Schema::Uuid(UuidSchema::Bytes) => self.bytes("a uuid"),
            Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Fixed(f) | Schema::Duration(f) => {
                self.take(f.size, "a fixed value")
            }
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => self.bytes("a decimal"),
                InnerDecimalSchema::Fixed(f) => self.take(f.size, "a decimal"),
            },
            Schema::Enum(e) => {
                let start = self.at;
                let i = self.int("an enum index")?;
                if i < 0 || i as usize >= e.symbols.len() {
                    return Err(format!(
                        "an enum index at byte {start} is {i}; `{}` has {} symbols",
                        e.name,
                        e.symbols.len()
                    ));
                }
                Ok(())
            }
            Schema::Union(u) => {
                let start = self.at;
                let i = self.long("a union branch")?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| {
                        format!(
                            "a union branch at byte {start} is {i}; the union has {} branches",
                            u.variants().len()
                        )
                    })?;
                self.value(branch, depth + 1)
            }
            Schema::Record(r) => {
                for field in &r.fields {
                    self.value(&field.schema, depth + 1)?;
                }
                Ok(())
            }
            Schema::Array(a) => self.blocks(&a.items, false, depth),
            Schema::Map(m) => self.blocks(&m.types, true, depth),
            Schema::Ref { name } => {
                let target = self.resolve(name)?;
                self.value(target, depth)
            }
        }
    }

    /// Array or map blocks: a count (negative: followed by the block's byte
    /// size), the items, until a count of 0.
    fn blocks(&mut self, items: &Schema, map: bool, depth: usize) -> Result<(), String> {
        let zero_size = self.takes_no_bytes(items, 0);
        loop {
            let start = self.at;
            let count = self.long("a block count")?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long("a block size")?;
            }
            let count = count.unsigned_abs();
            if zero_size && !map {
                self.zero_items = self.zero_items.saturating_add(count);
                if self.zero_items > self.zero_budget {
                    return Err(format!(
                        "an array at byte {start} claims {count} items that take no bytes; \
                         more than this body can hold"
                    ));
                }
                continue;
            }
            // Each item (a map's key is a string) takes at least one byte,
            // so a count above the remaining bytes cannot be right.
            if count > self.remaining() as u64 {
                return Err(format!(
                    "a block at byte {start} claims {count} items, but only {} bytes remain",
                    self.remaining()
                ));
            }
            for _ in 0..count {
                if map {
                    self.value(&Schema::String, depth + 1)?;
                }
                self.value(items, depth + 1)?;
            }
        }
    }

    /// Whether values of `schema` are encoded in zero bytes (null, fixed of
    /// size 0, records of such fields).
    fn takes_no_bytes(&self, schema: &Schema, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match schema {
            Schema::Null => true,
            Schema::Fixed(f) => f.size == 0,
            Schema::Record(r) => r
                .fields
                .iter()
                .all(|f| self.takes_no_bytes(&f.schema, depth + 1)),
            Schema::Ref { name } => self
                .names
                .get(name)
                .is_some_and(|s| self.takes_no_bytes(s, depth + 1)),
            _ => false,
        }
    }
}
