//! `synchronous_standby_names` as Patroni writes it, and reading it back.

use crate::types::MemberName;

/// Patroni's reserved name for "no synchronous standby, but keep commits waiting" (strict mode).
pub const STRICT_PLACEHOLDER: &str = "__patroni_strict_sync_replica_placeholder__";

/// Patroni's `quote_ident` use: names that are plain identifiers (and not the keywords `first`
/// or `any`) stay bare, everything else is double-quoted with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !name.eq_ignore_ascii_case("first")
        && !name.eq_ignore_ascii_case("any");
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Priority mode: one name → the name; several → `N (a,b)` (sorted); none → the strict
/// placeholder, or empty (no synchronous replication) when not strict.
pub fn render_ssn(names: &[MemberName], strict: bool) -> String {
    let mut sorted: Vec<&str> = names.iter().map(MemberName::as_str).collect();
    sorted.sort_unstable();
    match sorted.as_slice() {
        [] if strict => STRICT_PLACEHOLDER.to_owned(),
        [] => String::new(),
        [one] => quote_ident(one),
        many => {
            let list: Vec<String> = many.iter().map(|n| quote_ident(n)).collect();
            format!("{} ({})", many.len(), list.join(","))
        }
    }
}

/// Quorum mode (`ANY n (...)`, PostgreSQL ≥ 10): `ANY n (a,b)` even for one name; none →
/// `ANY 1 (placeholder)` in strict mode, else empty.
pub fn render_ssn_quorum(names: &[MemberName], num: usize, strict: bool) -> String {
    let mut sorted: Vec<&str> = names.iter().map(MemberName::as_str).collect();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return if strict {
            format!("ANY 1 ({STRICT_PLACEHOLDER})")
        } else {
            String::new()
        };
    }
    let list: Vec<String> = sorted.iter().map(|n| quote_ident(n)).collect();
    format!("ANY {} ({})", num.clamp(1, sorted.len()), list.join(","))
}

/// `value` without a leading `FIRST` or `ANY` keyword (any case). Works on characters, never
/// on byte offsets: the value comes from PostgreSQL and may hold any UTF-8 (member names).
fn strip_method(value: &str) -> &str {
    for kw in ["FIRST", "ANY"] {
        let mut chars = value.char_indices();
        let matches = kw.chars().all(|k| {
            chars
                .next()
                .is_some_and(|(_, c)| c.eq_ignore_ascii_case(&k))
        });
        // A keyword is a word of its own: `anybody` is a standby name, `ANY 2 (...)` is not.
        if matches
            && let Some((rest_at, c)) = chars.next()
            && c.is_whitespace()
        {
            return value.get(rest_at..).map_or(value, str::trim_start);
        }
    }
    value
}

/// The `n` of `ANY n (...)` / `N (...)` / `FIRST N (...)`; 1 for a bare list, 0 when empty.
pub fn ssn_num(value: &str) -> usize {
    let v = strip_method(value.trim());
    if v.is_empty() {
        return 0;
    }
    match v.find('(') {
        Some(open) => v[..open].trim().parse().unwrap_or(1),
        None => 1,
    }
}

