//! Walking a JSON tree (YAML is converted to JSON first) with key paths: typed extraction,
//! unknown-key detection, and collection of every error and warning on the way.
//!
//! Parsers never stop at the first problem: on a bad value they record an error and go on
//! with a placeholder, and the caller throws the placeholder away when any error was recorded.

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors};

/// The warning for a Patroni key pgbaton accepts and ignores.
pub(crate) const UNUSED: &str = "Patroni key is accepted but not used by pgbaton";

/// What an unknown key is: an error (files, `bootstrap.dcs`) or a warning (the dynamic
/// configuration read back from the DCS, which another tool may have written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    Error,
    Warn,
}

/// The collector every parser writes to.
pub(crate) struct Cx {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Key paths whose value came from an environment variable, with the variable's name.
    origins: Vec<(String, String)>,
    unknown: Unknown,
}

impl Cx {
    pub(crate) fn new(unknown: Unknown) -> Cx {
        Cx {
            errors: Vec::new(),
            warnings: Vec::new(),
            origins: Vec::new(),
            unknown,
        }
    }

    /// Records that the value at `path` came from environment variable `var`: problems with it
    /// are reported under the variable's name.
    pub(crate) fn set_origin(&mut self, path: String, var: String) {
        self.origins.retain(|(p, _)| *p != path);
        self.origins.push((path, var));
    }

    pub(crate) fn clear_origin(&mut self, path: &str) {
        self.origins.retain(|(p, _)| p != path);
    }

    fn shown(&self, path: &str) -> String {
        for (p, var) in &self.origins {
            if let Some(rest) = path.strip_prefix(p.as_str())
                && (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
            {
                return format!("{var}{rest}");
            }
        }
        path.to_owned()
    }

    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        let path = self.shown(path);
        self.errors.push(ConfigError::new(path, message));
    }

    pub(crate) fn warn(&mut self, path: &str, message: impl AsRef<str>) {
        let path = self.shown(path);
        let message = message.as_ref();
        self.warnings.push(if path.is_empty() {
            message.to_owned()
        } else {
            format!("{path}: {message}")
        });
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The value with the warnings, or every error found.
    pub(crate) fn finish<T>(self, value: T) -> Result<(T, Vec<String>), ConfigErrors> {
        if self.errors.is_empty() {
            Ok((value, self.warnings))
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }

    /// `expected {what}, found {what v is}`.
    pub(crate) fn mismatch(&mut self, path: &str, what: &str, v: &Value) {
        self.error(path, format!("expected {what}, found {}", describe(v)));
    }

    pub(crate) fn string(&mut self, path: &str, v: &Value, what: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.mismatch(path, what, other);
                None
            }
        }
    }

    /// A string that must not be empty.
    pub(crate) fn nonempty(&mut self, path: &str, v: &Value, what: &str) -> Option<String> {
        let s = self.string(path, v, what)?;
        if s.trim().is_empty() {
            self.error(path, format!("expected {what}, found an empty string"));
            return None;
        }
        Some(s)
    }

