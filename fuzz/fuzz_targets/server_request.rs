//! Client bytes as weft's own HTTP/1.1 server reads them (see weft_proxy::fuzz::server_request).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzz::server_request(data));
