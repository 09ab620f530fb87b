//! Any HTTP request through the REST router (query strings, bodies of the unsafe endpoints,
//! headers), and the REST parsers on their own.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: u8,
    target: &'a str,
    headers: Vec<(u8, &'a [u8])>,
    body: &'a [u8],
    primary: bool,
    auth: bool,
    n: i64,
    unit: u8,
    now_ms: i64,
}

const HEADERS: &[&str] = &[
    "authorization",
    "if-match",
    "content-type",
    "content-length",
    "x-forwarded-for",
];

fuzz_target!(|i: Input<'_>| {
    use baton_api::fuzzing;
    fuzzing::query(i.target);
    fuzzing::pg_timestamp(i.target);
    fuzzing::bytes(i.target, i.n, usize::from(i.unit));
    let if_match = i.headers.first().map_or(&b""[..], |(_, v)| v);
    fuzzing::body(i.body, if_match, i.now_ms);
    fuzzing::peer_status(i.body);
    let headers: Vec<(&[u8], &[u8])> = i
        .headers
        .iter()
        .take(4)
        .map(|(k, v)| (HEADERS[usize::from(*k) % HEADERS.len()].as_bytes(), *v))
        .collect();
    fuzzing::request(&fuzzing::Request {
        method: i.method,
        target: i.target,
        headers,
        body: i.body,
        primary: i.primary,
        auth: i.auth,
    });
});
