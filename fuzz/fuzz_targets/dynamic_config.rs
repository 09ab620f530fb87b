//! The dynamic configuration (the DCS `/config` value, `PUT /config`, the result of a merge).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        baton_config::fuzzing::dynamic(text);
    }
});
