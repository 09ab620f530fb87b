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

/// The `n` of `ANY n (...)` / `N (...)` / `FIRST N (...)`; 1 for a bare list, 0 when empty.
pub fn ssn_num(value: &str) -> usize {
    let mut v = value.trim();
    if v.is_empty() {
        return 0;
    }
    for kw in ["FIRST", "ANY"] {
        if v.len() > kw.len() && v[..kw.len()].eq_ignore_ascii_case(kw) {
            v = v[kw.len()..].trim_start();
        }
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
    let mut v = value.trim();
    for kw in ["FIRST", "ANY"] {
        if v.len() > kw.len() && v[..kw.len()].eq_ignore_ascii_case(kw) {
            v = v[kw.len()..].trim_start();
        }
    }
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
}
