//! Path normalisation: idempotent, no dot segment, no escaped unreserved character
//! (see weft_proxy::fuzz::normalized_paths).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzz::normalized_paths(data));