/// The standby names listed in a `synchronous_standby_names` value (any of PostgreSQL's forms:
/// `a`, `a, b`, `N (a,b)`, `FIRST N (...)`, `ANY N (...)`), unquoted; `*` and the strict
/// placeholder are not names.
pub fn parse_ssn(value: &str) -> Vec<String> {
    let mut v = strip_method(value.trim());
    if let Some(open) = v.find('(')
        && v[..open].trim().chars().all(|c| c.is_ascii_digit())
    {
        v = v[open + 1..].trim_end().trim_end_matches(')');
    }
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut current)),
            c if c.is_whitespace() && !quoted => {}
            c => current.push(c),
        }
    }
    names.push(current);
    names.retain(|n| !n.is_empty() && n != "*" && n != STRICT_PLACEHOLDER);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_values_render_like_patroni() {
        let n = |v: &[&str]| -> Vec<MemberName> {
            v.iter()
                .map(|s| MemberName::new(*s).expect("name"))
                .collect()
        };
        assert_eq!(
            render_ssn_quorum(&n(&["postgres-2", "postgres-0"]), 1, false),
            r#"ANY 1 ("postgres-0","postgres-2")"#
        );
        assert_eq!(render_ssn_quorum(&n(&["node1"]), 1, false), "ANY 1 (node1)");
        assert_eq!(render_ssn_quorum(&n(&["a", "b"]), 5, false), "ANY 2 (a,b)");
        assert_eq!(
            render_ssn_quorum(&[], 1, true),
            "ANY 1 (__patroni_strict_sync_replica_placeholder__)"
        );
        assert_eq!(render_ssn_quorum(&[], 1, false), "");
        assert_eq!(ssn_num("ANY 2 (a,b,c)"), 2);
        assert_eq!(ssn_num("2 (a,b)"), 2);
        assert_eq!(ssn_num("FIRST 3 (a,b,c)"), 3);
        assert_eq!(ssn_num("a"), 1);
        assert_eq!(ssn_num(" "), 0);
    }

    fn names(list: &[&str]) -> Vec<MemberName> {
        list.iter()
            .map(|n| MemberName::new(*n).expect("name"))
            .collect()
    }

    #[test]
    fn renders_like_patroni() {
        assert_eq!(render_ssn(&names(&["postgres1"]), false), "postgres1");
        assert_eq!(render_ssn(&names(&["postgres-1"]), false), "\"postgres-1\"");
        assert_eq!(render_ssn(&names(&["n3", "n2"]), false), "2 (n2,n3)");
        assert_eq!(render_ssn(&names(&["any"]), false), "\"any\"");
        assert_eq!(render_ssn(&[], false), "");
        assert_eq!(render_ssn(&[], true), STRICT_PLACEHOLDER);
    }

    #[test]
    fn parses_every_form_back() {
        assert_eq!(parse_ssn("n2"), ["n2"]);
        assert_eq!(parse_ssn("2 (n2,\"postgres-3\")"), ["n2", "postgres-3"]);
        assert_eq!(parse_ssn("ANY 1 (\"a\"\"b\", c)"), ["a\"b", "c"]);
        assert_eq!(parse_ssn("FIRST 2 (a, b)"), ["a", "b"]);
        assert_eq!(parse_ssn(STRICT_PLACEHOLDER), Vec::<String>::new());
        assert_eq!(parse_ssn(""), Vec::<String>::new());
        assert_eq!(parse_ssn("*"), Vec::<String>::new());
        for set in [&["n1"][..], &["n1", "postgres-2"], &[]] {
            let rendered = render_ssn(&names(set), false);
            assert_eq!(parse_ssn(&rendered), set.to_vec(), "{rendered}");
        }
    }

    #[test]
    fn keywords_are_words_of_their_own() {
        assert_eq!(parse_ssn("anybody"), ["anybody"]);
        assert_eq!(parse_ssn("firstnode, n2"), ["firstnode", "n2"]);
        assert_eq!(ssn_num("anybody"), 1);
        assert_eq!(parse_ssn("any 1 (anybody)"), ["anybody"]);
    }

    #[test]
    fn non_ascii_values_do_not_panic() {
        // A byte offset inside a multi-byte character used to panic (the leader crash-looped).
        for v in [
            "aaé",
            "éééé",
            "ÄNY 1 (a)",
            "Ä",
            "AN\u{e9}",
            "ANYé",
            "FIRSTé 1 (b)",
            "ANY 1 (ñødé,\"ü\")",
            "é(x)",
        ] {
            let _ = parse_ssn(v);
            let _ = ssn_num(v);
        }
        assert_eq!(parse_ssn("ANY 1 (ñødé,\"ü\")"), ["ñødé", "ü"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn member_name() -> impl Strategy<Value = String> {
            // Any Unicode, quotes, commas, spaces and parentheses included.
            "\\PC{1,12}".prop_filter("not a reserved word", |n| {
                !n.trim().is_empty() && n != "*" && n != STRICT_PLACEHOLDER
            })
        }

        proptest! {
            #[test]
            fn parsing_any_value_never_panics(v in "\\PC{0,40}") {
                let _ = parse_ssn(&v);
                let _ = ssn_num(&v);
            }

            #[test]
            fn rendered_names_parse_back(
                set in proptest::collection::btree_set(member_name(), 0..5),
                num in 1usize..4,
                strict in any::<bool>(),
            ) {
                let names: Vec<MemberName> =
                    set.iter().filter_map(|n| MemberName::new(n.clone())).collect();
                let mut sorted: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
                sorted.sort_unstable();
                let priority = render_ssn(&names, strict);
                prop_assert_eq!(parse_ssn(&priority), sorted.clone(), "{}", priority);
                let quorum = render_ssn_quorum(&names, num, strict);
                prop_assert_eq!(parse_ssn(&quorum), sorted.clone(), "{}", quorum);
                let expected_num = if sorted.is_empty() {
                    usize::from(strict)
                } else {
                    num.clamp(1, sorted.len())
                };
                prop_assert_eq!(ssn_num(&quorum), expected_num, "{}", quorum);
            }
        }
    }
}
