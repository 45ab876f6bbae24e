//! The first bytes of a TLS passthrough connection, read for their SNI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzz::client_hello(data));
