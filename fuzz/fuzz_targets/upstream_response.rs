//! An upstream's HTTP/1.1 answer as weft's own client reads it (see weft_proxy::fuzz::upstream_response).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzz::upstream_response(data));
