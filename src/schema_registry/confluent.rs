//! The Confluent wire format: a magic byte 0, the schema's registry id as
//! 4 bytes big-endian, then the encoded value (for Avro, its binary
//! encoding without any header).
//!
//! ```
//! use kastellan::schema_registry::{confluent, SchemaId};
//!
//! let framed = confluent::frame(SchemaId(42), b"\x02hi");
//! assert_eq!(framed, b"\x00\x00\x00\x00\x2a\x02hi");
//! let (id, body) = confluent::deframe(&framed).unwrap();
//! assert_eq!((id, body), (SchemaId(42), &b"\x02hi"[..]));
//!
//! let e = confluent::deframe(b"\x01\x00\x00\x00\x2a").unwrap_err();
//! assert!(e.to_string().contains("magic byte 1 instead of 0"));
//! ```

use super::SchemaId;
use crate::error::{Error, Result};

/// The first byte of every framed value.
pub const MAGIC: u8 = 0;
/// The bytes before the body: the magic byte and the id.
pub const HEADER_LEN: usize = 5;

/// The wire-format header for `id`.
pub fn header(id: SchemaId) -> [u8; HEADER_LEN] {
    let [a, b, c, d] = id.0.to_be_bytes();
    [MAGIC, a, b, c, d]
}

/// `body` framed with `id`.
pub fn frame(id: SchemaId, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header(id));
    out.extend_from_slice(body);
    out
}

/// The schema id and the body of a framed value. Fails with
/// [`Error::Serialization`] naming what is wrong: an empty value, a magic
/// byte other than 0, fewer than 5 bytes.
pub fn deframe(bytes: &[u8]) -> Result<(SchemaId, &[u8])> {
    let fail = |reason: String| Error::Serialization {
        format: "Confluent wire format",
        reason,
    };
    match bytes {
        [] => Err(fail(
            "the value is empty; a framed value starts with magic byte 0 and a 4-byte schema id"
                .into(),
        )),
        [magic, ..] if *magic != MAGIC => Err(fail(format!(
            "the value starts with magic byte {magic} instead of 0: it was not written by a \
             schema-registry serializer (or not in this format)"
        ))),
        [_, a, b, c, d, body @ ..] => Ok((SchemaId(u32::from_be_bytes([*a, *b, *c, *d])), body)),
        short => Err(fail(format!(
            "the value has {} bytes, fewer than the 5 of magic byte and schema id",
            short.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_names_each_fault() {
        let framed = frame(SchemaId(0x01020304), b"body");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(
            deframe(&framed).unwrap(),
            (SchemaId(0x01020304), &b"body"[..])
        );
        assert_eq!(deframe(&[0, 0, 0, 0, 9]).unwrap(), (SchemaId(9), &b""[..]));
        let cases: [(&[u8], &str); 4] = [
            (b"", "the value is empty"),
            (b"{\"json\":1}", "magic byte 123 instead of 0"),
            (&[0, 0, 1], "has 3 bytes, fewer than the 5"),
            (&[0], "has 1 bytes"),
        ];
        for (bytes, expected) in cases {
            let e = deframe(bytes).unwrap_err();
            assert!(matches!(e, Error::Serialization { .. }), "{e}");
            assert!(!e.is_retriable());
            assert!(e.to_string().contains(expected), "{bytes:?}: {e}");
        }
    }
}
