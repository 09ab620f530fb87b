//! The properties the fuzz targets (`fuzz/`, cargo-fuzz, nightly) and this crate's proptest
//! smoke tests (stable, part of `make test`) check on text that comes from outside the process:
//! `synchronous_standby_names` as PostgreSQL reports it, `scheduled_at` timestamps, LSNs.
//! Each function panics when a property fails and is otherwise silent.

use crate::sync::{STRICT_PLACEHOLDER, parse_ssn, render_ssn, render_ssn_quorum, ssn_num};
use crate::time::parse_iso8601;
use crate::types::{Lsn, MemberName};

/// Any `synchronous_standby_names` value: parsing never panics.
pub fn ssn_text(value: &str) {
    let _ = parse_ssn(value);
    let _ = ssn_num(value);
}

/// Names pgbaton renders into `synchronous_standby_names` read back as the same names, in
/// both modes. `*` and the strict placeholder are not names to PostgreSQL (and Patroni).
pub fn ssn_round_trip(names: &[String], num: usize, strict: bool) {
    let names: Vec<MemberName> = names
        .iter()
        .filter(|n| n.as_str() != "*" && n.as_str() != STRICT_PLACEHOLDER)
        .filter_map(|n| MemberName::new(n.as_str()))
        .collect();
    let mut expected: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
    expected.sort_unstable();
    for text in [
        render_ssn(&names, strict),
        render_ssn_quorum(&names, num, strict),
    ] {
        let mut got = parse_ssn(&text);
        got.sort_unstable();
        assert_eq!(got, expected, "parse_ssn({text:?})");
        let n = ssn_num(&text);
        if expected.is_empty() {
            assert!(n <= 1, "ssn_num({text:?}) = {n}");
        } else {
            assert!(n >= 1 && n <= expected.len(), "ssn_num({text:?}) = {n}");
        }
    }
}

/// Any text as a `scheduled_at` timestamp: never panics; a parsed one is within the years
/// 0000–9999 (so the millisecond count cannot have overflowed).
pub fn iso8601(text: &str) {
    if let Some(ms) = parse_iso8601(text) {
        const LIMIT: i64 = 10_000 * 366 * 86_400 * 1000;
        assert!(ms.abs() < 2 * LIMIT, "parse_iso8601({text:?}) = {ms}");
    }
}

/// Any text as an LSN: never panics; every LSN prints as text that parses back to it.
pub fn lsn(text: &str, value: u64) {
    if let Ok(l) = text.parse::<Lsn>() {
        assert_eq!(l.to_string().parse::<Lsn>(), Ok(l), "{text:?}");
    }
    let l = Lsn(value);
    assert_eq!(l.to_string().parse::<Lsn>(), Ok(l));
}

/// The fuzz targets' properties on stable, with bounded case counts (seconds in `make test`).
#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Names made of the characters that matter to the GUC's syntax.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_][a-z0-9_$]{0,6}",
            "[ a-zA-Z0-9,()\"*$.é\t-]{0,8}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn ssn_text_never_panics(s in any::<String>(), t in "[ ()\",0-9a-zA-Z*]{0,24}") {
            ssn_text(&s);
            ssn_text(&t);
        }

        #[test]
        fn ssn_renders_and_parses_back(
            names in proptest::collection::btree_set(name(), 0..5),
            num in 0usize..7,
            strict in any::<bool>(),
        ) {
            let names: Vec<String> = names.into_iter().collect();
            ssn_round_trip(&names, num, strict);
        }

        #[test]
        fn iso8601_never_panics(
            s in any::<String>(),
            t in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,7})?(Z|[+-][0-9:]{0,6}|.{0,3})",
        ) {
            iso8601(&s);
            iso8601(&t);
        }

        #[test]
        fn lsn_round_trips(s in "[ +0-9A-Fa-f/-]{0,20}", v in any::<u64>()) {
            lsn(&s, v);
        }
    }
}
