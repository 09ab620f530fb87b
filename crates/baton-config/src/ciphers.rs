//! `restapi.ciphers`: an OpenSSL cipher string (what Patroni hands to `SSLContext.set_ciphers`)
//! evaluated over the TLS 1.2 suites pgbaton's TLS library (rustls) implements.
//!
//! The evaluation follows OpenSSL's rules for the parts that matter here: elements separated by
//! `:`, `,` or spaces; `A+B` is the intersection of `A` and `B`; a plain element appends the
//! suites it selects, `-X` removes them (they may be added again), `!X` removes them for good,
//! `+X` moves them to the end; `@STRENGTH` and `@SECLEVEL=n` are accepted and change nothing.
//! A word OpenSSL knows but that names only suites rustls lacks (`DHE-RSA-AES256-GCM-SHA384`,
//! `AES256-SHA`, `MEDIUM`, `3DES`, ...) selects nothing, as does a word OpenSSL does not know
//! at all. A string that selects no suite is refused, as OpenSSL refuses it ("No cipher can be
//! selected"). TLS 1.3 suites are not affected (OpenSSL's cipher string does not set them
//! either) and stay enabled.

/// The TLS 1.2 suites rustls implements, by OpenSSL name, in OpenSSL's default order, with the
/// aliases that select each (checked against `openssl ciphers -s -tls1_2 <alias>`, OpenSSL 3.0).
const SUITES: [(&str, &[&str]); 6] = [
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        &[
            "aECDSA",
            "ECDSA",
            "AESGCM",
            "AES",
            "AES256",
            "SUITEB128",
            "SUITEB192",
        ],
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        &["aRSA", "AESGCM", "AES", "AES256"],
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        &["aECDSA", "ECDSA", "CHACHA20"],
    ),
    ("ECDHE-RSA-CHACHA20-POLY1305", &["aRSA", "CHACHA20"]),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        &["aECDSA", "ECDSA", "AESGCM", "AES", "AES128", "SUITEB128"],
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        &["aRSA", "AESGCM", "AES", "AES128"],
    ),
];

/// Aliases that select every suite of [`SUITES`].
const EVERY: &[&str] = &[
    "ALL", "DEFAULT", "HIGH", "ECDHE", "EECDH", "kECDHE", "kEECDH", "ECDH", "TLSv1.2",
];

/// The OpenSSL names of every TLS 1.2 suite pgbaton implements.
pub fn supported() -> impl Iterator<Item = &'static str> {
    SUITES.iter().map(|(name, _)| *name)
}

fn selects(term: &str, index: usize) -> bool {
    let (name, aliases) = SUITES[index];
    term == name || EVERY.contains(&term) || aliases.contains(&term)
}

/// The suites `spec` selects, in order; an error (for the key path) when it selects none.
pub(crate) fn evaluate(spec: &str) -> Result<Vec<&'static str>, String> {
    let mut list: Vec<usize> = Vec::new();
    let mut killed = [false; SUITES.len()];
    let elements = spec
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty());
    for element in elements {
        if element.starts_with('@') {
            continue;
        }
        let (op, body) = ['!', '-', '+']
            .into_iter()
            .find_map(|op| element.strip_prefix(op).map(|rest| (op, rest)))
            .unwrap_or((' ', element));
        if body.is_empty()
            || !body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '='))
        {
            return Err(format!(
                "{element:?} is not an OpenSSL cipher list element (in {spec:?})"
            ));
        }
        let matching: Vec<usize> = (0..SUITES.len())
            .filter(|&i| body.split('+').all(|term| selects(term, i)))
            .collect();
        match op {
            '!' => {
                for &i in &matching {
                    killed[i] = true;
                }
                list.retain(|i| !matching.contains(i));
            }
            '-' => list.retain(|i| !matching.contains(i)),
            '+' => {
                let (moved, kept): (Vec<usize>, Vec<usize>) =
                    list.iter().partition(|i| matching.contains(i));
                list = kept;
                list.extend(moved);
            }
            _ => {
                for i in matching {
                    if !killed[i] && !list.contains(&i) {
                        list.push(i);
                    }
                }
            }
        }
    }
    if list.is_empty() {
        return Err(format!(
            "{spec:?} selects no cipher suite pgbaton implements: its TLS library (rustls) \
             offers only {} for TLS 1.2 (TLS 1.3 suites are always on)",
            supported().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(list.into_iter().map(|i| SUITES[i].0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(spec: &str) -> String {
        match evaluate(spec) {
            Ok(list) => list.join(":"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn openssl_cipher_strings_map_to_the_suites_rustls_has() {
        // Expected values: `openssl ciphers -s -tls1_2 <spec>` (OpenSSL 3.0) restricted to the
        // six suites.
        let all = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
                   ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
                   ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
        assert_eq!(eval("HIGH:!aNULL:!MD5"), all);
        assert_eq!(eval("DEFAULT"), all);
        assert_eq!(eval("@SECLEVEL=2:ALL"), all);
        assert_eq!(
            eval("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:DHE-RSA-AES256-SHA"),
            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
        );
        assert_eq!(
            eval("ECDHE+AESGCM:!aRSA"),
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
        );
        assert_eq!(
            eval("ALL:-CHACHA20:CHACHA20+aRSA"),
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
             ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
             ECDHE-RSA-CHACHA20-POLY1305"
                .replace(' ', "")
        );
        assert_eq!(
            eval("ALL:!CHACHA20:CHACHA20"),
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
             ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
        );
        assert_eq!(
            eval("AES128 AES256,+AES128"),
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
             ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
        );
        expect_test::expect![[r#"error: "DHE-RSA-AES256-GCM-SHA384:AES256-SHA:MEDIUM" selects no cipher suite pgbaton implements: its TLS library (rustls) offers only ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-CHACHA20-POLY1305, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256 for TLS 1.2 (TLS 1.3 suites are always on)"#]]
        .assert_eq(&eval("DHE-RSA-AES256-GCM-SHA384:AES256-SHA:MEDIUM"));
        assert!(eval("TLS_AES_256_GCM_SHA384").starts_with("error:"));
        assert!(eval("").starts_with("error:"));
        expect_test::expect![[
            r#"error: "HIGH;rm" is not an OpenSSL cipher list element (in "HIGH;rm")"#
        ]]
        .assert_eq(&eval("HIGH;rm"));
    }
}
