//! Query strings the way Patroni reads them: `urllib.parse.parse_qs` (blank values dropped, the
//! first value of a key wins) and `parse_int(value, 'B')` for `?lag=`.

use axum::extract::Query;
use axum::http::Uri;

/// The decoded `key=value` pairs of a request's query string, in order.
#[derive(Debug, Default)]
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// Never fails: a query string that cannot be decoded counts as empty (and is logged), so a
    /// health check with a mangled query still gets a status code.
    pub(crate) fn from_uri(uri: &Uri) -> QueryParams {
        match Query::<Vec<(String, String)>>::try_from_uri(uri) {
            Ok(Query(pairs)) => QueryParams(pairs),
            Err(err) => {
                tracing::warn!(uri = %uri, "ignoring undecodable query string: {err}");
                QueryParams::default()
            }
        }
    }

    /// The first non-blank value of `key` (`parse_qs(...)[key][0]`).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every distinct key with its first non-blank value, in order of first appearance.
    pub(crate) fn first_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().enumerate().filter_map(|(i, (k, v))| {
            let first =
                !v.is_empty() && !self.0[..i].iter().any(|(k2, v2)| k2 == k && !v2.is_empty());
            first.then_some((k.as_str(), v.as_str()))
        })
    }

    /// `?<key>=` as a byte count with Patroni's units (`16kB`, `64MB`, `1GB`). An unparsable
    /// value is ignored with a warning, as Patroni ignores it; answering 400 would turn a typo in
    /// an HAProxy check into "every node down". A number too large for any WAL distance (beyond
    /// ±(2^63 − 1) bytes) is an error: the caller answers 400 naming the parameter.
    pub(crate) fn bytes(&self, key: &str) -> Result<Option<i128>, OutOfRange> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        let limit = i64::MAX.unsigned_abs();
        match parse_bytes(raw) {
            Some(v) if v.unsigned_abs() <= u128::from(limit) => Ok(Some(v)),
            Some(_) => Err(OutOfRange {
                key: key.to_owned(),
            }),
            None if numeric_magnitude(raw).is_some_and(|m| m > limit as f64) => Err(OutOfRange {
                key: key.to_owned(),
            }),
            None => {
                tracing::warn!(
                    "ignoring unparsable ?{key}={raw:?}: expected bytes, e.g. 1048576 or 16MB"
                );
                Ok(None)
            }
        }
    }
}

/// A byte-count query value beyond what any WAL distance can be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutOfRange {
    pub(crate) key: String,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query parameter {}: value out of range (at most {} bytes)",
            self.key,
            i64::MAX
        )
    }
}

/// The magnitude of a decimal number (optionally with a unit), if the text is one; used to tell
/// "too large" from "not a number".
fn numeric_magnitude(value: &str) -> Option<f64> {
    let v = value.trim();
    let v = ["TB", "GB", "MB", "kB", "B"]
        .iter()
        .find_map(|u| v.strip_suffix(u))
        .unwrap_or(v)
        .trim_end();
    v.parse::<f64>().ok().map(f64::abs)
}

