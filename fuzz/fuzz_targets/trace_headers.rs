//! Trace context (W3C, B3 single, B3 multi): whatever arrives is continued exactly
//! (see weft_proxy::fuzz::trace_headers).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzz::trace_headers(data));