    /// A password: a string, or a number written without quotes (rendered as its text).
    pub(crate) fn secret(&mut self, path: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.mismatch(path, "a string", other);
                None
            }
        }
    }

    /// A boolean; also the strings Patroni's `parse_bool` accepts (`on`, `yes`, `true`, `1`
    /// and their opposites), as YAML 1.1 and Patroni read them.
    pub(crate) fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => parse_bool(s),
            Value::Number(n) => match n.as_u64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.mismatch(path, "a boolean", v);
        }
        parsed
    }

    /// An integer in `min..=max`; a string of digits is accepted as Patroni's `int()` does.
    pub(crate) fn int(&mut self, path: &str, v: &Value, min: i64, max: i64) -> Option<i64> {
        let parsed = match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        let Some(n) = parsed else {
            self.mismatch(path, "an integer", v);
            return None;
        };
        if n < min {
            self.error(path, format!("must be at least {min}, found {n}"));
            None
        } else if n > max {
            self.error(path, format!("must be at most {max}, found {n}"));
            None
        } else {
            Some(n)
        }
    }

    pub(crate) fn uint(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        let max_i = i64::try_from(max).unwrap_or(i64::MAX);
        self.int(path, v, min_i, max_i)
            .and_then(|n| u64::try_from(n).ok())
    }

    pub(crate) fn u32(&mut self, path: &str, v: &Value, min: u32) -> Option<u32> {
        self.uint(path, v, u64::from(min), u64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A non-negative number of seconds, integer or fractional.
    pub(crate) fn seconds(&mut self, path: &str, v: &Value) -> Option<f64> {
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(f) if f.is_finite() && f >= 0.0 => Some(f),
            Some(_) => {
                self.error(
                    path,
                    format!("expected a non-negative number, found {}", describe(v)),
                );
                None
            }
            None => {
                self.mismatch(path, "a number", v);
                None
            }
        }
    }

    /// A list of strings; each bad item is reported with its index.
    pub(crate) fn string_list(&mut self, path: &str, v: &Value) -> Option<Vec<String>> {
        let Value::Array(items) = v else {
            self.mismatch(path, "a list of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(&index(path, i), item, "a string") {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Checks that `v` is a mapping, without looking inside.
    pub(crate) fn mapping(&mut self, path: &str, v: &Value) -> bool {
        match v {
            Value::Object(_) | Value::Null => true,
            other => {
                self.mismatch(path, "a mapping", other);
                false
            }
        }
    }

    pub(crate) fn unknown_key(&mut self, path: &str, hint: &str) {
        match self.unknown {
            Unknown::Error => self.error(path, format!("unknown key{hint}")),
            Unknown::Warn => self.warn(path, format!("unknown key, ignored{hint}")),
        }
    }
}

/// Patroni's `parse_bool`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// What a value is, for "found ..." in messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("the number {n}"),
        Value::Number(n) => format!("the integer {n}"),
        Value::String(s) if s.is_empty() => "an empty string".to_owned(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A mapping being read: remembers which keys were asked for, so that [`Obj::finish`] can
/// report the rest as unknown.
pub(crate) struct Obj<'v> {
    path: String,
    map: Option<&'v Map<String, Value>>,
    known: Vec<String>,
}

impl<'v> Obj<'v> {
    /// `v` as a mapping; `null` (a section with nothing under it) reads as an empty one.
    pub(crate) fn new(cx: &mut Cx, path: &str, v: &'v Value) -> Option<Obj<'v>> {
        match v {
            Value::Object(map) => Some(Obj {
                path: path.to_owned(),
                map: Some(map),
                known: Vec::new(),
            }),
            Value::Null => Some(Obj {
                path: path.to_owned(),
                map: None,
                known: Vec::new(),
            }),
            other => {
                cx.mismatch(path, "a mapping", other);
                None
            }
        }
    }

    pub(crate) fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value under `key`, `None` when absent or `null`.
    pub(crate) fn get(&mut self, key: &str) -> Option<&'v Value> {
        self.get_any(key).filter(|v| !v.is_null())
    }

    /// The value under `key`, `null` included.
    pub(crate) fn get_any(&mut self, key: &str) -> Option<&'v Value> {
        if !self.known.iter().any(|k| k == key) {
            self.known.push(key.to_owned());
        }
        self.map?.get(key)
    }

    /// Whether `key` was read (or ignored) already.
    pub(crate) fn is_known(&self, key: &str) -> bool {
        self.known.iter().any(|k| k == key)
    }

    /// Whether `key` is present with a non-null value (without marking it as read).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map
            .and_then(|m| m.get(key))
            .is_some_and(|v| !v.is_null())
    }

    /// Reads an optional key with `f`.
    pub(crate) fn opt<T>(
        &mut self,
        cx: &mut Cx,
        key: &str,
        f: impl FnOnce(&mut Cx, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        f(cx, &self.child(key), v)
    }

    /// Reads a required key with `f`; reports it when missing.
    pub(crate) fn req<T>(
        &mut self,
        cx: &mut Cx,
        key: &str,
        f: impl FnOnce(&mut Cx, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let path = self.child(key);
        match self.get(key) {
            Some(v) => f(cx, &path, v),
            None => {
                cx.error(&path, "required key is missing");
                None
            }
        }
    }

    /// A sub-mapping; `None` when absent or of the wrong type (reported).
    pub(crate) fn section(&mut self, cx: &mut Cx, key: &str) -> Option<Obj<'v>> {
        let path = self.child(key);
        let v = self.get(key)?;
        Obj::new(cx, &path, v)
    }

    /// Accepts `key` and warns that it has no effect.
    pub(crate) fn ignore(&mut self, cx: &mut Cx, key: &str, note: &str) {
        if self.get_any(key).is_some() {
            cx.warn(&self.child(key), note);
        }
    }

    /// Accepts each of `keys` with the standard "accepted but not used" warning.
    pub(crate) fn ignore_all(&mut self, cx: &mut Cx, keys: &[&str]) {
        for key in keys {
            self.ignore(cx, key, UNUSED);
        }
    }

    /// The keys present in the mapping.
    pub(crate) fn keys(&self) -> Vec<&'v str> {
        self.map
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Reports every key that was not read as unknown, with a suggestion for near misses.
    pub(crate) fn finish(self, cx: &mut Cx) {
        let Some(map) = self.map else { return };
        for key in map.keys() {
            if self.known.iter().any(|k| k == key) {
                continue;
            }
            let hint = suggest(key, &self.known)
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            cx.unknown_key(&self.child(key), &hint);
        }
    }
}

/// The known key closest to `key`, if it is a plausible typo.
fn suggest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let limit = if key.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (distance(&key.to_ascii_lowercase(), k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