/// Patroni's `parse_int(value, 'B')`: a C-like integer (`0x` hex, leading-`0` octal, decimal)
/// or a float, optionally followed by one of the units `B`, `kB`, `MB`, `GB`, `TB`
/// (case-sensitive, powers of 1024). Rounding follows Python (`round` is half-to-even, and a
/// value in a unit above `B` is first rounded to a whole number of the next smaller unit).
pub(crate) fn parse_bytes(value: &str) -> Option<i128> {
    let s = value.trim();
    let (mut int_val, mut rest) = strtol(s);
    let mut float_val = None;
    let rest_leads_float = rest.starts_with(['.', 'e', 'E']);
    if (int_val.is_none() && rest.starts_with('.')) || rest_leads_float {
        int_val = None;
        let (f, r) = strtod(s);
        float_val = f;
        rest = r;
    }
    let unit = rest.trim();
    let factor: f64 = match unit {
        "" => {
            return match (int_val, float_val) {
                (Some(i), _) => Some(i),
                (None, Some(f)) => f64_to_i128(f.round_ties_even()),
                (None, None) => None,
            };
        }
        "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    // Python converts to float here too.
    let value = match (int_val, float_val) {
        (Some(i), _) => i as f64,
        (None, Some(f)) => f,
        (None, None) => return None,
    };
    let mut bytes = value * factor;
    if unit != "B" {
        let multiplier = factor / 1024.0;
        bytes = (bytes / multiplier).round_ties_even() * multiplier;
    }
    f64_to_i128(bytes.round_ties_even())
}

fn f64_to_i128(f: f64) -> Option<i128> {
    // Python raises on infinities; the caller treats that as "unparsable".
    (f.is_finite() && f.abs() < i128::MAX as f64).then_some(f as i128)
}

/// `strtol(value)`: the longest hex (`0x..`), octal (`0..`) or decimal prefix, and the rest.
fn strtol(s: &str) -> (Option<i128>, &str) {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let sign_len = s.len() - body.len();
    let digits_end = |from: &str, radix: u32| {
        from.char_indices()
            .find(|(_, c)| !c.is_digit(radix))
            .map_or(from.len(), |(i, _)| i)
    };
    let (radix, start, len) = if let Some(hex) = body.strip_prefix("0x") {
        match digits_end(hex, 16) {
            0 => (8, 0, 1), // "0x" without digits: the octal "0", rest "x..."
            n => (16, 2, n),
        }
    } else if let Some(octal) = body.strip_prefix('0') {
        (8, 0, 1 + digits_end(octal, 8))
    } else {
        match digits_end(body, 10) {
            0 => return (None, s),
            n => (10, 0, n),
        }
    };
    let digits = &body[start..start + len];
    let Ok(magnitude) = i128::from_str_radix(digits, radix) else {
        return (None, s);
    };
    let value = if negative { -magnitude } else { magnitude };
    (Some(value), &s[sign_len + start + len..])
}

/// `strtod(value)`: the longest prefix matching `[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?`.
fn strtod(s: &str) -> (Option<f64>, &str) {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let int_end = digits(i);
    let end = if b.get(int_end) == Some(&b'.') && digits(int_end + 1) > int_end + 1 {
        digits(int_end + 1)
    } else if int_end > i {
        int_end
    } else {
        return (None, s);
    };
    i = end;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let j = i + 1 + usize::from(matches!(b.get(i + 1), Some(b'-' | b'+')));
        let k = digits(j);
        if k > j {
            i = k;
        }
    }
    match s[..i].parse::<f64>() {
        Ok(f) => (Some(f), &s[i..]),
        Err(_) => (None, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bytes_follows_patroni_parse_int() {
        let cases = [
            ("1", Some(1)),
            ("  51 ", Some(51)),
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("0x400", Some(1024)),
            ("010", Some(8)),
            ("16kB", Some(16 * 1024)),
            ("64MB", Some(64 << 20)),
            ("1GB", Some(1 << 30)),
            ("2TB", Some(2 << 40)),
            ("1 MB", Some(1 << 20)),
            (" 0x400 MB ", Some(1 << 30)),
            ("1.5MB", Some(1_572_864)),
            ("0.5kB", Some(512)),
            (".5kB", Some(512)),
            ("1e3", Some(1000)),
            ("2.5", Some(2)),
            ("3.5", Some(4)),
            ("100B", Some(100)),
            ("1kb", None),
            ("1KB", None),
            ("1EB", None),
            ("nonsense", None),
            ("", None),
            ("08", None),
            ("1e400kB", None),
            ("-", None),
            ("0x", None),
            ("99999999999999999999999999999999999999999", None),
        ];
        let got: Vec<_> = cases.iter().map(|(s, _)| (*s, parse_bytes(s))).collect();
        assert_eq!(got, cases.to_vec());
    }

    #[test]
    fn huge_byte_counts_are_out_of_range_not_wrapped() {
        let q = |s: &str| {
            let uri: Uri = format!("/replica?lag={s}").parse().unwrap();
            QueryParams::from_uri(&uri).bytes("lag")
        };
        assert_eq!(q("9223372036854775807"), Ok(Some(i128::from(i64::MAX))));
        assert_eq!(q("-9223372036854775807"), Ok(Some(-i128::from(i64::MAX))));
        for huge in [
            "9223372036854775808",
            "170141183460469231731687303715884105727",
            "99999999999999999999999999999999999999999",
            "1e400kB",
            "8388608TB",
            "-1e300",
        ] {
            let got = q(huge);
            assert!(
                got.as_ref().is_err_and(|e| e.key == "lag"),
                "{huge}: {got:?}"
            );
        }
        // Not numbers at all: ignored, as Patroni ignores them.
        assert_eq!(q("nonsense"), Ok(None));
        assert_eq!(q("08"), Ok(None));
    }

    #[test]
    fn first_values_follow_parse_qs() {
        let uri: Uri = "/replica?lag=&lag=5&tag_a=x&tag_a=y&tag_b=&tag_c=z%20w"
            .parse()
            .unwrap();
        let q = QueryParams::from_uri(&uri);
        assert_eq!(q.get("lag"), Some("5"));
        assert_eq!(q.get("tag_b"), None);
        let firsts: Vec<_> = q.first_values().collect();
        assert_eq!(firsts, [("lag", "5"), ("tag_a", "x"), ("tag_c", "z w")]);
    }
}
