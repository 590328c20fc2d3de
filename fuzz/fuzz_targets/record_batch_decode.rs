#![no_main]

//! Record batches (a fetch's record set for one partition) through
//! `decode_batches`, with every codec. The first byte: bit 0 keeps the
//! batches' CRCs as they are, otherwise each complete batch's CRC is fixed
//! up so the fuzzer gets past it; bits 1-7 are the offset to read from.
//! The rest is the record set.
//!
//! Run with `-malloc_limit_mb=64`: the decoder's budget keeps every
//! allocation far below that.

use kastellan::__fuzz::record_batch_decode;
use libfuzzer_sys::fuzz_target;

/// CRC-32C (Castagnoli), bit by bit.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Write the right CRC into every complete batch of `data`.
fn fix_crcs(data: &mut [u8]) {
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
        let crc = crc32c(&data[at + 21..end]);
        data[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let mut records = rest.to_vec();
    if flags & 1 == 0 {
        fix_crcs(&mut records);
    }
    let from = i64::from(flags >> 1);
    if let Ok(decoded) = record_batch_decode(&records, from) {
        assert!(
            decoded.offsets.iter().all(|&o| o >= from),
            "a record below the requested offset: {decoded:?}"
        );
    }
});
