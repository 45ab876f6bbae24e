//! The configuration parser: YAML events, the line-marked tree, typed resources and every
//! validation rule. Any input must give a Config or precise errors, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = weft_model::parse("fuzz.yaml", text) {
            assert!(!errors.0.is_empty());
        }
    }
});
