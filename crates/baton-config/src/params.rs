//! PostgreSQL parameters: rendering YAML/JSON scalars as PostgreSQL values, and Patroni's rules
//! for the parameters it passes on the `postgres` command line (`ConfigHandler.CMDLINE_OPTIONS`):
//! they come only from the dynamic configuration, are validated there, and have defaults.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::walk::{Cx, Obj, describe};

/// How a dynamic value of a command-line parameter is checked.
#[derive(Clone, Copy)]
enum Check {
    /// Set by pgbaton from other settings; never taken from the configuration.
    Forced,
    OneOf(&'static [&'static str]),
    IntAtLeast(i64),
    /// An amount of memory in MB (units kB, MB, GB, TB allowed), at least this many MB.
    MegabytesAtLeast(i64),
    Bool,
}

/// Patroni 4's `CMDLINE_OPTIONS` with their defaults (`None`: derived from other settings).
const CMDLINE: &[(&str, Option<&str>, Check)] = &[
    ("listen_addresses", None, Check::Forced),
    ("port", None, Check::Forced),
    ("cluster_name", None, Check::Forced),
    (
        "wal_level",
        Some("replica"),
        Check::OneOf(&["hot_standby", "replica", "logical"]),
    ),
    ("hot_standby", Some("on"), Check::Forced),
    ("max_connections", Some("100"), Check::IntAtLeast(25)),
    ("max_wal_senders", Some("10"), Check::IntAtLeast(3)),
    ("wal_keep_segments", None, Check::IntAtLeast(1)),
    ("wal_keep_size", Some("128MB"), Check::MegabytesAtLeast(16)),
    ("max_prepared_transactions", Some("0"), Check::IntAtLeast(0)),
    (
        "max_locks_per_transaction",
        Some("64"),
        Check::IntAtLeast(32),
    ),
    ("track_commit_timestamp", Some("off"), Check::Bool),
    ("max_replication_slots", Some("10"), Check::IntAtLeast(4)),
    ("max_worker_processes", Some("8"), Check::IntAtLeast(2)),
    ("wal_log_hints", Some("on"), Check::Forced),
];

/// Parameters that run a shell command or load a shared library into PostgreSQL (whoever can
/// set them can run code as the `postgres` OS user), and those that point PostgreSQL at the
/// files deciding who may connect and as whom (`hba_file`, `ident_file`: whoever can set them
/// can open the server to anyone, or lock everyone out, with any file on the host). pgbaton
/// takes them only from the local YAML file (`postgresql.parameters`), never from the dynamic
/// configuration, which anyone who can write `/config` (the REST API's `PATCH`/`PUT /config`,
/// or the DCS itself) controls. Patroni accepts them from either place (the local file wins).
pub const LOCAL_ONLY_PARAMETERS: &[&str] = &[
    "archive_command",
    "archive_library",
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "ssl_passphrase_command",
    "shared_preload_libraries",
    "local_preload_libraries",
    "session_preload_libraries",
    "dynamic_library_path",
    "jit_provider",
    "hba_file",
    "ident_file",
];

/// The local-only parameters that name authentication files rather than run code.
const AUTH_FILE_PARAMETERS: &[&str] = &["hba_file", "ident_file"];

/// Why a local-only parameter is refused or ignored in the dynamic configuration.
fn local_only_why(name: &str) -> &'static str {
    if AUTH_FILE_PARAMETERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name))
    {
        "this parameter points PostgreSQL at the file that decides who may connect, so pgbaton \
         takes it only from the local configuration file (postgresql.parameters of each \
         member), never from the DCS /config key that PATCH /config, PUT /config and \
         edit-config change"
    } else {
        "this parameter runs a command or loads code, so pgbaton takes it only from the local \
         configuration file (postgresql.parameters of each member), never from the DCS /config \
         key that PATCH /config, PUT /config and edit-config change"
    }
}

/// Whether `name` (any case) is one of [`LOCAL_ONLY_PARAMETERS`].
pub fn is_local_only(name: &str) -> bool {
    LOCAL_ONLY_PARAMETERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name))
}

fn cmdline(name: &str) -> Option<(Option<&'static str>, Check)> {
    CMDLINE
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, d, c)| (*d, *c))
}

/// A YAML/JSON scalar as a PostgreSQL value: booleans are `on`/`off`, numbers their text,
/// strings as they are.
pub(crate) fn render(cx: &mut Cx, path: &str, v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => cx.single_line(path, s).then(|| s.clone()),
        other => {
            cx.mismatch(
                path,
                "a PostgreSQL value (a string, number or boolean)",
                other,
            );
            None
        }
    }
}

/// Where a `parameters` mapping comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Local,
    Dynamic,
}

