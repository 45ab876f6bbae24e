//! A DNS message sent to `weft server --dns`, answered from a small catalog: no panic, and
//! every answer fits its transport and parses.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_control::dns::fuzz(data));
