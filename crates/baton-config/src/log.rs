//! The `log` section (Patroni's `log`): level, plain or JSON lines, Python logging's format
//! fields, and size-rotated files in `dir` with Python's `RotatingFileHandler` semantics.

use std::path::PathBuf;

use serde_json::Value;

use crate::walk::{Cx, Obj};

/// Python logging's level names (Patroni's validator accepts exactly these; pgbaton also takes
/// them in lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARN" | "WARNING" => LogLevel::Warning,
            "ERROR" => LogLevel::Error,
            "FATAL" | "CRITICAL" => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// A field of Python's `LogRecord` that pgbaton can fill in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogField {
    /// The time (`dateformat`, or `2026-01-31 12:00:00,123`), UTC.
    Asctime,
    Levelname,
    Levelno,
    Message,
    /// The logger's name: the event's target (`baton_agent::ha`).
    Name,
    /// The last segment of the module path.
    Module,
    /// The source file's name.
    Filename,
    /// The source file's path.
    Pathname,
    Lineno,
    Process,
    ThreadName,
}

impl LogField {
    pub const SUPPORTED: &'static str = "asctime, levelname, levelno, message, name, module, \
        filename, pathname, lineno, process, threadName";

    fn parse(s: &str) -> Option<LogField> {
        Some(match s {
            "asctime" => LogField::Asctime,
            "levelname" => LogField::Levelname,
            "levelno" => LogField::Levelno,
            "message" => LogField::Message,
            "name" => LogField::Name,
            "module" => LogField::Module,
            "filename" => LogField::Filename,
            "pathname" => LogField::Pathname,
            "lineno" => LogField::Lineno,
            "process" => LogField::Process,
            "threadName" => LogField::ThreadName,
            _ => return None,
        })
    }

    /// The record attribute's name (the JSON key).
    pub fn key(self) -> &'static str {
        match self {
            LogField::Asctime => "asctime",
            LogField::Levelname => "levelname",
            LogField::Levelno => "levelno",
            LogField::Message => "message",
            LogField::Name => "name",
            LogField::Module => "module",
            LogField::Filename => "filename",
            LogField::Pathname => "pathname",
            LogField::Lineno => "lineno",
            LogField::Process => "process",
            LogField::ThreadName => "threadName",
        }
    }
}

/// One piece of a `%`-style format string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatPiece {
    Text(String),
    /// `%(name)-8s`: the field, left-aligned (`-`) in at least `width` characters.
    Field {
        field: LogField,
        left: bool,
        width: usize,
    },
}

/// `log.dateformat` pieces (`time.strftime` directives pgbaton supports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatePiece {
    Text(String),
    /// The directive's letter: `Y y m d H M S j z Z`.
    Directive(char),
}

/// The validated `log` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    /// `type: json` (Patroni 4): one JSON object per line.
    pub json: bool,
    pub level: LogLevel,
    /// A panic's backtrace is logged at this level (pgbaton's errors carry their causes on one
    /// line; a panic is the only traceback it has).
    pub traceback_level: LogLevel,
    /// Plain lines: the format. JSON: its fields are the keys written, in order.
    pub format: Vec<FormatPiece>,
    /// JSON keys: (field, key written), from `format` (a string or a list).
    pub json_fields: Vec<(LogField, String)>,
    /// `None`: Python's default `%Y-%m-%d %H:%M:%S,mmm`.
    pub dateformat: Option<Vec<DatePiece>>,
    /// JSON only: constant keys added to every line.
    pub static_fields: Vec<(String, Value)>,
    /// Write `pgbaton.log` here instead of standard error.
    pub dir: Option<PathBuf>,
    /// Rotate before a line would make the file reach this many bytes (`0`: never).
    pub file_size: u64,
    /// Rotated files kept (`pgbaton.log.1` .. `.N`); `0`: never rotate, as Python's handler.
    pub file_num: u32,
    /// Permissions of the log files (`0o640`); `None`: as the umask gives.
    pub mode: Option<u32>,
}

pub const DEFAULT_FORMAT: &str = "%(asctime)s %(levelname)s: %(message)s";
pub const DEFAULT_FILE_SIZE: u64 = 25_000_000;
pub const DEFAULT_FILE_NUM: u32 = 4;
/// The file in `log.dir`.
pub const LOG_FILE_NAME: &str = "pgbaton.log";

