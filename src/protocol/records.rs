//! Decoding record batches (message format v2, KIP-98) from fetch responses.
//!
//! Zero-copy for uncompressed batches: keys, values and header values are
//! slices of the response buffer. Compressed batches are inflated once and
//! sliced the same way. Every length is checked against the bytes that are
//! really there, so a corrupt or hostile response yields an error, never a
//! panic or a huge allocation.
//!
//! # Memory
//!
//! Nothing is allocated from a count or length on the wire alone. Record and
//! header counts only size a reservation when the bytes to back it are there
//! (a record takes at least 7 bytes, a header 2). What one [`decode_batches`]
//! call may spend on decompressed data and on decoded records together is
//! its budget: [`BUDGET_RATIO`] times the record bytes it was given, at least
//! [`MIN_BUDGET`] and at most [`MAX_BUDGET`] (so 64 MiB for the default
//! 1 MiB partition fetch). Decompressors write into a buffer that never
//! grows past what is left of the budget, and zstd frames may not ask for a
//! window larger than that either. When the budget runs out after some
//! progress, decoding stops there and [`Decoded::next_offset`] points at the
//! first record not returned, so the next fetch continues where this one
//! stopped: a highly compressed partition is read in several steps rather
//! than refused. Only a single batch that on its own needs more than the
//! budget (a decompression bomb, or a zstd window over the budget) is an
//! error.

use std::io::Read;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::record::{Header, Record};

/// Why a batch could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    /// The data is inconsistent (lengths, CRC, varints).
    #[error("corrupt record batch at offset {offset}: {reason}")]
    Corrupt {
        /// Base offset of the batch.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// The batch uses a format or codec this build cannot read.
    #[error("record batch at offset {offset}: {reason}")]
    Unsupported {
        /// Base offset of the batch.
        offset: i64,
        /// What is not supported.
        reason: String,
    },
    /// Decoding the batch would take more memory than the fetch's budget
    /// (see the module docs).
    #[error("record batch at offset {offset} is too large to decode: {reason}")]
    TooLarge {
        /// Base offset of the batch.
        offset: i64,
        /// How large, against which limit.
        reason: String,
    },
}

/// Batch header size up to and including the record count.
const BATCH_HEADER: usize = 61;
/// `baseOffset` + `batchLength`: the part before `batchLength` counts.
const LOG_OVERHEAD: usize = 12;

/// The budget of a [`decode_batches`] call, as a multiple of its input.
pub(crate) const BUDGET_RATIO: usize = 64;
/// The smallest budget of a [`decode_batches`] call.
pub(crate) const MIN_BUDGET: usize = 32 * 1024 * 1024;
/// The largest budget of a [`decode_batches`] call.
pub(crate) const MAX_BUDGET: usize = 256 * 1024 * 1024;

/// Memory charged for one decoded record besides its headers.
const RECORD_COST: usize = std::mem::size_of::<Record>();
/// Memory charged for one decoded header besides its name (names are
/// copied and charged too; keys, values and header values are slices).
const HEADER_COST: usize = std::mem::size_of::<Header>();
/// The fewest bytes a record takes: length, attributes, timestamp delta,
/// offset delta, key length, value length and header count, one byte each.
const MIN_RECORD: usize = 7;
/// Raw snappy cannot expand more than about 21 times (a three-byte copy
/// yields at most 64 bytes); a block claiming more is corrupt.
const SNAPPY_MAX_RATIO: usize = 32;

/// What a [`decode_batches`] call may still spend (see the module docs).
#[derive(Debug)]
struct Budget {
    total: usize,
    left: usize,
    input: usize,
}

impl Budget {
    fn for_input(input: usize) -> Self {
        let total = input
            .saturating_mul(BUDGET_RATIO)
            .clamp(MIN_BUDGET, MAX_BUDGET);
        Self {
            total,
            left: total,
            input,
        }
    }

    /// Take `n` bytes if that many are left.
    fn take(&mut self, n: usize) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "the limit is {} bytes for {} bytes of fetched records",
            self.total, self.input
        )
    }
}

/// What one call to [`decode_batches`] found.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<Record>,
    /// The offset to fetch next: one past the last complete batch seen
    /// (including control batches and records below the requested offset),
    /// or, when the budget ran out (see the module docs), the first record
    /// not returned.
    pub next_offset: Option<i64>,
}

/// Whether decoding goes on after a batch.
enum Flow {
    Continue,
    /// The budget is spent; `next_offset` says where to continue.
    Stop,
}

