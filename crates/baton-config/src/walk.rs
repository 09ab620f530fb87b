//! Walking a JSON tree (YAML is converted to JSON first) with key paths: typed extraction,
//! unknown-key detection, and collection of every error and warning on the way.
//!
//! Parsers never stop at the first problem: on a bad value they record an error and go on
//! with a placeholder, and the caller throws the placeholder away when any error was recorded.

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors};
use crate::support;

/// Which rules apply: a file's (also `bootstrap.dcs` and `PATCH /config`: unknown and refused
/// keys are errors), or those of the dynamic configuration read back from the DCS, which another
/// tool may have written (unknown and refused keys are warnings, and the value is used as if
/// they were absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    File,
    Dcs,
}

/// The collector every parser writes to.
pub(crate) struct Cx {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Key paths whose value came from an environment variable, with the variable's name.
    origins: Vec<(String, String)>,
    mode: Mode,
    /// The key paths of refused keys that were present (only in [`Mode::Dcs`]).
    pub(crate) unsupported: Vec<String>,
    /// Every key a parser read or checked, as a path from the top of the file (dynamic keys
    /// under `bootstrap.dcs.`), for the test that every one is in the support table.
    pub(crate) accepted: Vec<String>,
}

impl Cx {
    pub(crate) fn new(mode: Mode) -> Cx {
        Cx {
            errors: Vec::new(),
            warnings: Vec::new(),
            origins: Vec::new(),
            mode,
            unsupported: Vec::new(),
            accepted: Vec::new(),
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

    /// A key pgbaton does not support: an error in a file, a warning in the DCS value.
    pub(crate) fn refuse(&mut self, path: &str, why: &str) {
        match self.mode {
            Mode::File => self.error(path, format!("not supported by pgbaton yet: {why}")),
            Mode::Dcs => {
                self.warn(
                    path,
                    format!("not supported by pgbaton yet, ignored: {why}"),
                );
                let shown = self.shown(path);
                self.unsupported.push(shown);
            }
        }
    }

    /// A setting that runs a command or loads code, found in the dynamic configuration: an
    /// error where someone asks to store it (`bootstrap.dcs`, `PATCH`/`PUT /config`), a warning
    /// in the DCS value (written by Patroni or another tool), which is used without it.
    pub(crate) fn local_only(&mut self, path: &str, why: &str) {
        match self.mode {
            Mode::File => self.error(path, format!("refused in the dynamic configuration: {why}")),
            Mode::Dcs => self.warn(path, format!("ignored in the dynamic configuration: {why}")),
        }
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
            Value::String(s) => self.single_line(path, s).then(|| s.clone()),
            other => {
                self.mismatch(path, what, other);
                None
            }
        }
    }

    /// Whether `s` is one line without NUL; reports it otherwise. Every value pgbaton uses ends
    /// up in a line-based file (postgresql.conf, pg_hba.conf, the pgpass file) or a command line.
    pub(crate) fn single_line(&mut self, path: &str, s: &str) -> bool {
        if s.contains('\0') {
            self.error(path, "must not contain a NUL character");
            false
        } else if s.contains(['\n', '\r']) {
            // A YAML block scalar (`>` or `|`) ends with a line break unless written `>-`/`|-`.
            let hint = match s.strip_suffix('\n') {
                Some(body) if !body.contains(['\n', '\r']) => {
                    " (a YAML block scalar keeps its final line break unless written >- or |-)"
                }
                _ => "",
            };
            self.error(
                path,
                format!("must be a single line, found a line break in {s:?}{hint}"),
            );
            false
        } else {
            true
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
            Value::String(s) => self.single_line(path, s).then(|| s.clone()),
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

    pub(crate) fn unknown_key(&mut self, path: &str, hint: &str) {
        match self.mode {
            Mode::File => self.error(path, format!("unknown key{hint}")),
            Mode::Dcs => self.warn(path, format!("unknown key, ignored{hint}")),
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

/// `parent.key`; a key that is not a plain word (a dot, white space, control characters, a
/// quote) is shown quoted, so that a path stays one unambiguous line.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && !key
            .chars()
            .any(|c| c == '.' || c == '"' || c.is_whitespace() || c.is_control());
    let key = if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
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
    /// The path shown in messages.
    path: String,
    /// The path in the support table (`etcd` is read as `etcd3`, the DCS value as
    /// `bootstrap.dcs`).
    pattern: String,
    map: Option<&'v Map<String, Value>>,
    known: Vec<String>,
    /// Keys accepted without being table keys (custom tags, replica method sections).
    free: Vec<String>,
}

impl<'v> Obj<'v> {
    /// `v` as a mapping; `null` (a section with nothing under it) reads as an empty one.
    pub(crate) fn new(cx: &mut Cx, path: &str, v: &'v Value) -> Option<Obj<'v>> {
        Obj::new_as(cx, path, path, v)
    }

    /// As [`Obj::new`], with the table path `pattern` for the keys under it.
    pub(crate) fn new_as(cx: &mut Cx, path: &str, pattern: &str, v: &'v Value) -> Option<Obj<'v>> {
        let map = match v {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                cx.mismatch(path, "a mapping", other);
                return None;
            }
        };
        Some(Obj {
            path: path.to_owned(),
            pattern: pattern.to_owned(),
            map,
            known: Vec::new(),
            free: Vec::new(),
        })
    }

    pub(crate) fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The support-table path of `key`.
    pub(crate) fn pattern_of(&self, key: &str) -> String {
        join(&self.pattern, key)
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

    /// Accepts `key` without a table entry (a custom tag, a replica method's section).
    pub(crate) fn get_free(&mut self, key: &str) -> Option<&'v Value> {
        if !self.free.iter().any(|k| k == key) {
            self.free.push(key.to_owned());
        }
        self.map?.get(key)
    }

    /// Whether `key` was read (or checked) already.
    pub(crate) fn is_known(&self, key: &str) -> bool {
        self.known.iter().chain(&self.free).any(|k| k == key)
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
        let pattern = self.pattern_of(key);
        let v = self.get(key)?;
        Obj::new_as(cx, &path, &pattern, v)
    }

    /// Checks every key the support table refuses or warns about in this mapping, whatever its
    /// value: present with a non-empty value, it gives its error or warning. Keys whose status
    /// depends on the value are the parsers' (see [`Obj::value_class`]).
    pub(crate) fn flagged(&mut self, cx: &mut Cx) {
        let flagged: Vec<_> = support::flagged_children(&self.pattern).collect();
        for (key, status) in flagged {
            if let Some(v) = self.get_any(key)
                && !support::is_empty(v)
            {
                support::apply(cx, &self.child(key), status);
            }
        }
    }

    /// Gives the status the support table has for the class `label` of `key`'s value.
    pub(crate) fn value_class(&mut self, cx: &mut Cx, key: &str, label: &str) {
        support::apply_value(cx, &self.child(key), &self.pattern_of(key), label);
    }

    /// The keys present in the mapping.
    pub(crate) fn keys(&self) -> Vec<&'v str> {
        self.map
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Reports every key that was not read as unknown, with a suggestion for near misses.
    pub(crate) fn finish(self, cx: &mut Cx) {
        for key in &self.known {
            cx.accepted.push(join(&self.pattern, key));
        }
        let Some(map) = self.map else { return };
        for key in map.keys() {
            if self.is_known(key) {
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