impl Default for Log {
    fn default() -> Log {
        let format = parse_format(DEFAULT_FORMAT).unwrap_or_default();
        let json_fields = fields_of(&format);
        Log {
            json: false,
            level: LogLevel::Info,
            traceback_level: LogLevel::Error,
            format,
            json_fields,
            dateformat: None,
            static_fields: Vec::new(),
            dir: None,
            file_size: DEFAULT_FILE_SIZE,
            file_num: DEFAULT_FILE_NUM,
            mode: None,
        }
    }
}

fn fields_of(format: &[FormatPiece]) -> Vec<(LogField, String)> {
    format
        .iter()
        .filter_map(|p| match p {
            FormatPiece::Field { field, .. } => Some((*field, field.key().to_owned())),
            FormatPiece::Text(_) => None,
        })
        .collect()
}

/// Parses a Python logging format string: `%(field)[-][width](s|d)` and `%%`.
pub fn parse_format(s: &str) -> Result<Vec<FormatPiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => text.push('%'),
            Some('(') => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some(')') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unterminated \"%({name}\"")),
                    }
                }
                let field = LogField::parse(&name).ok_or_else(|| {
                    format!(
                        "the field %({name})s is not supported (supported: {})",
                        LogField::SUPPORTED
                    )
                })?;
                let left = chars.peek() == Some(&'-');
                if left {
                    chars.next();
                }
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let width = if digits.is_empty() {
                    0
                } else {
                    digits
                        .parse::<usize>()
                        .ok()
                        .filter(|w| *w <= 200)
                        .ok_or_else(|| format!("width {digits} of %({name}) is too large"))?
                };
                match chars.next() {
                    Some('s') => {}
                    Some('d')
                        if matches!(
                            field,
                            LogField::Levelno | LogField::Lineno | LogField::Process
                        ) => {}
                    Some(other) => {
                        return Err(format!(
                            "conversion %({name}){other} is not supported (use s, or d for a number)"
                        ));
                    }
                    None => return Err(format!("%({name}) has no conversion (s)")),
                }
                if !text.is_empty() {
                    pieces.push(FormatPiece::Text(std::mem::take(&mut text)));
                }
                pieces.push(FormatPiece::Field { field, left, width });
            }
            Some(other) => {
                return Err(format!(
                    "\"%{other}\" is not a field: use %(name)s, or %% for a percent sign"
                ));
            }
            None => return Err("ends with a lone \"%\"".into()),
        }
    }
    if !text.is_empty() {
        pieces.push(FormatPiece::Text(text));
    }
    Ok(pieces)
}

/// Parses a `time.strftime` format with the directives pgbaton supports.
pub fn parse_dateformat(s: &str) -> Result<Vec<DatePiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => text.push('%'),
            Some(d @ ('Y' | 'y' | 'm' | 'd' | 'H' | 'M' | 'S' | 'j' | 'z' | 'Z')) => {
                if !text.is_empty() {
                    pieces.push(DatePiece::Text(std::mem::take(&mut text)));
                }
                pieces.push(DatePiece::Directive(d));
            }
            Some(other) => {
                return Err(format!(
                    "%{other} is not supported (supported: %Y %y %m %d %H %M %S %j %z %Z %%; \
                     times are UTC)"
                ));
            }
            None => return Err("ends with a lone \"%\"".into()),
        }
    }
    if !text.is_empty() {
        pieces.push(DatePiece::Text(text));
    }
    Ok(pieces)
}

