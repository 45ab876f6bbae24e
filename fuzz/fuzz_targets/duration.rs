//! Durations such as `1m30s` in the configuration.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft_model::duration::parse(text);
    }
});
