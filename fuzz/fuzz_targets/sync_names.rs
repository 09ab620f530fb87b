//! `synchronous_standby_names` as PostgreSQL reports it, and the render → parse round trip.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    names: Vec<String>,
    num: u8,
    strict: bool,
    lsn: u64,
}

fuzz_target!(|i: Input| {
    use baton_core::fuzzing;
    fuzzing::ssn_text(&i.text);
    let mut names = i.names;
    names.sort();
    names.dedup();
    fuzzing::ssn_round_trip(&names, usize::from(i.num), i.strict);
    fuzzing::iso8601(&i.text);
    fuzzing::lsn(&i.text, i.lsn);
});