/// Decode every complete batch in `data`, keeping records with offset >= `from`.
/// A truncated batch at the end (the broker cuts at the size limit) is ignored.
pub(crate) fn decode_batches(
    data: Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
) -> Result<Decoded, BatchError> {
    let budget = Budget::for_input(data.len());
    decode_within(data, topic, partition, from, budget)
}

/// [`decode_batches`] with an explicit budget.
fn decode_within(
    mut data: Bytes,
    topic: &Arc<str>,
    partition: i32,
    from: i64,
    mut budget: Budget,
) -> Result<Decoded, BatchError> {
    let mut out = Decoded::default();
    while data.len() >= LOG_OVERHEAD {
        let base_offset = i64::from_be_bytes(take8(&data, 0));
        let batch_length = i32::from_be_bytes(take4(&data, 8));
        let Ok(batch_length) = usize::try_from(batch_length) else {
            return Err(corrupt(
                base_offset,
                format!("negative batch length {batch_length}"),
            ));
        };
        if data.len() < LOG_OVERHEAD + batch_length {
            break; // partial batch at the end of the response
        }
        let batch = data.split_to(LOG_OVERHEAD + batch_length);
        let at = Position {
            topic,
            partition,
            from,
        };
        if let Flow::Stop = decode_batch(batch, at, &mut out, &mut budget)? {
            break;
        }
    }
    Ok(out)
}

/// Where decoded records go and which of them are wanted.
#[derive(Clone, Copy)]
struct Position<'a> {
    topic: &'a Arc<str>,
    partition: i32,
    from: i64,
}

/// Stop for the budget at `next` if that is progress past `from`; otherwise
/// the batch alone is too large, an error.
fn stop_or_fail(
    out: &mut Decoded,
    next: Option<i64>,
    from: i64,
    base_offset: i64,
    reason: String,
) -> Result<Flow, BatchError> {
    match next {
        Some(next) if next > from => {
            out.next_offset = Some(next);
            Ok(Flow::Stop)
        }
        _ => Err(BatchError::TooLarge {
            offset: base_offset,
            reason,
        }),
    }
}

