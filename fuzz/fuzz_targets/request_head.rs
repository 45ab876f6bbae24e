//! What the proxy parses in a request head itself (see weft_proxy::fuzz::request_head).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzz::request_head(data));
