//! Entry points for the fuzz targets in `fuzz/`, built only with the
//! `unstable-fuzz` feature.
//!
//! Not part of kastellan's API: hidden from the docs, without any stability
//! promise, and absent from the default build. Each function is a thin call
//! into the same internal code a connection or a fetch runs.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Request;

use crate::protocol::api::{for_each_api, ApiVisitor, KafkaApi};
use crate::protocol::connection::{decode_api_versions, decode_frame};
use crate::protocol::records::decode_batches;
use crate::protocol::validate;

/// The responses [`response_decode`] knows: `(api key, lowest version,
/// highest version)` for every API the wire layer speaks.
pub fn response_apis() -> Vec<(i16, i16, i16)> {
    validate::SCHEMAS
        .iter()
        .map(|s| (s.api_key, s.min_version, s.max_version))
        .collect()
}

/// Decode `frame`, a response frame without its size prefix (header, then
/// body), as the answer to an `api_key` request sent at `version`, exactly
/// as a connection does: the structural check, then `kafka-protocol`
/// (ApiVersions with its fallback to the v0 layout). `Ok` if it decoded.
pub fn response_decode(api_key: i16, version: i16, frame: &[u8]) -> Result<(), String> {
    struct Decode<'a> {
        api_key: i16,
        version: i16,
        frame: &'a [u8],
        result: Option<Result<(), String>>,
    }
    impl ApiVisitor for Decode<'_> {
        fn visit<R: Request + KafkaApi>(&mut self) {
            if R::KEY != self.api_key {
                return;
            }
            let frame = Bytes::copy_from_slice(self.frame);
            self.result = Some(if R::KEY == ApiKey::ApiVersions as i16 {
                decode_api_versions(frame, self.version).map(drop)
            } else {
                decode_frame::<R>(frame, self.version).map(drop)
            });
        }
    }
    let mut decode = Decode {
        api_key,
        version,
        frame,
        result: None,
    };
    for_each_api(&mut decode);
    decode.result.unwrap_or_else(|| {
        Err(format!(
            "API key {api_key} is not one the wire layer speaks"
        ))
    })
}

/// What [`record_batch_decode`] found.
#[derive(Debug)]
pub struct DecodedBatches {
    /// Offsets of the records returned, in the order returned.
    pub offsets: Vec<i64>,
    /// Where the next fetch would start.
    pub next_offset: Option<i64>,
}

/// Decode record batches (a fetch response's record set for one partition)
/// keeping records at or after `from`, exactly as a fetch does.
pub fn record_batch_decode(data: &[u8], from: i64) -> Result<DecodedBatches, String> {
    let topic: Arc<str> = Arc::from("fuzz");
    let decoded =
        decode_batches(Bytes::copy_from_slice(data), &topic, 0, from).map_err(|e| e.to_string())?;
    Ok(DecodedBatches {
        offsets: decoded.records.iter().map(|r| r.offset).collect(),
        next_offset: decoded.next_offset,
    })
}

/// Writes the right CRC-32C into every complete record batch (v2 layout)
/// at the start of `data`, one after another, and stops at the first one
/// that is incomplete or whose length field cannot be right; so that a
/// fuzzer's or a test's batches get past the CRC check to the code behind it.
pub fn fix_batch_crcs(data: &mut [u8]) {
    // Base offset (8 bytes), batch length (4, counting what follows it),
    // partition leader epoch (4), magic (1), CRC (4), then what the CRC
    // covers: attributes onwards.
    let mut at = 0;
    while data.len() - at >= 21 {
        let length = i32::from_be_bytes([data[at + 8], data[at + 9], data[at + 10], data[at + 11]]);
        let Ok(length) = usize::try_from(length) else {
            return;
        };
        let end = at + 12 + length;
        if end > data.len() || length < 9 {
            return;
        }
        let crc = crc32c::crc32c(&data[at + 21..end]);
        data[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
}