fn decode_batch(
    batch: Bytes,
    at: Position<'_>,
    out: &mut Decoded,
    budget: &mut Budget,
) -> Result<Flow, BatchError> {
    let base_offset = i64::from_be_bytes(take8(&batch, 0));
    if batch.len() < 17 {
        return Err(corrupt(base_offset, "batch shorter than its header".into()));
    }
    let magic = batch[16] as i8;
    if magic != 2 {
        return Err(BatchError::Unsupported {
            offset: base_offset,
            reason: format!("message format v{magic} (only v2, Kafka 0.11+, is supported)"),
        });
    }
    if batch.len() < BATCH_HEADER {
        return Err(corrupt(base_offset, "batch shorter than its header".into()));
    }
    let crc = u32::from_be_bytes(take4(&batch, 17));
    if crc32c::crc32c(&batch[21..]) != crc {
        return Err(corrupt(base_offset, "CRC mismatch".into()));
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let last_offset_delta = i32::from_be_bytes(take4(&batch, 23));
    let base_timestamp = i64::from_be_bytes(take8(&batch, 27));
    let max_timestamp = i64::from_be_bytes(take8(&batch, 35));
    let count = i32::from_be_bytes(take4(&batch, 57));
    let last_offset = base_offset.saturating_add(i64::from(last_offset_delta));
    let batch_end = last_offset.saturating_add(1);

    let control = attributes & 0x20 != 0;
    if control || last_offset < at.from {
        // Transaction markers; or records already read.
        out.next_offset = Some(batch_end);
        return Ok(Flow::Continue);
    }
    let log_append_time = attributes & 0x08 != 0;
    let body = batch.slice(BATCH_HEADER..);
    let inflated = match attributes & 0x07 {
        0 => Ok(body),
        1 => inflate(
            base_offset,
            flate2::read::GzDecoder::new(&body[..]),
            body.len(),
            budget,
        ),
        2 => snappy(base_offset, &body, budget),
        3 => inflate(
            base_offset,
            lz4_flex::frame::FrameDecoder::new(&body[..]),
            body.len(),
            budget,
        ),
        4 => {
            // A frame's window is allocated up front: never more than the
            // budget allows.
            let window = budget.left as u64;
            match ruzstd::decoding::StreamingDecoder::new_with_max_window_size(&body[..], window) {
                Ok(decoder) => inflate(base_offset, decoder, body.len(), budget),
                Err(ruzstd::decoding::errors::FrameDecoderError::WindowSizeTooBig {
                    requested,
                    ..
                }) => Err(Inflate::OverBudget(format!(
                    "its zstd window is {requested} bytes, {} bytes of the budget are left; {}",
                    budget.left,
                    budget.describe()
                ))),
                Err(e) => Err(Inflate::Failed(corrupt(base_offset, format!("zstd: {e}")))),
            }
        }
        other => {
            return Err(BatchError::Unsupported {
                offset: base_offset,
                reason: format!("unknown compression codec {other}"),
            })
        }
    };
    let mut records = match inflated {
        Ok(records) => records,
        Err(Inflate::Failed(e)) => return Err(e),
        Err(Inflate::OverBudget(reason)) => {
            let next = out.next_offset;
            return stop_or_fail(out, next, at.from, base_offset, reason);
        }
    };
    let count = usize::try_from(count).unwrap_or(0);
    // Never trust the count for allocation: reserve only what the bytes
    // present can hold and the budget can pay for.
    out.records.reserve(
        count
            .min(records.len() / MIN_RECORD + 1)
            .min(budget.left / RECORD_COST),
    );
    for _ in 0..count {
        let mut r = Reader {
            buf: &mut records,
            base_offset,
        };
        let length = r.varint()?;
        let Ok(length) = usize::try_from(length) else {
            return Err(corrupt(
                base_offset,
                format!("negative record length {length}"),
            ));
        };
        if r.buf.len() < length {
            return Err(corrupt(base_offset, "record runs past the batch".into()));
        }
        let mut rec = records.split_to(length);
        let mut r = Reader {
            buf: &mut rec,
            base_offset,
        };
        r.skip(1)?; // record attributes, unused
        let timestamp_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let offset = base_offset.saturating_add(i64::from(offset_delta));
        if offset < at.from {
            continue;
        }
        let key = r.nullable_bytes()?;
        let value = r.nullable_bytes()?;
        let header_count = usize::try_from(r.varint()?).unwrap_or(0);
        // Each header takes at least two bytes.
        let header_slots = header_count.min(r.buf.len() / 2 + 1);
        let over = |budget: &Budget| {
            format!(
                "its records need more than the {} bytes left of the budget; {}",
                budget.left,
                budget.describe()
            )
        };
        if !budget.take(RECORD_COST + header_slots * HEADER_COST) {
            return stop_or_fail(out, Some(offset), at.from, base_offset, over(budget));
        }
        let mut headers = Vec::with_capacity(header_slots);
        for _ in 0..header_count {
            let name = r.nullable_bytes()?.unwrap_or_default();
            // Names are copied; values are slices.
            if !budget.take(name.len()) {
                return stop_or_fail(out, Some(offset), at.from, base_offset, over(budget));
            }
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| corrupt(base_offset, "header name is not UTF-8".into()))?;
            let value = r.nullable_bytes()?.unwrap_or_default();
            headers.push(Header { key: name, value });
        }
        out.records.push(Record {
            topic: Arc::clone(at.topic),
            partition: at.partition,
            offset,
            key,
            value,
            headers,
            timestamp: if log_append_time {
                max_timestamp
            } else {
                base_timestamp.saturating_add(timestamp_delta)
            },
        });
    }
    out.next_offset = Some(batch_end);
    Ok(Flow::Continue)
}

fn take4(b: &[u8], at: usize) -> [u8; 4] {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    x
}

fn take8(b: &[u8], at: usize) -> [u8; 8] {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    x
}

fn corrupt(offset: i64, reason: String) -> BatchError {
    BatchError::Corrupt { offset, reason }
}

/// Why a batch could not be inflated.
enum Inflate {
    /// The data is corrupt.
    Failed(BatchError),
    /// It inflates to more than the budget has left.
    OverBudget(String),
}

/// Read `reader` to its end, into a buffer that never grows past what is
/// left of `budget`, and charge what it produced.
fn inflate(
    offset: i64,
    mut reader: impl Read,
    compressed: usize,
    budget: &mut Budget,
) -> Result<Bytes, Inflate> {
    let limit = budget.left;
    let over = |budget: &Budget| {
        Inflate::OverBudget(format!(
            "it decompresses to more than the {limit} bytes left of the budget; {}",
            budget.describe()
        ))
    };
    let mut out: Vec<u8> = Vec::with_capacity(compressed.saturating_mul(4).min(limit));
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Inflate::Failed(corrupt(
                    offset,
                    format!("decompression failed: {e}"),
                )))
            }
        };
        if n > limit - out.len() {
            return Err(over(budget));
        }
        if out.capacity() - out.len() < n {
            // Double, but never past the limit.
            let grow = out.len().max(n).min(limit - out.len());
            out.reserve_exact(grow);
        }
        out.extend_from_slice(&chunk[..n]);
    }
    budget.take(out.len());
    Ok(Bytes::from(out))
}

