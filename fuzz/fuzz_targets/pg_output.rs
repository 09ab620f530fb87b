//! What PostgreSQL and the kernel print: `pg_controldata` output, timeline history files,
//! `/proc/<pid>/stat`; with the controldata and history round trips.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    system_id: u64,
    state: u8,
    timeline: u32,
    lsns: [u64; 3],
    min_timeline: u32,
    hints: bool,
    checksums: u32,
    history: Vec<(u32, u64, String)>,
}

fuzz_target!(|i: Input| {
    use baton_pg::fuzzing;
    fuzzing::outputs(&i.text);
    fuzzing::controldata_round_trip(
        i.system_id,
        usize::from(i.state),
        i.timeline,
        i.lsns,
        i.min_timeline,
        i.hints,
        i.checksums,
        &i.text,
    );
    fuzzing::history_round_trip(&i.history);
});