/// Reads a `parameters` mapping. Names are lower-cased (PostgreSQL's are case-insensitive).
/// Local: the command-line parameters are dropped with a warning (Patroni ignores them there).
/// Dynamic: they are validated; a bad value is dropped with a warning and the default applies;
/// `wal_keep_segments` becomes `wal_keep_size` (PostgreSQL 13 and later).
pub(crate) fn parameters(
    cx: &mut Cx,
    path: &str,
    v: &Value,
    source: Source,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(mut obj) = Obj::new(cx, path, v) else {
        return out;
    };
    for key in obj.keys() {
        let Some(value) = obj.get_free(key) else {
            continue;
        };
        let p = obj.child(key);
        if let Some(problem) = name_problem(key) {
            cx.error(
                &p,
                format!("{key:?} is not a PostgreSQL parameter name: {problem}"),
            );
            continue;
        }
        let name = key.to_ascii_lowercase();
        if source == Source::Dynamic && is_local_only(&name) {
            // Never used from here; reported unless it asks for nothing (null, "").
            if !crate::support::is_empty(value) {
                cx.local_only(&p, local_only_why(&name));
            }
            continue;
        }
        let Some(text) = render(cx, &p, value) else {
            continue;
        };
        match (cmdline(&name), source) {
            (None, _) => {
                out.insert(name, text);
            }
            (Some((_, Check::Forced)), _) => {
                cx.warn(
                    &p,
                    "ignored: pgbaton sets this parameter itself (as Patroni does)",
                );
            }
            (Some(_), Source::Local) => {
                cx.warn(
                    &p,
                    "ignored in the local configuration, as in Patroni: set it in the dynamic \
                     configuration (bootstrap.dcs.postgresql.parameters or edit-config) so that \
                     every member uses the same value",
                );
            }
            (Some((default, check)), Source::Dynamic) => match valid(check, &text) {
                Ok(()) => {
                    out.insert(name, text);
                }
                Err(why) => {
                    let default = default
                        .map_or_else(|| "no value".to_owned(), |d| format!("the default {d}"));
                    cx.warn(
                        &p,
                        format!("{why}, found {}: using {default}", describe(value)),
                    );
                }
            },
        }
    }
    if source == Source::Dynamic
        && let Some(segments) = out.remove("wal_keep_segments")
        && !out.contains_key("wal_keep_size")
        && let Ok(n) = segments.trim().parse::<i64>()
    {
        out.insert(
            "wal_keep_size".to_owned(),
            format!("{}MB", n.saturating_mul(16)),
        );
    }
    out
}

/// Directives of `postgresql.conf`, not parameters.
const DIRECTIVES: [&str; 3] = ["include", "include_dir", "include_if_exists"];
/// Parameters that would point PostgreSQL away from the files pgbaton manages.
const LOCATIONS: [&str; 2] = ["data_directory", "config_file"];

/// What is wrong with `name` as a parameter pgbaton may write into `postgresql.conf`, if
/// anything. PostgreSQL's configuration file accepts a name made of letters, digits and `_`,
/// not starting with a digit, optionally qualified once (`auto_explain.log_min_duration`) for
/// an extension's parameters (`guc-file.l`: `ID` and `QUALIFIED_ID`; pgbaton keeps to ASCII).
pub(crate) fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".to_owned());
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Some("at most one \".\" (extension.parameter)".to_owned());
    }
    for part in &parts {
        let mut chars = part.chars();
        match chars.next() {
            None => return Some("an empty part around \".\"".to_owned()),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Some(format!(
                    "each part starts with an ASCII letter or \"_\", found {c:?}"
                ));
            }
            Some(_) => {}
        }
        if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            return Some(format!(
                "only ASCII letters, digits and \"_\" (and one \".\"), found {c:?}"
            ));
        }
    }
    let lower = name.to_ascii_lowercase();
    if DIRECTIVES.contains(&lower.as_str()) {
        return Some("a postgresql.conf directive, not a parameter".to_owned());
    }
    if LOCATIONS.contains(&lower.as_str()) {
        return Some(
            "pgbaton runs PostgreSQL on postgresql.data_dir with the postgresql.conf it writes \
             there"
                .to_owned(),
        );
    }
    None
}

fn valid(check: Check, text: &str) -> Result<(), String> {
    match check {
        Check::Forced => Err("set by pgbaton".to_owned()),
        Check::OneOf(allowed) => {
            if allowed.iter().any(|a| a.eq_ignore_ascii_case(text.trim())) {
                Ok(())
            } else {
                Err(format!("expected one of {}", allowed.join(", ")))
            }
        }
        Check::IntAtLeast(min) => match text.trim().parse::<i64>() {
            Ok(n) if n >= min => Ok(()),
            _ => Err(format!("expected an integer >= {min}")),
        },
        Check::MegabytesAtLeast(min) => match megabytes(text) {
            Some(n) if n >= min => Ok(()),
            _ => Err(format!("expected an amount of memory >= {min}MB")),
        },
        Check::Bool => match pg_bool(text) {
            Some(_) => Ok(()),
            None => Err("expected a boolean".to_owned()),
        },
    }
}

/// A PostgreSQL memory value in MB: a bare number is MB; units kB, MB, GB, TB.
fn megabytes(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    match unit.trim() {
        "" | "MB" => Some(n),
        "kB" => Some(n / 1024),
        "GB" => n.checked_mul(1024),
        "TB" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// PostgreSQL's boolean spellings: unique prefixes of true/false/yes/no, on/off, 1/0.
fn pg_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    for (word, value) in [
        ("true", true),
        ("false", false),
        ("yes", true),
        ("no", false),
    ] {
        if word.starts_with(&t) {
            return Some(value);
        }
    }
    match t.as_str() {
        "on" | "1" => Some(true),
        "off" | "of" | "0" => Some(false),
        _ => None,
    }
}

/// Patroni's defaults for the command-line parameters.
pub(crate) fn defaults() -> impl Iterator<Item = (&'static str, &'static str)> {
    CMDLINE.iter().filter_map(|(n, d, _)| d.map(|d| (*n, d)))
}