/// Snappy as Kafka clients write it: either the xerial framing the Java
/// client uses (magic header, then length-prefixed raw blocks) or one raw block.
fn snappy(offset: i64, data: &[u8], budget: &mut Budget) -> Result<Bytes, Inflate> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let failed = |reason: String| Inflate::Failed(corrupt(offset, reason));
    let mut blocks = Vec::new();
    if data.starts_with(XERIAL) && data.len() >= 16 {
        let mut rest = &data[16..]; // magic, version, compatible version
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(failed("truncated snappy block length".into()));
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            let Some(block) = rest.get(..len) else {
                return Err(failed("truncated snappy block".into()));
            };
            blocks.push(block);
            rest = &rest[len..];
        }
    } else {
        blocks.push(data);
    }
    // Each block states its decompressed length: check them all against
    // what the block could possibly expand to and against the budget, then
    // allocate once.
    let mut total = 0usize;
    for block in &blocks {
        let len = snap::raw::decompress_len(block).map_err(|e| failed(format!("snappy: {e}")))?;
        if len > block.len().saturating_mul(SNAPPY_MAX_RATIO) {
            return Err(failed(format!(
                "snappy block of {} bytes claims to expand to {len}",
                block.len()
            )));
        }
        total = total.saturating_add(len);
    }
    if total > budget.left {
        return Err(Inflate::OverBudget(format!(
            "it decompresses to {total} bytes, {} bytes of the budget are left; {}",
            budget.left,
            budget.describe()
        )));
    }
    let mut out = vec![0u8; total];
    let mut decoder = snap::raw::Decoder::new();
    let mut at = 0;
    for block in blocks {
        let n = decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| failed(format!("snappy: {e}")))?;
        at += n;
    }
    out.truncate(at);
    budget.take(out.len());
    Ok(Bytes::from(out))
}

