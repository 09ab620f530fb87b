//! `PATCH /config`: a body merged into a stored configuration, then validated as the agent
//! does (`DynamicConfig::from_json_strict`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    stored: &'a [u8],
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let (Ok(stored), Ok(body)) = (
        serde_json::from_slice::<Value>(input.stored),
        serde_json::from_slice::<Value>(input.body),
    ) else {
        return;
    };
    baton_api::fuzzing::patch(&stored, &body);
    if let (Value::Object(mut config), Value::Object(patch)) = (stored, body) {
        baton_api::merge_patch(&mut config, &patch);
        let text = Value::Object(config).to_string();
        baton_config::fuzzing::dynamic(&text);
    }
});
