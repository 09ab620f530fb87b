//! `postgresql.create_replica_methods`, the sections of its custom methods
//! (`postgresql.<method>`) and `postgresql.basebackup`, in the local file. A custom method
//! runs a command as the agent's user, so, like the other scripts, it is taken from the local
//! file only; in the dynamic configuration anything but `[basebackup]` is refused there
//! (`dynamic::replica_methods`).

use baton_core::{CustomMethod, ReplicaMethod};
use serde_json::Value;

use crate::walk::{Cx, Obj, index};

/// Options of `pg_basebackup` pgbaton sets itself or that would break the copy (Patroni's
/// list, plus `target`: a copy written elsewhere than the data directory).
const BASEBACKUP_RESERVED: [&str; 13] = [
    "pgdata",
    "format",
    "wal-method",
    "xlog-method",
    "gzip",
    "version",
    "compress",
    "dbname",
    "host",
    "port",
    "username",
    "password",
    "target",
];

/// Keys of a method's section with a meaning of their own (the rest are passed through).
const FLAGS: [&str; 4] = ["no_leader", "no_master", "keep_data", "no_params"];

/// `create_replica_methods` and the sections of the methods it names, in order. Empty when
/// absent (basebackup).
pub(crate) fn methods(cx: &mut Cx, o: &mut Obj<'_>) -> Vec<ReplicaMethod> {
    let key = "create_replica_methods";
    let Some(names) = o.opt(cx, key, |cx, p, v| cx.string_list(p, v)) else {
        return Vec::new();
    };
    let class = if names.iter().all(|m| m == "basebackup") {
        "[basebackup]"
    } else {
        "custom methods"
    };
    o.value_class(cx, key, class);
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if name == "basebackup" {
            out.push(ReplicaMethod::Basebackup);
            continue;
        }
        let item = index(&o.child(key), i);
        if !is_method_name(name) {
            cx.error(&item, format!("{name:?} is not a method name"));
            continue;
        }
        if crate::support::find(&o.pattern_of(name)).is_some() {
            cx.error(
                &item,
                format!(
                    "{name:?} is a key of postgresql, not a replica method (its section would be {})",
                    o.child(name)
                ),
            );
            continue;
        }
        let path = o.child(name);
        let section = o.get_free(name);
        out.extend(custom(cx, &path, name, section).map(ReplicaMethod::Custom));
    }
    out
}

/// A replica method's name as a key of `postgresql` (and of `create_replica_methods`).
pub(crate) fn is_method_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.contains(['.', '\0'])
}

/// One custom method's section (absent: the method's name is the command, as in Patroni).
fn custom(cx: &mut Cx, path: &str, name: &str, section: Option<&Value>) -> Option<CustomMethod> {
    let before = cx.error_count();
    let mut method = CustomMethod {
        name: name.to_owned(),
        argv: Vec::new(),
        no_leader: false,
        keep_data: false,
        no_params: false,
        options: Vec::new(),
    };
    if let Some(v) = section
        && !v.is_null()
    {
        if !v.is_object() {
            cx.mismatch(path, "a mapping (the method's command and options)", v);
            return None;
        }
        let mut o = Obj::new_as(cx, path, "postgresql.<method>", v)?;
        if let Some(v) = o.get_any("command") {
            let p = o.child("command");
            match v {
                Value::String(s) if s.trim().is_empty() => {
                    cx.error(&p, "expected a command, found an empty string");
                }
                _ => {
                    if let Some(script) = crate::hooks::script(cx, &p, v) {
                        method.argv = script.argv;
                    }
                }
            }
        }
        for key in o.keys() {
            if key == "command" {
                continue;
            }
            let p = o.child(key);
            let value = if FLAGS.contains(&key) {
                let value = o.get_any(key).unwrap_or(&Value::Null);
                let Some(b) = cx.boolean(&p, value) else {
                    continue;
                };
                match key {
                    "no_leader" | "no_master" => method.no_leader |= b,
                    "keep_data" => method.keep_data = b,
                    _ => method.no_params = b,
                }
                value
            } else {
                o.get_free(key).unwrap_or(&Value::Null)
            };
            let Some(rendered) = command_option(cx, &p, value) else {
                continue;
            };
            method.options.push((key.to_owned(), rendered));
        }
        o.finish(cx);
    }
    if method.argv.is_empty() {
        // No command: the method's name is run, as Patroni does.
        if let Some(problem) = crate::hooks::program_problem(name) {
            cx.warn(path, format!("no command: runs {name:?}; {problem}"));
        }
        method.argv = vec![name.to_owned()];
    }
    (cx.error_count() == before).then_some(method)
}

/// A custom command's `key: value` option as Patroni passes it (`--key=value`): a string,
/// number or boolean (rendered as Python does), without NUL or line break; `None` after
/// reporting the error at `path`.
pub(crate) fn command_option(cx: &mut Cx, path: &str, value: &Value) -> Option<String> {
    let rendered = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        // As Patroni's Python renders them.
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        other => {
            cx.mismatch(
                path,
                "a string, number or boolean (passed as --key=value)",
                other,
            );
            return None;
        }
    };
    if rendered.contains(['\0', '\n']) {
        cx.error(path, "must not contain a NUL character or a line break");
        return None;
    }
    Some(rendered)
}

/// `postgresql.basebackup`: a list of option names and single-pair mappings
/// (`- max-rate: 100M`), or a mapping of options; rendered as `--name[=value]`.
pub(crate) fn basebackup(cx: &mut Cx, path: &str, v: &Value) -> Option<Vec<String>> {
    crate::local::tool_options(
        cx,
        path,
        v,
        "a pg_basebackup option or a single \"option: value\" pair",
        "a list or mapping of pg_basebackup options",
        option,
    )
}

fn option(cx: &mut Cx, path: &str, name: &str, value: Option<&Value>) -> Option<String> {
    let name = name.trim().trim_start_matches('-');
    let bare = name.split('=').next().unwrap_or_default();
    if bare.is_empty() {
        cx.error(
            path,
            "expected a pg_basebackup option name, found an empty string",
        );
        return None;
    }
    if bare.chars().count() == 1 {
        cx.error(
            path,
            format!("pg_basebackup option {bare:?}: give the long form (max-rate, not r)"),
        );
        return None;
    }
    if BASEBACKUP_RESERVED.contains(&bare) {
        cx.error(
            path,
            format!("pg_basebackup option {bare:?} is set by pgbaton and cannot be given"),
        );
        return None;
    }
    if name.contains(['\0', '\n']) {
        cx.error(path, "must not contain a NUL character or a line break");
        return None;
    }
    match value {
        None => Some(format!("--{name}")),
        Some(Value::String(s)) if !s.contains(['\0', '\n']) => Some(format!("--{name}={s}")),
        Some(Value::Number(n)) => Some(format!("--{name}={n}")),
        Some(other) => {
            cx.mismatch(path, "a string or number as the option's value", other);
            None
        }
    }
}
