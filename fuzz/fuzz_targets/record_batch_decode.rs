#![no_main]

//! Record batches (a fetch's record set for one partition) through
//! `decode_batches`, with every codec. The first byte: bit 0 keeps the
//! batches' CRCs as they are, otherwise each complete batch's CRC is fixed
//! up so the fuzzer gets past it; bits 1-7 are the offset to read from.
//! The rest is the record set.
//!
//! Run with `-malloc_limit_mb=64`: the decoder's budget keeps every
//! allocation far below that.

use kastellan::__fuzz::{fix_batch_crcs, record_batch_decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let mut records = rest.to_vec();
    if flags & 1 == 0 {
        fix_batch_crcs(&mut records);
    }
    let from = i64::from(flags >> 1);
    if let Ok(decoded) = record_batch_decode(&records, from) {
        assert!(
            decoded.offsets.iter().all(|&o| o >= from),
            "a record below the requested offset: {decoded:?}"
        );
    }
});