fn level(cx: &mut Cx, path: &str, v: &Value) -> Option<LogLevel> {
    let s = cx.string(path, v, "a level name")?;
    let parsed = LogLevel::parse(&s);
    if parsed.is_none() {
        cx.error(
            path,
            format!("unknown level {s:?}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        );
    }
    parsed
}

/// The `log` section; Patroni's defaults when absent.
pub(crate) fn log(cx: &mut Cx, top: &mut Obj<'_>) -> Log {
    let mut out = Log::default();
    let Some(mut o) = top.section(cx, "log") else {
        return out;
    };
    out.json = o
        .opt(cx, "type", |cx, p, v| {
            let s = cx.string(p, v, "plain or json")?;
            match s.as_str() {
                "plain" => Some(false),
                "json" => Some(true),
                other => {
                    cx.error(p, format!("unknown type {other:?}: use plain or json"));
                    None
                }
            }
        })
        .unwrap_or(false);
    if let Some(l) = o.opt(cx, "level", level) {
        out.level = l;
    }
    if let Some(l) = o.opt(cx, "traceback_level", level) {
        out.traceback_level = l;
    }
    let json = out.json;
    if let Some((format, fields)) = o.opt(cx, "format", |cx, p, v| format(cx, p, v, json)) {
        out.format = format;
        out.json_fields = fields;
    }
    if let Some(d) = o.opt(cx, "dateformat", |cx, p, v| {
        let s = cx.string(p, v, "a strftime format")?;
        parse_dateformat(&s).map_err(|e| cx.error(p, e)).ok()
    }) {
        out.dateformat = Some(d);
    }
    if let Some(fields) = o.opt(cx, "static_fields", |cx, p, v| match v {
        Value::Object(m) => {
            let mut fields = Vec::new();
            for (k, v) in m {
                if v.is_object() || v.is_array() {
                    cx.error(
                        &crate::walk::join(p, k),
                        format!(
                            "expected a string or a number, found {}",
                            crate::walk::describe(v)
                        ),
                    );
                } else {
                    fields.push((k.clone(), v.clone()));
                }
            }
            Some(fields)
        }
        other => {
            cx.mismatch(p, "a mapping of keys to constant values", other);
            None
        }
    }) {
        if !json && !fields.is_empty() {
            cx.warn(
                &o.child("static_fields"),
                "used with type: json only; ignored for plain lines",
            );
        }
        out.static_fields = fields;
    }
    out.dir = o.opt(cx, "dir", |cx, p, v| {
        cx.nonempty(p, v, "a directory").map(PathBuf::from)
    });
    if let Some(n) = o.opt(cx, "file_size", |cx, p, v| cx.uint(p, v, 0, u64::MAX >> 1)) {
        out.file_size = n;
    }
    if let Some(n) = o.opt(cx, "file_num", |cx, p, v| cx.u32(p, v, 0)) {
        out.file_num = n;
    }
    out.mode = o.opt(cx, "mode", |cx, p, v| {
        // Octal digits, however YAML read them: `0640` (a YAML 1.2 integer, 640), `"0640"`,
        // `"0o640"` all mean rw-r-----.
        let digits = match v {
            Value::Number(n) => n.as_u64().map(|n| n.to_string()),
            Value::String(s) => Some(s.trim().trim_start_matches("0o").to_owned()),
            _ => None,
        };
        match digits.and_then(|d| u32::from_str_radix(&d, 8).ok()) {
            Some(m) if m <= 0o777 => Some(m),
            _ => {
                cx.error(
                    p,
                    "expected file permissions in octal, such as 0640 (at most 0777)",
                );
                None
            }
        }
    });
    if out.dir.is_none() {
        for key in ["file_size", "file_num", "mode"] {
            if o.has(key) {
                cx.warn(
                    &o.child(key),
                    "used with log.dir only: without it pgbaton logs to standard error",
                );
            }
        }
    }
    o.flagged(cx);
    o.finish(cx);
    out
}

/// JSON keys: (field, key written).
type JsonFields = Vec<(LogField, String)>;

/// `log.format`: a `%`-style string, or (for JSON) a list of field names and `{field: key}`
/// renames.
fn format(
    cx: &mut Cx,
    path: &str,
    v: &Value,
    json: bool,
) -> Option<(Vec<FormatPiece>, JsonFields)> {
    match v {
        Value::String(s) => match parse_format(s) {
            Ok(pieces) => {
                let fields = fields_of(&pieces);
                Some((pieces, fields))
            }
            Err(e) => {
                cx.error(path, e);
                None
            }
        },
        Value::Array(items) if json => {
            let mut fields = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let at = crate::walk::index(path, i);
                let (name, key) = match item {
                    Value::String(s) => (s.clone(), s.clone()),
                    Value::Object(m) if m.len() == 1 => match m.iter().next() {
                        Some((k, Value::String(r))) => (k.clone(), r.clone()),
                        _ => {
                            cx.error(&at, "expected {field: new_name} with a string name");
                            continue;
                        }
                    },
                    other => {
                        cx.mismatch(&at, "a field name or {field: new_name}", other);
                        continue;
                    }
                };
                match LogField::parse(&name) {
                    Some(f) => fields.push((f, key)),
                    None => cx.error(
                        &at,
                        format!(
                            "the field {name:?} is not supported (supported: {})",
                            LogField::SUPPORTED
                        ),
                    ),
                }
            }
            let pieces = fields
                .iter()
                .map(|(f, _)| FormatPiece::Field {
                    field: *f,
                    left: false,
                    width: 0,
                })
                .collect();
            Some((pieces, fields))
        }
        other => {
            let what = if json {
                "a format string or a list of fields"
            } else {
                "a format string"
            };
            cx.mismatch(path, what, other);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "\
scope: batman
name: postgresql0
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: data/postgresql0
  authentication:
    superuser: {username: postgres}
    replication: {username: replicator}
  pg_hba:
    - host all all 127.0.0.1/32 scram-sha-256
";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(log: &str) -> Result<(Log, Vec<String>), Vec<String>> {
        crate::load_str(&format!("{BASE}log:\n{log}"), &no_env)
            .map(|l| (l.config.log, l.warnings))
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn absent_section_is_patronis_defaults() {
        let loaded = crate::load_str(BASE, &no_env).expect("valid");
        assert_eq!(loaded.config.log, Log::default());
        let d = Log::default();
        assert_eq!(
            (d.level, d.traceback_level, d.file_size, d.file_num, d.json),
            (LogLevel::Info, LogLevel::Error, 25_000_000, 4, false)
        );
    }

    #[test]
    fn a_full_section_is_read() {
        let (log, warnings) = load(
            "  type: json\n  level: debug\n  traceback_level: INFO\n  dir: /var/log/pgbaton\n  \
             file_size: 1000\n  file_num: 2\n  mode: 0640\n  dateformat: '%Y-%m-%dT%H:%M:%S%z'\n  \
             format: [asctime, {levelname: level}, message]\n  static_fields: {app: pgbaton}\n",
        )
        .expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(log.json);
        assert_eq!(log.level, LogLevel::Debug);
        assert_eq!(log.traceback_level, LogLevel::Info);
        assert_eq!(log.dir, Some(PathBuf::from("/var/log/pgbaton")));
        assert_eq!(
            (log.file_size, log.file_num, log.mode),
            (1000, 2, Some(0o640))
        );
        assert_eq!(
            log.json_fields,
            vec![
                (LogField::Asctime, "asctime".to_owned()),
                (LogField::Levelname, "level".to_owned()),
                (LogField::Message, "message".to_owned()),
            ]
        );
        assert_eq!(
            log.static_fields,
            vec![("app".to_owned(), Value::from("pgbaton"))]
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let cases = [
            ("  level: LOUD\n", "log.level: unknown level \"LOUD\""),
            ("  type: xml\n", "log.type: unknown type \"xml\""),
            (
                "  format: '%(asctime)s %(funcName)s'\n",
                "log.format: the field %(funcName)s is not supported",
            ),
            (
                "  format: '%(message)x'\n",
                "log.format: conversion %(message)x",
            ),
            (
                "  format: '100% done'\n",
                "log.format: \"% \" is not a field",
            ),
            (
                "  dateformat: '%A'\n",
                "log.dateformat: %A is not supported",
            ),
            ("  file_num: -1\n", "log.file_num: must be at least 0"),
            ("  file_size: big\n", "log.file_size: expected an integer"),
            ("  mode: 0999\n", "log.mode: expected file permissions"),
            (
                "  type: json\n  format: [asctime, 7]\n",
                "log.format[1]: expected a field name",
            ),
            ("  colour: true\n", "log.colour: unknown key"),
        ];
        for (yaml, want) in cases {
            let errors = load(yaml).expect_err(yaml);
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{yaml}: {errors:?}"
            );
        }
    }

    #[test]
    fn file_settings_without_dir_and_unused_patroni_keys_warn() {
        let (_, warnings) = load("  file_num: 3\n  loggers: {urllib3: DEBUG}\n").expect("valid");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("log.file_num: used with log.dir only")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("log.loggers: accepted but not used")),
            "{warnings:?}"
        );
    }

    #[test]
    fn formats_parse_into_fields_and_text() {
        assert_eq!(
            parse_format("%(asctime)s [%(levelname)-8s] %(lineno)d %%"),
            Ok(vec![
                FormatPiece::Field {
                    field: LogField::Asctime,
                    left: false,
                    width: 0
                },
                FormatPiece::Text(" [".into()),
                FormatPiece::Field {
                    field: LogField::Levelname,
                    left: true,
                    width: 8
                },
                FormatPiece::Text("] ".into()),
                FormatPiece::Field {
                    field: LogField::Lineno,
                    left: false,
                    width: 0
                },
                FormatPiece::Text(" %".into()),
            ])
        );
        assert!(parse_format("%(levelname)d").is_err(), "d is for numbers");
        assert!(parse_format("%(message").is_err());
        assert_eq!(
            parse_dateformat("%d/%m %%"),
            Ok(vec![
                DatePiece::Directive('d'),
                DatePiece::Text("/".into()),
                DatePiece::Directive('m'),
                DatePiece::Text(" %".into()),
            ])
        );
    }
}