/// Cursor over one record's bytes.
struct Reader<'a> {
    buf: &'a mut Bytes,
    base_offset: i64,
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Result<(), BatchError> {
        if self.buf.len() < n {
            return Err(corrupt(self.base_offset, "record truncated".into()));
        }
        self.buf.advance(n);
        Ok(())
    }

    fn varlong(&mut self) -> Result<i64, BatchError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.buf.first() else {
                return Err(corrupt(self.base_offset, "varint truncated".into()));
            };
            self.buf.advance(1);
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                // zig-zag
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(corrupt(self.base_offset, "varint too long".into()))
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| corrupt(self.base_offset, "varint out of range".into()))
    }

    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        if self.buf.len() < len {
            return Err(corrupt(
                self.base_offset,
                "field runs past the record".into(),
            ));
        }
        Ok(Some(self.buf.split_to(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (offset delta, key, value, headers) of a hand-built record.
    type Spec<'a> = (
        i32,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        &'a [(&'a str, &'a [u8])],
    );

    /// Encode a batch by hand from the v2 layout, so decoding is checked
    /// against the format rather than against our own encoder.
    fn batch(base: i64, records: &[Spec<'_>], attributes: i16) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let b = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        }
        let mut body = Vec::new();
        for (delta, key, value, headers) in records {
            let mut r = vec![0u8];
            varint(&mut r, 10 * i64::from(*delta));
            varint(&mut r, i64::from(*delta));
            for f in [key, value] {
                match f {
                    Some(b) => {
                        varint(&mut r, b.len() as i64);
                        r.extend_from_slice(b);
                    }
                    None => varint(&mut r, -1),
                }
            }
            varint(&mut r, headers.len() as i64);
            for (k, v) in *headers {
                varint(&mut r, k.len() as i64);
                r.extend_from_slice(k.as_bytes());
                varint(&mut r, v.len() as i64);
                r.extend_from_slice(v);
            }
            varint(&mut body, r.len() as i64);
            body.extend_from_slice(&r);
        }
        let last_delta = records.iter().map(|r| r.0).max().unwrap_or(0);
        let mut after_crc = Vec::new();
        after_crc.extend_from_slice(&attributes.to_be_bytes());
        after_crc.extend_from_slice(&last_delta.to_be_bytes());
        after_crc.extend_from_slice(&1_000i64.to_be_bytes());
        after_crc.extend_from_slice(&2_000i64.to_be_bytes());
        after_crc.extend_from_slice(&(-1i64).to_be_bytes());
        after_crc.extend_from_slice(&(-1i16).to_be_bytes());
        after_crc.extend_from_slice(&(-1i32).to_be_bytes());
        after_crc.extend_from_slice(&(records.len() as i32).to_be_bytes());
        after_crc.extend_from_slice(&body);
        let mut out = Vec::new();
        out.extend_from_slice(&base.to_be_bytes());
        out.extend_from_slice(&((4 + 1 + 4 + after_crc.len()) as i32).to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&crc32c::crc32c(&after_crc).to_be_bytes());
        out.extend_from_slice(&after_crc);
        out
    }

    fn topic() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn decodes_records_headers_and_offsets() {
        let mut data = batch(
            100,
            &[
                (0, Some(b"k0"), Some(b"v0"), &[("h", b"x")]),
                (1, None, Some(b"v1"), &[]),
                (3, Some(b"k3"), None, &[("a", b"1"), ("a", b"2")]),
            ],
            0,
        );
        data.extend(batch(104, &[(0, None, Some(b"v4"), &[])], 0));
        let d = decode_batches(Bytes::from(data), &topic(), 2, 0).unwrap();
        assert_eq!(d.next_offset, Some(105));
        let offsets: Vec<i64> = d.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [100, 101, 103, 104]);
        let r = &d.records[0];
        assert_eq!(
            (r.key.as_deref(), r.value.as_deref()),
            (Some(&b"k0"[..]), Some(&b"v0"[..]))
        );
        assert_eq!(r.header("h"), Some(&b"x"[..]));
        assert_eq!(r.timestamp, 1000);
        assert_eq!(d.records[2].value, None);
        assert_eq!(
            d.records[2].headers.len(),
            2,
            "duplicate header names are kept"
        );
        assert_eq!(d.records[2].timestamp, 1030);
        assert_eq!(d.records[1].partition, 2);
    }

    #[test]
    fn skips_records_before_the_requested_offset_and_partial_batches() {
        let mut data = batch(
            10,
            &[(0, None, Some(b"a"), &[]), (1, None, Some(b"b"), &[])],
            0,
        );
        let second = batch(12, &[(0, None, Some(b"c"), &[])], 0);
        data.extend_from_slice(&second[..second.len() - 3]);
        let d = decode_batches(Bytes::from(data), &topic(), 0, 11).unwrap();
        assert_eq!(d.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [11]);
        assert_eq!(
            d.next_offset,
            Some(12),
            "the partial batch is fetched again"
        );
    }

    #[test]
    fn control_batches_advance_the_offset_without_records() {
        let data = batch(7, &[(0, None, Some(b"\0\0\0\0"), &[])], 0x20);
        let d = decode_batches(Bytes::from(data), &topic(), 0, 0).unwrap();
        assert!(d.records.is_empty());
        assert_eq!(d.next_offset, Some(8));
    }

    #[test]
    fn corruption_is_an_error_not_a_panic() {
        let good = batch(0, &[(0, Some(b"key"), Some(b"value"), &[("h", b"v")])], 0);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            decode_batches(Bytes::from(bad_crc), &topic(), 0, 0),
            Err(BatchError::Corrupt { .. })
        ));
        // Every truncation and every single-byte change either decodes or errors.
        for cut in 0..good.len() {
            let _ = decode_batches(Bytes::copy_from_slice(&good[..cut]), &topic(), 0, 0);
        }
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] ^= flip;
                let _ = decode_batches(Bytes::from(m), &topic(), 0, 0);
            }
        }
        let mut old = good;
        old[16] = 1;
        assert!(matches!(
            decode_batches(Bytes::from(old), &topic(), 0, 0),
            Err(BatchError::Unsupported { .. })
        ));
    }
}

/// A record to be written into a batch.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the epoch (CreateTime).
    pub timestamp: i64,
}

impl OutgoingRecord {
    /// Upper bound of the encoded size (varints at their longest).
    pub(crate) fn max_encoded_size(&self) -> usize {
        let field = |b: &Option<Bytes>| 5 + b.as_ref().map_or(0, |b| b.len());
        5 + 1
            + 10
            + 5
            + field(&self.key)
            + field(&self.value)
            + 5
            + self
                .headers
                .iter()
                .map(|(k, v)| 10 + k.len() + v.len())
                .sum::<usize>()
    }
}

/// Compression codec of a produced batch (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Encoded length of a zig-zag varint.
fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.max(1).leading_zeros() as usize).div_ceil(7)
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varlong(out, -1),
    }
}

