//! Every DCS record decoder on one value, and a whole read of the prefix.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// One value, given to every decoder.
    Value(String),
    /// Keys (an index into the known ones, or raw bytes), values and leases.
    Prefix(Vec<(Key, Vec<u8>, i64)>),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Raw(Vec<u8>),
}

const KEYS: &[&str] = &[
    "leader",
    "sync",
    "config",
    "failover",
    "history",
    "status",
    "optime/leader",
    "initialize",
    "members/a",
    "members/b",
    "members/",
    "members/a/b",
    "failsafe",
    "drills",
];

fuzz_target!(|input: Input| {
    match input {
        Input::Value(text) => baton_dcs_mem::fuzzing::values(&text),
        Input::Prefix(kvs) => {
            let kvs: Vec<(Vec<u8>, Vec<u8>, i64)> = kvs
                .into_iter()
                .map(|(k, v, lease)| {
                    let key = match k {
                        Key::Known(i) => KEYS[usize::from(i) % KEYS.len()].as_bytes().to_vec(),
                        Key::Raw(b) => b,
                    };
                    (key, v, lease)
                })
                .collect();
            baton_dcs_mem::fuzzing::cluster(&kvs);
        }
    }
});
