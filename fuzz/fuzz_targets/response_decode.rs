#![no_main]

//! Broker responses through the path a connection decodes them with: the
//! structural check, then kafka-protocol. The first byte picks the API, the
//! second the version (within the versions a connection may use), the rest
//! is the response frame after its size prefix (header, then body).
//!
//! Run with `-malloc_limit_mb=64`: a length field that made the decoder
//! allocate more than the frame warrants would show up as an
//! out-of-memory crash.

use std::sync::OnceLock;

use kastellan::__fuzz::{response_apis, response_decode};
use libfuzzer_sys::fuzz_target;

fn apis() -> &'static [(i16, i16, i16)] {
    static APIS: OnceLock<Vec<(i16, i16, i16)>> = OnceLock::new();
    APIS.get_or_init(response_apis)
}

fuzz_target!(|data: &[u8]| {
    let [api, version, frame @ ..] = data else {
        return;
    };
    let apis = apis();
    let (key, min, max) = apis[usize::from(*api) % apis.len()];
    let span = (max - min + 1) as u16;
    let version = min + (u16::from(*version) % span) as i16;
    let _ = response_decode(key, version, frame);
});