/// The idempotent-producer fields of a batch header: producer id, epoch and
/// the sequence number of the batch's first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerFields {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl ProducerFields {
    /// A batch from a producer that is not idempotent.
    pub(crate) const NONE: Self = Self {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

/// Encode `records` as one v2 batch (base offset 0; the broker assigns
/// offsets), stamped with `producer`'s id, epoch and base sequence.
pub(crate) fn encode_batch<'a>(
    records: impl ExactSizeIterator<Item = &'a OutgoingRecord> + Clone,
    codec: Codec,
    producer: ProducerFields,
) -> Result<Bytes, BatchError> {
    let count = records.len();
    let first_ts = records.clone().next().map_or(0, |r| r.timestamp);
    let max_ts = records
        .clone()
        .map(|r| r.timestamp)
        .max()
        .unwrap_or(first_ts);
    let capacity: usize = records.clone().map(OutgoingRecord::max_encoded_size).sum();
    // The header is filled in last; uncompressed records go straight after
    // it, compressed ones through a scratch buffer.
    let mut out = Vec::with_capacity(BATCH_HEADER + capacity);
    out.resize(BATCH_HEADER, 0);
    if codec == Codec::None {
        put_records(&mut out, records, first_ts);
    } else {
        let mut body = Vec::with_capacity(capacity);
        put_records(&mut body, records, first_ts);
        out.extend_from_slice(&compress(codec, body)?);
    }
    let length = i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| BatchError::Unsupported {
        offset: 0,
        reason: "batch larger than 2 GiB".into(),
    })?;
    let header = &mut out[..BATCH_HEADER];
    header[0..8].copy_from_slice(&0i64.to_be_bytes()); // base offset
    header[8..12].copy_from_slice(&length.to_be_bytes());
    header[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    header[16] = 2; // magic
    header[21..23].copy_from_slice(&(codec as i16).to_be_bytes());
    header[23..27].copy_from_slice(&(count.saturating_sub(1) as i32).to_be_bytes());
    header[27..35].copy_from_slice(&first_ts.to_be_bytes());
    header[35..43].copy_from_slice(&max_ts.to_be_bytes());
    header[43..51].copy_from_slice(&producer.id.to_be_bytes());
    header[51..53].copy_from_slice(&producer.epoch.to_be_bytes());
    header[53..57].copy_from_slice(&producer.base_sequence.to_be_bytes());
    header[57..61].copy_from_slice(&(count as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(Bytes::from(out))
}

fn put_records<'a>(
    out: &mut Vec<u8>,
    records: impl Iterator<Item = &'a OutgoingRecord>,
    first_ts: i64,
) {
    for (i, r) in records.enumerate() {
        let ts_delta = r.timestamp - first_ts;
        let field = |b: &Option<Bytes>| match b {
            Some(b) => varint_len(b.len() as i64) + b.len(),
            None => 1,
        };
        let headers: usize = r
            .headers
            .iter()
            .map(|(k, v)| {
                varint_len(k.len() as i64) + k.len() + varint_len(v.len() as i64) + v.len()
            })
            .sum();
        let len = 1
            + varint_len(ts_delta)
            + varint_len(i as i64)
            + field(&r.key)
            + field(&r.value)
            + varint_len(r.headers.len() as i64)
            + headers;
        put_varlong(out, len as i64);
        out.push(0); // record attributes
        put_varlong(out, ts_delta);
        put_varlong(out, i as i64);
        put_bytes(out, r.key.as_deref());
        put_bytes(out, r.value.as_deref());
        put_varlong(out, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_bytes(out, Some(k.as_bytes()));
            put_bytes(out, Some(v));
        }
    }
}

fn compress(codec: Codec, body: Vec<u8>) -> Result<Vec<u8>, BatchError> {
    use std::io::Write;
    let failed = |e: std::io::Error| BatchError::Unsupported {
        offset: 0,
        reason: format!("compression failed: {e}"),
    };
    Ok(match codec {
        Codec::None => body,
        Codec::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body).map_err(failed)?;
            enc.finish().map_err(failed)?
        }
        Codec::Snappy => {
            // The xerial framing the Java client writes and every broker reads.
            let mut out = Vec::with_capacity(body.len() / 2 + 32);
            out.extend_from_slice(b"\x82SNAPPY\x00");
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for chunk in body.chunks(32 * 1024) {
                let block = encoder
                    .compress_vec(chunk)
                    .map_err(|e| BatchError::Unsupported {
                        offset: 0,
                        reason: format!("snappy: {e}"),
                    })?;
                out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        Codec::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(&body).map_err(failed)?;
            enc.finish().map_err(|e| BatchError::Unsupported {
                offset: 0,
                reason: format!("lz4: {e}"),
            })?
        }
        Codec::Zstd => ruzstd::encoding::compress_to_vec(
            &body[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
    })
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn encoded_batches_decode_back_with_every_codec() {
        let records: Vec<OutgoingRecord> = (0..50)
            .map(|i| OutgoingRecord {
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: (i % 7 != 0).then(|| Bytes::from(vec![i as u8; i * 40])),
                headers: if i % 2 == 0 {
                    vec![
                        ("a".into(), Bytes::from_static(b"1")),
                        ("a".into(), Bytes::from_static(b"2")),
                    ]
                } else {
                    vec![]
                },
                timestamp: 1_700_000_000_000 + i as i64,
            })
            .collect();
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let batch = encode_batch(records.iter(), codec, ProducerFields::NONE).unwrap();
            // Pretend the broker assigned base offset 500.
            let mut b = batch.to_vec();
            b[..8].copy_from_slice(&500i64.to_be_bytes());
            let d = decode_batches(Bytes::from(b), &Arc::from("t"), 0, 0).unwrap();
            assert_eq!(d.records.len(), 50, "{codec:?}");
            assert_eq!(d.next_offset, Some(550));
            for (i, (r, o)) in d.records.iter().zip(&records).enumerate() {
                assert_eq!(r.offset, 500 + i as i64);
                assert_eq!(r.key, o.key, "{codec:?} key {i}");
                assert_eq!(r.value, o.value, "{codec:?} value {i}");
                assert_eq!(r.timestamp, o.timestamp);
                let h: Vec<(String, Bytes)> = r
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                assert_eq!(h, o.headers);
            }
        }
    }

    fn one_record(value: Vec<u8>) -> OutgoingRecord {
        OutgoingRecord {
            key: None,
            value: Some(Bytes::from(value)),
            headers: vec![],
            timestamp: 0,
        }
    }

    /// A batch of `records` at `base`, as the broker would send it.
    fn batch_at(base: i64, records: &[OutgoingRecord], codec: Codec) -> Vec<u8> {
        let mut b = encode_batch(records.iter(), codec, ProducerFields::NONE)
            .unwrap()
            .to_vec();
        b[..8].copy_from_slice(&base.to_be_bytes());
        b
    }

    fn budget(total: usize) -> Budget {
        Budget {
            total,
            left: total,
            input: 0,
        }
    }

    #[test]
    fn the_budget_follows_the_input_within_its_bounds() {
        assert_eq!(Budget::for_input(0).total, MIN_BUDGET);
        assert_eq!(Budget::for_input(1024 * 1024).total, 64 * 1024 * 1024);
        assert_eq!(Budget::for_input(usize::MAX).total, MAX_BUDGET);
    }

    #[test]
    fn a_batch_that_inflates_past_the_budget_is_an_error() {
        let zeros = one_record(vec![0; 3 * 1024 * 1024]);
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let data = batch_at(0, std::slice::from_ref(&zeros), codec);
            assert!(data.len() < 1024 * 1024, "{codec:?} compresses");
            let e = decode_within(Bytes::from(data), &Arc::from("t"), 0, 0, budget(1 << 20))
                .unwrap_err();
            assert!(matches!(e, BatchError::TooLarge { .. }), "{codec:?}: {e}");
            assert!(e.to_string().contains("budget"), "{e}");
        }
    }

    #[test]
    fn when_the_budget_runs_out_decoding_stops_and_resumes() {
        let big = one_record(vec![7; 600 * 1024]);
        let mut data = batch_at(10, std::slice::from_ref(&big), Codec::Lz4);
        data.extend(batch_at(11, std::slice::from_ref(&big), Codec::Lz4));
        data.extend(batch_at(12, std::slice::from_ref(&big), Codec::Lz4));
        let data = Bytes::from(data);
        let t = Arc::from("t");
        let d = decode_within(data.clone(), &t, 0, 10, budget(1 << 20)).unwrap();
        assert_eq!(d.records.len(), 1);
        assert_eq!(
            d.next_offset,
            Some(11),
            "continue at the first record not returned"
        );
        let d = decode_within(data.clone(), &t, 0, 11, budget(1 << 20)).unwrap();
        assert_eq!(d.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [11]);
        assert_eq!(d.next_offset, Some(12));
        let d = decode_within(data, &t, 0, 12, budget(1 << 20)).unwrap();
        assert_eq!(d.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [12]);
        assert_eq!(d.next_offset, Some(13));
    }

    #[test]
    fn records_charge_the_budget_and_stop_between_records() {
        // 1000 small records in one uncompressed batch: with room for about
        // 300 of them, the first call returns a prefix and says where to go on.
        let records: Vec<OutgoingRecord> = (0..1000).map(|_| one_record(vec![1; 10])).collect();
        let data = Bytes::from(batch_at(0, &records, Codec::None));
        let t = Arc::from("t");
        let room = 300 * (RECORD_COST + 20);
        let d = decode_within(data.clone(), &t, 0, 0, budget(room)).unwrap();
        let n = d.records.len();
        assert!((200..1000).contains(&n), "{n}");
        assert_eq!(d.next_offset, Some(n as i64));
        let d = decode_within(data, &t, 0, n as i64, budget(1 << 30)).unwrap();
        assert_eq!(d.records.first().map(|r| r.offset), Some(n as i64));
        assert_eq!(d.next_offset, Some(1000));
    }

    #[test]
    fn a_zstd_window_larger_than_the_budget_is_refused_before_allocating() {
        // A frame header asking for a 1 GiB window (window descriptor 0xa0:
        // exponent 30), then an empty raw last block.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0, 0x01, 0x00, 0x00];
        let mut b = batch_at(0, &[one_record(vec![1])], Codec::None);
        b.truncate(BATCH_HEADER);
        b.extend_from_slice(&frame);
        let length = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        b[21..23].copy_from_slice(&(Codec::Zstd as i16).to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = decode_batches(Bytes::from(b), &Arc::from("t"), 0, 0).unwrap_err();
        assert!(matches!(e, BatchError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("window"), "{e}");
    }

    #[test]
    fn a_snappy_block_claiming_more_than_it_can_hold_is_corrupt() {
        // Declared length u32::MAX, three bytes of content.
        let block = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x08, b'a', b'b'];
        let e = snappy(0, &block, &mut budget(MAX_BUDGET)).err().unwrap();
        assert!(matches!(e, Inflate::Failed(BatchError::Corrupt { .. })));
    }

    #[test]
    fn huge_record_and_header_counts_are_errors() {
        let mut b = batch_at(0, &[one_record(b"v".to_vec())], Codec::None);
        // The batch claims i32::MAX records.
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = decode_batches(Bytes::from(b), &Arc::from("t"), 0, 0).unwrap_err();
        assert!(matches!(e, BatchError::Corrupt { .. }), "{e}");
        // One record whose header count is i32::MAX (zig-zag 0xfffffffe).
        let mut b = batch_at(0, &[one_record(b"v".to_vec())], Codec::None);
        let last = b.len() - 1;
        assert_eq!(b[last], 0, "header count 0 ends the record");
        b.truncate(last);
        b.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        b[BATCH_HEADER] += 4; // record length varint (small, one byte)
        let length = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = decode_batches(Bytes::from(b), &Arc::from("t"), 0, 0).unwrap_err();
        assert!(matches!(e, BatchError::Corrupt { .. }), "{e}");
    }

    /// Writes a seed corpus for the `record_batch_decode` fuzz target (see
    /// fuzz/README.md) into the directory `FUZZ_SEEDS` names (a temporary
    /// one otherwise): batches with every codec, several batches in a row
    /// and a control batch, in the target's input layout. Every seed must
    /// decode, or the fuzzer would start from inputs that fail at once.
    #[test]
    fn write_record_batch_seeds() {
        let dir = crate::protocol::seed_dir("record_batch_decode");
        let records: Vec<OutgoingRecord> = (0..3)
            .map(|i| OutgoingRecord {
                key: (i != 1).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'v'; 10 * i])),
                headers: vec![("h".into(), Bytes::from_static(b"x"))],
                timestamp: 1_700_000_000_000 + i as i64,
            })
            .collect();
        let codecs = [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ];
        let mut all = vec![0u8];
        for (i, codec) in codecs.into_iter().enumerate() {
            let batch = batch_at(10 * i as i64, &records, codec);
            all.extend_from_slice(&batch);
            let mut file = vec![0u8];
            file.extend(batch);
            std::fs::write(dir.join(format!("{codec:?}")), file).expect("seed written");
        }
        std::fs::write(dir.join("all-codecs"), all).expect("seed written");
        let mut control = batch_at(60, &records[..1], Codec::None);
        control[21..23].copy_from_slice(&0x20i16.to_be_bytes());
        let crc = crc32c::crc32c(&control[21..]);
        control[17..21].copy_from_slice(&crc.to_be_bytes());
        let mut file = vec![0u8];
        file.extend(control);
        std::fs::write(dir.join("control"), file).expect("seed written");
        let names = codecs.iter().map(|c| format!("{c:?}"));
        for name in names.chain(["all-codecs".into(), "control".into()]) {
            let seed = std::fs::read(dir.join(&name)).expect("seed read");
            let decoded = decode_batches(Bytes::from(seed).slice(1..), &Arc::from("t"), 0, 0);
            assert!(decoded.is_ok(), "seed {name} decodes: {decoded:?}");
        }
        crate::protocol::drop_seed_dir(&dir);
    }
}
